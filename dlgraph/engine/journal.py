"""The ledger's journal: every charge appended to a file as it happens, so that what a run
spent survives ``kill -9`` and counts in its totals and budget when it resumes.

The file is JSON lines. The first is a header naming the format and the counters; every
other line is one charge to one (node, phase): ``[node, phase, calls, http_requests, ...]``,
the counters in the header's order. A call is charged when it is sent (a call in flight when
the process dies was paid for) and its tokens, errors and retries when they are known.

Cost per charge: one ``write`` of a few dozen bytes on a descriptor opened with ``O_APPEND``,
no fsync. What a process wrote is in the kernel when ``write`` returns, and ``kill -9`` does
not lose it (a machine crash may lose the last moments; a checkpoint is fsynced, a call
record is not, since an fsync per call would cost more than the call's whole engine path).
A kill can leave only the last line cut short; opening a journal drops such a tail (it
truncates the file to its last whole line) so that new lines never join it. Any other
damage, or a file that is not a journal, is refused with CheckpointError naming the file
and line, and the file is left as it was.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Mapping
from pathlib import Path

import attrs

from dlgraph._files import write_atomic
from dlgraph.engine.usage import COUNTERS, LedgerSnapshot, Usage
from dlgraph.errors import CheckpointError

FORMAT = "dlgraph.ledger"
VERSION = 1
MAX_LINE_BYTES = 64 * 1024
"""A charge line is far shorter (node names are short); a longer one is not ours."""
MAX_COUNT = 2**53
Counts = dict[tuple[str, str], collections.Counter[str]]


def _header() -> str:
    return json.dumps({"format": FORMAT, "version": VERSION, "counters": list(COUNTERS)}) + "\n"


@attrs.define(eq=False)
class Journal:
    """An open journal: `record` appends charges; `counts` is what it held when opened."""

    path: Path
    counts: Counts
    """Per (node, phase), what earlier processes charged."""
    _descriptor: int | None
    _prefixes: dict[tuple[str, str], str] = attrs.field(factory=dict, init=False)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Journal:
        """Open `path` for appending, creating it with its header; blocking (file I/O)."""
        journal_path = Path(path)
        if journal_path.is_dir():
            raise CheckpointError(f"{journal_path}: is a folder; a ledger journal is a file")
        if not journal_path.exists():
            write_atomic(journal_path, _header())  # a journal appears whole, header and all
        counts, whole_bytes = _read(journal_path)
        try:
            descriptor = os.open(journal_path, os.O_WRONLY | os.O_APPEND)
            if os.fstat(descriptor).st_size > whole_bytes:
                os.ftruncate(descriptor, whole_bytes)  # the line a kill cut short
        except OSError as error:
            raise CheckpointError(f"{journal_path}: cannot append ({error.strerror})") from None
        return cls(journal_path, counts, descriptor)

    def record(self, charges: list[tuple[str, str, Mapping[str, int]]]) -> None:
        """Append one line per (node, phase, counts), in one write."""
        if self._descriptor is None:
            raise CheckpointError(f"{self.path}: the journal is closed")
        lines = []
        for node, phase, counts in charges:
            prefix = self._prefixes.get((node, phase))
            if prefix is None:
                prefix = self._prefixes[(node, phase)] = json.dumps([node, phase])[:-1]
            lines.append(f"{prefix},{','.join(str(counts.get(n, 0)) for n in COUNTERS)}]\n")
        try:
            os.write(self._descriptor, "".join(lines).encode())
        except OSError as error:
            raise CheckpointError(f"{self.path}: cannot record a call ({error.strerror})") from None

    def close(self) -> None:
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is not None:
            os.close(descriptor)


def read_journal(path: str | os.PathLike[str]) -> LedgerSnapshot:
    """What a journal holds, as a ledger snapshot (no cost: prices are the engine's)."""
    counts, _ = _read(Path(path))
    return LedgerSnapshot(
        {
            key: Usage(**{name: counter[name] for name in COUNTERS})
            for key, counter in counts.items()
        }
    )


def _read(path: Path) -> tuple[Counts, int]:
    """Per (node, phase) totals, and how many bytes the whole lines take."""
    counts: Counts = collections.defaultdict(collections.Counter)
    whole = 0
    try:
        with path.open("rb") as stream:
            number = 0
            while line := stream.readline(MAX_LINE_BYTES + 1):
                number += 1
                if not line.endswith(b"\n"):
                    if stream.read(1):
                        raise CheckpointError(
                            f"{path}:{number}: a line longer than {MAX_LINE_BYTES} bytes; "
                            "the ledger journal is damaged"
                        )
                    break  # the last line, cut short by a kill: dropped
                if number == 1:
                    _check_header(path, line)
                else:
                    node, phase, values = _charge(path, number, line)
                    counter = counts[(node, phase)]
                    for name, value in zip(COUNTERS, values, strict=True):
                        counter[name] += value
                whole += len(line)
    except OSError as error:
        raise CheckpointError(
            f"{path}: cannot read the ledger journal ({error.strerror})"
        ) from None
    if whole == 0:
        raise CheckpointError(f"{path}: not a dlgraph ledger journal (no header line)")
    return counts, whole


def _check_header(path: Path, line: bytes) -> None:
    try:
        header = json.loads(line)
    except ValueError:
        header = None
    if not (
        isinstance(header, dict)
        and header.get("format") == FORMAT
        and header.get("version") == VERSION
        and header.get("counters") == list(COUNTERS)
    ):
        raise CheckpointError(f"{path}: not a dlgraph ledger journal (line 1 is no header)")


def _charge(path: Path, number: int, line: bytes) -> tuple[str, str, list[int]]:
    try:
        entry = json.loads(line)
    except ValueError:
        entry = None
    if (
        isinstance(entry, list)
        and len(entry) == 2 + len(COUNTERS)
        and all(isinstance(text, str) for text in entry[:2])
        and all(
            type(value) is int and 0 <= value < MAX_COUNT  # noqa: E721 (a bool is no count)
            for value in entry[2:]
        )
    ):
        return entry[0], entry[1], entry[2:]
    raise CheckpointError(
        f"{path}:{number}: not a charge [node, phase, {len(COUNTERS)} counts]; "
        "the ledger journal is damaged"
    )
