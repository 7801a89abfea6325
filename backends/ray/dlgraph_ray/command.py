"""The ``dlgraph sweep`` command's arguments (entry point group ``dlgraph.commands``); the
sweep itself, and Ray, are imported only when it runs."""

from __future__ import annotations

import argparse

from dlgraph.plugin import Commands


def add_command(commands: Commands) -> None:
    parser = commands.add_parser(
        "sweep", help="train every combination of a grid of settings and seeds, on Ray"
    )
    parser.add_argument("config")
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="SECTION.KEY=V1,V2",
        help="values to try for a key (TOML syntax; repeat for more keys)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="SEED")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="for every trial"
    )
    parser.add_argument("--address", help="a Ray cluster (default: a local Ray, started here)")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="the sweep's folder (default: the config's output dir + -sweep)",
    )
    parser.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="N")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="N")
    parser.add_argument(
        "--retries", type=int, default=3, help="times a trial whose worker died is retried"
    )
    parser.add_argument(
        "--no-shared-limit",
        action="store_true",
        help="do not share the engines' rpm/tpm across trials",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dlgraph_ray.sweep import main

    return main(args)
