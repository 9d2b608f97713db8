"""Closed-loop evaluation results: success rates with Wilson intervals, summary JSON, plot, overlay GIF.

ROS-free: ``magma-ros evaluate`` and ``magma-ros demo`` collect :class:`EpisodeOutcome` rows
over ROS and hand them here; the overlay works on plain arrays (camera frame, CameraInfo K,
end-effector positions in the base frame, the policy's predicted step).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from magma_ros.sim.description import WorkcellDescription
from magma_ros.sim.transforms import Pose

Z_95 = 1.959963984540054
PREDICTION_ARROW_STEPS = 5
"""The predicted step is drawn as this many repeats of it: one 10 Hz step is a few mm, too short to see."""


class EvaluationError(ValueError):
    """Bad evaluation input (no episodes, mismatched frames, an unwritable output)."""


@dataclass(frozen=True)
class EpisodeOutcome:
    """One evaluated episode. ``steps`` = control steps taken (the budget when it failed)."""

    task: str
    seed: int
    color: str
    instruction: str
    success: bool
    steps: int
    max_steps: int
    sim_time: float
    wall_s: float


@dataclass(frozen=True)
class TaskSummary:
    """Success rate of one task family with its 95% Wilson score interval, and step counts."""

    task: str
    episodes: int
    successes: int
    success_rate: float
    ci95_low: float
    ci95_high: float
    mean_steps: float
    mean_steps_successful: float | None
    seeds_failed: list[int] = field(default_factory=list)


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% for the default ``z``).

    Unlike the normal approximation it stays inside [0, 1] and is informative at 0 or n
    successes: 0/10 gives (0, 0.278).
    """
    if trials <= 0 or not 0 <= successes <= trials:
        raise EvaluationError(f"need 0 <= successes <= trials and trials > 0, got {successes}/{trials}")
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    # rounding can put centre - half a hair above 0 at 0 successes (0/3): the interval always holds p
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def summarize(outcomes: Sequence[EpisodeOutcome]) -> dict[str, TaskSummary]:
    """Per task family (in order of first appearance)."""
    if not outcomes:
        raise EvaluationError("no episodes to summarize")
    summaries: dict[str, TaskSummary] = {}
    for task in dict.fromkeys(o.task for o in outcomes):
        rows = [o for o in outcomes if o.task == task]
        wins = [o for o in rows if o.success]
        low, high = wilson_interval(len(wins), len(rows))
        summaries[task] = TaskSummary(
            task=task, episodes=len(rows), successes=len(wins), success_rate=len(wins) / len(rows),
            ci95_low=low, ci95_high=high, mean_steps=float(np.mean([o.steps for o in rows])),
            mean_steps_successful=float(np.mean([o.steps for o in wins])) if wins else None,
            seeds_failed=[o.seed for o in rows if not o.success])
    return summaries


def format_table(summaries: dict[str, TaskSummary]) -> str:
    """A plain-text success table."""
    lines = [f"{'task':<6} {'episodes':>8} {'success':>8} {'rate':>6}  {'95% Wilson CI':<15} {'mean steps':>10}"]
    for s in summaries.values():
        lines.append(f"{s.task:<6} {s.episodes:>8} {s.successes:>8} {s.success_rate:>6.0%}  "
                     f"[{s.ci95_low:.2f}, {s.ci95_high:.2f}]    {s.mean_steps:>10.1f}")
    return "\n".join(lines)


def summary_document(outcomes: Sequence[EpisodeOutcome], **meta: Any) -> dict[str, Any]:
    """The summary JSON: ``meta`` (checkpoint, model, settings), per-task rows and every episode."""
    return {**meta,
            "tasks": {task: asdict(s) for task, s in summarize(outcomes).items()},
            "episodes": [asdict(o) for o in outcomes]}


