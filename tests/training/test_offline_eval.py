"""Offline evaluation on a real dataset (written with the dataset writer) and a real tiny checkpoint.

The metrics in summary.json are checked against an independent numpy computation on
predictions.npz, the predictions against the backend run directly (the node's path), and two
datasets whose labels are built from the model's own answers pin the error to 0 and the
gripper accuracy to 1 and 0 by construction.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from magma_ros.backends import PolicyOutput
from magma_ros.backends.torch_backend import TorchBackend
from magma_ros.cli import main
from magma_ros.codecs import (
    ACTION_DIM_NAMES,
    ActionCodec,
    ImageSize,
    TracePoints,
    load_dataset_statistics,
)
from magma_ros.training.dataset import DatasetWriter, TrajectoryDataset
from magma_ros.training.offline_eval import (
    OfflineEvalConfig,
    OfflineEvalError,
    action_metrics,
    evaluate_offline,
    trace_endpoint_errors,
)
from magma_ros.training.records import STATISTICS_FILE, TraceSample

NAME = "tiny_arm"
EPISODES = {"ep_a": ("pick up the red cube", 3), "ep_b": ("push the blue cube left", 2)}
STEPS = 5


def _frames(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]


def _write_dataset(root: Path, actions: dict[str, np.ndarray], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    writer = DatasetWriter(root, NAME)
    for episode_id, (instruction, n) in EPISODES.items():
        writer.write_episode(episode_id, stamps_ns=[i * 100_000_000 for i in range(n)], images=_frames(rng, n),
                             actions=actions[episode_id], states=np.zeros((n, 7)), instructions=instruction)
    writer.write_statistics()
    return root


def _random_actions(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for episode_id, (_, n) in EPISODES.items():
        a = np.concatenate([rng.uniform(-0.01, 0.01, (n, 3)), rng.uniform(-0.05, 0.05, (n, 3)),
                            rng.integers(0, 2, (n, 1)).astype(float)], axis=1)
        out[episode_id] = a
    return out


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Two intra-op threads on 2 cores shared with other jobs run the tiny model ~20x slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_dataset(tmp_path_factory.mktemp("offline_data") / "data", _random_actions())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, dataset_dir: Path) -> Path:
    """An untrained magma-tiny that carries the dataset's statistics, as a fine-tuned one would."""
    from magma_ros.model import build_tiny_model, save_checkpoint

    statistics = json.loads((dataset_dir / STATISTICS_FILE).read_text())
    model, tokenizer = build_tiny_model("magma-tiny", seed=0)
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("offline_ckpt"), dataset_statistics=statistics)


@pytest.fixture(scope="module")
def backend(checkpoint: Path) -> Iterator[TorchBackend]:
    """The backend the policy node creates for this checkpoint (ToM answers capped at 24 tokens)."""
    policy = TorchBackend(checkpoint, statistics=NAME, trace_max_new_tokens=24)
    yield policy
    policy.close()


