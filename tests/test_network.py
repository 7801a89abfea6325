"""The network model: building, validation errors that name the culprit, save/load."""

from __future__ import annotations

import json

import anyio
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
    net = dg.Network()
    net.add_node("reason", prompt="Work through the problem.")
    net.add_node("answer", prompt="Answer.", classes=["yes|Yes", "no|No"], output=True)
    net.add_node("stray", prompt="Unused.")
    for edge in [(dg.INPUT, "reason"), ("reason", "answer"), (dg.INPUT, "stray")]:
        net.add_edge(*edge)
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


def test_a_template_may_loop_test_and_filter_as_prompts_need() -> None:
    net = dg.Network()
    template = (
        "{{ prompt | upper }}{% for d in demonstrations %} [{{ loop.index }}: {{ d.output }}]"
        "{% endfor %}{% if input.startswith('x') %} starts with x{% endif %} {{ input | length }}"
    )
    net.add_node("a", prompt="A.", template=template)
    net.add_edge(dg.INPUT, "a")
    net.set_parameter("a", dg.Parameter("A.", [dg.Demonstration("q", "yes")]))
    assert net.render("a", {dg.INPUT: "xyz"}) == "A. [1: yes] starts with x 3"


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


NODE_SPECS_REFUSED = [
    {"name": "g", "prompt": "x", "max_tokens": 0},
    {"name": "g", "prompt": "x", "max_tokens": -3},
    {"name": "g", "prompt": "x", "max_tokens": 4.0},
    {"name": "g", "prompt": "x", "max_tokens": True},
    {"name": "g", "prompt": "x", "calibrate": True},
    {"name": "g", "prompt": "x", "temperature": -1},
    {"name": "g", "prompt": "x", "stop": "\n"},
    {"name": "c", "prompt": "x", "classes": "Yes"},
    {"name": "c", "prompt": "x", "classes": []},
    {"name": "c", "prompt": "x", "classes": ["yes", "Yes"]},
    {"name": "c", "prompt": "x", "classes": ["yes|Yes", "no|No"], "max_tokens": 5},
    {"name": "c", "prompt": "x", "classes": ["yes|Yes", "no|No"], "calibrate": "true"},
    {"name": "g", "prompt": "x", "trainable": "false"},
    {"name": "g", "prompt": "x", "output": 1},
    {"name": "g", "prompt": 7},
    {"name": "prompt", "prompt": "x"},
    {"name": "", "prompt": "x"},
    {"name": "g", "prompt": "x", "template": "{{ prompt "},
]


@pytest.mark.parametrize("spec", NODE_SPECS_REFUSED, ids=lambda spec: repr(spec)[:60])
def test_a_network_file_refuses_each_node_add_node_refuses_with_the_same_message(
    tmp_path, spec
) -> None:
    with pytest.raises(dg.GraphError) as from_code:
        dg.Network().add_node(**spec)
    document = dg.Network().to_json() | {"nodes": [spec], "edges": []}
    path = tmp_path / "net.json"
    path.write_text(json.dumps(document))
    with pytest.raises(dg.GraphError) as from_file:
        dg.Network.load(path)
    assert str(from_file.value) == f"{path}: {from_code.value}"


def test_a_version_1_network_file_still_loads(tmp_path) -> None:
    version_1 = {
        "format": "dlgraph.network",
        "version": 1,
        "nodes": [
            {
                "name": "answer",
                "prompt": "A.",
                "template": "classify",
                "classes": ["yes", "no"],
                "max_tokens": 128,
                "temperature": 0.0,
                "stop": [],
                "is_trainable": False,
                "is_output": False,
                "calibrate": False,
            },
        ],
        "edges": [["INPUT", "answer"]],
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(version_1))
    loaded = dg.Network.load(path)
    assert loaded.node("answer").classes == ("yes", "no")
    assert loaded.node("answer").is_trainable is False


async def test_a_deep_fully_connected_graph_of_300_nodes_validates_and_runs_at_once() -> None:
    """Each layer of 15 reads every node of the layer before: path counts grow as 15^20, so
    any graph computation that walks paths instead of edges never finishes."""
    from dlgraph_sim import ScriptedModel

    net, previous = dg.Network(), [dg.INPUT]
    for depth in range(20):
        layer = [f"n{depth}_{i}" for i in range(15)]
        for name in layer:
            net.add_node(name, prompt=f"Go {name}.", template="{{ prompt }}", max_tokens=1)
            for parent in previous:
                net.add_edge(parent, name)
        previous = layer
    net.add_node("out", prompt="Sum up.", template="{{ prompt }}", max_tokens=1)
    for parent in previous:
        net.add_edge(parent, "out")
    model = ScriptedModel(generate=lambda request: "ok")
    with anyio.fail_after(20):
        net.validate()
        assert net.depth("out") == 21 and len(net.hidden_nodes()) == 300
        async with dg.Engine(model) as engine:
            trace = await net.forward(engine, ["x"])
    assert trace.outputs["out"] == ("ok",) and len(model.calls) == 301
