"""Atomic file writes: a reader sees the old file or the new one, never half of one.

A write goes to a temporary file beside its target, named ``.NAME.XXXXXXXX.dlgraph-tmp``,
and is renamed over the target. A process killed between the write and the rename leaves that
temporary behind; no reader ever opens one (readers open their target by name), and
`remove_stale_temporaries` deletes exactly the files that match the pattern and nothing that
merely resembles it (a user's ``.steps.jsonl.orig`` stays).
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path

TEMPORARY_SUFFIX = ".dlgraph-tmp"


def _temporary_pattern(name: str) -> re.Pattern[str]:
    """What `tempfile.mkstemp` makes of our prefix and suffix: eight characters between."""
    return re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}{re.escape(TEMPORARY_SUFFIX)}")


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename it over `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=TEMPORARY_SUFFIX, dir=target.parent
    )
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """The temporary files `write_atomic` left beside `path` (regular files matching its
    pattern exactly), in name order."""
    target = Path(path)
    if not target.parent.is_dir():
        return []
    pattern = _temporary_pattern(target.name)
    found = []
    for entry in target.parent.glob(f".{glob_escape(target.name)}.*{TEMPORARY_SUFFIX}"):
        try:
            regular = stat.S_ISREG(entry.lstat().st_mode)
        except FileNotFoundError:
            continue
        if regular and pattern.fullmatch(entry.name):
            found.append(entry)
    return sorted(found)


def remove_stale_temporaries(path: str | os.PathLike[str]) -> None:
    """Delete the temporary files `write_atomic` left beside `path` when a process was killed
    between writing and renaming; call only where no other writer of `path` runs."""
    for leftover in stale_temporaries(path):
        leftover.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    """`name` with glob's special characters matched literally."""
    return re.sub(r"([*?\[])", r"[\1]", name)
