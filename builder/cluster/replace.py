"""`picluster replace NODE`: make way for a new card under a node's name.

kubeadm refuses to join a node while a Node of its name is Ready (cmd/kubeadm/app/cmd/phases/join/
kubelet.go), and a NotReady one would hand the new kubelet its stale labels and taints; so the Node
object goes. A control plane of an HA cluster is also an etcd member, which goes first
(builder.cluster.etcd). Nothing is changed until every refusal has had its say: a Ready node
without --dead, a single control plane (that is a restore from an etcd snapshot), an etcd member
that still answers or whose removal would cost etcd its quorum. The cluster's only control plane
is not replaced but restored: its etcd went with it, so its next card restores the newest etcd
snapshot the state folder holds (`restore_only_control_plane`). The first control plane of an HA
cluster may be replaced too: from then on its card joins as the others do (`kubeadm init` again
would start a second cluster with the same CA), which the token record keeps
(builder.secrets.tokens.Tokens.first_joins).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from builder.cluster import api, etcd, status
from builder.errors import UserError
from builder.secrets import snapshot
from builder.secrets.pki import ClusterSecrets
from builder.spec.model import Cluster, Node


def replace_node(
    cluster: Cluster,
    secrets: ClusterSecrets,
    name: str,
    dead: bool,
    connect: api.Connect = api.connect,
    connect_etcd: api.Connect = api.connect_etcd,
    say: Callable[[str], None] = lambda text: None,
    answered: Callable[[], None] = lambda: None,
) -> None:
    """`answered`: called once the API server has answered, before anything is changed: the
    cluster exists, so a first control plane's card must never run `kubeadm init` again, even if
    this run is killed between removing its etcd member and recording its new token."""
    node, others = check_replaceable(cluster, name)
    try:
        with connect(cluster.api_endpoint, secrets) as server:
            item = api.get_node(server, name)
            answered()
            _check_dead(item, name, dead)
            if node.role == "control-plane":
                say(
                    etcd.remove_member(
                        secrets, name, [str(plane.address.ip) for plane in others], connect_etcd
                    )
                )
            api.delete_node(server, name)
    except api.Unreachable as why:
        raise UserError(
            f"cannot reach the API server: {why}", f"run it where https://{cluster.api_endpoint} is reachable"
        ) from None
    say(
        f"deleted Node {name} from the cluster"
        if item
        else f"the cluster has no Node {name}; nothing to delete"
    )


def check_replaceable(cluster: Cluster, name: str) -> tuple[Node, list[Node]]:
    """The refusals cluster.yaml alone settles, before anything is asked or changed: the node and
    the other control planes."""
    node = next((node for node in cluster.nodes if node.name == name), None)
    if node is None:
        raise UserError(
            f"{name} is not a node of this cluster.yaml",
            f"choose from {', '.join(node.name for node in cluster.nodes)}",
        )
    return node, [plane for plane in cluster.control_planes if plane.name != name]


def restore_only_control_plane(
    cluster: Cluster, secrets: ClusterSecrets, name: str, state_dir: Path, connect: api.Connect = api.connect
) -> snapshot.Snapshot:
    """Make the only control plane's next cards restore the state folder's etcd snapshot; refused
    without one, and while the API server answers (the card is not dead: restoring would roll
    the running cluster back). The snapshot, as recorded."""
    taken = snapshot.load(state_dir)
    if taken is None:
        raise UserError(
            f"{name} is the cluster's only control plane: with it went etcd, the cluster's whole state, "
            f"and {state_dir} holds no etcd snapshot to restore it from",
            "restore a backup that holds one (picluster restore FILE, into an empty state folder); "
            "without one the cluster is lost: build a new one",
        )
    snapshot.data(state_dir, taken)  # damaged: refused before anything is recorded
    try:
        with connect(cluster.api_endpoint, secrets) as server:
            api.get_node(server, name)
    except api.Unreachable:
        return snapshot.mark_restore(state_dir, taken)
    raise UserError(
        f"the API server at https://{cluster.api_endpoint} answers: {name} is running, and restoring "
        f"its etcd from the snapshot {taken.describe()} would roll the cluster back; nothing was changed",
        f"power the old {name} off (or take it off the network) first, then run this again",
    )


def _check_dead(item: object, name: str, dead: bool) -> None:
    if item is not None and status.node_ready(item) == "True" and not dead:
        raise UserError(
            f"Node {name} is Ready: its card is running, or died less than a minute ago; nothing was changed",
            f"power the old {name} off and wait for it to become NotReady, or, if you know it is dead, "
            f"add --dead: picluster replace {name} --dead",
        )
