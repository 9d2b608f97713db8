"""Offline evaluation: run a policy on every step of a recorded dataset and score it against the labels.

``magma-ros evaluate-offline --checkpoint DIR --data DIR --out DIR`` (thin CLI in
:mod:`magma_ros.cli.evaluate_offline`). The policy runs through :mod:`magma_ros.backends`, the
code path ``magma_policy_node`` runs: each step's frame and instruction go to
``backend.act``, whose decoded action is compared with the step's recorded label.

Metrics (all in ``OUT/summary.json``):

* ``action_error``: per dimension, MAE and RMSE of the predicted action against the recorded
  delta in metric units (dx dy dz: m; droll dpitch dyaw: rad; gripper: 0..1 value), over the
  steps whose output was a valid action;
* ``gripper_accuracy``: predicted gripper binarized at 0.5 (Magma's rule) equals the recorded
  command binarized at 0.5, over valid steps;
* ``token_accuracy``: the 7 generated action token ids equal the label's ids (the recorded
  action encoded with the codec and statistics the backend decodes with), per dimension and
  all 7 at once, over every step (an invalid output counts as wrong); ``within_one_bin`` too;
* ``traces`` (when the dataset has Trace-of-Mark labels, ``magma-ros dataset label-traces``):
  the labels' own question asked about their marked frame; per labelled mark, the distance
  between the predicted and the labelled trace endpoint on Magma's 256 x 256 grid, plus how
  many answers parsed and how many labelled marks got a trace;
* per episode: the same action metrics and ``plots/<episode>.png`` (predicted vs recorded
  deltas over time, one panel per dimension).

``OUT/predictions.npz`` holds every step's label, prediction and token ids. ROS-free.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from magma_ros.backends import PolicyBackend, PolicyOutput
from magma_ros.backends.options import BackendOptions
from magma_ros.codecs import (
    ACTION_DIM,
    ACTION_DIM_NAMES,
    GRIPPER_DIM,
    GRIPPER_THRESHOLD,
    ActionCodec,
    ActionStatistics,
    CodecError,
)
from magma_ros.training.progress import progress_bar
from magma_ros.training.records import DatasetError, StepRecord, TraceSample

__all__ = [
    "DIM_UNITS",
    "OfflineEvalConfig",
    "OfflineEvalError",
    "OfflineEvalResult",
    "action_metrics",
    "error_distribution",
    "evaluate_offline",
    "evaluate_trace_answers",
    "plot_episode",
    "run_offline_evaluation",
    "trace_endpoint_errors",
    "trace_endpoint_errors_by_mark",
]

SUMMARY_FILE = "summary.json"
PREDICTIONS_FILE = "predictions.npz"
PLOTS_DIR = "plots"
DIM_UNITS = ("m", "m", "m", "rad", "rad", "rad", "")
"""Units of the action dimensions (the gripper value is unitless, 0 closed .. 1 open)."""


class OfflineEvalError(RuntimeError):
    """The evaluation cannot run (bad options, unreadable dataset, backend that cannot load)."""


@dataclass(frozen=True)
class OfflineEvalConfig:
    """What to evaluate. ``max_episodes`` / ``max_steps``: only the first N episodes / steps of
    each (None = all). ``trace_samples``: ToM labels to query (None = all, 0 = none).
    ``plots``: write per-episode PNGs. ``progress``: show a progress bar (stderr)."""

    max_episodes: int | None = None
    max_steps: int | None = None
    trace_samples: int | None = None
    plots: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        for name, minimum in (("max_episodes", 1), ("max_steps", 1), ("trace_samples", 0)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
                raise OfflineEvalError(f"{name} must be an integer >= {minimum} or None, got {value!r}")


@dataclass(frozen=True)
class OfflineEvalResult:
    """What :func:`evaluate_offline` wrote: the summary (as in ``summary.json``) and the file paths."""

    summary: dict[str, Any]
    summary_path: Path
    predictions_path: Path
    plots: tuple[Path, ...]


# --------------------------------------------------------------------------------- metrics
def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def action_metrics(predicted: np.ndarray, recorded: np.ndarray, valid: np.ndarray,
                   predicted_ids: np.ndarray | None = None, label_ids: np.ndarray | None = None) -> dict[str, Any]:
    """Action metrics of N steps: (N, 7) predicted and recorded actions, (N,) valid flags and
    optionally (N, 7) generated and label token ids (-1 where there is none).

    Returns ``steps``, ``valid_steps``, ``action_error`` {dim: {mae, rmse, unit}},
    ``gripper_accuracy`` and ``token_accuracy`` (None where undefined: no valid step, no ids).
    """
    predicted = np.asarray(predicted, np.float64).reshape(-1, ACTION_DIM)
    recorded = np.asarray(recorded, np.float64).reshape(-1, ACTION_DIM)
    valid = np.asarray(valid, bool).reshape(-1)
    n, n_valid = len(valid), int(valid.sum())
    err = predicted[valid] - recorded[valid]
    errors: dict[str, Any] = {}
    for d, name in enumerate(ACTION_DIM_NAMES):
        mae = float(np.mean(np.abs(err[:, d]))) if n_valid else math.nan
        rmse = float(np.sqrt(np.mean(err[:, d] ** 2))) if n_valid else math.nan
        errors[name] = {"mae": _finite_or_none(mae), "rmse": _finite_or_none(rmse), "unit": DIM_UNITS[d]}
    gripper = None
    if n_valid:
        hits = (predicted[valid, GRIPPER_DIM] > GRIPPER_THRESHOLD) == (recorded[valid, GRIPPER_DIM] > GRIPPER_THRESHOLD)
        gripper = float(np.mean(hits))
    tokens = None
    if predicted_ids is not None and label_ids is not None and n:
        pid = np.asarray(predicted_ids, np.int64).reshape(-1, ACTION_DIM)
        lid = np.asarray(label_ids, np.int64).reshape(-1, ACTION_DIM)
        ok = (pid == lid) & valid[:, None]
        near = (np.abs(pid - lid) <= 1) & valid[:, None]
        tokens = {"mean": float(ok.mean()), "all_7": float(ok.all(axis=1).mean()),
                  "within_one_bin": float(near.mean()),
                  "per_dim": {name: float(ok[:, d].mean()) for d, name in enumerate(ACTION_DIM_NAMES)}}
    return {"steps": n, "valid_steps": n_valid, "action_error": errors, "gripper_accuracy": gripper,
            "token_accuracy": tokens}


def trace_endpoint_errors_by_mark(label: TraceSample, output: PolicyOutput) -> dict[int, float]:
    """{mark id: endpoint distance (grid units)} for the labelled marks the answer traced, in the
    label's order. The label's traces and the answer are on Magma's 256 grid."""
    predicted = {int(mark_id): trace for mark_id, trace in output.traces}
    errors: dict[int, float] = {}
    for mark_id, points in label.traces.items():
        trace = predicted.get(int(mark_id))
        labelled = np.asarray(points, np.float64).reshape(-1, 2)
        if trace is not None and len(trace) and len(labelled):
            errors[int(mark_id)] = float(np.hypot(*(np.asarray(trace.grid[-1], np.float64) - labelled[-1])))
    return errors


