"""Before kubeadm: every container image the node runs, in containerd's k8s.io namespace (where
the kubelet's CRI looks), pulled one at a time with crictl and each retried.

kubeadm init and a control-plane join pull their images inside the same run that then waits for
the control plane (cmd/kubeadm/app/cmd/phases/init/preflight.go, "Pulling images required for
setting up a Kubernetes cluster"), and the agent gives that run 30 minutes: over a slow link the
pulls alone could use it up, and every retry would start the pulls again. Pulled here first, one
image at a time, a failure costs one image, the state says which one and how far the node got,
and kubeadm finds every image present (its pull policy, IfNotPresent, then pulls nothing). A
worker's kubelet would pull its images only after the join; pulled here, it is Ready sooner.
node.json lists the images (picluster's `images` command prints the same list).
"""

from __future__ import annotations

from agent.config import NodeConfig
from agent.host import Backoff, CommandFailed, Host, say
from agent.state import State

CRI_ENDPOINT = "unix:///var/run/containerd/containerd.sock"
"""containerd's CRI socket, as kubeadm.yaml's criSocket names it."""
PULL_TIMEOUT_S = 1800
WAITING_IMAGES = "waiting: images"


def ensure_images(host: Host, config: NodeConfig, state: State) -> None:
    """Returns once every listed image is present; until then, retries with backoff, recording
    which image failed and why."""
    backoff = Backoff(config.timing.retry_initial, config.timing.retry_max)
    while True:
        try:
            _pull_missing(host, config, state)
            return
        except CommandFailed as error:
            failed = len(state.images)
            reason = f"pulling {config.images[failed]}: {error.summary}"
            state.enter(host, WAITING_IMAGES, reason)
            say(f"{WAITING_IMAGES} ({failed}/{len(config.images)} present; {reason})")
            host.sleep(backoff.next())


def _pull_missing(host: Host, config: NodeConfig, state: State) -> None:
    state.images = []
    for index, image in enumerate(config.images, 1):
        if _present(host, image):
            state.images.append({"image": image, "status": "present"})
            continue
        state.enter(host, f"pulling: images ({index}/{len(config.images)})", state.last_error)
        host.run(_crictl("pull", image), timeout=PULL_TIMEOUT_S)
        state.images.append({"image": image, "status": "pulled"})
    state.save(host)


def _present(host: Host, image: str) -> bool:
    """crictl inspecti exits non-zero for an image the runtime does not have."""
    try:
        host.run(_crictl("inspecti", "-q", image), changes=False, timeout=60)
    except CommandFailed:
        return False
    return True


def _crictl(*arguments: str) -> list[str]:
    return ["crictl", "--runtime-endpoint", CRI_ENDPOINT, *arguments]
