"""Every install line of the README, each in a fresh virtual environment of its own, followed by
what a user does first with what it installed: an import and one real call.

    python3 scripts/check_installs.py --server-python .venv/bin/python

CI runs it after the tests. A README line that installs something this script has no check for
fails it, so no install step of the README goes untested. The OpenAI-compatible plugin talks to
the simulated server, run by `--server-python` (an environment with dlgraph-sim[server]); the
Ray plugin hosts the scripted model (dlgraph-sim, which needs nothing but the core) in a replica.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTALL = re.compile(r"^\s*(pip install [^#\n]+?)\s*(?:#.*)?$", re.MULTILINE)

CORE = """
import anyio, dlgraph as dg

class Echo(dg.Backend):
    async def generate(self, request): return "yes"
    async def logprob(self, request): return -1.0

async def main():
    net = dg.Network()
    net.add_node("answer", prompt="Answer.", classes=["yes", "no"])
    net.add_edge(dg.INPUT, "answer")
    async with dg.Engine(Echo()) as engine:
        assert await net.predict(engine, ["x"]) in (["yes"], ["no"])
        assert engine.statistics().total.calls == 2

anyio.run(main)
"""

SIM = """
import anyio, dlgraph as dg

async def main():
    async with dg.Engine(dg.connect("sim", generate={"": "hello"})) as engine:
        assert await engine.generate("Say hi.", max_tokens=4) == "hello"

anyio.run(main)
"""

OPENAI = """
import anyio, sys, dlgraph as dg

async def main():
    backend = dg.connect("openai", profile="sim", base_url=sys.argv[1], model="m", api_key="k")
    async with dg.Engine(backend) as engine:
        assert isinstance(await engine.generate("Say hi.", max_tokens=4), str)
        assert await engine.logprob("The sky is", " blue") < 0

anyio.run(main)
"""

LLAMACPP = """
import anyio, dlgraph as dg

async def main():
    async with dg.Engine(dg.connect("llamacpp", n_ctx=256)) as engine:
        assert await engine.logprob("The capital of France is", " Paris") < 0
        assert (await engine.generate("Count: one, two,", max_tokens=4)).strip()
        print("extra buffers:", engine.backend.verdict)

anyio.run(main)
"""

RAY = """
import anyio, dlgraph as dg

async def main():
    backend = dg.connect("ray", backend="sim", replicas=1, num_cpus=0.5, generate={"": "hi"})
    async with dg.Engine(backend) as engine:
        assert await engine.generate("Say hi.", max_tokens=4) == "hi"

anyio.run(main)
"""

CHECKS: dict[str, list[list[str]]] = {
    "dlgraph": [["python", "-c", CORE], ["dlgraph", "show", "--help"]],
    "dlgraph-sim": [["python", "-c", SIM]],
    "dlgraph-openai": [["python", "-c", OPENAI, "{server}"]],
    "dlgraph-llamacpp": [["python", "-c", LLAMACPP]],
    "dlgraph-ray": [
        ["pip", "install", "-e", "backends/sim"],  # the model its replica hosts
        ["python", "-c", RAY],
        ["dlgraph", "sweep", "--help"],
    ],
}


EXTRAS = {
    "yaml": "yaml",
    "plot": "matplotlib.pyplot",
    "paper": "numpy",
    "server": "dlgraph_sim.server",
}
"""What each extra makes importable."""


def distributions(line: str) -> list[tuple[str, list[str]]]:
    """What a README line installs: each ``-e PATH[extras]`` is a project here, with extras."""
    found = []
    for word in shlex.split(line)[2:]:
        if word.startswith("-"):
            continue
        path, _, extras = word.partition("[")
        project = tomllib.loads((ROOT / path / "pyproject.toml").read_text())["project"]
        found.append((project["name"], [e for e in extras.rstrip("]").split(",") if e]))
    return found


def run(command: list[str], venv: Path, server: str) -> None:
    program, *arguments = (part.replace("{server}", server) for part in command)
    executable = venv / "bin" / program
    started = time.monotonic()
    done = subprocess.run([str(executable), *arguments], cwd=ROOT, capture_output=True, text=True)
    shown = " ".join(command[:2]) + (" " + " ".join(command[2:]) if command[0] == "pip" else " ...")
    print(f"  {shown}: exit {done.returncode} in {time.monotonic() - started:.0f} s", flush=True)
    if done.returncode != 0:
        raise SystemExit(f"FAILED: {shown}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def check(line: str, server: str) -> None:
    installed = distributions(line)
    unknown = [name for name, extras in installed if name not in CHECKS]
    unknown += [extra for _, extras in installed for extra in extras if extra not in EXTRAS]
    if unknown:
        raise SystemExit(f"README line {line!r} installs {unknown}, which nothing here checks")
    with tempfile.TemporaryDirectory(prefix="dlgraph-install-") as folder:
        venv = Path(folder) / "venv"
        print(f"{line}  (fresh venv)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        run(["pip", "--disable-pip-version-check", *shlex.split(line)[1:]], venv, server)
        for name, extras in installed:
            for command in CHECKS[name]:
                run(command, venv, server)
            for extra in extras:
                run(["python", "-c", f"import {EXTRAS[extra]}"], venv, server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-python", required=True, help="a Python with dlgraph-sim[server]")
    args = parser.parse_args()
    lines = INSTALL.findall((ROOT / "README.md").read_text())
    if not lines:
        raise SystemExit("README.md has no 'pip install' line")
    server = subprocess.Popen(
        [args.server_python, "-m", "dlgraph_sim.server", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        announced = server.stdout.readline()
        if not announced.startswith("serving "):
            raise SystemExit(f"the simulated server did not start: {announced!r}")
        url = announced.split()[1]
        for line in dict.fromkeys(lines):
            check(line, url)
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"{len(dict.fromkeys(lines))} install lines of the README checked")


if __name__ == "__main__":
    main()
