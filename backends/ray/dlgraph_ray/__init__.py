"""dlgraph on Ray, for when one machine is not enough.

* ``dlgraph sweep CONFIG --grid section.key=v1,v2 --seeds 0 1 2``: every combination a training
  run on Ray (`dlgraph_ray.sweep`);
* ``Engine(backend, rpm=R, shared_limit=SharedLimit("key"))``: engines in any process share
  one endpoint's rate limit through a named actor (`dlgraph_ray.limit`);
* ``dg.connect("ray", backend="llamacpp", replicas=N)``: a pool of model replicas, each a Ray
  actor hosting an installed backend (`dlgraph_ray.replicas`).

Ray is imported when one of these is first used, not when ``dlgraph`` finds the plugin's
command, so that ``dlgraph train`` does not pay for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dlgraph_ray.limit import LimitKeeper, SharedLimit
    from dlgraph_ray.replicas import ReplicaPool, pool

__all__ = ["LimitKeeper", "ReplicaPool", "SharedLimit", "pool"]
_HOMES = {
    "LimitKeeper": "limit",
    "SharedLimit": "limit",
    "ReplicaPool": "replicas",
    "pool": "replicas",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'dlgraph_ray' has no attribute {name!r}")
    return getattr(importlib.import_module(f"dlgraph_ray.{_HOMES[name]}"), name)
