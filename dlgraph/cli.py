"""The `dlgraph` command: train, eval, show and estimate, from a run configuration file.

The only place that starts an event loop, prints, or configures logging.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

import dlgraph as dg
from dlgraph._entry_points import COMMANDS
from dlgraph._untrusted import parse_json
from dlgraph.config import RunConfig
from dlgraph.metrics import BUILTIN as BUILTIN_METRICS
from dlgraph.runs import (
    EVALUATION_CHUNK,
    RunHooks,
    TrainedRun,
    check_run,
    evaluate_in_chunks,
    train_run,
)
from dlgraph.templates import BUILTIN
from dlgraph.train.estimate import forward_pass
from dlgraph.train.pace import Pace, duration

console = Console(soft_wrap=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


@attrs.define
class _Shown(RunHooks):
    """A run as the command shows it: the estimate (and the projected wall time, unless
    `probe` is off) before it starts, progress bars, a line per step."""

    config: RunConfig
    probe: bool

    async def started(self, trainer: dg.VariationalTrainer, task: dg.data.Task) -> None:
        estimate = _estimate(trainer, self.config, task)
        console.print(
            f"[bold]{task.name}[/]: {len(task.train)} train, {len(task.dev)} dev, "
            f"{len(task.test)} test; {_estimate_line(estimate)}"
        )
        if self.probe:
            batch_size = self.config.schedule.batch_size
            console.print(
                await _projection(trainer, task, estimate, batch_size, cli_evaluations=True)
            )

    @contextmanager
    def evaluating(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        with _progress() as progress:
            bar = progress.add_task(label, total=total)
            yield lambda done: progress.advance(bar, done)

    @contextmanager
    def training(self, steps: int) -> Iterator[Callable[[dg.StepRecord], None]]:
        with _progress() as progress:
            bar = progress.add_task("training", total=steps)

            def on_step(record: dg.StepRecord) -> None:
                progress.update(bar, completed=record.step)
                dev = "" if record.dev_score is None else f", dev {_named(record)}"
                progress.console.print(
                    f"step {record.step}: batch loss {record.batch_loss:.3f}{dev}", markup=False
                )

            yield on_step


def _named(record: dg.StepRecord) -> str:
    """A step's dev score as the step line shows it: ``0.812`` or ``number 0.812``."""
    shown = f"{record.dev_score:.3f}"
    return shown if record.metric == "exact" else f"{record.metric} {shown}"


def _estimate(trainer: dg.VariationalTrainer, config: RunConfig, task: dg.data.Task) -> dg.Estimate:
    run = config.schedule
    return trainer.estimate(
        run.steps,
        run.batch_size,
        task.train,
        len(task.dev),
        run.eval_every,
        metric=config.metric,
    )


def _estimate_line(estimate: dg.Estimate) -> str:
    line = f"at most {estimate.calls:,} calls and {estimate.tokens:,} tokens"
    if estimate.expected_calls < estimate.calls:
        line += (
            f" (expected {estimate.expected_calls:,} calls and {estimate.expected_tokens:,} tokens)"
        )
    if estimate.backward_calls:
        line += (
            f" on the forward model, {estimate.backward_calls:,} calls and "
            f"{estimate.backward_tokens:,} tokens on the backward model"
        )
    for unknown in estimate.unknown:
        line += f"; not counted: {unknown}"
    return line


async def _train(args: argparse.Namespace) -> None:
    if args.plot and Path(args.plot).is_dir():
        raise dg.ConfigError(f"--plot {args.plot}: is a folder; give the path of a PNG file")
    config = RunConfig.read(args.config, args.set)
    hooks = _Shown(config, probe=not args.no_probe)
    trained = await train_run(config, out=args.out, resume=args.resume, hooks=hooks)
    _report(trained)
    if args.plot:
        _plot(trained.fit, dict(trained.result.before), Path(args.plot))


def _report(trained: TrainedRun) -> None:
    result, fit = trained.result, trained.fit
    measured = "accuracy" if result.metric == "exact" else f"metric {result.metric}"
    table = Table(title=_plain(f"{result.task}: {measured} before and after training"))
    table.add_column("split")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for split in result.before:
        table.add_row(split, f"{result.before[split]:.3f}", f"{result.after[split]:.3f}")
    console.print(table)
    spent = Table(title="calls by model and phase")
    for column in ("model", "phase", "calls", "cache hits", "tokens"):
        spent.add_column(column, justify="left" if column in ("model", "phase") else "right")
    for model, ledger in trained.ledgers.items():
        for phase, usage in sorted(ledger.by_phase().items()):
            spent.add_row(
                model, phase, f"{usage.calls:,}", f"{usage.cache_hits:,}", f"{usage.tokens:,}"
            )
    console.print(spent)
    console.print(f"time {result.seconds:.0f} s, stopped: {fit.stopped}")
    console.print(_plain(f"learnt network: {trained.network}"))
    for name, parameter in fit.network.parameters().items():
        console.print(_plain(f"  {name}: {parameter.describe()}"), highlight=False)


