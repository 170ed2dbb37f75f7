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

A card built with `images: card` carries them as OCI archives (config.CARD_IMAGES). They are
imported first, before the packages are installed, since that needs nothing but containerd,
which every base carries: with containerd's own `ctr images import` into the k8s.io namespace,
which the CRI plugin serves to the kubelet and crictl, each checked against the digest the build
recorded. Such a node pulls nothing.
"""

from __future__ import annotations

from collections.abc import Callable

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


def import_card_images(host: Host, config: NodeConfig, state: State) -> None:
    """Returns once every image the card carries is in containerd with the recorded digest;
    until then, retries with backoff, recording which image failed and why."""
    card = {image.reference: image for image in load_card_images(host.path(CARD_IMAGES))}
    carried = [image for image in config.images if image in card]  # in the order kubeadm lists them
    _until_done(host, config, state, "importing", carried, lambda image: _import(host, card[image]))


def ensure_images(host: Host, config: NodeConfig, state: State) -> None:
    """Returns once every listed image the card does not carry is present; until then,
    retries with backoff, recording which image failed and why."""
    carried = {image.reference for image in load_card_images(host.path(CARD_IMAGES))}
    wanted = [image for image in config.images if image not in carried]
    _until_done(host, config, state, "pulling", wanted, lambda image: _pull(host, image))


def _until_done(host: Host, config: NodeConfig, state: State, verb: str, images: list[str],
                fetch: Callable[[str], dict[str, str]]) -> None:  # fmt: skip
    backoff = Backoff(config.timing.retry_initial, config.timing.retry_max)
    done = [entry for entry in state.images if entry["image"] not in images]  # the other step's
    while True:
        state.images = list(done)
        for index, image in enumerate(images, 1):
            try:
                state.enter(host, f"{verb}: images ({index}/{len(images)})", state.last_error)
                state.images.append({"image": image, **fetch(image)})
            except CommandFailed as error:
                reason = f"{verb} {image}: {error.summary}"
                state.enter(host, WAITING_IMAGES, reason)
                delay = backoff.next()
                say(f"{WAITING_IMAGES} ({reason}); retrying in {delay:.0f} s")
                host.sleep(delay)
                break
        else:
            state.save(host)
            return


def _pull(host: Host, image: str) -> dict[str, str]:
    if _present(host, image):
        return {"status": "present"}
    host.run(_crictl("pull", image), timeout=PULL_TIMEOUT_S)
    return {"status": "pulled"}


def _import(host: Host, image: CardImage) -> dict[str, str]:
    """Import the card's archive unless containerd holds it already, then check that containerd
    holds the digest the build recorded: a card damaged since is not run from."""
    if _held_digests(host, image.reference) == [image.digest]:
        return {"status": "present", "digest": image.digest}
    archive = str(host.path(CARD_IMAGES / image.archive))
    host.run([*_ctr("import", "--platform", PLATFORM), archive], timeout=PULL_TIMEOUT_S)
    held = _held_digests(host, image.reference)
    if held != [image.digest]:
        raise CommandFailed(
            ["ctr", "images", "import", archive],
            1,
            f"containerd holds {held[0] if held else 'nothing'} for {image.reference}, the card's index "
            f"says {image.digest}: the card is damaged; build the node's image again (picluster build) "
            "and flash it",
        )
    return {"status": "imported", "digest": image.digest}


def _held_digests(host: Host, reference: str) -> list[str]:
    listed = host.run([*_ctr("ls"), f"name=={reference}"], changes=False, timeout=60)
    return [row.split()[2] for row in listed.splitlines()[1:] if row.split()[:1] == [reference]]


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
