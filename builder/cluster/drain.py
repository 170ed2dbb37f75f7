"""Draining a node before its kubelet is upgraded, as `kubectl drain --ignore-daemonsets
--delete-emptydir-data` does (staging/src/k8s.io/kubectl/pkg/drain/drain.go, filters.go): cordon
it, then evict every pod on it but those of a DaemonSet (their controller puts them back at once)
and mirror pods (the kubelet's static pods, which no eviction removes), and wait until they are
gone; a disruption budget that refuses an eviction (429) is asked again until the deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from builder.cluster import api

MIRROR = "kubernetes.io/config.mirror"
POLL_S = 2.0


class Stuck(Exception):
    """Pods still on the node at the deadline; the message names them."""


def evictable(pod: dict[str, Any]) -> bool:
    metadata = pod.get("metadata") or {}
    if MIRROR in (metadata.get("annotations") or {}):
        return False
    if any(owner.get("kind") == "DaemonSet" for owner in metadata.get("ownerReferences") or []):
        return False
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def drain(
    server: api.ClusterAPI, node: str, deadline_s: float, sleep: Callable[[float], None] = time.sleep
) -> int:
    """Cordon `node` and evict its pods; the number evicted. Raises Stuck at the deadline."""
    api.set_unschedulable(server, node, True)
    end = time.monotonic() + deadline_s
    evicted: set[str] = set()
    while True:
        left = [pod for pod in api.pods_on(server, node) if evictable(pod)]
        if not left:
            return len(evicted)
        refused = []
        for pod in left:
            namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            if api.evict(server, namespace, name):
                evicted.add(f"{namespace}/{name}")
            else:
                refused.append(f"{namespace}/{name}")
        if time.monotonic() > end:
            names = ", ".join(f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in left)
            why = f" (a disruption budget refuses {', '.join(refused)})" if refused else ""
            raise Stuck(f"pods still on {node} after {deadline_s:g} s: {names}{why}")
        sleep(POLL_S)
