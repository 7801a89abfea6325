"""The network model: building, validation errors that name the culprit, save/load."""

from __future__ import annotations

import json

import pytest

import dlgraph as dg


def dln2() -> dg.Network:
    net = dg.Network()
    net.add_node("reason", prompt="Work through the problem.", template="reason", max_tokens=64)
    net.add_node("answer", prompt="Answer the question.", classes=["yes|Yes", "no|No"])
    net.add_edge(dg.INPUT, "reason")
    net.add_edge("reason", "answer")
    net.add_edge(dg.INPUT, "answer")
    return net


def test_prompts_lists_every_node_prompt() -> None:
    assert dln2().prompts() == {
        "reason": "Work through the problem.",
        "answer": "Answer the question.",
    }


def test_parents_keep_edge_order_and_outputs_are_sinks() -> None:
    net = dln2()
    assert net.parents("answer") == ["reason", dg.INPUT]
    assert net.output_nodes() == ["answer"]
    assert net.hidden_nodes() == ["reason"]
    assert net.topological_order() == ["reason", "answer"]


def test_add_edge_names_unknown_node_and_lists_known_ones() -> None:
    net = dln2()
    with pytest.raises(
        dg.GraphError,
        match=r"edge 'reason' -> 'anser': unknown node 'anser' \(known: answer, reason\)",
    ):
        net.add_edge("reason", "anser")


def test_add_node_refuses_duplicate_name() -> None:
    net = dln2()
    with pytest.raises(dg.GraphError, match="node 'reason': duplicate name"):
        net.add_node("reason", prompt="again")


def test_add_node_refuses_reserved_input_name() -> None:
    with pytest.raises(dg.GraphError, match="'INPUT': duplicate name"):
        dg.Network().add_node(dg.INPUT, prompt="x")


def test_validate_names_the_cycle() -> None:
    net = dln2()
    net.add_edge("answer", "reason")
    with pytest.raises(dg.GraphError, match="cycle: .*reason.*answer|cycle: .*answer.*reason"):
        net.validate()


def test_validate_names_node_no_output_depends_on() -> None:
    net = dln2()
    net.add_node("stray", prompt="Unused.")
    net.add_edge(dg.INPUT, "stray")
    net.node("answer").is_output = True
    with pytest.raises(dg.GraphError, match="node 'stray': no output depends on it"):
        net.validate()


def test_validate_names_node_without_parents() -> None:
    net = dg.Network()
    net.add_node("alone", prompt="Hello.")
    with pytest.raises(dg.GraphError, match="node 'alone': has no parents"):
        net.validate()


def test_validate_names_template_variable_no_parent_supplies() -> None:
    net = dg.Network()
    net.add_node("summary", prompt="Sum up.", template="{{ prompt }} {{ notes }}")
    net.add_edge(dg.INPUT, "summary")
    with pytest.raises(
        dg.GraphError, match="node 'summary': template variable 'notes' is supplied by no parent"
    ):
        net.validate()


def test_validate_names_empty_prompt() -> None:
    net = dg.Network()
    net.add_node("blank", prompt="  ")
    net.add_edge(dg.INPUT, "blank")
    with pytest.raises(dg.GraphError, match="node 'blank': empty prompt"):
        net.validate()


def test_validate_accepts_template_naming_parents_directly() -> None:
    net = dg.Network()
    net.add_node("a", prompt="A.")
    net.add_node("c", prompt="C.", template="{{ prompt }}\n{{ input }}\n{{ a }}\nOutput:")
    net.add_edge(dg.INPUT, "a")
    net.add_edge("a", "c")
    net.add_edge(dg.INPUT, "c")
    net.validate()
    assert net.render("c", {dg.INPUT: "x", "a": "from a"}) == "C.\nx\nfrom a\nOutput:"


def test_duplicate_class_names_are_refused() -> None:
    with pytest.raises(dg.GraphError, match="node 'answer': duplicate class names"):
        dg.Network().add_node("answer", prompt="A.", classes=["yes|Yes", "yes"])


def test_save_and_load_round_trip_everything(tmp_path) -> None:
    net = dln2()
    net.add_node(
        "extra", prompt="Custom.", template="{{ prompt }} {{ input }}", stop=["\n"], trainable=False
    )
    net.add_edge(dg.INPUT, "extra")
    net.add_edge("extra", "answer")
    path = tmp_path / "net.json"
    net.save(path)
    loaded = dg.Network.load(path)
    assert loaded.to_json() == net.to_json()
    assert loaded.parents("answer") == ["reason", dg.INPUT, "extra"]
    assert loaded.node("extra").is_trainable is False
    assert loaded.node("answer").classes == ("yes|Yes", "no|No")


def test_load_names_file_of_malformed_network(tmp_path) -> None:
    path = tmp_path / "net.json"
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(dg.GraphError, match="net.json: not a dlgraph network"):
        dg.Network.load(path)


def test_to_mermaid_draws_every_edge() -> None:
    text = dln2().to_mermaid()
    assert text.startswith("flowchart TD")
    assert text.count("-->") == 3
    assert '{"answer"}' in text and '["reason"]' in text