@pytest.fixture(scope="module")
def first_run(checkpoint: Path, dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("offline_out")
    code = main(["evaluate-offline", "--checkpoint", str(checkpoint), "--data", str(dataset_dir), "--out", str(out),
                 "--no-progress"])
    assert code == 0
    return out


def _load(out: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    summary = json.loads((out / "summary.json").read_text())
    with np.load(out / "predictions.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    return summary, arrays


@pytest.mark.slow  # runs the tiny model (seconds per query on a loaded 2-core box)
def test_summary_matches_a_numpy_computation_on_the_predictions(first_run: Path, dataset_dir: Path) -> None:
    summary, p = _load(first_run)
    data = TrajectoryDataset(dataset_dir)
    assert summary["steps"] == len(data) == STEPS and summary["dataset"]["episodes_evaluated"] == 2
    assert summary["statistics"] == NAME and summary["backend"] == "torch"
    np.testing.assert_array_equal(p["recorded"], data.actions())
    valid = p["valid"]
    assert valid.all() and summary["valid_steps"] == STEPS   # the constrained decoder always gives 7 valid ids
    err = p["predicted"] - p["recorded"]
    for d, name in enumerate(ACTION_DIM_NAMES):
        assert summary["action_error"][name]["mae"] == pytest.approx(np.abs(err[:, d]).mean(), rel=1e-9)
        assert summary["action_error"][name]["rmse"] == pytest.approx(np.sqrt((err[:, d] ** 2).mean()), rel=1e-9)
    assert summary["action_error"]["dx"]["unit"] == "m" and summary["action_error"]["dyaw"]["unit"] == "rad"
    grip = ((p["predicted"][:, 6] > 0.5) == (p["recorded"][:, 6] > 0.5)).mean()
    assert summary["gripper_accuracy"] == pytest.approx(grip)
    # label ids: the recorded actions encoded with the dataset's statistics (the checkpoint's copy)
    stats = load_dataset_statistics(dataset_dir / STATISTICS_FILE)[NAME]
    codec = ActionCodec(_base_vocab(first_run))
    np.testing.assert_array_equal(p["label_ids"], codec.encode(p["recorded"], stats))
    hits = p["predicted_ids"] == p["label_ids"]
    assert summary["token_accuracy"]["mean"] == pytest.approx(hits.mean())
    assert summary["token_accuracy"]["all_7"] == pytest.approx(hits.all(axis=1).mean())
    assert summary["token_accuracy"]["per_dim"]["gripper"] == pytest.approx(hits[:, 6].mean())
    # per-episode entries add up to the whole
    assert [e["steps"] for e in summary["episodes"]] == [3, 2]
    assert summary["traces"]["samples"] == 0 and "no Trace-of-Mark labels" in summary["traces"]["note"]


def _base_vocab(out: Path) -> int:
    summary = json.loads((out / "summary.json").read_text())
    from magma_ros.model.tokenizer import MagmaTokenizer

    return MagmaTokenizer.from_dir(summary["checkpoint"]).base_vocab_size


@pytest.mark.slow  # runs the tiny model (seconds per query on a loaded 2-core box)
def test_predictions_are_what_the_node_backend_returns(first_run: Path, dataset_dir: Path,
                                                       backend: TorchBackend) -> None:
    _, p = _load(first_run)
    data = TrajectoryDataset(dataset_dir)
    for index in (0, STEPS - 1):
        record = data[index]
        out = backend.act(record.image, record.instruction)
        assert out.valid
        np.testing.assert_array_equal(p["predicted"][index], np.asarray(out.action, np.float64))
        assert tuple(p["predicted_ids"][index]) == out.token_ids


@pytest.mark.slow  # runs the tiny model (seconds per query on a loaded 2-core box)
def test_plots_are_one_png_per_episode(first_run: Path) -> None:
    summary, _ = _load(first_run)
    for entry in summary["episodes"]:
        path = first_run / entry["plot"]
        assert path.name == f"{entry['episode_id']}.png"
        image = cv2.imread(str(path))
        assert image is not None and image.shape[0] > 400 and image.std() > 10


@pytest.mark.slow  # runs the tiny model (seconds per query on a loaded 2-core box)
def test_labels_built_from_the_model_answers_score_zero_error(first_run: Path, backend: TorchBackend,
                                                              tmp_path: Path) -> None:
    """Dataset 2: each label is the model's own decoded action on the same frame, gripper kept in
    episode A and flipped in episode B -> error ~0 (float32 rounding), gripper accuracy 1 and 0."""
    _, p = _load(first_run)
    labels = {}
    offset = 0
    for episode_id, (_, n) in EPISODES.items():
        a = p["predicted"][offset:offset + n].copy()
        a[:, 6] = (a[:, 6] > 0.5).astype(float)
        if episode_id == "ep_b":
            a[:, 6] = 1.0 - a[:, 6]
        labels[episode_id] = a
        offset += n
    root = _write_dataset(tmp_path / "data2", labels)          # same frames: same seed
    result = evaluate_offline(backend, TrajectoryDataset(root), tmp_path / "out",
                              OfflineEvalConfig(plots=False, progress=False))
    s = result.summary
    for name in ACTION_DIM_NAMES[:6]:
        assert s["action_error"][name]["mae"] < 1e-7, name
    a, b = s["episodes"]
    assert a["gripper_accuracy"] == 1.0 and b["gripper_accuracy"] == 0.0
    assert s["gripper_accuracy"] == pytest.approx(3 / 5)
    # dims 0..5 re-encode to the generated ids, except id V-256 which shares bin 254 with V-255
    with np.load(result.predictions_path) as q:
        ids = q["predicted_ids"][:, :6]
        lo = _base_vocab(first_run) - 256
        expected = np.where(ids == lo, lo + 1, ids)
        np.testing.assert_array_equal(q["label_ids"][:, :6], expected)
    assert s["token_accuracy"]["within_one_bin"] >= 6 / 7 - 1e-12   # the gripper may be off
    assert not (tmp_path / "out" / "plots").exists()


def _sample(traces: dict[int, list[tuple[int, int]]]) -> TraceSample:
    return TraceSample(episode_id="ep_a", step=0, image=np.zeros((64, 64, 3), np.uint8), question="q?",
                       answer="", traces={k: np.array(v, np.int32) for k, v in traces.items()})


def test_trace_endpoint_error_is_the_last_point_distance_on_the_grid() -> None:
    size = ImageSize(64, 64)
    label = _sample({1: [(10, 10), (20, 20)], 4: [(100, 50), (103, 54)], 7: [(5, 5)]})
    predicted = PolicyOutput(valid=False, traces=(
        (1, TracePoints.from_grid([(11, 11), (23, 24)], size)),     # |(3, 4)| = 5
        (4, TracePoints.from_grid([(103, 54)], size)),               # exact: 0
        (9, TracePoints.from_grid([(0, 0)], size)),                  # not labelled: ignored
    ))
    errors, missing = trace_endpoint_errors(label, predicted)
    assert sorted(errors) == [0.0, 5.0] and missing == 1            # mark 7 got no trace


@pytest.mark.slow  # runs the tiny model (seconds per query on a loaded 2-core box)
def test_trace_labels_on_disk_are_found_and_queried(backend: TorchBackend, tmp_path: Path) -> None:
    """ToM labels written by label-traces' writer (traces/<episode>.parquet) are read by default."""
    from magma_ros.codecs import Mark, build_tom_query
    from magma_ros.training.trace_labels import WindowLabel, write_trace_labels

    root = _write_dataset(tmp_path / "data", _random_actions())
    size = ImageSize(32, 32)
    frame = np.full((32, 32, 3), 90, np.uint8)
    for episode_id, marks in (("ep_a", {3: [(40, 40), (60, 44)]}), ("ep_b", {1: [(100, 90)], 5: [(10, 20)]})):
        sample = TraceSample(episode_id=episode_id, step=0, image=frame,
                             question=build_tom_query("pick up the red cube", 8, mark_ids=sorted(marks)),
                             answer="", traces={k: np.array(v, np.int32) for k, v in marks.items()})
        drawn = tuple(Mark.at_grid(k, *v[0], size) for k, v in marks.items())
        label = WindowLabel(sample=sample, instruction="pick up the red cube", marks=drawn,
                            moving_ids=tuple(marks), pixel_traces={}, camera_motion=False, frames=frame[None],
                            sources={})
        write_trace_labels(root, episode_id, [label])
    result = evaluate_offline(backend, TrajectoryDataset(root), tmp_path / "out",
                              OfflineEvalConfig(max_steps=1, plots=False, progress=False))
    traces = result.summary["traces"]
    assert traces["samples"] == 2 and traces["labelled_marks"] == 3
    only_a = evaluate_offline(backend, TrajectoryDataset(root), tmp_path / "out_a",
                              OfflineEvalConfig(max_episodes=1, max_steps=1, plots=False, progress=False))
    assert only_a.summary["traces"]["samples"] == 1 and only_a.summary["traces"]["labelled_marks"] == 1
    none = evaluate_offline(backend, TrajectoryDataset(root), tmp_path / "out_none",
                            OfflineEvalConfig(max_steps=1, trace_samples=0, plots=False, progress=False))
    assert none.summary["traces"]["samples"] == 0


@pytest.mark.slow  # runs the tiny model (seconds per query on a loaded 2-core box)
def test_traces_are_queried_through_the_backend(backend: TorchBackend, dataset_dir: Path, tmp_path: Path) -> None:
    samples = [_sample({1: [(10, 10), (20, 20)]}), _sample({2: [(30, 30)], 3: [(40, 40)]})]
    result = evaluate_offline(backend, TrajectoryDataset(dataset_dir), tmp_path,
                              OfflineEvalConfig(max_episodes=1, max_steps=1, plots=False, progress=False),
                              trace_samples=lambda: samples)
    traces = result.summary["traces"]
    assert traces["samples"] == 2 and traces["labelled_marks"] == 3
    # an untrained model answers no well-formed trace in 24 tokens
    assert traces["answers_parsed"] == 0.0 and traces["marks_traced"] == 0.0
    assert traces["endpoint_error_grid"]["median"] is None
    assert result.summary["steps"] == 1


def test_action_metrics_by_hand() -> None:
    recorded = np.array([[0.01, 0, 0, 0, 0, 0, 1.0], [0.0, 0, 0, 0, 0, 0, 0.0], [0.0, 0, 0, 0, 0, 0, 0.0]])
    predicted = np.array([[0.0, 0, 0, 0, 0, 0, 0.996], [0.03, 0, 0, 0, 0, 0, 0.996], [np.nan] * 7])
    valid = np.array([True, True, False])
    ids = np.array([[5, 1, 1, 1, 1, 1, 1], [6, 1, 1, 1, 1, 1, 2], [-1] * 7])
    label = np.array([[5, 1, 1, 1, 1, 1, 1], [5, 1, 1, 1, 1, 1, 1], [5, 1, 1, 1, 1, 1, 1]])
    m = action_metrics(predicted, recorded, valid, ids, label)
    assert m["steps"] == 3 and m["valid_steps"] == 2
    assert m["action_error"]["dx"]["mae"] == pytest.approx(0.02)              # (0.01 + 0.03) / 2
    assert m["action_error"]["dx"]["rmse"] == pytest.approx(np.sqrt(0.0005))  # sqrt((1e-4 + 9e-4) / 2)
    assert m["gripper_accuracy"] == 0.5                                        # open/open, closed/open
    assert m["token_accuracy"]["per_dim"]["dx"] == pytest.approx(1 / 3)
    assert m["token_accuracy"]["mean"] == pytest.approx((7 + 5) / 21)
    assert m["token_accuracy"]["all_7"] == pytest.approx(1 / 3)
    assert m["token_accuracy"]["within_one_bin"] == pytest.approx(14 / 21)
    empty = action_metrics(predicted[2:], recorded[2:], valid[2:])
    assert empty["action_error"]["dx"]["mae"] is None and empty["gripper_accuracy"] is None


@pytest.mark.slow  # runs the tiny model (seconds per query on a loaded 2-core box)
def test_bad_input_is_one_clear_line(tmp_path: Path, checkpoint: Path, dataset_dir: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate-offline", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "dataset directory not found" in err
    assert main(["evaluate-offline", "--checkpoint", str(checkpoint), "--data", str(dataset_dir),
                 "--out", str(tmp_path / "o"), "--statistics", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown action statistics 'nope'" in err
    with pytest.raises(OfflineEvalError, match="max_steps"):
        OfflineEvalConfig(max_steps=0)
