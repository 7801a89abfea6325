from collections.abc import Iterator

import pytest
import ray


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """One local Ray of 2 CPUs for the whole session (starting one takes seconds)."""
    ray.init(
        num_cpus=2,
        namespace="dlgraph",
        include_dashboard=False,
        log_to_driver=False,
        logging_level="WARNING",
    )
    try:
        yield
    finally:
        ray.shutdown()
