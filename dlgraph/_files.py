"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename it over `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(path: str | os.PathLike[str]) -> None:
    """Delete temporary files `write_atomic` left beside `path` when a process was killed
    mid-write (``.NAME.xxxxxxxx``); call only where no other writer of `path` runs."""
    target = Path(path)
    if target.parent.is_dir():
        for leftover in target.parent.glob(f".{target.name}.*"):
            leftover.unlink(missing_ok=True)
