"""Joining Ray, and awaiting its results from any event loop."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import anyio
import ray

from dlgraph.plugin import BackendUnavailable

NAMESPACE = "dlgraph"
"""Named actors (shared limits) live here, so that every job on a cluster finds them."""


def check_address(address: object) -> None:
    """`address` is None (the Ray running, ``RAY_ADDRESS``, or a new local one) or the text of
    a cluster's address; anything else is refused naming it, before Ray is asked."""
    if address is None:
        return
    if not isinstance(address, str):
        raise TypeError(
            f"address: expected a Ray address as text (such as 'HOST:6379' or 'auto'), "
            f"got {address!r}"
        )
    if not address.strip():
        raise ValueError("address: expected a Ray address (such as 'HOST:6379'), got ''")


def join(address: str | None = None) -> bool:
    """Connect to Ray: the cluster at `address`, else ``RAY_ADDRESS`` or a Ray started on this
    machine with ``ray start``, else a new local one in process. True when this call started
    or joined it (and so should shut it down). An address where nothing answers is refused
    within seconds (Ray itself would keep trying for minutes)."""
    check_address(address)
    if ray.is_initialized():
        return False
    if address is not None:
        _reachable(address)
    try:
        ray.init(
            address=address,
            namespace=NAMESPACE,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise BackendUnavailable(f"ray: cannot join {address or 'a local Ray'}: {error}") from None
    return True


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not port.isdigit():
        return  # "auto", "local" and the like: Ray resolves them
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise BackendUnavailable(f"ray: nothing answers at {address} ({error})") from None


async def resolve(ref: Any) -> Any:
    """The value of an object ref, without blocking the event loop."""
    if _on_asyncio():
        return await asyncio.wrap_future(ref.future())
    return await anyio.to_thread.run_sync(ray.get, ref, abandon_on_cancel=True)


def _on_asyncio() -> bool:
    """Whether the running event loop is asyncio's (under trio, asyncio has none)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
