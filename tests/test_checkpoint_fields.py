"""A checkpoint read back field by field: the one a one-step run of the letter world wrote,
edited as whoever edits a checkpoint would (the checksum recomputed). Each damaged field is a
CheckpointError naming the file and the field; a checkpoint that only looks different (keys
reordered, no step yet, no dev score yet) loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from letter_world import LetterWorld, single_word_task
from test_trainer import dln2, run_counting
from test_training_run import step_record

import dlgraph as dg
from dlgraph.train.candidates import Memory
from dlgraph.train.checkpoint import FILENAME, FORMAT, VERSION, Checkpoint, _digest


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The checkpoint file's document after one training step."""
    folder = tmp_path_factory.mktemp("one-step")
    train, dev = single_word_task(20, seed=1), single_word_task(20, seed=2)
    anyio.run(lambda: run_counting(dln2(), LetterWorld(), train, dev, 1, checkpoint_dir=folder))
    document: dict[str, Any] = json.loads((folder / FILENAME).read_text())
    return document


def write(folder: Path, document: dict[str, Any], payload: dict[str, Any]) -> Path:
    document = document | {"payload": payload, "sha256": _digest(payload)}
    (folder / FILENAME).write_text(json.dumps(document))
    return folder


def read_with(tmp_path: Path, written: dict[str, Any], **changes: Any) -> Checkpoint | None:
    return Checkpoint.read(write(tmp_path, written, written["payload"] | changes))


def test_a_checkpoint_reads_back_what_the_run_wrote(tmp_path, written) -> None:
    checkpoint = read_with(tmp_path, written)
    assert checkpoint is not None and checkpoint.step == 1
    assert [record.step for record in checkpoint.history] == [1]


def test_a_checkpoint_rewritten_with_its_keys_sorted_still_loads(tmp_path, written) -> None:
    (tmp_path / FILENAME).write_text(json.dumps(written, sort_keys=True, indent=2))
    checkpoint = Checkpoint.read(tmp_path)
    assert checkpoint is not None and checkpoint.step == 1


def test_a_checkpoint_before_any_step_loads(tmp_path, written) -> None:
    checkpoint = read_with(tmp_path, written, step=0, history=[], evaluations_since_best=0)
    assert checkpoint is not None and checkpoint.step == 0


def test_a_checkpoint_without_dev_scores_loads(tmp_path, written) -> None:
    checkpoint = read_with(tmp_path, written, best_score=None, initial_score=None)
    assert checkpoint is not None
    assert (checkpoint.best_score, checkpoint.initial_score) == (None, None)


def test_a_checkpoint_that_is_not_an_object_is_not_a_checkpoint(tmp_path, written) -> None:
    (tmp_path / FILENAME).write_text(json.dumps([written]))
    with pytest.raises(dg.CheckpointError, match="not a dlgraph checkpoint"):
        Checkpoint.read(tmp_path)


def test_a_checkpoint_keeps_scores_of_a_metric_beyond_zero_to_one(tmp_path, written) -> None:
    checkpoint = read_with(
        tmp_path, written, best_score=1.5, initial_score=-0.5, best_results=[4.5, -1.5]
    )
    assert (checkpoint.best_score, checkpoint.initial_score) == (1.5, -0.5)
    assert checkpoint.best_results == [4.5, -1.5]


def test_a_checkpoint_keeps_the_best_network_s_score_on_each_dev_example(written) -> None:
    results = written["payload"]["best_results"]
    assert len(results) == 20
    assert sum(results) / len(results) == pytest.approx(written["payload"]["best_score"])


def test_a_checkpoint_names_every_key_missing_or_unknown_in_order(tmp_path, written) -> None:
    payload = {k: v for k, v in written["payload"].items() if k not in ("memory", "ledger")}
    with pytest.raises(dg.CheckpointError, match="missing or unknown: ledger, memory, zz_extra"):
        Checkpoint.read(write(tmp_path, written, payload | {"zz_extra": 1}))


DAMAGED = [
    ({"best_score": "high"}, "best_score"),
    ({"initial_score": float("inf")}, "initial_score"),
    ({"initial_score": True}, "initial_score"),
    ({"rng_state": [3, [1, 2, 3], None]}, "rng_state"),
    ({"rng_state": [3, [1, 2, 3]]}, r"rng_state: expected \[version"),
    ({"ledger": {}}, "ledger: expected a list of objects"),
    ({"ledger": [{}, 1]}, "ledger: expected a list of objects"),
    ({"step": -1, "history": []}, "step"),
    ({"best_results": {"0": 1.0}}, "best_results: expected a list of per-example scores"),
    ({"best_results": [1.0, "high"]}, r"best_results: score \[1\]: expected float"),
    ({"best_results": [1.0, float("inf")]}, r"best_results: score \[1\]: expected a finite"),
    ({"best_results": [True]}, r"best_results: score \[0\]: expected float"),
    ({"best_results": None}, "best_results: expected a list"),
]
DAMAGED_IDS = [
    "a best score that is text",
    "an infinite initial score",
    "an initial score that is a bool",
    "an rng state random refuses",
    "an rng state of two parts",
    "a ledger that is an object",
    "a ledger row that is a number",
    "a negative step",
    "best results as an object",
    "a best result that is text",
    "an infinite best result",
    "a best result that is a bool",
    "no best results",
]


