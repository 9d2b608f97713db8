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
