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


def _sim_statistics() -> dict:
    """The sim_panda action statistics config/policy_sim.yaml serves (the shipped default's own), so a
    test checkpoint runs in the sim bringups like a model trained on the sim's recordings."""
    import json

    root = Path(__file__).resolve().parents[2]
    return json.loads((root / "checkpoints" / "magma-tiny" / "dataset_statistics.json").read_text())


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained magma-tiny checkpoint directory (built once per test session)."""
    from magma_ros.model import build_tiny_model, save_checkpoint

    model, tokenizer = build_tiny_model("magma-tiny", seed=0)
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("magma_tiny"),
                           dataset_statistics=_sim_statistics())


@pytest.fixture(scope="session")
def slow_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """magma-tiny-512 (Magma's 512 px crops, 4 layers): slower per step than a 30 Hz camera."""
    from magma_ros.model import build_tiny_model, save_checkpoint

    model, tokenizer = build_tiny_model("magma-tiny-512", seed=0)
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("magma_tiny_512"),
                           dataset_statistics=_sim_statistics())


TRACE_FRAME_SIZE = (240, 320)   # (height, width) of the frames the trace checkpoint was fitted on


@pytest.fixture(scope="session")
def trace_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, list[tuple[int, int]]]]:
    """A magma-tiny fitted (teacher-forced, 60 steps) to answer the Trace-of-Mark query with a
    fixed two-mark answer whatever the frame; returns (checkpoint, the traces it answers)."""
    import numpy as np

    from magma_ros.backends.torch_backend import MARK_GRID
    from magma_ros.codecs import ImageSize, build_tom_query, draw_marks, format_traces, place_marks_on_grid
    from magma_ros.model import MagmaPolicy, PreprocessorConfig, build_tiny_model, save_checkpoint
    from magma_ros.model.finetune import SupervisedExample, fit

    model, tokenizer = build_tiny_model("magma-tiny", seed=0)
    policy = MagmaPolicy(model, tokenizer, PreprocessorConfig(base_img_size=model.config.vision.img_size))
    height, width = TRACE_FRAME_SIZE
    marks = place_marks_on_grid(ImageSize(width, height), *MARK_GRID, shuffle_ids=False)
    a, b = marks[1], marks[6]
    current = {a.id: (a.grid_x, a.grid_y), b.id: (b.grid_x, b.grid_y)}
    future = {a.id: [(a.grid_x + 6 * i, a.grid_y - 3 * i) for i in range(1, 9)],
              b.id: [(b.grid_x - 4 * i, b.grid_y + 2 * i) for i in range(1, 9)]}
    rng = np.random.default_rng(1)
    examples = [SupervisedExample(draw_marks(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), marks),
                                  build_tom_query(instruction, 8, mark_ids=[m.id for m in marks]),
                                  format_traces(current, future))
                for instruction in ("pick up the red cube", "reach the blue cube") for _ in range(2)]
    losses = fit(policy, examples, steps=60, lr=3e-3)
    assert losses[-1] < 0.1, losses[-10:]
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("magma_tiny_traces")), future


RERUNS = 2


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests against live DDS graphs share 2 CPU cores with the nodes they test, and some measure
    time (rates, watchdogs, stream ends). A busy moment can push one over a bound, so each gets
    up to RERUNS more tries; a real regression fails every try."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.flaky(reruns=RERUNS, reruns_delay=1))
