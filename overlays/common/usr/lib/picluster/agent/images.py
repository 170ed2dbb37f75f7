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

A card built with `images: card` carries them as OCI archives (config.CARD_IMAGES): each is
imported with containerd's own `ctr images import` into the k8s.io namespace, which the CRI
plugin serves to the kubelet and crictl, and checked against the digest the build recorded, so
such a node pulls nothing.
"""

from __future__ import annotations

from agent.config import CARD_IMAGES, CardImage, NodeConfig, load_card_images
from agent.host import Backoff, CommandFailed, Host, say
from agent.state import State

CRI_ENDPOINT = "unix:///var/run/containerd/containerd.sock"
"""containerd's CRI socket, as kubeadm.yaml's criSocket names it."""
NAMESPACE = "k8s.io"
"""containerd's namespace for the CRI plugin's images (its default `namespace` setting)."""
PLATFORM = "linux/arm64"
PULL_TIMEOUT_S = 1800
WAITING_IMAGES = "waiting: images"


def ensure_images(host: Host, config: NodeConfig, state: State) -> None:
    """Returns once every listed image is present; until then, retries with backoff, recording
    which image failed and why."""
    card = {image.reference: image for image in load_card_images(host.path(CARD_IMAGES))}
    backoff = Backoff(config.timing.retry_initial, config.timing.retry_max)
    while True:
        try:
            _ensure_each(host, config, card, state)
            return
        except CommandFailed as error:
            failed = len(state.images)
            reason = f"{_verb(config.images[failed], card)} {config.images[failed]}: {error.summary}"
            state.enter(host, WAITING_IMAGES, reason)
            say(f"{WAITING_IMAGES} ({failed}/{len(config.images)} present; {reason})")
            host.sleep(backoff.next())


def _ensure_each(host: Host, config: NodeConfig, card: dict[str, CardImage], state: State) -> None:
    state.images = []
    for index, image in enumerate(config.images, 1):
        if _present(host, image):
            state.images.append({"image": image, "status": "present"})
            continue
        verb = _verb(image, card)
        state.enter(host, f"{verb}: images ({index}/{len(config.images)})", state.last_error)
        if image in card:
            _import(host, card[image])
            state.images.append({"image": image, "status": "imported", "digest": card[image].digest})
        else:
            host.run(_crictl("pull", image), timeout=PULL_TIMEOUT_S)
            state.images.append({"image": image, "status": "pulled"})
    state.save(host)


def _verb(image: str, card: dict[str, CardImage]) -> str:
    return "importing" if image in card else "pulling"


def _import(host: Host, image: CardImage) -> None:
    """Import the card's archive, then check that containerd holds the digest the build
    recorded: a card damaged since is not run from."""
    archive = str(host.path(CARD_IMAGES / image.archive))
    host.run([*_ctr("import", "--platform", PLATFORM), archive], timeout=PULL_TIMEOUT_S)
    listed = host.run([*_ctr("ls"), f"name=={image.reference}"], changes=False, timeout=60)
    digests = [row.split()[2] for row in listed.splitlines()[1:] if row.split()[:1] == [image.reference]]
    if digests != [image.digest]:
        found = digests[0] if digests else "nothing"
        raise CommandFailed(
            ["ctr", "images", "import", archive],
            1,
            f"containerd holds {found} for {image.reference}, the card's index says {image.digest}: "
            "the card is damaged; build the node's image again (picluster build) and flash it",
        )


def _present(host: Host, image: str) -> bool:
    """crictl inspecti exits non-zero for an image the runtime does not have."""
    try:
        host.run(_crictl("inspecti", "-q", image), changes=False, timeout=60)
    except CommandFailed:
        return False
    return True


def _ctr(*arguments: str) -> list[str]:
    return ["ctr", "--namespace", NAMESPACE, "images", *arguments]


def _crictl(*arguments: str) -> list[str]:
    return ["crictl", "--runtime-endpoint", CRI_ENDPOINT, *arguments]
