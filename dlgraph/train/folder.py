"""The output folder of ``dlgraph train``: the files a run writes there, and nothing else
that it ever deletes.

The folder is recognisably dlgraph's by its manifest (`dlgraph._files.MANIFEST`), which lists
the run's files. A new run deletes the files the manifest lists (never a folder tree); a
resumed one deletes only ``result.json`` (whose presence means the run finished), and only
once its first new step is saved, so that a resume refused or failing before then leaves the
finished run whole; it keeps the ledger journals so that its totals and budget count every
call of the run. Either is refused, naming them, where files dlgraph did not write stand at a
run's names or in its ``checkpoint`` folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from dlgraph._files import MANIFEST, prepare_folder
from dlgraph.errors import ConfigError
from dlgraph.train.checkpoint import BEST_FILENAME, FILENAME

RESULT = "result.json"
BEFORE = "before.json"
STEPS = "steps.jsonl"
NETWORK = "network.json"
CHECKPOINT = "checkpoint"
ENGINES = ("forward", "backward")


def journal_name(engine: str) -> str:
    """The ledger journal of the run's `engine` ("forward" or "backward")."""
    return f"ledger-{engine}.jsonl"


RUN_FILES = frozenset(
    {RESULT, BEFORE, STEPS, NETWORK, f"{CHECKPOINT}/{FILENAME}", f"{CHECKPOINT}/{BEST_FILENAME}"}
    | {journal_name(engine) for engine in ENGINES}
)


@attrs.frozen
class RunFolder:
    """Where one training run writes; `open` is the only way to get one."""

    path: Path

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, resume: bool) -> RunFolder:
        """Check the folder and claim it for a run (ConfigError names foreign files); a new
        run clears the last run's files, a resumed one keeps them (`past_result` removes its
        result once it has moved on)."""
        folder = Path(path)
        try:
            prepare_folder(
                folder,
                "run",
                RUN_FILES,
                writes=RUN_FILES,
                deletes=set() if resume else RUN_FILES,
            )
        except ConfigError as error:
            if _is_an_older_run(folder):
                raise ConfigError(
                    f"{error} (they look like a run of a dlgraph from before run folders listed "
                    f"their files in {MANIFEST}: delete them to start afresh)"
                ) from None
            raise
        return cls(folder)

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def steps(self) -> Path:
        return self.path / STEPS

    @property
    def result(self) -> Path:
        return self.path / RESULT

    @property
    def before(self) -> Path:
        """The network's scores before training, kept so that a resumed run does not
        score them again."""
        return self.path / BEFORE

    @property
    def network(self) -> Path:
        return self.path / NETWORK

    def past_result(self) -> None:
        """The run has saved a step its result does not hold: remove ``result.json``, which
        would claim the run finished."""
        self.result.unlink(missing_ok=True)

    def journal(self, engine: str) -> Path:
        """Where `engine`'s calls are recorded as they are sent: a resumed run counts the
        calls of the processes before it, a new run starts from none."""
        return self.path / journal_name(engine)


def _is_an_older_run(folder: Path) -> bool:
    """A folder without a manifest whose checkpoint starts as dlgraph's do (a hint for the
    error only: it is never taken as leave to delete anything)."""
    checkpoint = folder / CHECKPOINT / FILENAME
    if (folder / MANIFEST).exists() or not checkpoint.is_file():
        return False
    with checkpoint.open("rb") as stream:
        return stream.read(64).startswith(b'{"format": "dlgraph.checkpoint"')
