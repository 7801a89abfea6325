import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def extra_buffers_allowed() -> bool:
    """This machine's verdict on llama.cpp's extra buffer types (a child process decides it
    once, see dlgraph_llamacpp/guard.py); on a CPU where they crash, the tests that would
    force them on are skipped, and everything else runs with them off."""
    from dlgraph_llamacpp.guard import machine_verdict

    return machine_verdict().enabled


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "extra-buffers"])
def extra_buffers(request: pytest.FixtureRequest) -> bool:
    """Both settings, for the tests that compare numbers with a reference."""
    if request.param and not request.getfixturevalue("extra_buffers_allowed"):
        pytest.skip("llama.cpp's extra buffer types crash on this CPU (this machine's verdict)")
    return bool(request.param)
