"""A ledger journal read line by line: charges of one (node, phase) add up, and any line that
is not a charge, a header of another version, a line too long to be ours, or a folder in the
journal's place is refused naming the file (and line)."""

from __future__ import annotations

import json
import os

import pytest

import dlgraph as dg
from dlgraph.engine.journal import FORMAT, MAX_COUNT, MAX_LINE_BYTES, Journal, read_journal
from dlgraph.engine.usage import COUNTERS

HEADER = json.dumps({"format": FORMAT, "version": 1, "counters": list(COUNTERS)}) + "\n"
WIDTH = len(COUNTERS)


def charge(node: str, phase: str, *counts: int) -> str:
    return json.dumps([node, phase, *counts, *[0] * (WIDTH - len(counts))]) + "\n"


def test_the_charges_of_one_node_and_phase_add_up(tmp_path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_text(HEADER + charge("a", "forward", 1, 1, 10) + charge("a", "forward", 2, 1, 5))
    usage = read_journal(path).by_key[("a", "forward")]
    assert (usage.calls, usage.http_requests, usage.tokens_in) == (3, 2, 15)


def test_a_journal_records_charges_that_read_back_and_refuses_to_record_once_closed(
    tmp_path,
) -> None:
    path = tmp_path / "ledger.jsonl"
    journal = Journal.open(path)
    journal.record([("a", "forward", {"calls": 2, "errors": 1}), ("b", "score", {"calls": 1})])
    journal.record([("a", "forward", {"calls": 1})])
    journal.close()
    journal.close()  # closing twice is harmless
    by_key = read_journal(path).by_key
    assert (by_key[("a", "forward")].calls, by_key[("a", "forward")].errors) == (3, 1)
    assert by_key[("b", "score")].calls == 1
    with pytest.raises(dg.CheckpointError, match="the journal is closed"):
        journal.record([("a", "forward", {"calls": 1})])


@pytest.mark.parametrize(
    "line",
    [
        "not json\n",
        json.dumps({"node": "a"}) + "\n",
        json.dumps(["a", "forward", *[0] * (WIDTH - 1)]) + "\n",
        json.dumps(["a", 3, *[0] * WIDTH]) + "\n",
        json.dumps(["a", "forward", -1, *[0] * (WIDTH - 1)]) + "\n",
        json.dumps(["a", "forward", True, *[0] * (WIDTH - 1)]) + "\n",
        json.dumps(["a", "forward", 1.0, *[0] * (WIDTH - 1)]) + "\n",
        json.dumps(["a", "forward", 2**53, *[0] * (WIDTH - 1)]) + "\n",  # JSON's exact integers
    ],
    ids=[
        "text",
        "an object",
        "a count short",
        "a phase that is a number",
        "a negative count",
        "a count that is a bool",
        "a count that is a float",
        "a count too large",
    ],
)
def test_a_line_that_is_not_a_charge_is_refused_naming_the_file_and_line(tmp_path, line) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_text(HEADER + charge("a", "forward", 1) + line)
    with pytest.raises(dg.CheckpointError, match=r"ledger.jsonl:3: not a charge"):
        read_journal(path)


def test_the_largest_count_below_the_limit_is_a_charge(tmp_path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_text(HEADER + charge("a", "forward", 2**53 - 1))
    assert read_journal(path).by_key[("a", "forward")].calls == 2**53 - 1 == MAX_COUNT - 1


def test_a_header_of_another_version_is_no_journal(tmp_path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_text(json.dumps({"format": FORMAT, "version": 2, "counters": list(COUNTERS)}) + "\n")
    with pytest.raises(dg.CheckpointError, match="line 1 is no header"):
        read_journal(path)


def test_a_line_longer_than_any_charge_is_refused_and_a_last_line_cut_short_dropped(
    tmp_path,
) -> None:
    path = tmp_path / "ledger.jsonl"
    long = "x" * (MAX_LINE_BYTES + 10)
    path.write_text(HEADER + long + "\n" + charge("a", "forward", 1))
    with pytest.raises(dg.CheckpointError, match=r"ledger.jsonl:2: a line longer than"):
        read_journal(path)
    path.write_text(HEADER + charge("a", "forward", 1) + charge("b", "score", 1)[:12])
    assert set(read_journal(path).by_key) == {("a", "forward")}
    assert read_journal(path).by_key[("a", "forward")].calls == 1


def test_a_journal_in_a_folders_place_is_refused(tmp_path) -> None:
    with pytest.raises(dg.CheckpointError, match="is a folder; a ledger journal is a file"):
        Journal.open(tmp_path)


def _node_for(length: int) -> str:
    """A node name that makes its charge line `length` bytes long before the newline."""
    return "n" * (length + 1 - len(charge("", "forward", 1)))


def test_a_charge_line_of_the_longest_length_is_read_and_one_byte_more_is_refused(
    tmp_path,
) -> None:
    path = tmp_path / "ledger.jsonl"
    node = _node_for(MAX_LINE_BYTES)
    longest = charge(node, "forward", 1)
    assert len(longest) == MAX_LINE_BYTES + 1  # and its newline
    path.write_text(HEADER + longest)
    assert [usage.calls for usage in read_journal(path).by_key.values()] == [1]
    path.write_text(HEADER + charge(_node_for(MAX_LINE_BYTES + 1), "forward", 1))
    with pytest.raises(dg.CheckpointError, match=r"ledger.jsonl:2: a line longer than 65536"):
        read_journal(path)


def test_a_journal_that_cannot_be_read_is_refused_naming_it(tmp_path) -> None:
    with pytest.raises(dg.CheckpointError, match=r"cannot read the ledger journal \(No such"):
        read_journal(tmp_path / "missing.jsonl")
    with pytest.raises(dg.CheckpointError, match=r"cannot read the ledger journal \(Is a dir"):
        read_journal(tmp_path)


def test_a_journal_that_cannot_be_appended_to_is_refused_naming_it(tmp_path, monkeypatch) -> None:
    path = tmp_path / "ledger.jsonl"
    Journal.open(path).close()

    def read_only(*args: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("dlgraph.engine.journal.os.open", read_only)
    with pytest.raises(dg.CheckpointError, match=r"ledger.jsonl: cannot append \(Permission"):
        Journal.open(path)


def test_a_charge_that_cannot_be_written_is_an_error_not_a_silent_loss(tmp_path) -> None:
    journal = Journal.open(tmp_path / "ledger.jsonl")
    descriptor = journal._descriptor
    assert descriptor is not None
    os.close(descriptor)  # the file went away under the journal (a full or failing disk)
    with pytest.raises(dg.CheckpointError, match=r"cannot record a call \(Bad file"):
        journal.record([("a", "forward", {"calls": 1})])


def test_closing_a_journal_releases_its_file(tmp_path) -> None:
    journal = Journal.open(tmp_path / "ledger.jsonl")
    descriptor = journal._descriptor
    assert descriptor is not None
    journal.close()
    with pytest.raises(OSError):
        os.fstat(descriptor)
