from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ros.harness import Process, RosGraph


@pytest.fixture
def graph() -> Iterator[RosGraph]:
    g = RosGraph()
    yield g
    g.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator:
    processes: list[Process] = []

    def start(*argv: str, env: dict[str, str] | None = None) -> Process:
        proc = Process(list(argv), tmp_path / f"{Path(argv[0]).name}-{len(processes)}.log", env)
        processes.append(proc)
        return proc

    yield start
    for proc in processes:
        proc.stop()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained magma-tiny checkpoint directory (built once per test session)."""
    from magma_ros.model import build_tiny_model, save_checkpoint

    model, tokenizer = build_tiny_model("magma-tiny", seed=0)
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("magma_tiny"))
