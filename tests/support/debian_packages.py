"""Debian packages of another suite than the build machine's, for tests that must meet the very
program a card runs: trixie's etcd 3.5 (etcdctl, etcdutl, etcd) where this machine has
bookworm's 3.4, which has no etcdutl.

They are fetched by this machine's own apt under a private configuration (its sources and lists
untouched): apt checks the suite's signed Release file with the machine's Debian keyring and
each .deb against the SHA-256 the Packages index names. `dpkg -x` unpacks them into the test
cache, named by the suite, architecture and packages, once per machine; a run then needs no
network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from builder.image.debian import MIRROR

ARCH = "amd64"
"""The build machine's: these programs run here, not on the card."""


def unpacked(cache: Path, suite: str, packages: list[str]) -> Path:
    """The root folder the packages are unpacked into (usr/bin/... below it)."""
    key = hashlib.sha256(f"{suite} {ARCH} {' '.join(sorted(packages))}".encode()).hexdigest()[:16]
    folder = cache / "debian-packages"
    done = folder / f"{suite}-{key}"
    if (done / ".complete").exists():
        return done
    work = folder / f".{suite}-{key}.partial"
    shutil.rmtree(work, ignore_errors=True)
    (work / "debs").mkdir(parents=True)
    env = {**os.environ, "APT_CONFIG": str(_apt_config(work, suite))}
    for command in (["apt-get", "update", "-q"], ["apt-get", "download", "-q", *packages]):
        result = subprocess.run(
            command, cwd=work / "debs", env=env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"fetching {', '.join(packages)} from Debian {suite} failed (the test needs {MIRROR}): "
                f"{' '.join(command)}: {result.stderr.strip()[-500:]}"
            )
    for deb in sorted((work / "debs").glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "root")], check=True)
    (work / "root" / ".complete").write_text(
        "".join(f"{deb.name}\n" for deb in sorted((work / "debs").glob("*.deb")))
    )
    shutil.rmtree(done, ignore_errors=True)
    (work / "root").rename(done)
    shutil.rmtree(work)
    return done


def _apt_config(work: Path, suite: str) -> Path:
    """apt's folders and sources inside `work`; the machine's trusted keys, nothing else of its."""
    (work / "lists/partial").mkdir(parents=True)
    (work / "cache/archives/partial").mkdir(parents=True)
    (work / "sources.list").write_text(f"deb [arch={ARCH}] {MIRROR} {suite} main\n")
    config = work / "apt.conf"
    config.write_text(
        f'Dir::Etc::SourceList "{work}/sources.list";\n'
        'Dir::Etc::SourceParts "/nonexistent";\n'
        'Dir::Etc::Preferences "/nonexistent";\n'
        'Dir::Etc::PreferencesParts "/nonexistent";\n'
        f'Dir::State::Lists "{work}/lists";\n'
        f'Dir::Cache "{work}/cache";\n'
        'Dir::State::status "/dev/null";\n'
        f'APT::Architecture "{ARCH}";\n'
        f'APT::Architectures {{ "{ARCH}"; }};\n'
        'APT::Sandbox::User "root";\n'
        'Acquire::Languages "none";\n'
    )
    return config
