"""What the terminal shows while mmdebstrap builds the base: its milestones, and a count of the
packages dpkg has unpacked and set up through the minutes it says nothing else.

fixtures/mmdebstrap-remaining-packages.log is real output, as picluster's build log stamps it:
mmdebstrap 1.3.5 (with the host's apt 2.6.1, Debian 12) run as
`mmdebstrap --mode=root --variant=apt --arch=arm64 --include=python3 --verbose` with the base
build's --dpkgopt and --aptopt options, trixie from deb.debian.org, arm64 under qemu-user; the
excerpt runs from "installing remaining packages" to the end.
"""

from __future__ import annotations

import re
from pathlib import Path

from builder.image import debian
from builder.image.mmdebstrap_progress import MmdebstrapProgress
from builder.spec.load import load_cluster
from tests.support.project import BUNDLED

RECORDED = Path(__file__).parent / "fixtures" / "mmdebstrap-remaining-packages.log"


def shown(progress: MmdebstrapProgress, lines: list[tuple[float, str]]) -> list[tuple[float, str]]:
    return [(elapsed, text) for elapsed, line in lines if (text := progress.feed(line, elapsed))]


def recorded() -> list[tuple[float, str]]:
    stamped = [re.fullmatch(r"\[ *([\d.]+)s\] (.*)", line) for line in RECORDED.read_text().splitlines()]
    return [(float(match[1]), match[2]) for match in stamped if match]


def test_the_recorded_phase_shows_its_milestones_and_counts() -> None:
    lines = recorded()
    assert len(lines) == len(RECORDED.read_text().splitlines()), "every line of the log is stamped"
    assert shown(MmdebstrapProgress(), lines) == [
        (80.8, "I: installing remaining packages inside the chroot..."),
        # python3.13-minimal's postinst byte-compiled the standard library, silently, for 40 s
        # before this (picluster's base build defers that to the Pi), and python3.13's before the last
        (124.0, "   packages: 3/15 unpacked, 3/15 set up"),
        (137.2, "   packages: 15/15 unpacked, 6/15 set up"),
        (176.9, "   packages: 15/15 unpacked, 15/15 set up"),
        (180.3, "I: cleaning package lists and apt cache..."),
        (180.4, "I: success in 180.4060 seconds"),
    ]


def test_counts_are_shown_at_most_every_few_seconds() -> None:
    lines = [(0.0, "I: installing remaining packages inside the chroot...")]
    lines += [(float(second), "Setting up foo (1.0) ...") for second in range(1, 61)]  # one a second
    texts = [text for _, text in shown(MmdebstrapProgress(every=10.0, planned=100), lines)]
    assert texts[1:] == [
        f"   packages: 0/100 unpacked, {done}/100 set up" for done in (10, 20, 30, 40, 50, 60)
    ]


def test_the_essential_packages_are_counted_from_the_summary_of_their_download() -> None:
    lines = [
        (0.1, "I: arm64 cannot be executed natively, but transparently using qemu-user binfmt emulation"),
        (1.5, "I: downloading packages with apt..."),
        (1.8, "0 upgraded, 69 newly installed, 0 to remove and 0 not upgraded."),
        (2.0, "I: extracting archives..."),
        (10.0, "I: installing essential packages..."),
        (10.2, "Unpacking gcc-14-base:arm64 (14.2.0-19) ..."),
        (25.0, "Unpacking libc6:arm64 (2.41-12+deb13u5) ..."),
    ]
    assert shown(MmdebstrapProgress(), lines) == [
        (1.5, "I: downloading packages with apt..."),
        (2.0, "I: extracting archives..."),
        (10.0, "I: installing essential packages..."),
        (25.0, "   packages: 2/69 unpacked, 0/69 set up"),
    ]


def test_a_count_waiting_for_its_time_is_shown_while_a_package_script_talks() -> None:
    lines = [
        (254.9, "Setting up python3-chardet (5.2.0+dfsg-2) ..."),
        (264.2, "Setting up openssh-server (1:10.0p1-7+deb13u4) ..."),
        (268.2, "Creating config file /etc/ssh/sshd_config with new version"),
        (271.9, "Creating SSH2 RSA key; this may take some time ..."),
    ]
    assert shown(MmdebstrapProgress(planned=122, unpacked=122, configured=100), lines) == [
        (254.9, "   packages: 122/122 unpacked, 101/122 set up"),
        (268.2, "   packages: 122/122 unpacked, 102/122 set up"),
    ]


def test_what_maintainer_scripts_say_is_no_milestone() -> None:
    lines = [
        (262.2, "Setting up linux-image-6.12.118+deb13-arm64 (6.12.118-1) ..."),
        (263.2, "I: /vmlinuz.old is now a symlink to boot/vmlinuz-6.12.118+deb13-arm64"),
        (263.2, "I: /vmlinuz is now a symlink to boot/vmlinuz-6.12.118+deb13-arm64"),
        (288.3, "Setting up python3-requests (2.32.3+dfsg-5+deb13u1) ..."),
        (288.5, "Processing triggers for systemd (257.13-1~deb13u1) ..."),
        (288.9, "I: running --customize-hook in shell: sh -c 'sh customize.sh \"$1\"' exec root"),
    ]
    progress = MmdebstrapProgress(planned=122, unpacked=122, configured=120)
    assert [text for _, text in shown(progress, lines)] == [
        "   packages: 122/122 unpacked, 121/122 set up",
        "   packages: 122/122 unpacked, 122/122 set up",
        "I: running --customize-hook in shell: sh -c 'sh customize.sh \"$1\"' exec root",
    ]


def test_nothing_is_counted_without_apts_summary() -> None:
    lines = [(float(second), "Setting up foo (1.0) ...") for second in range(0, 60, 5)]
    assert shown(MmdebstrapProgress(), lines) == []


def test_mmdebstrap_passes_dpkgs_lines_on() -> None:
    # without --verbose, mmdebstrap keeps apt's and dpkg's output to itself unless they fail
    assert "--verbose" in debian.mmdebstrap_command(load_cluster(BUNDLED), Path("/tmp/root"))
