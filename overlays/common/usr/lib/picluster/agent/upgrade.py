"""`picluster-agent upgrade --to X.Y.Z STEP`: this node's part of `picluster upgrade`, one step a
call, each safe to run again (a rerun after a lost link repeats the step it was cut off in).

The steps are kubeadm's documented ones (kubernetes/website content/en/docs/tasks/
administer-cluster/kubeadm/kubeadm-upgrade.md and upgrading-linux-nodes.md; ../shared/reference
day2-facts.md §A): `kubeadm` moves the apt source to the release's minor repository and installs
kubeadm at exactly that release, held; `apply` (the first control plane) runs `kubeadm upgrade
apply vX.Y.Z`, `node` (every other node) `kubeadm upgrade node`; `kubelet` installs kubelet and
kubectl at the release, held, and restarts the kubelet. Draining and uncordoning are picluster's,
through the API server, between `apply`/`node` and `kubelet`.
"""

from __future__ import annotations

from agent.config import NodeConfig
from agent.host import CommandFailed, Host, say
from agent.packages import use_repository
from agent.state import State, now

STEPS = ("kubeadm", "apply", "node", "kubelet")


def upgrade(host: Host, config: NodeConfig, state: State, version: str, repository: str, step: str) -> int:
    """Run one step; 0 when it is done (now or before), 1 with the reason said and recorded."""
    record = state.upgrade if state.upgrade.get("to") == version else {"to": version, "done": ""}
    try:
        if step == "kubeadm":
            use_repository(host, repository, version, only_it=True)
            _install(host, version, ("kubeadm",))
        elif step == "apply":
            host.run(["kubeadm", "upgrade", "apply", f"v{version}", "--yes"], timeout=1800)
        elif step == "node":
            host.run(["kubeadm", "upgrade", "node"], timeout=1800)
        else:
            _install(host, version, ("kubelet", "kubectl"))
            host.run(["systemctl", "daemon-reload"])
            host.run(["systemctl", "restart", "kubelet"])
    except (CommandFailed, OSError, ValueError) as error:  # requests' errors are OSErrors
        why = error.summary if isinstance(error, CommandFailed) else f"{error}"
        state.upgrade = {**record, "failed": step, "error": why, "at": now()}
        state.save(host)
        say(f"upgrade {step}: failed: {why}")
        return 1
    done = [*record["done"].split(), step] if step not in record["done"].split() else record["done"].split()
    state.upgrade = {"to": version, "done": " ".join(done), "at": now()}
    state.save(host)
    say(f"upgrade {step}: done (to {version})")
    return 0


def _install(host: Host, version: str, packages: tuple[str, ...]) -> None:
    host.run(["apt-mark", "unhold", *packages])
    pinned = [f"{package}={version}-*" for package in packages]
    try:
        host.run(["apt-get", "install", "-y", "--no-install-recommends", *pinned], timeout=1800)
    finally:  # held again however the install ended: nothing else may move them
        host.run(["apt-mark", "hold", *packages])
