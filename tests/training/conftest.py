"""Training tests' shared recordings: real bags from `magma-ros record-demos`, recorded once per session."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
SIM_SPEC = REPO / "config" / "datasets" / "sim_panda.yaml"
DEMO_EPISODES = 2
DEMO_STEPS = 40


@pytest.fixture(scope="session")
def recorded_demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two short scripted-expert pick episodes (seeds 3 and 4, 40 steps each) recorded over ROS as mcap bags:
    ``DIR/episode_0000``, ``DIR/episode_0001`` with their episode.json. Recorded once per test session."""
    out = tmp_path_factory.mktemp("demos") / "demos"
    result = subprocess.run([str(VENV_BIN / "magma-ros"), "record-demos", "--task", "pick", "--episodes",
                             str(DEMO_EPISODES), "--seed", "3", "--max-steps", str(DEMO_STEPS), "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def sim_dataset(recorded_demos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recorded demos built into a dataset with config/datasets/sim_panda.yaml (once per session)."""
    from magma_ros.training.builder import build_dataset
    from magma_ros.training.spec import load_spec

    out = tmp_path_factory.mktemp("datasets") / "sim_panda"
    summary = build_dataset([recorded_demos], load_spec(SIM_SPEC), out, progress=False, report=lambda _: None)
    assert not summary.skipped, summary.skipped
    return out


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module that trains: on a shared 2-core box two threads per process
    are many times slower (spinning OpenMP workers), and one thread is bit-reproducible."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
