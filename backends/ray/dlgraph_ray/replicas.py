"""A pool of model replicas: each a Ray actor hosting an installed backend, one backend to
the engine.

    dg.connect("ray", backend="llamacpp", replicas=2, num_cpus=1, threads=1)

A call goes to the replica with the fewest calls in flight. A replica that dies (its process
killed, its node lost) is replaced by a new actor, and the calls it held are sent again to
the least-loaded replica, so no call is lost; the engine above sees only the answers. The pool
forwards one thing: the engine's unit of work (`Backend.handle`), answered by the replica's
backend with its usage (tokens, server limits) or with its error, which carries its own.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import attrs
import ray
from ray.exceptions import RayActorError

import dlgraph as dg
from dlgraph import plugin
from dlgraph_ray.cluster import check_address, join, resolve

logger = logging.getLogger(__name__)


class Replica:
    """One backend in its own process (the state of an async Ray actor)."""

    def __init__(self, backend: str, options: dict[str, Any]) -> None:
        self.backend = dg.connect(backend, **options)
        self.opened = False
        self.lock = anyio.Lock()

    async def describe(self) -> tuple[str, dg.Capabilities]:
        return self.backend.identity, self.backend.capabilities

    async def handle(self, work: plugin.Work) -> dg.Answer[Any] | dg.BackendError:
        """The backend's answer with its usage, or its error (sent back as a value: the
        engine retries by its type)."""
        async with self.lock:
            if not self.opened:
                await self.backend.__aenter__()
                self.opened = True
        try:
            return await self.backend.handle(work)
        except dg.BackendError as error:
            return error

    async def close(self) -> None:
        if self.opened:
            await self.backend.aclose()


@attrs.define(eq=False)
class _Slot:
    actor: Any
    in_flight: int = 0


def _positive(name: str, value: object, whole: bool = False) -> None:
    """A count of at least 1 (`whole`) or a number of at least 0, by the core's checks."""
    try:
        if whole:
            plugin.check_int(name, value, 1)
        else:
            plugin.check_number(name, value, 0)
    except (TypeError, ValueError):
        least = "an integer >= 1" if whole else "a number >= 0"
        raise ValueError(f"{name}: expected {least}, got {value!r}") from None


def pool(
    backend: str,
    *,
    replicas: int = 1,
    num_cpus: float = 1,
    num_gpus: float = 0,
    address: str | None = None,
    max_attempts: int = 4,
    **options: Any,
) -> ReplicaPool:
    """``dg.connect("ray", backend=..., replicas=N, **options)``: the options the pool does
    not take are the hosted backend's."""
    return ReplicaPool(
        backend,
        replicas=replicas,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        address=address,
        max_attempts=max_attempts,
        options=options,
    )


def check_pool(
    backend: str,
    *,
    replicas: int = 1,
    num_cpus: float = 1,
    num_gpus: float = 0,
    address: str | None = None,
    max_attempts: int = 4,
    **options: Any,
) -> None:
    """Every check `pool` makes before it starts Ray or a replica (a config's check, with
    ``[backend] name = "ray"``: `BackendRegistry.check`); raises what `pool` would. The
    pool's own options, then the hosted backend's: it is built here, not entered (no model
    loaded, no connection made), so that a bad option is refused naming it rather than by
    each replica as it starts."""
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected the name of an installed backend, got {backend!r}")
    if backend == "ray":
        raise ValueError("backend: a replica cannot itself be a pool of replicas")
    known = dg.BackendRegistry.from_entry_points().names()
    if backend not in known:
        raise dg.UnknownBackend(f"unknown backend {backend!r} (known: {', '.join(known)})")
    _positive("replicas", replicas, whole=True)
    _positive("max_attempts", max_attempts, whole=True)
    _positive("num_cpus", num_cpus)
    _positive("num_gpus", num_gpus)
    check_address(address)
    try:
        dg.connect(backend, **options)
    except dg.DlgraphError:
        raise
    except TypeError as error:
        raise TypeError(f"{backend}: {error}") from error
    except ValueError as error:
        raise ValueError(f"{backend}: {error}") from error


