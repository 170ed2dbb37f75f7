"""Waiting for the cluster's API server: https://<endpoint>/readyz, trusting only the cluster CA."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import requests

from agent.host import Backoff


class NotReady(Exception):
    pass


def check_ready(endpoint: str, ca_file: Path) -> None:
    """One probe; raises NotReady with the reason. verify= pins TLS to the cluster CA alone."""
    url = f"https://{endpoint}/readyz"
    try:
        response = requests.get(url, verify=str(ca_file), timeout=5)
    except requests.exceptions.SSLError as error:
        raise NotReady(f"{url}: TLS refused (not signed by the cluster CA?): {error}") from None
    except requests.exceptions.RequestException as error:
        raise NotReady(f"{url}: {type(error).__name__}: {error}") from None
    if response.status_code != 200:
        raise NotReady(f"{url} answered {response.status_code}: {response.text.strip()[:200]}")


def wait_until_ready(
    endpoint: str,
    ca_file: Path,
    backoff: Backoff,
    *,
    sleep: Callable[[float], None] = time.sleep,
    on_wait: Callable[[str], None] = lambda reason: None,
    give_up_after: float | None = None,
) -> None:
    """Probe until the API server is ready, sleeping with backoff between probes; raises
    NotReady with the last reason once `give_up_after` seconds have passed (None: never)."""
    start = time.monotonic()
    while True:
        try:
            check_ready(endpoint, ca_file)
            return
        except NotReady as reason:
            if give_up_after is not None and time.monotonic() - start >= give_up_after:
                raise
            on_wait(str(reason))
        sleep(backoff.next())
