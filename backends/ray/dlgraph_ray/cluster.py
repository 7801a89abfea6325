"""Joining Ray, and awaiting its results from any event loop."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import anyio
import ray
import sniffio

NAMESPACE = "dlgraph"
"""Named actors (shared limits) live here, so that every job on a cluster finds them."""


def join(address: str | None = None) -> bool:
    """Connect to Ray: the cluster at `address`, else ``RAY_ADDRESS`` or a Ray started on this
    machine with ``ray start``, else a new local one in process. True when this call started
    or joined it (and so should shut it down)."""
    if ray.is_initialized():
        return False
    ray.init(
        address=address,
        namespace=NAMESPACE,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    return True


async def resolve(ref: Any) -> Any:
    """The value of an object ref, without blocking the event loop."""
    if sniffio.current_async_library() == "asyncio":
        return await asyncio.wrap_future(ref.future())
    return await anyio.to_thread.run_sync(ray.get, ref, abandon_on_cancel=True)
