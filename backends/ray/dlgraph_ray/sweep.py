"""``dlgraph sweep``: every combination of a grid of settings and seeds is a trial, a
``dlgraph train`` run with its own folder, run as a Ray task.

Each trial trains through `dlgraph.plugin.train_run`, as ``dlgraph train`` does, and its
result is the run's `RunResult` (``result.json``), read back with the same record.

Plain Ray tasks rather than Ray Tune: a trial already checkpoints after every step and resumes
without repeating one, and a finished trial leaves its ``result.json``; so a task retried after
its worker died resumes by itself, and a re-run sweep skips what has a result. Tune would add a
second checkpoint format, its own experiment state and storage layout, and a trial runner
between the user and the run, for a grid and a table that are a few lines here.

Each trial runs in a fresh worker process (``max_calls=1``), so an embedded model's memory
goes with it. Engines with an ``rpm`` or ``tpm`` share that limit across all trials through a
named actor (`dlgraph_ray.limit`), unless ``--no-shared-limit``.

The config, its data and the output folder must be on a filesystem that every Ray node sees.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import functools
import hashlib
import itertools
import json
import os
import re
import socket
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import anyio
import attrs
import ray
from ray.exceptions import RayError
from rich.console import Console
from rich.table import Table

from dlgraph.plugin import (
    ConfigError,
    DlgraphError,
    RunConfig,
    RunHooks,
    RunResult,
    StepRecord,
    Task,
    VariationalTrainer,
    check_number,
    parse_setting,
    prepare_folder,
    train_run,
    write_atomic,
)
from dlgraph_ray.cluster import check_address, join

Echo = Callable[[str], None]


def split_values(text: str) -> list[str]:
    """``1,2`` -> ["1", "2"]; commas inside brackets or quotes stay (``[1,2],[3]``)."""
    values, depth, quote, start = [], 0, "", 0
    for index, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(text[start:index])
            start = index + 1
    values.append(text[start:])
    return [value.strip() for value in values]


SEED = ("train", "seed")
"""The key each trial's ``--seeds`` value sets, last: a grid or ``--set`` of it would be
overridden, running identical trials."""


def refuse_seed(option: str, setting: str, keys: tuple[str, ...]) -> None:
    if keys == SEED:
        raise ConfigError(
            f"{option} {setting!r}: a sweep sets train.seed from --seeds (one trial per seed); "
            "give the seeds there, as in --seeds 1 2"
        )


def parse_axis(spec: str) -> list[str]:
    """``section.key=v1,v2`` -> the settings ``section.key=v1``, ``section.key=v2``; values
    are compared as the config reads them, so ``1`` and ``+1`` are one value given twice."""
    name, equals, values = spec.partition("=")
    if not equals or not values.strip():
        raise ConfigError(f"--grid {spec!r}: expected section.key=value1,value2")
    settings = [f"{name.strip()}={value}" for value in split_values(values)]
    values_read: list[Any] = []
    for setting in settings:
        if not setting.partition("=")[2]:
            raise ConfigError(f"--grid {spec!r}: an empty value")
        keys, value = parse_setting(setting)
        refuse_seed("--grid", spec, keys)
        for earlier, seen in zip(settings, values_read, strict=False):
            if _same(value, seen):
                raise ConfigError(
                    f"--grid {spec!r}: a value is given twice "
                    f"({earlier.partition('=')[2]!r} and {setting.partition('=')[2]!r})"
                )
        values_read.append(value)
    return settings


def _same(one: object, other: object) -> bool:
    """Whether two parsed values set a key alike: numbers by value (``1``, ``+1``, ``0x1``,
    ``1.0``), but ``true`` never equals ``1``, in lists and tables too."""
    if isinstance(one, bool) or isinstance(other, bool):
        return type(one) is type(other) and one == other
    if isinstance(one, list) and isinstance(other, list):
        return len(one) == len(other) and all(map(_same, one, other))
    if isinstance(one, dict) and isinstance(other, dict):
        return one.keys() == other.keys() and all(_same(one[k], other[k]) for k in one)
    return one == other


@attrs.frozen
class Trial:
    """One combination of the grid, with one seed."""

    settings: tuple[str, ...]
    seed: int

    @property
    def setting(self) -> str:
        return " ".join(self.settings) or "(config)"

    def overrides(self) -> list[str]:
        return [*self.settings, f"train.seed={self.seed}"]

    def folder(self, root: Path) -> Path:
        slug = "+".join(self.settings) or "config"
        safe = re.sub(r"[^A-Za-z0-9._=,+-]", "_", slug)
        if safe != slug or len(safe) > 80:
            safe = safe[:80] + "-" + hashlib.sha256(slug.encode()).hexdigest()[:8]
        return root / safe / f"seed-{self.seed}"


def plan(grid: Sequence[str], seeds: Sequence[int]) -> list[Trial]:
    axes = [parse_axis(spec) for spec in grid]
    keys = [axis[0].partition("=")[0] for axis in axes]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--grid: a key is given twice ({', '.join(keys)})")
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: a seed is given twice ({', '.join(map(str, seeds))})")
    return [
        Trial(tuple(combination), seed)
        for combination in itertools.product(*axes)
        for seed in seeds
    ]


def run_trial(config: str, overrides: list[str], folder: str) -> dict[str, Any]:
    """A trial in a Ray worker: a training run resumed into its folder (as ``dlgraph train
    --resume`` does), followed in ``train.log``; each attempt (a retry after the worker died is another) is logged in
    ``attempts.jsonl``. Returns the run's ``result.json``, or its error."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "trial.lock").open("a") as lock:  # "a": a file of that name is never emptied
        # One writer per folder: a worker left over from a killed driver holds the lock until
        # Ray has stopped it, and this attempt resumes from what it left.
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _train(config, overrides, out)