pool.check = check_pool  # type: ignore[attr-defined]  # the factory's check, found by the core


@attrs.define(eq=False)
class ReplicaPool(dg.Backend):
    """`replicas` actors each running ``dg.connect(backend, **options)``, with `num_cpus` and
    `num_gpus` reserved per replica; `address` is a Ray cluster to join (default: the one
    running, ``RAY_ADDRESS``, or a new local one). `max_attempts` bounds how many replicas one
    call may outlive before it fails with BackendUnavailable."""

    backend: str
    replicas: int = attrs.field(default=1, kw_only=True)
    num_cpus: float = attrs.field(default=1, kw_only=True)
    num_gpus: float = attrs.field(default=0, kw_only=True)
    address: str | None = attrs.field(default=None, kw_only=True)
    max_attempts: int = attrs.field(default=4, kw_only=True)
    options: dict[str, Any] = attrs.field(factory=dict, kw_only=True)
    capabilities: dg.Capabilities = attrs.field(init=False)
    _identity: str = attrs.field(init=False)
    _slots: list[_Slot] = attrs.field(factory=list, init=False)
    replaced: int = attrs.field(default=0, init=False)
    """Replicas that died and were replaced."""

    def __attrs_post_init__(self) -> None:
        check_pool(
            self.backend,
            replicas=self.replicas,
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
            address=self.address,
            max_attempts=self.max_attempts,
            **self.options,
        )
        join(self.address)
        self._slots = [_Slot(self._spawn()) for _ in range(self.replicas)]
        try:
            identity, capabilities = ray.get(self._slots[0].actor.describe.remote())
        except RayActorError as error:
            self._kill_all()
            raise dg.BackendError(
                f"ray: replica of {self.backend!r} failed to start: {error}"
            ) from None
        each = capabilities.max_concurrency
        self.capabilities = attrs.evolve(
            capabilities, max_concurrency=None if each is None else each * self.replicas
        )
        self._identity = identity

    def _spawn(self) -> Any:
        return (
            ray.remote(Replica)
            .options(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_concurrency=1000)
            .remote(self.backend, self.options)
        )

    @property
    def identity(self) -> str:
        """The hosted backend's: replicas answer as it does, so caches are shared with it."""
        return self._identity

    def statistics(self) -> list[int]:
        """Calls in flight per replica."""
        return [slot.in_flight for slot in self._slots]

    def actors(self) -> list[Any]:
        return [slot.actor for slot in self._slots]

    async def handle(self, work: plugin.Work) -> dg.Answer[Any]:
        """The work sent whole to the least-loaded replica, and again to another if that one
        dies; the answer comes back with its usage."""
        for _ in range(self.max_attempts):
            slot = min(self._slots, key=lambda s: s.in_flight)
            slot.in_flight += 1
            try:
                answer = await resolve(slot.actor.handle.remote(work))
            except RayActorError as died:
                self._replace(slot, died)
                continue
            finally:
                slot.in_flight -= 1
            if isinstance(answer, dg.BackendError):
                raise answer
            return answer  # type: ignore[no-any-return]
        raise dg.BackendUnavailable(
            f"ray: {self.max_attempts} replicas of {self.backend!r} died under one call"
        )

    def _replace(self, slot: _Slot, died: BaseException) -> None:
        if slot not in self._slots:
            return  # replaced already, by another call that saw it die
        logger.warning("ray: replica of %r died (%s); starting another", self.backend, died)
        ray.kill(slot.actor, no_restart=True)
        self._slots[self._slots.index(slot)] = _Slot(self._spawn())
        self.replaced += 1

    def _kill_all(self) -> None:
        for slot in self._slots:
            ray.kill(slot.actor, no_restart=True)
        self._slots = []

    async def aclose(self) -> None:
        if self._slots:
            closing = [slot.actor.close.remote() for slot in self._slots]
            with anyio.CancelScope(shield=True):
                for ref in closing:
                    try:
                        await resolve(ref)
                    except RayActorError:
                        pass  # nothing left to close
            self._kill_all()
