"""A network's JSON form, read back or refused: each malformed part named, and the structure
derived from it (order, depth, cycles) as the edges say."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

import dlgraph as dg


def chain() -> dg.Network:
    """INPUT -> a -> b -> c, and INPUT -> c: c is three edges deep, not one."""
    net = dg.Network()
    for name in ("a", "b"):
        net.add_node(name, prompt=f"{name.upper()}.", max_tokens=8)
    net.add_node("c", prompt="C.", classes=["yes", "no"])
    for edge in [(dg.INPUT, "a"), ("a", "b"), ("b", "c"), (dg.INPUT, "c")]:
        net.add_edge(*edge)
    return net


def document() -> dict[str, Any]:
    return copy.deepcopy(chain().to_json())


def test_a_nodes_depth_is_its_longest_path_from_the_input() -> None:
    net = chain()
    assert [net.depth(name) for name in ("a", "b", "c")] == [1, 2, 3]


def test_independent_nodes_keep_the_order_they_were_added_in() -> None:
    net = dg.Network()
    for name in ("zeta", "alpha", "mid"):
        net.add_node(name, prompt="Look.", max_tokens=8)
        net.add_edge(dg.INPUT, name)
    assert net.topological_order() == ["zeta", "alpha", "mid"]


def test_a_network_read_back_from_its_json_has_the_same_nodes_edges_and_depths() -> None:
    net = dg.Network.from_json(document())
    assert net.to_json() == chain().to_json()
    assert net.depth("c") == 3


def test_a_version_1_class_node_with_null_classes_is_read_as_a_text_node() -> None:
    data = document() | {"version": 1}
    data["nodes"][0] = data["nodes"][0] | {"classes": None}
    assert dg.Network.from_json(data).node("a").classes is None


def test_a_cycle_is_named_along_its_edges_back_to_its_start(tmp_path) -> None:
    data = document()
    data["edges"].append(["c", "a"])
    with pytest.raises(
        dg.GraphError, match=r"cycle: (a -> b -> c -> a|b -> c -> a -> b|c -> a -> b -> c)$"
    ):
        dg.Network.from_json(data).validate()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d | {"format": "other"}, "not a dlgraph network"),
        (lambda d: d | {"nodes": {"a": {}}}, r"'nodes': expected a list"),
        (lambda d: d | {"edges": "INPUT->a"}, r"'edges': expected a list"),
        (lambda d: d | {"nodes": ["a", *d["nodes"]]}, r"nodes\[0\]: expected an object"),
        (
            lambda d: d | {"nodes": [{"prompt": "A."}, *d["nodes"]]},
            r"nodes\[0\]: missing key 'name'",
        ),
        (lambda d: d | {"edges": [["INPUT", 3]]}, r"edges\[0\]: expected \[source, target\]"),
        (
            lambda d: d | {"edges": [["INPUT", "a", "b"]]},
            r"edges\[0\]: expected \[source, target\]",
        ),
    ],
    ids=[
        "another format",
        "nodes as an object",
        "edges as text",
        "a node that is text",
        "a node without a name",
        "an edge to a number",
        "an edge of three",
    ],
)
def test_a_malformed_network_file_is_refused_naming_the_part(edit, message) -> None:
    with pytest.raises(dg.GraphError, match=message):
        dg.Network.from_json(edit(document()))


def test_a_node_with_parents_at_several_depths_is_one_deeper_than_the_deepest() -> None:
    net = chain()
    net.add_node("d", prompt="D.", max_tokens=8)
    for parent in ("a", "b"):
        net.add_edge(parent, "d")
    assert net.depth("d") == 3


def test_a_node_an_output_reaches_only_through_other_nodes_is_needed() -> None:
    chain().validate()  # a feeds the output c only through b


def test_a_saved_network_keeps_its_text_readable_as_written(tmp_path: Path) -> None:
    net = dg.Network()
    net.add_node("réponse", prompt="Réponds « oui » ou « non ».", max_tokens=8)
    net.add_edge(dg.INPUT, "réponse")
    net.save(tmp_path / "net.json")
    text = (tmp_path / "net.json").read_text(encoding="utf-8")
    assert '"prompt": "Réponds « oui » ou « non »."' in text
    assert dg.Network.load(tmp_path / "net.json").to_json() == net.to_json()