@pytest.mark.parametrize(("changes", "message"), DAMAGED, ids=DAMAGED_IDS)
def test_a_checkpoint_with_a_damaged_field_is_refused_naming_it(
    tmp_path, written, changes, message
) -> None:
    with pytest.raises(dg.CheckpointError, match=message):
        read_with(tmp_path, written, **changes)


def version_2(written: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The document and payload of a version-2 checkpoint (as main wrote them: no
    best_results) holding what `written` holds."""
    payload = {k: v for k, v in written["payload"].items() if k != "best_results"}
    return written | {"version": 2}, payload


def test_a_version_2_checkpoint_reads_back_without_best_results(tmp_path, written) -> None:
    checkpoint = Checkpoint.read(write(tmp_path, *version_2(written)))
    assert checkpoint is not None and (checkpoint.version, checkpoint.step) == (2, 1)
    assert checkpoint.best_results is None
    assert checkpoint.best_score == written["payload"]["best_score"]


def test_a_version_2_checkpoint_that_has_best_results_is_malformed(tmp_path, written) -> None:
    document, payload = version_2(written)
    with pytest.raises(dg.CheckpointError, match=r"missing or unknown: best_results\)"):
        Checkpoint.read(write(tmp_path, document, payload | {"best_results": [1.0] * 20}))


@pytest.mark.parametrize(
    ("changes", "message"),
    [case for case in DAMAGED if "best_results" not in case[0]],
    ids=[name for name in DAMAGED_IDS if "best result" not in name],
)
def test_a_version_2_checkpoint_with_a_damaged_field_is_refused_naming_it(
    tmp_path, written, changes, message
) -> None:
    """Every check of version 3 but best_results holds for version 2 (as main checked it)."""
    document, payload = version_2(written)
    with pytest.raises(dg.CheckpointError, match=rf"checkpoint\.json: {message}"):
        Checkpoint.read(write(tmp_path, document, payload | changes))


@pytest.mark.parametrize("version", [1, 4, "3", True, None])
def test_a_checkpoint_of_another_version_is_refused_naming_it(tmp_path, written, version) -> None:
    with pytest.raises(dg.CheckpointError, match=r"checkpoint version .*, expected 3 \(or 2"):
        Checkpoint.read(write(tmp_path, written | {"version": version}, written["payload"]))


def test_a_checkpoints_memory_reads_back_what_it_remembered() -> None:
    memory = Memory(2)
    memory.remember("answer", {dg.Parameter("A."): -1.0, dg.Parameter("B."): -2.0})
    again = Memory.from_json(2, memory.to_json())
    assert again.parameters("answer") == [dg.Parameter("A."), dg.Parameter("B.")]


@pytest.mark.parametrize(
    ("memory", "message"),
    [
        ([], "expected an object"),
        ({"answer": {}}, r"answer: expected a list of \[parameter, elbo\] pairs"),
        ({"answer": [[{"prompt": "A."}, -1.0], "x"]}, "pairs"),
        ({"answer": [[{"prompt": "A."}, -1.0, 0.0]]}, "pairs"),
    ],
    ids=["not an object", "a node's entries as an object", "a bare entry", "a triple"],
)
def test_a_checkpoints_memory_of_the_wrong_shape_is_refused(memory: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        Memory.from_json(2, memory)


def test_a_checkpoint_edited_without_its_checksum_is_refused_as_corrupt(tmp_path: Path) -> None:
    document = {"format": FORMAT, "version": VERSION, "sha256": _digest({"step": 1})}
    (tmp_path / FILENAME).write_text(json.dumps(document | {"payload": {"step": 2}}))
    with pytest.raises(dg.CheckpointError, match="checksum mismatch"):
        Checkpoint.read(tmp_path)


def test_a_long_history_out_of_order_is_refused_in_one_short_line(tmp_path: Path) -> None:
    record = step_record(1).to_json()
    fields = {field.name for field in attrs.fields(Checkpoint)} - {"version"}  # not written
    payload = dict.fromkeys(fields) | {"step": 500, "history": [record] * 500}
    with pytest.raises(dg.CheckpointError, match=r"do not run 1\.\.500") as error:
        Checkpoint.read(write(tmp_path, {"format": FORMAT, "version": VERSION}, payload))
    assert len(str(error.value)) < 300 + len(str(tmp_path))