@attrs.define
class _Logged(RunHooks):
    """A trial's run as its ``train.log`` tells it: a line when it starts and one per step."""

    log: TextIO

    def line(self, text: str) -> None:
        self.log.write(text + "\n")
        self.log.flush()

    async def started(self, trainer: VariationalTrainer, task: Task) -> None:
        self.line(
            f"{task.name}: {len(task.train)} train, {len(task.dev)} dev, {len(task.test)} test"
        )

    @contextmanager
    def training(self, steps: int) -> Iterator[Callable[[StepRecord], None]]:
        def on_step(record: StepRecord) -> None:
            dev = (
                "" if record.dev_score is None else f", dev {record.metric} {record.dev_score:.3f}"
            )
            self.line(f"step {record.step}: batch loss {record.batch_loss:.3f}{dev}")

        yield on_step


def _train(config: str, overrides: list[str], out: Path) -> dict[str, Any]:
    """The trial's run into `out` through `train_run`, the function ``dlgraph train`` uses:
    its `RunResult` as a table row, or ``{"error": "error: ..."}`` (also the log's last line)."""
    attempt = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    with (out / "attempts.jsonl").open("a", encoding="utf-8") as attempts:
        attempts.write(json.dumps(attempt) + "\n")
    with (out / "train.log").open("a", encoding="utf-8") as log:
        hooks = _Logged(log)
        try:
            run = functools.partial(
                train_run, RunConfig.read(config, overrides), out=out, resume=True, hooks=hooks
            )
            trained = anyio.run(run)
        except DlgraphError as error:
            message = "error: " + " ".join(str(error).split("\n"))
            hooks.line(message)
            return {"error": message}
        hooks.line(f"finished: {json.dumps(trained.result.to_json())}")
    return trained.result.to_json()


SWEEP_FILES = frozenset({"trials.jsonl", "summary.jsonl", "summary.csv", "summary.png"})
"""What a sweep writes in its folder (besides one folder per setting)."""


def read_result(path: Path) -> dict[str, Any]:
    """A finished trial's result.json (`RunResult.read`, checked field by field): a file
    that is not what a training run writes is refused, naming it, rather than re-run."""
    try:
        return RunResult.read(path).to_json()
    except ConfigError as error:
        raise ConfigError(f"{error}; delete it to run this trial again") from None


@attrs.frozen
class Outcome:
    trial: Trial
    result: dict[str, Any]
    """The run's result.json, or ``{"error": ...}``."""
    ran: bool
    """False when the trial had finished in an earlier sweep."""

    @property
    def failed(self) -> bool:
        return "error" in self.result

    def row(self) -> dict[str, Any]:
        return {**self.result, "setting": self.trial.setting, "seed": self.trial.seed}


