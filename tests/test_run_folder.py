"""`dlgraph train` deletes nothing it did not write: its output folder is recognisably
dlgraph's (a manifest lists the run's files), and a run is refused where foreign files stand."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

import dlgraph as dg
from dlgraph._files import MANIFEST
from dlgraph.cli import main
from dlgraph.config import RunConfig
from dlgraph.runs import RunHooks, train_run
from dlgraph.train.folder import RUN_FILES, RunFolder

CONFIG = """
[backend]
name = "sim"

[data]
source = "generated"
task = "navigation"
train = 8
dev = 4
test = 4

[train]
steps = 1
batch_size = 2
num_prompt_samples = 1
num_hidden_samples = 1

[output]
dir = "out"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(CONFIG)
    return path


def train(config: Path, *options: str) -> int:
    return main(["train", str(config), "--no-probe", *options])


def files(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file()
    }


def one_error_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    return lines[0]


def test_a_run_into_a_project_folder_deletes_none_of_its_files_and_names_them(
    tmp_path, config, capsys
) -> None:
    project = tmp_path / "project"
    (project / "checkpoint").mkdir(parents=True)
    (project / "checkpoint" / "my_model.pt").write_bytes(b"weights")
    (project / "steps.jsonl").write_text("my notes\n")
    (project / "result.json").write_text('{"mine": true}\n')
    before = files(project)
    capsys.readouterr()
    assert train(config, "--set", f'output.dir="{project}"') == 2
    line = one_error_line(capsys.readouterr().out)
    assert "files dlgraph did not write stand where a run writes" in line
    assert "checkpoint/my_model.pt" in line and "steps.jsonl" in line and "result.json" in line
    assert "look like a run of a dlgraph" not in line  # no checkpoint of ours: no such hint
    assert files(project) == before


def test_a_resumed_run_also_refuses_a_folder_whose_result_dlgraph_did_not_write(
    tmp_path, config, capsys
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "result.json").write_text('{"mine": true}\n')
    assert train(config, "--out", str(project), "--resume") == 2
    assert "result.json" in one_error_line(capsys.readouterr().out)
    assert (project / "result.json").read_text() == '{"mine": true}\n'


def test_a_new_run_beside_other_files_keeps_them_and_lists_its_own(tmp_path, config) -> None:
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('hi')\n")
    (project / "notes.txt").write_text("todo\n")
    assert train(config, "--out", str(project)) == 0
    assert (project / "src" / "main.py").read_text() == "print('hi')\n"
    assert (project / "notes.txt").read_text() == "todo\n"
    manifest = json.loads((project / MANIFEST).read_text())
    assert {"result.json", "steps.jsonl", "checkpoint/checkpoint.json"} <= set(manifest["files"])
    assert "notes.txt" not in manifest["files"]


