"""The network a config's ``[network]`` section describes: a preset (``kind = "dln1"`` or
``"dln2"``, built from the task) or explicit nodes and edges."""

from __future__ import annotations

from collections.abc import Mapping

from dlgraph._untrusted import excerpt
from dlgraph.config.files import Section
from dlgraph.data import Task
from dlgraph.errors import ConfigError, DlgraphError
from dlgraph.network import Network
from dlgraph.nodes import INPUT

NETWORK_KEYS = ("kind", "nodes", "edges", "hidden_prompt", "hidden_max_tokens", "calibrate")


def network_from(section: Section, task: Task) -> Network:
    """`kind = "dln1"` or `"dln2"` from the task, or explicit nodes and edges; validated."""
    section.check_keys(NETWORK_KEYS)
    kind = section.get("kind", str, "dln1")
    if kind not in ("dln1", "dln2"):  # checked beside nodes too, where it is not read
        raise ConfigError(f"{section.where('kind')}: expected dln1 or dln2, got {excerpt(kind)}")
    hidden_prompt = section.get("hidden_prompt", str, "Think about the question step by step.")
    hidden_max_tokens = section.get("hidden_max_tokens", int, 48)
    calibrate = section.get("calibrate", bool, False)
    if hidden_max_tokens < 1:
        raise ConfigError(f"{section.where('hidden_max_tokens')}: must be >= 1")
    if "edges" in section.values and "nodes" not in section.values:
        raise ConfigError(f"{section.where('edges')}: edges need the nodes they join (nodes)")
    net = Network()
    try:
        if "nodes" in section.values:
            for index, node in enumerate(section.get("nodes", list)):
                if not isinstance(node, Mapping) or "name" not in node:
                    raise ConfigError(
                        f"{section.where(f'nodes[{index}]')}: expected a table with a name"
                    )
                net.add_node(**{k: v for k, v in node.items()})
            for index, edge in enumerate(section.get("edges", list, [])):
                if not (isinstance(edge, list) and len(edge) == 2):
                    raise ConfigError(
                        f"{section.where(f'edges[{index}]')}: expected [source, target]"
                    )
                net.add_edge(*edge)
        else:
            if kind == "dln2":
                net.add_node(
                    "reason", prompt=hidden_prompt, max_tokens=hidden_max_tokens, stop=["\n\n"]
                )
                net.add_edge(INPUT, "reason")
            net.add_node(
                "answer", prompt=task.instruction, classes=task.classes, calibrate=calibrate
            )
            net.add_edge(INPUT, "answer")  # the input first: candidates share it as a prefix
            if kind == "dln2":
                net.add_edge("reason", "answer")
        net.validate()
    except TypeError as error:
        raise ConfigError(f"{section.path}: [network] {error}") from error
    except ConfigError:
        raise
    except DlgraphError as error:
        raise ConfigError(f"{section.path}: [network] {error}") from error
    return net