def _plot(result: dg.FitResult, before: dict[str, float], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise dg.ConfigError("--plot needs matplotlib: pip install 'dlgraph[plot]'") from None
    steps = [0] + [r.step for r in result.history if r.dev_score is not None]
    dev = [before.get("dev", 0.0)] + [
        r.dev_score for r in result.history if r.dev_score is not None
    ]
    loss = [r.batch_loss for r in result.history]
    figure, axis = plt.subplots(figsize=(6, 4))
    label = "dev accuracy" if result.metric == "exact" else f"dev {result.metric}"
    axis.plot(steps, dev, marker="o", label=label)
    axis.plot(
        [r.step for r in result.history],
        [1 - value for value in loss],
        marker="x",
        label="batch accuracy (before step)",
    )
    axis.set_xlabel("step")
    if result.metric in BUILTIN_METRICS:  # their scores lie in [0, 1]; a user's may not
        axis.set_ylim(0, 1)
    axis.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    console.print(_plain(f"learning curve: {path}"))


async def _eval(args: argparse.Namespace) -> None:
    config = RunConfig.read(args.config, args.set)
    task = config.task()
    net = _loaded(args.net) if args.net else config.build_network(task)
    data = getattr(task, args.split)
    net.node(net.output_nodes()[0]).targets(data, args.split)
    hooks = _Shown(config, probe=False)
    async with config.engine() as engine:
        score = await evaluate_in_chunks(net, engine, data, args.split, hooks, config.metric)
    measured = "accuracy" if score.metric == "exact" else f"metric {score.metric}"
    console.print(
        _plain(f"{task.name} {args.split} {measured}: {score:.3f} ({len(data)} examples)"),
        highlight=False,
    )
    for name, report in score.reports.items():
        console.print(_report_table(name, report))


def _report_table(name: str, report: dg.ClassReport) -> Table:
    """Precision and recall per class, then the confusion: a row per target class, a column
    per prediction."""
    table = Table(title=_plain(f"{name}: per class (rows: target, columns: predicted)"))
    for column in ("class", "precision", "recall", "support", *report.columns):
        table.add_column(_plain(column), justify="left" if column == "class" else "right")
    for label in report.classes:
        precision, recall = report.precision(label), report.recall(label)
        table.add_row(
            _plain(label),
            "-" if precision is None else f"{precision:.3f}",
            "-" if recall is None else f"{recall:.3f}",
            str(report.support(label)),
            *(str(report.count(label, predicted)) for predicted in report.columns),
        )
    return table


def _loaded(path: str) -> dg.Network:
    """A network file that must also validate; errors name the file."""
    net = dg.Network.load(path)
    try:
        net.validate()
    except dg.GraphError as error:
        raise dg.GraphError(f"{path}: {error}") from error
    return net


async def _estimate_command(args: argparse.Namespace) -> None:
    config = RunConfig.read(args.config, args.set)
    checked = check_run(config)
    trainer = checked.trainer(config)
    estimate = _estimate(trainer, config, checked.task)
    console.print(
        f"{config.schedule.steps} steps of batch {config.schedule.batch_size}: {_estimate_line(estimate)}"
    )
    if not args.no_probe:
        async with checked.opened():
            console.print(
                await _projection(trainer, checked.task, estimate, config.schedule.batch_size)
            )


async def _projection(
    trainer: dg.VariationalTrainer,
    task: dg.data.Task,
    estimate: dg.Estimate,
    batch_size: int,
    *,
    cli_evaluations: bool = False,
) -> str:
    """The projected wall time, from a few timed calls; with `cli_evaluations`, the
    before-and-after evaluations of `dlgraph train` count too."""
    pace = await trainer.pace(task.train, batch_size)
    waves = list(estimate.waves)
    if cli_evaluations:
        for split in (task.dev, task.test):
            for start in range(0, len(split), EVALUATION_CHUNK):
                size = min(EVALUATION_CHUNK, len(split) - start)
                waves += 2 * forward_pass(trainer.net, trainer.engine.backend.capabilities, size)
    return f"projected wall time: about {duration(pace.seconds(waves))} ({_measured(pace)})"


def _measured(pace: Pace) -> str:
    """The probe's measurements, as the user reads them."""
    engines = {"forward": pace.forward} | (
        {"backward": pace.backward} if pace.backward is not pace.forward else {}
    )
    parts = [
        f"{label} {kind} {latency.alone_s:.2f} s alone, {latency.together} at once "
        f"{latency.together_s:.2f} s"
        for label, measured in engines.items()
        for kind, latency in measured.latency.items()
    ]
    return "measured: " + "; ".join(parts)


_UNSHOWN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""Characters a terminal acts on instead of showing: control characters (escape sequences
clear the screen, write the clipboard, hide links; a carriage return overwrites a line) and
the marks that reorder text (bidirectional overrides). Tabs and line breaks stay."""


def _plain(text: str) -> Text:
    """Text from a file or a model, shown as it is: never read as Rich markup, and with the
    characters a terminal would act on written as escapes (``\\x1b``)."""
    return Text(_UNSHOWN.sub(_escaped, text))


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _show(args: argparse.Namespace) -> None:
    path = Path(args.network)
    net = dg.Network.load(path)
    table = Table(title=_plain(str(path)))
    for column in ("node", "kind", "trainable", "prompt"):
        table.add_column(column)
    for name, node in net.nodes.items():
        table.add_row(
            _plain(name),
            _plain(node.kind.describe()),
            "yes" if node.is_trainable else "no",
            _plain(node.parameter.describe()),
        )
    console.print(table)
    for name, node in net.nodes.items():
        for number, shown in enumerate(node.demonstrations, 1):
            console.print(_plain(f"demonstration {number} of {name}:"))
            console.print(_plain(f"{shown.input}\n-> {shown.output}"), highlight=False)
    for name, node in net.nodes.items():
        kind = "built-in" if node.template in BUILTIN else "custom"
        source = node.template if kind == "built-in" else ""
        console.print(_plain(f"template of {name} ({kind} {source}):"), highlight=False)
        console.print(_plain(node.compiled.source), highlight=False)
    console.print(_plain("```mermaid\n" + net.to_mermaid() + "```"), highlight=False)
    history = path.parent / "steps.jsonl"
    if history.is_file():
        rows = _history_rows(history)
        steps = Table(title="history")
        for column in ("step", "batch loss", "dev", "metric", "calls", "tokens"):
            steps.add_column(column, justify="right")
        for row in rows:
            dev = "" if row["dev_score"] is None else f"{row['dev_score']:.3f}"
            steps.add_row(
                str(row["step"]),
                f"{row['batch_loss']:.3f}",
                dev,
                _plain(row["metric"]),
                str(row["calls"]),
                str(row["tokens"]),
            )
        console.print(steps)


def _history_rows(path: Path) -> list[dict[str, Any]]:
    """Whole step records of a step log; a line cut short by a kill is skipped and said."""
    rows = []
    for number, line in enumerate(
        path.read_text(encoding="utf-8", errors="replace").splitlines(), 1
    ):
        if not line.strip():
            continue
        try:
            rows.append(dg.StepRecord.from_json(parse_json(line)).to_json())
        except (ValueError, TypeError):
            console.print(_plain(f"{path}:{number}: not a whole step record; skipped"))
    return rows


NO_PROBE = "do not time a few calls to project the wall time (about 20 calls per engine)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlgraph", description="Train graphs of LLM calls.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO")
    commands = parser.add_subparsers(dest="command", required=True)
    settings = argparse.ArgumentParser(add_help=False)
    settings.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a value of the config (TOML syntax: train.steps=5, engine.rpm=600)",
    )
    train = commands.add_parser(
        "train", parents=[settings], help="train the network of a run configuration"
    )
    train.add_argument("config")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.add_argument("--plot", metavar="PNG", help="write a learning curve")
    train.add_argument(
        "--out", metavar="DIR", help="output folder (default: the config's [output] dir)"
    )
    train.add_argument("--no-probe", action="store_true", help=NO_PROBE)
    evaluate = commands.add_parser(
        "eval",
        parents=[settings],
        help="a network's score on a split ([train] metric; accuracy by default)",
    )
    evaluate.add_argument("config")
    evaluate.add_argument(
        "--net", metavar="NET.json", help="a saved network (default: the config's)"
    )
    evaluate.add_argument("--split", choices=("train", "dev", "test"), default="test")
    show = commands.add_parser("show", help="prompts, graph and history of a saved network")
    show.add_argument("network")
    estimate = commands.add_parser(
        "estimate",
        parents=[settings],
        help="calls, tokens and wall time a training run will need",
    )
    estimate.add_argument("config")
    estimate.add_argument("--no-probe", action="store_true", help=NO_PROBE)
    for add_command in COMMANDS.load_all():  # `dlgraph.plugin.Commands` says what they get
        add_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handlers: dict[str, Any] = {"train": _train, "eval": _eval, "estimate": _estimate_command}
    try:
        if args.command == "show":
            _show(args)
        elif "handler" in vars(args):
            return int(args.handler(args) or 0)
        else:
            anyio.run(handlers[args.command], args)
    except dg.DlgraphError as error:
        if args.verbose:
            console.print_exception()
        message = " ".join(str(error).split("\n"))
        console.print(_plain(f"error: {message}"), highlight=False, style="red")
        return 2
    except KeyboardInterrupt:
        console.print("interrupted; resume with --resume")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