def test_a_new_run_replaces_the_last_runs_files_in_its_own_folder(tmp_path, config) -> None:
    assert train(config) == 0
    assert train(config, "--set", "train.steps=2") == 0
    steps = (tmp_path / "out" / "steps.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in steps] == [1, 2]


def test_a_file_put_in_the_checkpoint_folder_after_a_run_stops_the_next_one(
    tmp_path, config, capsys
) -> None:
    assert train(config) == 0
    notes = tmp_path / "out" / "checkpoint" / "notes.txt"
    notes.write_text("keep me\n")
    capsys.readouterr()
    assert train(config) == 2
    assert "checkpoint/notes.txt" in one_error_line(capsys.readouterr().out)
    assert notes.read_text() == "keep me\n"


@pytest.mark.parametrize(
    "listed",
    [["../victim.txt"], ["notes.txt"], "steps.jsonl", [3]],
    ids=["outside the folder", "a name a run never writes", "not a list", "not names"],
)
def test_a_manifest_naming_what_a_run_never_writes_is_refused_and_deletes_nothing(
    tmp_path, config, capsys, listed
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "victim.txt").write_text("precious\n")
    (out / "notes.txt").write_text("precious\n")
    manifest = {"format": "dlgraph.files", "version": 1, "kind": "run", "files": listed}
    (out / MANIFEST).write_text(json.dumps(manifest))
    capsys.readouterr()
    assert train(config) == 2
    assert f"{MANIFEST}: " in one_error_line(capsys.readouterr().out)
    assert (tmp_path / "victim.txt").read_text() == (out / "notes.txt").read_text() == "precious\n"


KILLED_BETWEEN_WRITE_AND_RENAME = """
import os, signal, sys
from dlgraph._files import write_atomic
os.replace = lambda *paths: os.kill(os.getpid(), signal.SIGKILL)
write_atomic(sys.argv[1], "half of a result")
"""


@pytest.mark.parametrize("name", ["result.json", MANIFEST])
def test_a_new_run_removes_the_temporary_a_kill_left_beside_its_files(
    tmp_path, config, name
) -> None:
    """Beside its result, or beside the manifest itself (a kill while the folder is opened)."""
    assert train(config) == 0
    target = tmp_path / "out" / name
    killed = subprocess.run([sys.executable, "-c", KILLED_BETWEEN_WRITE_AND_RENAME, str(target)])
    assert killed.returncode == -signal.SIGKILL
    (leftover,) = target.parent.glob(f".{name}.*")
    assert train(config) == 0
    assert not leftover.exists()
    assert json.loads((tmp_path / "out" / "result.json").read_text())["steps"] == 1


def test_a_run_folder_of_an_older_dlgraph_is_refused_with_a_hint_and_kept(
    tmp_path, config, capsys
) -> None:
    assert train(config) == 0
    (tmp_path / "out" / MANIFEST).unlink()  # as a dlgraph before manifests left its runs
    before = files(tmp_path / "out")
    capsys.readouterr()
    assert train(config) == 2
    line = one_error_line(capsys.readouterr().out)
    assert "checkpoint/checkpoint.json" in line and "look like a run of a dlgraph from" in line
    assert files(tmp_path / "out") == before


@pytest.mark.parametrize("engine", ["forward", "backward"])
def test_each_engines_journal_is_a_file_the_run_folder_owns(tmp_path: Path, engine: str) -> None:
    folder = RunFolder.open(tmp_path / "out", resume=False)
    journal = folder.journal(engine)
    assert journal.parent == tmp_path / "out"
    assert journal.name == f"ledger-{engine}.jsonl"
    assert journal.name in RUN_FILES  # a new run clears it, a resumed one keeps counting it


class Labels(RunHooks):
    """Records what a run evaluates."""

    def __init__(self) -> None:
        self.evaluated: list[str] = []

    @contextmanager
    def evaluating(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        self.evaluated.append(label)
        yield lambda done: None


async def test_a_resumed_run_does_not_score_the_network_before_training_again(config) -> None:
    """The scores before training are kept in the folder (before.json), as the checkpoint
    keeps the steps: the resumed process reports them without a call."""
    first, again = Labels(), Labels()
    done = await train_run(RunConfig.read(config), hooks=first)
    resumed = await train_run(RunConfig.read(config, ["train.steps=2"]), resume=True, hooks=again)
    assert first.evaluated == ["dev (before)", "test (before)", "dev (after)", "test (after)"]
    assert again.evaluated == ["dev (after)", "test (after)"]
    assert resumed.result.before == done.result.before
    assert [record.step for record in resumed.fit.history] == [1, 2]


async def test_a_new_run_scores_the_network_before_training_again(config) -> None:
    await train_run(RunConfig.read(config))
    again = Labels()
    await train_run(RunConfig.read(config), hooks=again)
    assert again.evaluated[:2] == ["dev (before)", "test (before)"]


JSONL = """
[backend]
name = "sim"

[data]
source = "jsonl"
train = "train.jsonl"
dev = "dev.jsonl"
test = "test.jsonl"
classes = ["yes|Yes", "no|No"]
instruction = "Does the word end with a vowel?"

[train]
steps = 1
batch_size = 2
num_prompt_samples = 1

[output]
dir = "out"
"""


def jsonl_run(folder: Path, test_words: Sequence[str]) -> Path:
    """A run of four examples per split whose test examples are `test_words`."""

    def write(name: str, words: Sequence[str]) -> None:
        lines = [
            json.dumps({"input": w, "target": "yes" if w[-1] in "aeiou" else "no"}) for w in words
        ]
        (folder / name).write_text("\n".join(lines) + "\n")

    write("train.jsonl", ["kata", "milk", "rope", "sand"])
    write("dev.jsonl", ["lima", "fork", "tide", "card"])
    write("test.jsonl", test_words)
    (folder / "run.toml").write_text(JSONL)
    return folder / "run.toml"


def test_a_resume_on_other_test_examples_of_the_same_size_refuses_the_scores_before(
    tmp_path: Path, capsys
) -> None:
    """The checkpoint covers train and dev; before.json covers what it measured, so a test
    split swapped for another of the same size is not reported with the old split's score."""
    config = jsonl_run(tmp_path, ["bala", "nest", "pine", "word"])
    assert train(config) == 0
    kept = files(tmp_path / "out")
    jsonl_run(tmp_path, ["cola", "mint", "lane", "bird"])
    capsys.readouterr()
    assert train(config, "--resume") == 2
    error = capsys.readouterr().out.strip().splitlines()[-1]
    assert (
        "before.json: measured on another network, model or other examples than this run's" in error
    )
    assert files(tmp_path / "out") == kept


@pytest.mark.parametrize(
    "setting",
    ["data.dev=5", 'train.metric="contains"', "train.num_prompt_samples=2"],
    ids=["before.json's examples", "before.json's metric", "the checkpoint's options"],
)
def test_a_refused_resume_of_a_finished_run_keeps_its_result(
    tmp_path: Path, config: Path, capsys, setting: str
) -> None:
    assert train(config) == 0
    kept = files(tmp_path / "out")
    capsys.readouterr()
    assert train(config, "--resume", "--set", setting) == 2
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("error: ")
    assert files(tmp_path / "out") == kept


async def test_a_resumed_run_removes_its_old_result_once_it_saves_a_new_step(config) -> None:
    """Until then the folder still holds the finished run; from then its result would claim
    a run the checkpoint has moved past."""
    await train_run(RunConfig.read(config))
    result = config.parent / "out" / "result.json"
    seen: list[bool] = []

    class Watch(RunHooks):
        @contextmanager
        def training(self, steps: int) -> Iterator[Callable[[dg.StepRecord], None]]:
            seen.append(result.exists())
            yield lambda record: seen.append(result.exists())

    await train_run(RunConfig.read(config, ["train.steps=2"]), resume=True, hooks=Watch())
    assert seen == [True, False] and result.exists()


def test_a_resume_with_another_model_refuses_the_scores_before(
    tmp_path: Path, config: Path, capsys
) -> None:
    """The checkpoint does not name the model; before.json does, so the old model's scores are
    not reported beside the new one's after training."""
    assert train(config) == 0
    kept = files(tmp_path / "out")
    capsys.readouterr()
    assert train(config, "--resume", "--set", 'backend.options.name="scripted-2"') == 2
    error = capsys.readouterr().out.strip().splitlines()[-1]
    assert "before.json: measured on another network, model or other examples" in error
    assert files(tmp_path / "out") == kept