def trace_endpoint_errors(label: TraceSample, output: PolicyOutput) -> tuple[list[float], int]:
    """Endpoint distances (grid units) of the labelled marks the answer traced
    (:func:`trace_endpoint_errors_by_mark`), and how many labelled marks it did not trace."""
    errors = trace_endpoint_errors_by_mark(label, output)
    return list(errors.values()), len(label.traces) - len(errors)


def error_distribution(values: Sequence[float]) -> dict[str, float | None]:
    """``mean``, ``median``, ``p90`` and ``max`` of ``values`` (all None when there are none)."""
    if not values:
        return {"mean": None, "median": None, "p90": None, "max": None}
    arr = np.asarray(values, np.float64)
    return {"mean": float(arr.mean()), "median": float(np.median(arr)), "p90": float(np.percentile(arr, 90)),
            "max": float(arr.max())}


# ----------------------------------------------------------------------------------- plots
def plot_episode(path: Path, episode_id: str, instruction: str, recorded: np.ndarray,
                 predicted: np.ndarray) -> Path:
    """Write a PNG: one panel per action dimension, recorded vs predicted over the steps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = np.arange(len(recorded))
    fig = Figure(figsize=(9, 12), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(ACTION_DIM, 1, sharex=True)
    for d, ax in enumerate(axes):
        ax.plot(steps, recorded[:, d], color="tab:blue", linewidth=1.4, label="recorded")
        ax.plot(steps, predicted[:, d], color="tab:orange", linewidth=1.0, marker=".", markersize=3,
                label="predicted")
        unit = f" ({DIM_UNITS[d]})" if DIM_UNITS[d] else ""
        ax.set_ylabel(ACTION_DIM_NAMES[d] + unit)
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("step")
    title = f"{episode_id}: {instruction}"
    fig.suptitle(title if len(title) <= 90 else title[:87] + "...")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# ------------------------------------------------------------------------------ evaluation


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def evaluate_offline(backend: PolicyBackend, dataset: Any, out_dir: str | Path,
                     config: OfflineEvalConfig | None = None, *,
                     trace_samples: Callable[[], list[TraceSample]] | None = None,
                     info: dict[str, Any] | None = None) -> OfflineEvalResult:
    """Run ``backend`` on the steps of ``dataset`` (a :class:`~magma_ros.training.dataset.TrajectoryDataset`
    or anything with ``episode_ids``, ``episode(id) -> list[StepRecord]``, ``statistics``,
    ``name`` and ``root``) and write the summary, predictions and plots into ``out_dir``.

    Token ids of the labels are computed with the backend's ``codec`` and ``statistics`` when
    it has them (the torch backend does). ``trace_samples`` returns the dataset's ToM labels
    (default: :func:`magma_ros.training.trace_labels.load_trace_samples` on ``dataset.root``).
    """
    config = config if config is not None else OfflineEvalConfig()
    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OfflineEvalError(f"cannot create the output directory {out}: {err}") from err
    codec: ActionCodec | None = getattr(backend, "codec", None)
    stats: ActionStatistics | None = getattr(backend, "statistics", None)
    if not isinstance(codec, ActionCodec) or not isinstance(stats, ActionStatistics):
        codec, stats = None, None

    episode_ids = list(dataset.episode_ids)[: config.max_episodes]
    if not episode_ids:
        raise OfflineEvalError(f"dataset {dataset.root} has no episodes to evaluate")
    lengths = [dataset.episode_length(e) if hasattr(dataset, "episode_length") else len(dataset.episode(e))
               for e in episode_ids]
    step_counts = [min(n, config.max_steps) if config.max_steps else n for n in lengths]

    samples: list[TraceSample] = []
    trace_note = ""
    if config.trace_samples != 0:
        if not hasattr(backend, "answer_traces"):
            trace_note = f"backend {type(backend).__name__} has no Trace-of-Mark query"
        else:
            try:
                samples = _load_traces(dataset, trace_samples)
            except DatasetError as err:
                raise OfflineEvalError(str(err)) from err
            except ImportError as err:
                trace_note = f"no Trace-of-Mark label reader: {err}"
            wanted = set(episode_ids)
            samples = [s for s in samples if s.episode_id in wanted][: config.trace_samples]
            if not samples:
                trace_note = "the dataset has no Trace-of-Mark labels for the evaluated episodes"

    bar = progress_bar(sum(step_counts) + len(samples), config.progress, "query", "evaluate-offline")
    started = time.monotonic()
    model_ms: list[float] = []
    rows: dict[str, list[Any]] = {k: [] for k in ("episode", "step", "recorded", "predicted", "valid",
                                                  "predicted_ids", "label_ids")}
    errors_seen: dict[str, int] = {}
    episodes: list[dict[str, Any]] = []
    plots: list[Path] = []
    try:
        for e_index, (episode_id, count) in enumerate(zip(episode_ids, step_counts, strict=True)):
            records: list[StepRecord] = dataset.episode(episode_id)[:count]
            recorded = np.stack([np.asarray(r.action, np.float64) for r in records])
            predicted = np.full((len(records), ACTION_DIM), np.nan)
            valid = np.zeros(len(records), bool)
            pred_ids = np.full((len(records), ACTION_DIM), -1, np.int64)
            label_ids = np.full((len(records), ACTION_DIM), -1, np.int64)
            for i, record in enumerate(records):
                output = backend.act(record.image, record.instruction)
                model_ms.append(output.timings.model_ms)
                action = np.asarray(output.action, np.float64).reshape(-1)
                if output.valid and action.shape == (ACTION_DIM,) and np.all(np.isfinite(action)):
                    predicted[i], valid[i] = action, True
                    if len(output.token_ids) == ACTION_DIM:
                        pred_ids[i] = output.token_ids
                else:
                    reason = (output.error or "non-finite action").split(":")[0][:80]
                    errors_seen[reason] = errors_seen.get(reason, 0) + 1
                if codec is not None and stats is not None:
                    try:
                        label_ids[i] = codec.encode(record.action, stats)
                    except CodecError as err:
                        raise OfflineEvalError(f"{episode_id} step {record.step}: label does not encode: "
                                               f"{err}") from err
                bar.update(1)
            metrics = action_metrics(predicted, recorded, valid, pred_ids if codec else None,
                                     label_ids if codec else None)
            entry: dict[str, Any] = {"episode_id": episode_id, "instruction": records[0].instruction, **metrics}
            if config.plots:
                path = plot_episode(out / PLOTS_DIR / f"{episode_id}.png", episode_id, records[0].instruction,
                                    recorded, predicted)
                plots.append(path)
                entry["plot"] = str(path.relative_to(out))
            episodes.append(entry)
            rows["episode"].append(np.full(len(records), e_index, np.int32))
            rows["step"].append(np.array([r.step for r in records], np.int32))
            rows["recorded"].append(recorded)
            rows["predicted"].append(predicted)
            rows["valid"].append(valid)
            rows["predicted_ids"].append(pred_ids)
            rows["label_ids"].append(label_ids)
        traces = evaluate_trace_answers(backend, samples, bar, trace_note)
    finally:
        bar.close()
    wall_s = time.monotonic() - started

    merged = {k: np.concatenate(v) for k, v in rows.items()}
    overall = action_metrics(merged["predicted"], merged["recorded"], merged["valid"],
                             merged["predicted_ids"] if codec else None, merged["label_ids"] if codec else None)
    summary: dict[str, Any] = {
        **(info or {}),
        "dataset": {"name": dataset.name, "root": str(dataset.root), "episodes_evaluated": len(episode_ids),
                    "episodes_in_dataset": len(dataset.episode_ids)},
        "model_id": backend.model_id,
        "statistics": stats.name if stats else None,
        **overall,
        "invalid_outputs": dict(sorted(errors_seen.items(), key=lambda kv: -kv[1])),
        "traces": traces,
        "timing": {"wall_s": wall_s, "mean_model_ms": float(np.mean(model_ms)) if model_ms else None,
                   "action_queries_per_s": len(model_ms) / wall_s if wall_s > 0 else None},
        "episodes": episodes,
    }
    if codec is None:
        summary["token_accuracy_note"] = f"backend {type(backend).__name__} exposes no codec/statistics"
    summary_path = out / SUMMARY_FILE
    summary_path.write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    predictions_path = out / PREDICTIONS_FILE
    np.savez_compressed(predictions_path, episode_ids=np.array(episode_ids), dim_names=np.array(ACTION_DIM_NAMES),
                        **merged)
    return OfflineEvalResult(summary, summary_path, predictions_path, tuple(plots))


def _load_traces(dataset: Any, loader: Callable[[], list[TraceSample]] | None) -> list[TraceSample]:
    if loader is not None:
        return list(loader())
    from magma_ros.training.trace_labels import load_trace_samples

    return load_trace_samples(dataset.root)


def evaluate_trace_answers(backend: PolicyBackend, samples: Sequence[TraceSample], bar: Any = None, note: str = "",
                           on_answer: Callable[[TraceSample, PolicyOutput], None] | None = None) -> dict[str, Any]:
    """Ask ``backend.answer_traces`` each sample's own question about its marked frame and score the answers.

    Returns ``samples``, ``answers_parsed`` (fraction without a parse error),
    ``answers_with_traces``, ``labelled_marks``, ``marks_traced`` (fraction of the labelled
    marks the answers traced) and ``endpoint_error_grid`` (:func:`trace_endpoint_errors` over
    all samples: mean, median, p90, max); only ``samples`` (0) and ``note`` when there are no
    samples. ``bar`` (anything with ``update(n)``) advances once per sample; ``on_answer`` sees
    every sample with the backend's output.
    """
    if not samples:
        return {"samples": 0, "note": note}
    endpoint: list[float] = []
    parsed = answered = labelled = missing = 0
    for sample in samples:
        output = backend.answer_traces(sample.image, sample.question)  # type: ignore[attr-defined]
        parsed += int(not output.error)
        answered += int(bool(output.traces))
        errors, lost = trace_endpoint_errors(sample, output)
        endpoint.extend(errors)
        labelled += len(sample.traces)
        missing += lost
        if bar is not None:
            bar.update(1)
        if on_answer is not None:
            on_answer(sample, output)
    return {"samples": len(samples), "answers_parsed": parsed / len(samples),
            "answers_with_traces": answered / len(samples), "labelled_marks": labelled,
            "marks_traced": (labelled - missing) / labelled if labelled else None,
            "endpoint_error_grid": error_distribution(endpoint), "unit": "cells of Magma's 256 x 256 grid"}


def run_offline_evaluation(checkpoint: str | Path, data: str | Path, out: str | Path, *, backend: str = "torch",
                           statistics: str | None = None, device: str = "cpu", dtype: str = "float32",
                           temperature: float = 0.0, config: OfflineEvalConfig | None = None,
                           options: BackendOptions | None = None) -> OfflineEvalResult:
    """Open the dataset, create the backend the policy node would (``create_backend``) and evaluate.

    ``statistics``: the set to decode with (default: the dataset's name, which a checkpoint
    fine-tuned on it carries in its ``dataset_statistics.json``). ``options``: the compiled-backend
    options (export dir, execution provider, engine cache...), as the node's parameters give them.
    """
    from magma_ros.backends import BackendError, create_backend
    from magma_ros.training.dataset import TrajectoryDataset

    try:
        dataset = TrajectoryDataset(data)
    except DatasetError as err:
        raise OfflineEvalError(str(err)) from err
    name = statistics or dataset.name
    try:
        policy = create_backend(backend, checkpoint=str(checkpoint), dtype=dtype, device=device, statistics=name,
                                temperature=temperature, options=options)
    except BackendError as err:
        hint = "" if statistics else " (pass --statistics NAME to decode with another set, e.g. bridge_orig)"
        raise OfflineEvalError(f"cannot create the {backend} backend: {err}{hint}") from err
    info = {"checkpoint": str(checkpoint), "backend": backend, "device": device, "dtype": dtype,
            "temperature": temperature}
    try:
        return evaluate_offline(policy, dataset, out, config, info=info)
    finally:
        policy.close()