def write_json(path: str | Path, document: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    return path


def plot_summary(outcomes: Sequence[EpisodeOutcome], path: str | Path, title: str = "") -> Path:
    """PNG: success rate per task with 95% Wilson intervals, and steps per episode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = summarize(outcomes)
    fig, (rates, steps) = plt.subplots(1, 2, figsize=(9, 3.6), gridspec_kw={"width_ratios": [1, 2]})
    names = list(summaries)
    values = [summaries[n].success_rate for n in names]
    errors = np.array([[summaries[n].success_rate - summaries[n].ci95_low for n in names],
                       [summaries[n].ci95_high - summaries[n].success_rate for n in names]])
    rates.bar(names, values, color="#4c72b0", yerr=errors, capsize=6)
    for i, n in enumerate(names):
        rates.text(i, min(values[i] + errors[1][i], 1.0) + 0.03, f"{summaries[n].successes}/{summaries[n].episodes}",
                   ha="center", fontsize=9)
    rates.set_ylim(0, 1.12)
    rates.set_ylabel("success rate (95% Wilson CI)")
    x = np.arange(len(outcomes))
    colors = ["#55a868" if o.success else "#c44e52" for o in outcomes]
    steps.bar(x, [o.steps for o in outcomes], color=colors)
    steps.plot(x, [o.max_steps for o in outcomes], "k_", markersize=12, label="step budget")
    steps.set_xticks(x, [f"{o.task[:1]}{o.seed}" for o in outcomes], rotation=90 if len(outcomes) > 12 else 0,
                     fontsize=8)
    steps.set_ylabel("control steps (green = success)")
    steps.legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------- overlay
def camera_pose_in_base(optical_frame: str, base_frame: str, description: WorkcellDescription | None = None) -> Pose:
    """Pose of a fixed camera's optical frame in the arm's base frame, from the workcell URDF."""
    description = description if description is not None else WorkcellDescription.load()
    camera_anchor, camera = description.resolve(optical_frame)
    base_anchor, base = description.resolve(base_frame)
    if camera_anchor != base_anchor:
        raise EvaluationError(f"{optical_frame!r} hangs off {camera_anchor!r}, {base_frame!r} off {base_anchor!r}: "
                              "not a fixed camera")
    return base.inverse().compose(camera)


def project(points_base: np.ndarray, k: np.ndarray, camera_in_base: Pose) -> np.ndarray:
    """Pixels (N, 2) of base-frame points; NaN for points behind the camera."""
    points = camera_in_base.inverse().transform_points(np.asarray(points_base, dtype=np.float64).reshape(-1, 3))
    z = points[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = k[0, 0] * points[:, 0] / z + k[0, 2]
        v = k[1, 1] * points[:, 1] / z + k[1, 2]
    pixels = np.stack([u, v], axis=1)
    pixels[z <= 1e-6] = np.nan
    return pixels


@dataclass(frozen=True, eq=False)
class OverlayFrame:
    """What one animation frame shows. Positions in the base frame (m)."""

    rgb: np.ndarray
    ee_position: np.ndarray
    predicted_step: np.ndarray | None  # dx, dy, dz of the policy's step for this frame
    trace_pixels: Sequence[np.ndarray] = ()  # Trace-of-Mark traces the policy predicted (N, 2) px
    text: str = ""


def _point(p: np.ndarray) -> tuple[int, int] | None:
    return (round(float(p[0])), round(float(p[1]))) if np.all(np.isfinite(p)) else None


def draw_overlay(frame: OverlayFrame, path_so_far: np.ndarray, k: np.ndarray, camera_in_base: Pose,
                 scale: int = 2) -> np.ndarray:
    """The frame upscaled ``scale`` times with the TCP path so far (yellow), the predicted motion
    (cyan arrow, :data:`PREDICTION_ARROW_STEPS` repeats of the step), Magma's traces (magenta) and text."""
    image = cv2.resize(np.ascontiguousarray(frame.rgb), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    ks = np.asarray(k, dtype=np.float64).copy()
    ks[:2] *= scale
    path = project(path_so_far, ks, camera_in_base) if len(path_so_far) else np.zeros((0, 2))
    for a, b in itertools.pairwise(path):
        pa, pb = _point(a), _point(b)
        if pa and pb:
            cv2.line(image, pa, pb, (255, 210, 0), 2, cv2.LINE_AA)
    here = _point(project(frame.ee_position, ks, camera_in_base)[0])
    if here:
        cv2.circle(image, here, 5, (255, 210, 0), -1, cv2.LINE_AA)
    if frame.predicted_step is not None and here:
        target = frame.ee_position + PREDICTION_ARROW_STEPS * np.asarray(frame.predicted_step[:3], dtype=np.float64)
        tip = _point(project(target, ks, camera_in_base)[0])
        if tip:
            cv2.arrowedLine(image, here, tip, (0, 230, 255), 2, cv2.LINE_AA, tipLength=0.3)
    for trace in frame.trace_pixels:
        points = [_point(p * scale) for p in np.asarray(trace, dtype=np.float64).reshape(-1, 2)]
        points = [p for p in points if p]
        for a, b in itertools.pairwise(points):
            cv2.line(image, a, b, (255, 0, 255), 2, cv2.LINE_AA)
    for i, line in enumerate(frame.text.splitlines()):
        y = 18 + 18 * i
        cv2.putText(image, line, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(image, line, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def write_overlay_gif(frames: Sequence[OverlayFrame], k: np.ndarray, camera_in_base: Pose, path: str | Path,
                      fps: float = 10.0) -> Path:
    """An animated GIF of an episode, one frame per control step, with the overlays drawn."""
    from PIL import Image

    if not frames:
        raise EvaluationError("no frames to animate")
    positions = np.array([f.ee_position for f in frames], dtype=np.float64)
    images = [Image.fromarray(draw_overlay(f, positions[: i + 1], k, camera_in_base)) for i, f in enumerate(frames)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0,
                   optimize=False)
    return path
