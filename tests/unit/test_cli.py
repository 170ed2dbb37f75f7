"""The command line: exit codes, one-screen errors without tracebacks, the render tree."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.cli import main
from tests.support.project import BUNDLED, REPO


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copy(BUNDLED, tmp_path / "cluster.yaml")
    return tmp_path


def test_validate_accepts_the_bundled_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-f", str(workdir / "cluster.yaml")]) == 0
    assert "3 nodes (1 control plane, 2 workers)" in capsys.readouterr().out


def test_validate_reports_problems_and_exits_2(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = workdir / "cluster.yaml"
    path.write_text(path.read_text().replace("iface: eth0", "ifce: eth0"))
    assert main(["validate", "-f", str(path)]) == 2
    err = capsys.readouterr().err
    assert "flannel.ifce: unknown key" in err
    assert "did you mean 'iface'?" in err
    assert "Traceback" not in err


def test_missing_file_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-f", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_render_writes_each_node_and_creates_state(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = workdir / "out"
    assert main(["render", "-f", str(workdir / "cluster.yaml"), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cp1", "w1", "w2"]
    assert (out / "w2" / "root" / "etc" / "hostname").read_text() == "w2\n"
    assert "cgroup_enable=memory" in (out / "cp1" / "boot" / "cmdline.txt").read_text()
    config = json.loads((out / "w1" / "root" / "etc/picluster/node.json").read_text())
    assert config["node"]["address"] == "192.168.50.11/24"
    assert (workdir / ".picluster" / "pki" / "ca.key").exists()
    token = (workdir / ".picluster" / "bootstrap-token").read_text().strip()
    captured = capsys.readouterr()
    assert token not in captured.out + captured.err, "secrets never reach the terminal"


def test_render_is_repeatable_byte_for_byte(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    main(["render", "-f", str(workdir / "cluster.yaml"), "-o", str(workdir / "a")])
    main(["render", "-f", str(workdir / "cluster.yaml"), "-o", str(workdir / "b")])
    for first in sorted((workdir / "a").rglob("*")):
        second = workdir / "b" / first.relative_to(workdir / "a")
        if first.is_symlink():
            assert first.readlink() == second.readlink()
        elif first.is_file():
            assert first.read_bytes() == second.read_bytes(), first
            assert first.stat().st_mtime == second.stat().st_mtime == 1700000000
            assert first.stat().st_mode == second.stat().st_mode


def test_bad_source_date_epoch(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    assert main(["render", "-f", str(workdir / "cluster.yaml"), "-o", str(workdir / "out")]) == 2


def test_the_installed_command_prints_no_traceback(workdir: Path, allow_subprocess: None) -> None:
    path = workdir / "cluster.yaml"
    path.write_text(path.read_text().replace('"1.34.2"', '"1.12.0"'))
    result = subprocess.run(
        [sys.executable, "-m", "builder", "validate", "-f", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert (
        "cluster.kubernetes: Kubernetes 1.12.0 is outside the supported range 1.31 to 1.37" in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) < 25, "fits on one screen"


@pytest.mark.parametrize("before", [True, False], ids=["before the command", "after the command"])
def test_file_option_works_before_or_after_the_command(
    workdir: Path, capsys: pytest.CaptureFixture[str], before: bool
) -> None:
    path = workdir / "elsewhere.yaml"
    (workdir / "cluster.yaml").rename(path)
    args = ["-f", str(path), "validate"] if before else ["validate", "-f", str(path)]
    assert main(args) == 0
    assert "elsewhere.yaml: ok" in capsys.readouterr().out


def refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI and check the refusal is a one-screen error with a fix; return stderr."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "fix: " in err
    assert "Traceback" not in err
    assert len(err.splitlines()) < 25, "fits on one screen"
    return err


HOSTILE_FILES = {
    "binary garbage": random.Random(0).randbytes(4096),
    "UTF-16 text": "cluster:\n  name: homelab\n".encode("utf-16"),
    "a control character": b'cluster:\n  name: "home\x07lab"\n',
    "a NUL byte": b"cluster:\n  name: home\x00lab\n",
    "a list as a key": b"? [a, b]\n: 1\n",
}


@pytest.mark.parametrize("content", HOSTILE_FILES.values(), ids=HOSTILE_FILES)
def test_a_hostile_file_is_refused_in_one_screen(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_bytes(content)
    refused(["validate", "-f", str(path)], capsys)


def test_a_file_over_1_mib_is_refused_even_when_valid(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = workdir / "cluster.yaml"
    path.write_text(path.read_text() + "# padding\n" * 120_000)
    assert "larger than 1 MiB" in refused(["validate", "-f", str(path)], capsys)


def test_a_list_of_many_thousand_values_is_refused_quickly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("nodes: [" + "x, " * 300_000 + "x]\n")  # under 1 MiB
    start = time.monotonic()
    refused(["validate", "-f", str(path)], capsys)
    assert time.monotonic() - start < 2


def test_many_problems_fit_on_one_screen(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = workdir / "cluster.yaml"
    nodes = "".join(
        f"  - {{name: n{i}, role: worker, model: pi9, address: 192.168.50.{i}/24}}\n" for i in range(100)
    )
    path.write_text(path.read_text().split("nodes:")[0] + "nodes:\n" + nodes)
    err = refused(["validate", "-f", str(path)], capsys)
    assert "has 100 problems" in err
    assert "and 90 more" in err


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("name: homelab", "name: " + "a" * 500_000, "is not a lower-case RFC 1123 host name"),
        ("dns: [192.168.50.1]", "dns: [" + "9" * 300_000 + "]", "reads the value here as int"),
    ],
    ids=["a long name", "a long number"],
)
def test_a_huge_value_is_shortened_in_the_error(
    workdir: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, reason: str
) -> None:
    path = workdir / "cluster.yaml"
    path.write_text(path.read_text().replace(old, new))
    err = refused(["validate", "-f", str(path)], capsys)
    assert len(err) < 1000
    assert reason in err


def test_an_endless_file_is_refused_without_reading_it_all(capsys: pytest.CaptureFixture[str]) -> None:
    assert "/dev/zero is not a regular file" in refused(["validate", "-f", "/dev/zero"], capsys)


def test_a_folder_as_the_file_says_which_file_to_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(["validate", "-f", str(tmp_path)], capsys)
    assert f"{tmp_path} is a folder" in err
    assert f"-f {tmp_path / 'cluster.yaml'}" in err


@pytest.mark.parametrize("out", ["a-file", "/proc", "/proc/picluster-out"])
def test_render_refuses_an_output_folder_it_cannot_write(
    workdir: Path, capsys: pytest.CaptureFixture[str], out: str
) -> None:
    (workdir / "a-file").write_text("")
    err = refused(["render", "-f", str(workdir / "cluster.yaml"), "-o", str(workdir / out)], capsys)
    assert f"-o {workdir / out}" in err
    assert not (workdir / ".picluster").exists(), "nothing is created before the refusal"
