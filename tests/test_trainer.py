"""The variational trainer on scripted tasks where it can fail (see letter_world.py)."""

from __future__ import annotations

import json

import pytest
from letter_world import (
    DIRECT_KEY, OUTPUT_KEY, PAIR_CLASSES, LetterWorld, last, single_word_task, word_pair_task,
)

import dlgraph as dg

YES_NO = ["yes|Yes", "no|No"]


def dln1() -> dg.Network:
    net = dg.Network()
    net.add_node("answer", prompt="Answer the question.", classes=YES_NO)
    net.add_edge(dg.INPUT, "answer")
    return net


def dln2() -> dg.Network:
    net = dg.Network()
    net.add_node("reason", prompt="Read the input.", max_tokens=16)
    net.add_node("answer", prompt="Answer the question.", classes=YES_NO)
    net.add_edge(dg.INPUT, "reason")
    net.add_edge("reason", "answer")
    net.add_edge(dg.INPUT, "answer")
    return net


def fan_in() -> dg.Network:
    net = dg.Network()
    net.add_node("a", prompt="Look at the input.", max_tokens=16)
    net.add_node("b", prompt="Look at the input.", max_tokens=16)
    net.add_node("c", prompt="Answer the question.", classes=PAIR_CLASSES)
    for edge in [(dg.INPUT, "a"), (dg.INPUT, "b"), ("a", "c"), ("b", "c"), (dg.INPUT, "c")]:
        net.add_edge(*edge)
    return net


TRAIN_OPTIONS = dict(num_prompt_samples=6, num_hidden_samples=5, posterior_temperature=0.25, seed=1)


async def fit(net, world, train, dev, steps=6, **options):
    model = world.model()
    async with dg.Engine(model) as engine:
        trainer = dg.VariationalTrainer(net, engine, **(TRAIN_OPTIONS | options))
        result = await trainer.fit(train, dev, steps=steps, batch_size=10)
    return result, model


async def test_dln1_learns_an_instruction_only_proposals_can_write() -> None:
    world = LetterWorld(direct=True)
    train, dev = single_word_task(40, seed=1), single_word_task(40, seed=2)
    net = dln1()
    result, _ = await fit(net, world, train, dev)
    assert result.initial_dev_accuracy <= 0.7
    assert result.best_dev_accuracy >= 0.95
    assert DIRECT_KEY in net.prompts()["answer"]


async def test_dln2_learns_both_prompts_through_the_posterior() -> None:
    world = LetterWorld()
    train, dev = single_word_task(40, seed=1), single_word_task(40, seed=2)
    net = dln2()
    result, _ = await fit(net, world, train, dev)
    assert result.initial_dev_accuracy <= 0.7
    assert result.best_dev_accuracy >= 0.9
    assert net.prompts()["reason"] == last(1)
    assert net.prompts()["answer"] == OUTPUT_KEY


async def test_dln1_stays_near_chance_on_the_two_step_task() -> None:
    world = LetterWorld()
    train, dev = single_word_task(40, seed=1), single_word_task(40, seed=2)
    result, _ = await fit(dln1(), world, train, dev)
    assert result.best_dev_accuracy <= 0.75


async def test_dln2_hidden_prompt_is_not_learnt_without_the_posterior() -> None:
    world = LetterWorld()
    train, dev = single_word_task(40, seed=1), single_word_task(40, seed=2)
    net = dln2()
    result, _ = await fit(net, world, train, dev, use_posterior=False)
    assert last(1) not in net.prompts()["reason"]
    assert result.best_dev_accuracy <= 0.75


async def test_fan_in_graph_trains_every_node_without_special_cases() -> None:
    world = LetterWorld(pair=True)
    train, dev = word_pair_task(40, seed=1), word_pair_task(40, seed=2)
    net = fan_in()
    before = net.prompts()
    result, _ = await fit(net, world, train, dev, steps=8)
    after = net.prompts()
    assert all(after[name] != before[name] for name in before)
    assert result.best_dev_accuracy >= result.initial_dev_accuracy + 0.4