@attrs.frozen
class SweepResult:
    root: Path
    outcomes: list[Outcome]
    """Every trial, in grid order."""
    summary: list[dict[str, Any]]
    """Per setting (`summarize`)."""
    ran: int
    """Trials run by this sweep (the others had finished before)."""
    plotted: bool


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    """Per setting, in grid order: the metric after training (mean and sd over seeds; the
    metric named by each trial's result, "exact" being accuracy) and the mean calls, tokens
    and cost of a trial."""
    settings = list(dict.fromkeys(outcome.trial.setting for outcome in outcomes))
    rows = []
    for setting in settings:
        mine = [o for o in outcomes if o.trial.setting == setting]
        done = [o.result for o in mine if not o.failed]
        row: dict[str, Any] = {
            "setting": setting,
            "seeds": len(done),
            "failed": len(mine) - len(done),
            "metric": ", ".join(sorted({r.get("metric", "exact") for r in done})) or None,
        }
        for split in ("dev", "test"):
            values = [r["after"][split] for r in done if split in r["after"]]
            row[f"{split}_mean"], row[f"{split}_sd"] = _mean_sd(values)
        for counter in ("calls", "tokens", "cost"):
            row[counter] = statistics.fmean(r[counter] for r in done) if done else None
        rows.append(row)
    return rows


def _write(root: Path, outcomes: Sequence[Outcome], summary: list[dict[str, Any]]) -> None:
    write_atomic(root / "trials.jsonl", "".join(json.dumps(o.row()) + "\n" for o in outcomes))
    write_atomic(root / "summary.jsonl", "".join(json.dumps(row) + "\n" for row in summary))
    with (root / "summary.csv").open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)


def plot(summary: list[dict[str, Any]], path: Path) -> bool:
    """The metric per setting (mean ± sd over seeds); False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axis = plt.subplots(figsize=(max(5, 1.2 * len(summary) + 2), 4))
    positions = range(len(summary))
    for offset, split in ((-0.1, "dev"), (0.1, "test")):
        means = [row[f"{split}_mean"] for row in summary]
        sds = [row[f"{split}_sd"] or 0.0 for row in summary]
        shown = [
            (p + offset, m, s)
            for p, m, s in zip(positions, means, sds, strict=True)
            if m is not None
        ]
        if shown:
            xs, ys, es = zip(*shown, strict=True)
            axis.errorbar(xs, ys, yerr=es, fmt="o", capsize=4, label=split)
    axis.set_xticks(list(positions), [row["setting"] for row in summary], rotation=20, ha="right")
    metrics = {row["metric"] for row in summary if row["metric"]}
    measured = _measured(metrics.pop()) if len(metrics) == 1 else "score"
    axis.set_ylabel(f"{measured} after training")
    if axis.get_legend_handles_labels()[0]:
        axis.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return True


def _shared(config: RunConfig) -> list[str]:
    """Settings that make the trials' limited engines share one limit."""
    settings = []
    for section, engine in (("engine", config.forward), ("backward", config.backward)):
        if engine is None:
            continue
        options = engine.engine_options
        if (options.get("rpm") or options.get("tpm")) and "shared_limit" not in options:
            settings.append(f'{section}.shared_limit="ray"')
    return settings


def _check_options(cpus: object, gpus: object, retries: object, address: object) -> None:
    for name, value in (("--cpus-per-trial", cpus), ("--gpus-per-trial", gpus)):
        try:
            check_number(name, value, 0)  # NaN and infinity too: Ray would take them
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a finite number >= 0, got {value!r}") from None
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"--retries: expected a whole number >= 0, got {retries!r}")
    try:
        check_address(address)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"--{error}") from None


def sweep(
    config: str | os.PathLike[str],
    grid: Sequence[str] = (),
    seeds: Sequence[int] = (0,),
    *,
    settings: Sequence[str] = (),
    out: str | os.PathLike[str] | None = None,
    address: str | None = None,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    retries: int = 3,
    shared_limit: bool = True,
    echo: Echo = print,
) -> SweepResult:
    """Run every trial not finished yet, on Ray; write trials.jsonl, summary.csv,
    summary.jsonl and summary.png (with matplotlib) into the sweep's folder (default: the
    config's output folder + ``-sweep``)."""
    _check_options(cpus_per_trial, gpus_per_trial, retries, address)
    for setting in settings:
        refuse_seed("--set", setting, parse_setting(setting)[0])
    path = Path(config).resolve()
    trials = plan(grid, seeds)
    overrides = {}
    for trial in trials:  # every trial's config is checked before any runs
        try:
            checked = RunConfig.read(path, [*settings, *trial.overrides()])
            checked.check()
        except ConfigError as error:
            raise ConfigError(f"trial {trial.setting} seed {trial.seed}: {error}") from None
        extra = _shared(checked) if shared_limit else []
        overrides[trial] = [*settings, *trial.overrides(), *extra]
    root = (Path(out) if out is not None else Path(f"{checked.output_dir}-sweep")).resolve()
    prepare_folder(root, "sweep", SWEEP_FILES, writes=SWEEP_FILES)
    results: dict[Trial, Outcome] = {}
    for trial in trials:
        finished = trial.folder(root) / "result.json"
        if finished.is_file():
            results[trial] = Outcome(trial, read_result(finished), False)
    pending = [trial for trial in trials if trial not in results]
    echo(f"{len(trials)} trials: {len(results)} finished before, {len(pending)} to run in {root}")
    if pending:
        results |= _run(
            path, pending, overrides, root, address, cpus_per_trial, gpus_per_trial, retries, echo
        )
    outcomes = [results[trial] for trial in trials]
    summary = summarize(outcomes)
    _write(root, outcomes, summary)
    plotted = plot(summary, root / "summary.png")
    return SweepResult(root, outcomes, summary, ran=len(pending), plotted=plotted)


