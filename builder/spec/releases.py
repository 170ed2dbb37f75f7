"""Kubernetes releases: which etcd each one's kubeadm runs, and which moves between two of them
kubeadm makes. Pure.

etcd's tag per release is what each released kubeadm's `kubeadm config images list` prints, as
minikube records it by running them (kubernetes/minikube
pkg/minikube/constants/constants_kubeadm_images.go at eb25dbc, through 1.36.3, and its update
branch minikube-bot/minikube at 9736e2f8, through 1.37.1), checked against kubeadm's
constants.go SupportedEtcdVersion where a copy could be read (../shared/reference day2-facts.md
§E). The moves are kubeadm's own rules (cmd/kubeadm/app/phases/upgrade/policy.go, §A): one minor
at a time, never down; and etcd's for its 3.5 -> 3.6 step (§E).
"""

from __future__ import annotations

from dataclasses import dataclass

ETCD = {
    31: ((0, "3.5.15-0"), (14, "3.5.24-0")),
    32: ((0, "3.5.16-0"), (10, "3.5.24-0")),
    33: ((0, "3.5.21-0"), (6, "3.5.24-0")),
    34: ((0, "3.6.4-0"), (2, "3.6.5-0")),
    35: ((0, "3.6.6-0"),),
    36: ((0, "3.6.8-0"),),
    37: ((0, "3.7.0-0"),),
}
"""Per minor: from which patch on kubeadm pins which etcd tag."""
KNOWN_TO = {31: 14, 32: 13, 33: 13, 34: 12, 35: 9, 36: 5, 37: 1}
"""The last patch of each minor whose tags were read; for a later one the last known tags are
listed, and `unknown` says so (etcd's has changed within 1.31, 1.32, 1.33 and 1.34)."""
ETCD_36_FROM = (3, 5, 24)
"""The etcd every member must run before it moves to 3.6. etcd asks for 3.5.20 or later (a
3.5.1-3.5.19 member can hit "membership: too many learner member in cluster", etcd-io/website
content/en/blog/2025/upgrade_from_3.5_to_3.6_issue.md), and its v3.6 upgrade guide now for
3.5.32; no kubeadm pins a 3.5 newer than 3.5.24-0, so picluster asks for that, the newest a
cluster can run (1.33.6 and later)."""


@dataclass(frozen=True, order=True)
class Release:
    minor: int
    patch: int

    @classmethod
    def of(cls, version: str) -> Release:
        """A version the model has checked ("1.33.6")."""
        _, minor, patch = version.split(".")
        return cls(int(minor), int(patch))

    def __str__(self) -> str:
        return f"1.{self.minor}.{self.patch}"

    @property
    def etcd(self) -> str:
        """kubeadm's etcd tag for this release (the last known one's beyond the table)."""
        return next(tag for first, tag in reversed(ETCD[self.minor]) if self.patch >= first)

    @property
    def latest_known(self) -> Release:
        """The newest patch of this minor picluster knows."""
        return Release(self.minor, max(self.patch, KNOWN_TO[self.minor]))


def etcd_version(tag: str) -> tuple[int, int, int]:
    major, minor, patch = tag.split("-")[0].split(".")
    return int(major), int(minor), int(patch)


@dataclass(frozen=True)
class Refusal:
    problem: str
    fix: str


def refuse_move(running: Release, wanted: Release) -> Refusal | None:
    """Why kubeadm (or etcd) would refuse to move a cluster from `running` to `wanted` in one
    upgrade; None when it would not, or when there is nothing to move."""
    if wanted < running:
        return Refusal(
            f"Kubernetes {wanted} is older than the {running} the cluster runs: kubeadm upgrades, it does "
            "not downgrade a control plane (its etcd data and objects are written by the newer release)",
            f"set cluster.kubernetes back to {running}, or a newer release",
        )
    if wanted.minor > running.minor + 1:
        step = Release(running.minor + 1, 0).latest_known
        return Refusal(
            f"Kubernetes {running} -> {wanted} skips a minor release: kubeadm can upgrade only 1 minor "
            'version at a time ("Specified version to upgrade to ... is too high")',
            f"set cluster.kubernetes to {step} and run picluster upgrade, then to {wanted} and run it again",
        )
    etcd_from, etcd_to = etcd_version(running.etcd), etcd_version(wanted.etcd)
    if etcd_from[:2] == (3, 5) and etcd_to[:2] == (3, 6) and etcd_from < ETCD_36_FROM:
        step = running.latest_known
        return Refusal(
            f"Kubernetes {running} -> {wanted} moves etcd from {running.etcd} to {wanted.etcd}: etcd "
            f"3.6 needs every member on 3.5.{ETCD_36_FROM[2]} or later first (an older 3.5 member can hit "
            '"membership: too many learner member in cluster"), which Kubernetes 1.33.6 and later run',
            f"set cluster.kubernetes to {step} and run picluster upgrade, then to {wanted} and run it again",
        )
    return None
