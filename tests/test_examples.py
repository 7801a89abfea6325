"""Every example runs, on small sizes, with the real embedded model."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # real model runs on two cores


def run(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_dln1_classification_example_trains_and_reports() -> None:
    out = run(
        "dln1_classification.py",
        "--train",
        "20",
        "--dev",
        "8",
        "--test",
        "8",
        "--steps",
        "1",
        "--batch",
        "4",
        "--prompts",
        "1",
    )
    assert "subj: test accuracy" in out and "learnt prompt:" in out


def test_dln2_navigation_example_trains_both_nodes() -> None:
    out = run(
        "dln2_navigation.py",
        "--train",
        "8",
        "--dev",
        "4",
        "--test",
        "4",
        "--steps",
        "1",
        "--batch",
        "3",
        "--prompts",
        "1",
        "--hidden",
        "1",
    )
    assert "navigation (DLN-2): test accuracy" in out and "reason:" in out and "answer:" in out


def test_specialists_example_runs_a_fan_in_graph() -> None:
    out = run(
        "specialists.py",
        "--train",
        "6",
        "--dev",
        "4",
        "--test",
        "4",
        "--batch",
        "3",
        "--prompts",
        "1",
    )
    assert "flowchart TD" in out and "specialists: dev" in out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_web_app_example_answers_over_http() -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "web_app.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/predict"
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    question = "Always face forward. Take 2 steps left. Take 2 steps right. Are you back where you started?\nOptions:\n- Yes\n- No"
                    async with session.post(url, json={"input": question}) as response:
                        assert response.status == 200
                        assert (await response.json())["output"] in ("yes", "no")
                        break
                except aiohttp.ClientConnectionError:
                    assert server.poll() is None, server.stderr.read()
                    time.sleep(0.2)
            else:
                pytest.fail("the web app never answered")
            async with session.post(url, data=b"not json") as response:
                assert response.status == 400
    finally:
        server.terminate()
        server.communicate(timeout=30)
