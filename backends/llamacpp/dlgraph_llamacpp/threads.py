"""How many threads llama.cpp should use: the cores this process may run on (its CPU
affinity), less the ones other processes keep busy.

llama.cpp's worker threads meet at a barrier after every operation; a thread sharing its core
with another busy process makes all of them wait for it (measured here: 54× slower with one of
two cores taken). `CoreWatch` reads /proc/stat for the allowed cores and this process's own CPU
time, so it sees how much of those cores other processes use, and the scheduler drops a
thread per core that is busy elsewhere, and takes it back when the core is free again.
"""

from __future__ import annotations

import os
import time

import attrs


def allowed_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _busy_ticks(cores: list[int]) -> int | None:
    """Busy clock ticks of the given cores since boot, or None where /proc/stat is missing."""
    try:
        with open("/proc/stat", encoding="ascii") as stream:
            lines = stream.readlines()
    except OSError:
        return None
    wanted = {f"cpu{core}" for core in cores}
    total = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
            total += user + nice + system + irq + softirq + steal
    return total


@attrs.define(eq=False)
class CoreWatch:
    """Recommends a thread count from what other processes used of our cores lately."""

    cores: list[int] = attrs.field(factory=allowed_cores)
    interval_s: float = 1.0
    _ticks_per_s: float = attrs.field(init=False, factory=lambda: float(os.sysconf("SC_CLK_TCK")))
    _last: tuple[float, int, float] | None = attrs.field(default=None, init=False)
    recommended: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.recommended = len(self.cores)

    def update(self) -> int:
        """Cheap to call often: it measures at most once per `interval_s`."""
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < self.interval_s:
            return self.recommended
        busy = _busy_ticks(self.cores)
        own = time.process_time()
        if busy is None:
            return self.recommended
        if self._last is not None:
            then, busy_then, own_then = self._last
            wall = now - then
            elsewhere = ((busy - busy_then) / self._ticks_per_s - (own - own_then)) / wall
            taken = int(elsewhere + 0.4)  # a core counts as taken when over 60% busy elsewhere
            self.recommended = max(1, len(self.cores) - taken)
        self._last = (now, busy, own)
        return self.recommended
