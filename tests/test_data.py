"""Datasets: the paper's reference splits, readers' errors, generated tasks' exact answers."""

from __future__ import annotations

import datetime
import json
import re

import pytest

import dlgraph as dg
from dlgraph.data import (
    generate,
    generated_task,
    load_task,
    read_jsonl,
    read_ordered_prompt,
    rebuild_splits,
)
from dlgraph.scoring import matching_class


@pytest.mark.parametrize("task", ["navigate", "subj", "trec", "mpqa", "airline", "disaster"])
def test_rebuilt_splits_equal_the_reference_splits(task: str) -> None:
    reference, rebuilt = load_task(task), rebuild_splits(task)
    assert (rebuilt.train, rebuilt.dev, rebuilt.test) == (
        reference.train,
        reference.dev,
        reference.test,
    )


def test_reference_splits_have_the_papers_sizes_and_classes() -> None:
    navigate = load_task("navigate")
    assert (len(navigate.train), len(navigate.dev), len(navigate.test)) == (375, 375, 250)
    assert navigate.classes == ["yes|Yes", "no|No"]
    trec = load_task("trec")
    assert all(matching_class(e.target, trec.classes) for e in trec.test)


def test_unknown_task_lists_known_ones() -> None:
    with pytest.raises(dg.DataError, match="unknown task 'nope' \\(known: .*navigate"):
        load_task("nope")


def test_malformed_jsonl_line_names_file_and_line(tmp_path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"input": "a", "target": "b"}\n\n{"input": "c"}\n')
    with pytest.raises(dg.DataError, match=r"train.jsonl:3: missing field 'target'"):
        read_jsonl(path)
    path.write_text('{"input": "a", "target": "b"}\n{"input": \n')
    with pytest.raises(dg.DataError, match=r"train.jsonl:2: not valid JSON"):
        read_jsonl(path)


def test_ordered_prompt_label_outside_mapping_names_line(tmp_path) -> None:
    path = tmp_path / "test.jsonl"
    path.write_text('{"sentence": "fine", "label": "0"}\n{"sentence": "odd", "label": "7"}\n')
    with pytest.raises(dg.DataError, match=r"test.jsonl:2: label '7' is not one of 0, 1"):
        read_ordered_prompt(path, {"0": "negative", "1": "positive"})


def test_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(dg.DataError, match="nothing.jsonl: no such file"):
        read_jsonl(tmp_path / "nothing.jsonl")


def test_generated_tasks_repeat_under_a_seed_and_differ_across_seeds() -> None:
    for name in ("navigation", "ordering", "dates"):
        assert generate(name, 20, seed=3) == generate(name, 20, seed=3)
        assert generate(name, 20, seed=3) != generate(name, 20, seed=4)


def solve_navigation(text: str) -> str:
    x = y = 0
    for count, direction in re.findall(r"Take (\d+) steps? (\w+)\.", text):
        dx, dy = {"forward": (0, 1), "backward": (0, -1), "left": (-1, 0), "right": (1, 0)}[
            direction
        ]
        x, y = x + dx * int(count), y + dy * int(count)
    return "Yes" if (x, y) == (0, 0) else "No"


def solve_ordering(text: str) -> str:
    pairs = dict(re.findall(r"The (\w+) is directly left of the (\w+)\.", text))
    first = (set(pairs) - set(pairs.values())).pop()
    row = [first]
    while row[-1] in pairs:
        row.append(pairs[row[-1]])
    place = ["first", "second", "third", "fourth", "fifth"].index(
        re.search(r"is (\w+) from the left", text).group(1)
    )
    options = dict((name, letter) for letter, name in re.findall(r"\((\w)\) The (\w+)", text))
    return f"({options[row[place]]})"


def solve_dates(text: str) -> str:
    today = datetime.datetime.strptime(
        re.search(r"Today is (\S+)\.", text).group(1), "%m/%d/%Y"
    ).date()
    days, when = re.search(r"date (\d+) days (after|before)", text).groups()
    answer = today + datetime.timedelta(days=int(days) * (1 if when == "after" else -1))
    options = dict((d, letter) for letter, d in re.findall(r"\((\w)\) (\S+)", text))
    return f"({options[answer.strftime('%m/%d/%Y')]})"


@pytest.mark.parametrize(
    "name, solve",
    [("navigation", solve_navigation), ("ordering", solve_ordering), ("dates", solve_dates)],
)
def test_generated_answers_are_exact(name, solve) -> None:
    task = generated_task(name, train=100, dev=50, test=50, seed=1)
    for example in task.train + task.dev + task.test:
        assert solve(example.input) == example.target
        assert matching_class(example.target, task.classes)


def test_generated_navigation_is_balanced_and_splits_are_disjoint() -> None:
    task = generated_task("navigation", train=100, dev=100, test=100, seed=0)
    assert sum(e.target == "Yes" for e in task.train + task.dev + task.test) == 150
    assert not set(task.train) & set(task.test)


def test_example_from_jsonl_refuses_non_object(tmp_path) -> None:
    with pytest.raises(dg.DataError, match="x.jsonl:4: expected a JSON object"):
        dg.Example.from_jsonl("x.jsonl", 4, json.dumps(["a", "b"]))
