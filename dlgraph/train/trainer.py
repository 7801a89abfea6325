"""The variational trainer: one generic step for any DAG of language nodes.

A step reads like micrograd's backward(): it walks its phases (`dlgraph.train.plan`) and
runs them: a forward pass, then posterior targets for hidden nodes in reverse topological
order, then new prompts for every trainable node, each chosen by its ELBO. DLN-1 (one node)
and DLN-2 (two nodes and a residual edge) are just networks. The training around the steps
(evaluation, checkpoints, logs) is `dlgraph.train.run`; the cost estimate
(`dlgraph.train.estimate`) and the pace (`dlgraph.train.pace`) count and time the same
phases.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from typing import Any

import attrs

from dlgraph._validate import check_instance, check_int
from dlgraph.data.example import Example, check_dataset
from dlgraph.engine import Engine
from dlgraph.errors import DataError
from dlgraph.forward import Trace
from dlgraph.metrics import MetricLike, resolve_metric
from dlgraph.network import Network
from dlgraph.nodes import Parameter
from dlgraph.train.candidates import Memory
from dlgraph.train.estimate import estimate, step_waves
from dlgraph.train.options import TrainerOptions
from dlgraph.train.pace import Pace, measure_pace
from dlgraph.train.plan import step_phases
from dlgraph.train.race import Tally
from dlgraph.train.records import Estimate, FitResult, StepOutcome
from dlgraph.train.run import Schedule, StepCallback, Training
from dlgraph.train.scorers import AccuracyScorer, LogprobScorer, Scorer
from dlgraph.train.step import StepPhase, StepSetup, StepState
from dlgraph.train.waves import Wave

logger = logging.getLogger(__name__)


class VariationalTrainer:
    """Learns every trainable node's prompt and demonstrations jointly; see ARCHITECTURE.md,
    "A training step".

    Options are the keywords of `TrainerOptions` (or one `options` record). Everything random
    flows from `seed`. `backward` is the engine that writes: proposals and posterior samples
    come from it (a stronger or a cheaper model), while forward passes and every
    log-likelihood stay on `engine`, whose model the prompts are for. Raises GraphError for a
    network it cannot train (an unknown trainable name).
    """

    def __init__(
        self,
        net: Network,
        engine: Engine,
        options: TrainerOptions | None = None,
        *,
        backward: Engine | None = None,
        **keywords: Any,
    ) -> None:
        check_instance("net", net, Network, "a dg.Network")
        check_instance("engine", engine, Engine, "a dg.Engine")
        if backward is not None:
            check_instance("backward", backward, Engine, "a dg.Engine")
        if options is not None:
            check_instance("options", options, TrainerOptions, "a dg.TrainerOptions")
        self.net = net
        self.engine = engine
        self.backward = engine if backward is None else backward
        self.options = attrs.evolve(options or TrainerOptions(), **keywords)
        net.validate()
        self.outputs = net.output_nodes()
        for name in self.options.trainable or ():
            net.node(name)  # raises GraphError naming an unknown node
        self.rng = random.Random(self.options.seed)
        self.memory = Memory(self.options.memory_size)
        self.steps_done = 0
        self.tally = Tally()

    @property
    def engines(self) -> list[Engine]:
        """The engines the trainer spends on, the forward one first."""
        return [self.engine] if self.backward is self.engine else [self.engine, self.backward]

    @property
    def trainable_nodes(self) -> list[str]:
        chosen = self.options.trainable
        return [
            name
            for name in self.net.topological_order()
            if (name in chosen if chosen is not None else self.net.node(name).is_trainable)
        ]

    def _scorer(self) -> Scorer:
        mode = self.options.scoring
        if mode == "auto":
            mode = "logprob" if self.engine.backend.capabilities.exact_logprobs else "accuracy"
        return LogprobScorer(self.engine) if mode == "logprob" else AccuracyScorer(self.engine)

    def check_data(self, train: Sequence[Example], dev: Sequence[Example]) -> None:
        """Everything about the data that can be known before a call: DataError otherwise."""
        self.net.targets(check_dataset(train, "train"), "train")
        self.net.targets(check_dataset(dev, "dev"), "dev")

    # -- one step ----------------------------------------------------------------------------

    def _setup(self) -> StepSetup:
        return StepSetup(
            self.net,
            self.engine,
            self.backward,
            self.options,
            self._scorer(),
            tuple(self.trainable_nodes),
        )

    def _phases(self, setup: StepSetup) -> list[StepPhase]:
        return step_phases(
            setup, memory=self.memory, rng=self.rng, step=self.steps_done, fits=self._fits
        )

    async def step(self, batch: Sequence[Example]) -> StepOutcome:
        """Decide new parameters from one minibatch; nothing is changed until `apply`.

        The step is its phases, run in order (`dlgraph.train.plan.step_phases`): the forward
        pass, each hidden node's posterior in reverse topological order, the proposals, the
        candidates' scores. When the engine traces, each part is a span: the forward pass,
        ``dlgraph.posterior`` per hidden node, ``dlgraph.propose`` (the candidates) and
        ``dlgraph.score`` (their ELBOs), each the parent of its calls."""
        phases = self._phases(self._setup())
        state = StepState(tuple(batch), self.net.targets(batch, "batch"))
        for phase in phases:
            await phase.run(state)
        return self._outcome(state, [wave for phase in phases for wave in phase.waves(state)])

    def _outcome(self, state: StepState, waves: Sequence[Wave]) -> StepOutcome:
        losses = [
            1.0 - self.net.node(name).accuracy(state.trace.outputs[name], state.targets[name])
            for name in self.outputs
        ]
        return StepOutcome(
            batch_loss=sum(losses) / len(losses),
            parameters={
                name: max(pairs, key=lambda pair: pair[1])[0]
                for name, pairs in state.scored.items()
            },
            scored=state.scored,
            posterior_entropy={name: p.mean_entropy for name, p in state.posteriors.items()},
            posteriors=state.posteriors,
            waves=tuple(waves),
        )

    def apply(self, outcome: StepOutcome) -> None:
        for name, parameter in outcome.parameters.items():
            self.net.set_parameter(name, parameter)
        for name, pairs in outcome.scored.items():
            self.memory.remember(name, dict(pairs))

    def _fits(self, name: str, candidate: Parameter, trace: Trace) -> bool:
        """Whether the candidate keeps the node's input within the model's context window
        (candidates that would not are left out, and logged)."""
        window = self.engine.backend.capabilities.context_window
        if window is None or not candidate.demonstrations:
            return True
        longest = max(range(len(trace)), key=lambda i: len(trace.rendered[name][i]))
        rendered = self.net.render(name, trace.values(longest), candidate)
        if self.engine.backend.count_tokens(rendered) + 64 <= window:
            return True
        logger.info(
            "node %r: a candidate with %d demonstrations exceeds the context window",
            name,
            len(candidate.demonstrations),
        )
        return False

    # -- a run -------------------------------------------------------------------------------

    async def fit(
        self,
        train: Sequence[Example],
        dev: Sequence[Example],
        steps: int,
        batch_size: int = 20,
        *,
        eval_every: int = 1,
        patience: int | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        on_step: StepCallback | None = None,
        metric: MetricLike = None,
    ) -> FitResult:
        """Train for `steps` steps and leave `net` holding the best prompts on dev.

        `metric` (as for `dg.evaluate`; default exact accuracy) decides which network is
        kept: every dev evaluation, the best network, early stopping, ``best.json``. The
        ELBO still scores each step's candidates by the log-likelihood of the targets.

        With `checkpoint_dir`, state is saved after every step and a later call resumes
        from it, repeating no finished step; `best.json` there is the best network. The
        calls of a killed process count in the engines' statistics and budgets when the
        engines were made with ``journal=`` (as ``dlgraph train`` makes them). A spent
        budget ends the run cleanly (``stopped="budget"``). Raises DataError for bad data,
        CheckpointError for a damaged or foreign checkpoint, or for a `checkpoint_dir` or
        `log_path` that cannot be written (before any call), BackendError for failed calls,
        MetricError for an unknown metric (before any call) or a metric that fails on a dev
        example (before anything of that step is saved).
        """
        chosen = resolve_metric(metric)
        schedule = Schedule(
            steps=steps, batch_size=batch_size, eval_every=eval_every, patience=patience
        )
        training = Training(
            self,
            train,
            dev,
            schedule,
            checkpoint_dir=checkpoint_dir,
            log_path=log_path,
            on_step=on_step,
            metric=chosen,
        )
        with self.engine.tracer.span("fit", steps=steps, batch_size=batch_size) as span:
            result = await training.execute()
            span.set("stopped", result.stopped)
        return result

    def estimate(
        self,
        steps: int,
        batch_size: int,
        train: Sequence[Example] = (),
        dev_size: int = 0,
        eval_every: int = 1,
        *,
        metric: MetricLike = None,
    ) -> Estimate:
        """Upper bounds on calls and tokens for a run (no cache hits, no pruning, no early
        stops), and the calls and tokens expected: the prior's, scaled by phase as this
        trainer's steps so far went (`tally`). An async `metric` may call models of its
        own, which neither figure counts and the estimate names in `unknown`."""
        chosen = resolve_metric(metric)
        schedule = Schedule(steps=steps, batch_size=batch_size, eval_every=eval_every)
        check_int("dev_size", dev_size, 0)
        if train:  # examples to measure prompt lengths on (none: the bound alone)
            train = check_dataset(train, "train")
        setup = self._setup()
        factors = self.tally.factors()
        found = estimate(self._phases(setup), setup, schedule, train, dev_size, factors)
        if not chosen.is_async:
            return found
        return attrs.evolve(found, unknown=(f"the calls of the async metric {chosen.name!r}",))

    def planned(self, step: int, batch: int, dev_size: int, evaluates: bool) -> list[Wave]:
        """What the prior expects step `step` (from 1) and its dev comparison to send, which
        the run's `tally` holds its calls against."""
        setup = self._setup()
        return step_waves(self._phases(setup), setup, batch, step, dev_size, evaluates)

    async def pace(self, examples: Sequence[Example], batch_size: int = 20) -> Pace:
        """Time a few calls of each action the run's waves hold, on each engine, so that
        ``estimate(...).seconds(pace)`` projects the run's wall time. Spends about twenty
        calls per engine, counted in the engines' ledgers and budgets."""
        if not examples:
            raise DataError("measuring the pace needs at least one training example")
        setup = self._setup()
        return await measure_pace(self._phases(setup), setup, examples, batch_size)
