"""Removing a dead control plane's member from the cluster's etcd, before its replacement joins.

A control plane of an HA cluster is an etcd member too (kubeadm's stacked etcd). A card that died
stays a member: a replacement joining under the same name would be a fourth member of a cluster
whose quorum then counts the dead one, and one more failure stops etcd. So the dead member goes
first (remove before add: etcd's FAQ, content/en/docs/v3.6/faq.md in etcd-io/website), which
needs a quorum of the members that are left.

picluster asks a surviving control plane's etcd itself, at host:2379, through the JSON gateway
etcd serves on its client port (the Cluster and Maintenance services' HTTP bindings,
`post: "/v3/cluster/member/list"` etc. in api/etcdserverpb/rpc.proto of etcd-io/etcd). kubeadm's
etcd wants a client certificate from its CA (--client-cert-auth, cmd/kubeadm/app/phases/etcd/
local.go), which picluster signs with the etcd CA from .picluster/ for the occasion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from builder.cluster import api
from builder.errors import UserError
from builder.secrets.pki import ClusterSecrets

CLIENT_PORT = 2379
MEMBERS = "/v3/cluster/member/list"
REMOVE = "/v3/cluster/member/remove"
STATUS = "/v3/maintenance/status"


@dataclass(frozen=True)
class Member:
    id: str
    """The member's uint64 id in decimal, as the gateway writes it."""
    name: str
    client_urls: tuple[str, ...]


def remove_member(
    secrets: ClusterSecrets, name: str, survivors: Sequence[str], connect: api.Connect = api.connect_etcd
) -> str:
    """Remove etcd member `name` through the first of the `survivors` (control planes' addresses)
    whose etcd answers; refuse while it answers itself, or when the members left could not make
    a quorum. What was done, in a sentence."""
    reasons = []
    for address in survivors:
        endpoint = f"{address}:{CLIENT_PORT}"
        try:
            with connect(endpoint, secrets) as etcd:
                return _remove(etcd, secrets, name, connect)
        except api.Unreachable as why:
            reasons.append(str(why))
    raise UserError(
        f"no other control plane's etcd answers, so {name}'s etcd member cannot be removed: "
        + "; ".join(reasons),
        "run it where the control planes are reachable, with the surviving ones powered on",
    )


def _remove(etcd: api.ClusterAPI, secrets: ClusterSecrets, name: str, connect: api.Connect) -> str:
    members = list_members(etcd)
    target = next((member for member in members if member.name == name), None)
    if target is None:
        return f"etcd has no member named {name} (already removed); nothing to remove"
    if len(members) == 1:
        raise UserError(
            f"{name} is the only member of the cluster's etcd: removing it would end the cluster",
            "restore the control plane from an etcd snapshot instead",
        )
    answering = {member.name for member in members if _answers(member, secrets, connect)}
    if name in answering:
        raise UserError(
            f"{name}'s etcd member still answers at {', '.join(target.client_urls)}: the old card is running",
            f"power the old {name} off (or take it off the network) first, then run this again",
        )
    left = [member for member in members if member is not target]
    quorum = len(left) // 2 + 1
    healthy = sorted(member.name for member in left if member.name in answering)
    if len(healthy) < quorum:
        raise UserError(
            f"removing {name} would leave {len(left)} etcd members of which only {len(healthy)} "
            f"answer{'s' if len(healthy) == 1 else ''} ({', '.join(healthy) or 'none'}); etcd needs "
            f"{quorum} to agree to anything",
            "bring the other dead control planes back first; with too few left, restore an etcd snapshot",
        )
    _post(etcd, REMOVE, {"ID": target.id})
    return f"removed {name}'s etcd member (id {int(target.id):x}); {', '.join(healthy)} remain"


def list_members(etcd: api.ClusterAPI) -> list[Member]:
    members = _post(etcd, MEMBERS, {}).get("members")
    if not isinstance(members, list):
        raise api.Unreachable(f"https://{etcd.endpoint}{MEMBERS}: the answer is not a list of members")
    try:
        return [
            Member(str(int(item["ID"])), item.get("name", ""), tuple(item.get("clientURLs", [])))
            for item in members
        ]
    except (TypeError, KeyError, ValueError, AttributeError):
        raise api.Unreachable(
            f"https://{etcd.endpoint}{MEMBERS}: a member is not as etcd writes one"
        ) from None


def _answers(member: Member, secrets: ClusterSecrets, connect: api.Connect) -> bool:
    """Whether the member's etcd answers at any of its client URLs (none: added, never started)."""
    for url in member.client_urls:
        try:
            with connect(urlsplit(url).netloc, secrets) as etcd:
                _post(etcd, STATUS, {})
            return True
        except api.Unreachable:
            continue
    return False


def _post(etcd: api.ClusterAPI, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = etcd.request("POST", path, body)
    try:
        answer = response.json()
    except ValueError:
        raise api.Unreachable(f"{response.url}: the answer is not JSON (not etcd?)") from None
    if response.status_code != 200 or not isinstance(answer, dict):
        said = (answer.get("error") or answer.get("message") if isinstance(answer, dict) else None) or ""
        raise UserError(
            f"etcd at {etcd.endpoint} refused {path}: {response.status_code} {said or response.text[:200]}",
            "check that .picluster/ belongs to this cluster",
        )
    return answer
