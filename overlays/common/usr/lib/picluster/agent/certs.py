"""`picluster-agent certs`: renew kubeadm's certificates on a control plane before they expire.

kubeadm signs its leaf certificates (the API server's, etcd's, the kubeconfigs' client
certificates) for one year (constants.go CertificateValidityPeriod) and nothing renews them but
an upgrade or `kubeadm certs renew`; a cluster left alone for a year stops answering its own
components. A daily timer on every control plane runs this: it reads each certificate's expiry
with `kubeadm certs check-expiration -o json` (cmd/kubeadm/app/apis/output/v1alpha3 types.go,
CertificateExpirationInfo), and when the first expires within RENEW_WITHIN_DAYS it runs
`kubeadm certs renew all` and restarts the static pods the documented way: their manifests out
of /etc/kubernetes/manifests, a wait of the kubelet's fileCheckFrequency (20 s) so it stops them,
and back (kubernetes/website content/en/docs/tasks/administer-cluster/kubeadm/kubeadm-certs.md;
`kubectl` cannot restart a static pod). The kubelet's own client certificate is not among them:
the kubelet rotates it (rotateCertificates, which kubeadm forces on).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

from agent.config import NodeConfig
from agent.host import CommandFailed, Host, say
from agent.state import State, now

RENEW_WITHIN_DAYS = 30
MANIFESTS = Path("/etc/kubernetes/manifests")
HELD = Path("/etc/kubernetes/picluster-held-manifests")
"""Where the static pods' manifests wait while the kubelet stops their pods: outside the folder it
watches, on the same filesystem (a rename), and where the next run finds them should this one be
killed in between."""
STATIC_PODS = ("etcd.yaml", "kube-apiserver.yaml", "kube-controller-manager.yaml", "kube-scheduler.yaml")
CHECK_EXPIRATION = ["kubeadm", "certs", "check-expiration", "-o", "json"]


class Unreadable(Exception):
    pass


def renew_certs(host: Host, config: NodeConfig, state: State) -> int:
    """Check, renew when due, record; 0 when the certificates are good for RENEW_WITHIN_DAYS."""
    put_back(host)
    if config.role != "control-plane":
        say("certs: a worker has no kubeadm certificate to renew (its kubelet rotates its own)")
        return 0
    if not host.path(MANIFESTS / "kube-apiserver.yaml").exists():
        say("certs: no control plane runs here yet; kubeadm init or join makes its certificates")
        return 0
    record = dict(state.certificates)
    try:
        name, expires = first_to_expire(host)
        if expires - time.time() < RENEW_WITHIN_DAYS * 86400:
            say(f"certs: {name} expires {_day(expires)}, within {RENEW_WITHIN_DAYS} days: renewing")
            host.run(["kubeadm", "certs", "renew", "all"], timeout=300)
            restart_static_pods(host, config)
            record["renewed_at"] = now()
            name, expires = first_to_expire(host)
            if expires - time.time() < RENEW_WITHIN_DAYS * 86400:
                raise Unreadable(f"kubeadm renewed, yet {name} still expires {_day(expires)}")
        else:
            say(f"certs: the first to expire, {name}, expires {_day(expires)}: nothing to renew")
    except (CommandFailed, Unreadable) as error:
        why = error.summary if isinstance(error, CommandFailed) else str(error)
        state.certificates = record
        fix = "`sudo kubeadm certs check-expiration` and `sudo kubeadm certs renew all`"
        state.timer_failed(host, "certs", "certificates", "checked_at", why, fix)
        return 1
    record.update(checked_at=now(), first_to_expire=name, expires=_day(expires))
    record.pop("error", None)
    state.certificates = record
    state.save(host)
    return 0


def first_to_expire(host: Host) -> tuple[str, float]:
    """kubeadm's certificate (or kubeconfig) that expires first, and when (Unix seconds); the CAs
    (ten years, which kubeadm cannot renew) and certificates it does not manage are left out."""
    output = host.run(CHECK_EXPIRATION, changes=False, timeout=120)
    try:
        listed = json.loads(output[output.index("{") :])["certificates"]
        found = [
            (entry["name"], _seconds(entry["expirationDate"]))
            for entry in listed
            if not entry.get("missing") and not entry.get("externallyManaged")
        ]
    except (ValueError, KeyError, TypeError) as error:
        raise Unreadable(f"cannot read `{' '.join(CHECK_EXPIRATION)}`: {error}") from None
    if not found:
        raise Unreadable(f"`{' '.join(CHECK_EXPIRATION)}` lists no certificate kubeadm manages")
    return min(found, key=lambda item: item[1])


def restart_static_pods(host: Host, config: NodeConfig) -> None:
    """Move the manifests out, let the kubelet notice and stop the pods, move them back."""
    held = host.path(HELD)
    held.mkdir(mode=0o700, exist_ok=True)
    moved = [name for name in STATIC_PODS if host.path(MANIFESTS / name).exists()]
    for name in moved:
        host.path(MANIFESTS / name).rename(held / name)
    pause = config.timing.static_pod_pause
    say(f"certs: {', '.join(moved)} held in {HELD} for {pause:.0f} s: the kubelet stops them")
    host.sleep(pause)
    put_back(host)


def put_back(host: Host) -> None:
    """Every manifest held, back where the kubelet runs it (a killed run leaves them held)."""
    held = host.path(HELD)
    if not held.is_dir():
        return
    for manifest in sorted(held.iterdir()):
        manifest.rename(host.path(MANIFESTS / manifest.name))
        say(f"certs: {manifest.name} back in {MANIFESTS}: the kubelet starts it with the new certificates")
    held.rmdir()


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _day(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")