def _run(
    path: Path,
    pending: list[Trial],
    overrides: dict[Trial, list[str]],
    root: Path,
    address: str | None,
    cpus: float,
    gpus: float,
    retries: int,
    echo: Echo,
) -> dict[Trial, Outcome]:
    started_ray = join(address)
    try:
        task = ray.remote(max_calls=1)(run_trial).options(
            num_cpus=cpus, num_gpus=gpus, max_retries=retries, retry_exceptions=False
        )
        refs = {
            task.remote(str(path), overrides[trial], str(trial.folder(root))): trial
            for trial in pending
        }
        started = time.monotonic()
        results: dict[Trial, Outcome] = {}
        waiting = list(refs)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            trial = refs[ready[0]]
            try:
                result = ray.get(ready[0])
            except RayError as error:
                result = {"error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
            results[trial] = Outcome(trial, result, True)
            echo(
                _progress_line(
                    len(results), len(pending), trial, result, time.monotonic() - started
                )
            )
        return results
    finally:
        if started_ray:
            ray.shutdown()


def _progress_line(
    done: int, total: int, trial: Trial, result: dict[str, Any], seconds: float
) -> str:
    head = f"[{done}/{total}] {trial.setting} seed {trial.seed}"
    if "error" in result:
        return f"{head}: failed: {result['error']}"
    metric = result.get("metric", "exact")
    scores = ", ".join(f"{split} {value:.3f}" for split, value in result["after"].items())
    return f"{head}: {metric} {scores}, {result['calls']:,} calls ({seconds:.0f} s into the sweep)"


def _cell(mean: float | None, sd: float | None) -> str:
    return "-" if mean is None else f"{mean:.3f} ± {sd or 0.0:.3f}"


def _measured(metric: str) -> str:
    return "accuracy" if metric == "exact" else metric


def table(summary: list[dict[str, Any]]) -> Table:
    """The summary, titled by its metric; with several (a grid over ``train.metric``), a
    column names each setting's."""
    metrics = sorted({row["metric"] for row in summary if row["metric"]})
    several = len(metrics) > 1
    measured = "score" if several else _measured(metrics[0] if metrics else "exact")
    shown = Table(title=f"{measured} after training, mean ± sd over seeds")
    columns = ["setting", "seeds", "dev", "test", "calls", "tokens", "cost", "failed"]
    if several:
        columns.insert(1, "metric")
    for column in columns:
        if column == "setting":
            widest = max(len(row["setting"]) for row in summary)
            shown.add_column(column, overflow="fold", min_width=min(widest, 48))
        else:
            shown.add_column(column, justify="right", no_wrap=True)
    for row in summary:
        cells = [
            row["setting"],
            str(row["seeds"]),
            _cell(row["dev_mean"], row["dev_sd"]),
            _cell(row["test_mean"], row["test_sd"]),
            "-" if row["calls"] is None else f"{row['calls']:,.0f}",
            "-" if row["tokens"] is None else f"{row['tokens']:,.0f}",
            "-" if row["cost"] is None else f"{row['cost']:.4f}",
            str(row["failed"]),
        ]
        if several:
            cells.insert(1, row["metric"] or "-")
        shown.add_row(*cells)
    return shown


def main(args: argparse.Namespace) -> int:
    console = Console(soft_wrap=True)
    result = sweep(
        args.config,
        args.grid,
        args.seeds,
        settings=args.set,
        out=args.out,
        address=args.address,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        retries=args.retries,
        shared_limit=not args.no_shared_limit,
        echo=lambda line: console.print(line, markup=False, highlight=False),
    )
    console.print(table(result.summary))
    files = "trials.jsonl, summary.csv, summary.jsonl" + (", summary.png" if result.plotted else "")
    console.print(f"{files} in {result.root}", markup=False, highlight=False)
    if not result.plotted:
        console.print("no plot: pip install matplotlib", markup=False)
    return 1 if any(outcome.failed for outcome in result.outcomes) else 0
