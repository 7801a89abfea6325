"""Atomic file writes: a reader sees the old file or the new one, never half of one.

A write goes to a temporary file beside its target, named ``.NAME.XXXXXXXX.dlgraph-tmp``,
and is renamed over the target. A process killed between the write and the rename leaves that
temporary behind; no reader ever opens one (readers open their target by name), and
`remove_stale_temporaries` deletes exactly the files that match the pattern and nothing that
merely resembles it (a user's ``.steps.jsonl.orig`` stays).
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from collections.abc import Collection
from pathlib import Path

from dlgraph.errors import ConfigError

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


MANIFEST = "dlgraph-files.json"
"""Lists the files dlgraph wrote in a folder: the only ones it will ever delete there."""
MANIFEST_FORMAT = "dlgraph.files"
MANIFEST_VERSION = 1
MANIFEST_MAX_BYTES = 64 * 1024
FOREIGN_SHOWN = 5
"""How many foreign files an error names (it says how many more there are)."""


def prepare_folder(
    folder: Path,
    kind: str,
    names: Collection[str],
    *,
    writes: Collection[str],
    deletes: Collection[str] = (),
) -> None:
    """Make `folder` a dlgraph folder of `kind` whose files may be `names` (relative paths;
    a name's parent folder, such as ``checkpoint``, is dlgraph's whole).

    Refused with ConfigError, before anything is touched: `folder` being a file, a manifest
    that is not one of ours or lists a name outside `names`, and any file that stands at one
    of `names` (or inside one of their folders) that the manifest does not list: dlgraph did
    not write it. Then the manifest is written listing `writes` and what it listed before,
    the listed files among `deletes` are deleted (files only, never a folder tree) and the
    temporaries killed writers left beside `names` and the manifest are removed.
    """
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: is a file; a {kind} needs a folder")
    owned = _manifest(folder, kind, names)
    foreign = _foreign(folder, names, owned)
    if foreign:
        shown = ", ".join(_shown(name) for name in foreign[:FOREIGN_SHOWN])
        more = f" and {len(foreign) - FOREIGN_SHOWN} more" if len(foreign) > FOREIGN_SHOWN else ""
        raise ConfigError(
            f"{folder}: files dlgraph did not write stand where a {kind} writes: "
            f"{shown}{more}; move them or choose another folder"
        )
    document = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "kind": kind,
        "files": sorted(owned | set(writes)),
    }
    write_atomic(folder / MANIFEST, json.dumps(document, indent=2) + "\n")
    for name in sorted(owned & set(deletes)):
        (folder / name).unlink(missing_ok=True)
    for name in (MANIFEST, *names):
        remove_stale_temporaries(folder / name)


def _manifest(folder: Path, kind: str, names: Collection[str]) -> set[str]:
    """The names the folder's manifest lists (none without one); it is untrusted: only a
    manifest of ours naming nothing outside `names` is believed."""
    path = folder / MANIFEST
    if not path.exists():
        return set()
    try:
        if path.stat().st_size > MANIFEST_MAX_BYTES:
            raise ValueError(f"larger than {MANIFEST_MAX_BYTES} bytes")
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigError(f"{path}: not a dlgraph manifest ({error})") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: not a dlgraph manifest")
    files = document.get("files")
    if (
        document.get("format") != MANIFEST_FORMAT
        or document.get("version") != MANIFEST_VERSION
        or not isinstance(files, list)
        or not all(isinstance(name, str) for name in files)
    ):
        raise ConfigError(f"{path}: not a dlgraph manifest")
    strange = [name for name in files if name not in names]
    if strange:
        raise ConfigError(
            f"{path}: lists {_shown(strange[0])}, which a {kind} never writes; "
            "this folder belongs to something else"
        )
    return set(files)


def _foreign(folder: Path, names: Collection[str], owned: set[str]) -> list[str]:
    """Files at `names`, or inside their folders, that are not dlgraph's (at most a few
    more than an error shows, so that a huge folder costs no more than that)."""
    foreign = [
        name
        for name in sorted(names)
        if os.path.lexists(folder / name)
        and not (name in owned and stat.S_ISREG((folder / name).lstat().st_mode))
    ]
    for sub in sorted({Path(name).parent for name in names} - {Path(".")}):
        ours = {Path(name).name for name in names if Path(name).parent == sub}
        inside = folder / sub
        if os.path.lexists(inside) and not inside.is_dir():
            foreign.append(str(sub))
            continue
        if not inside.is_dir():
            continue
        with os.scandir(inside) as entries:
            for entry in entries:
                if len(foreign) > FOREIGN_SHOWN:
                    break
                name = f"{sub.as_posix()}/{entry.name}"
                if entry.name not in ours and not _is_temporary(entry.name, ours):
                    foreign.append(name)
    return sorted(foreign)


def _is_temporary(name: str, ours: Collection[str]) -> bool:
    return any(_temporary_pattern(mine).fullmatch(name) for mine in ours)


def _shown(name: str) -> str:
    """A file name as an error shows it: quoted if it holds anything unprintable, cut short."""
    text = name if name.isprintable() else repr(name)
    return text if len(text) <= 60 else text[:57] + "..."
