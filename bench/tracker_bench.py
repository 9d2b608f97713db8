"""Point-tracker benchmark: accuracy against the simulator's ground truth, and speed.

    .venv/bin/python bench/tracker_bench.py --episodes 3 --steps 64

Records scripted-expert episodes (pick and reach, alternating, seeds ``seed ..``) through the
workcell's third-person camera at 256 x 256, tracks an s x s grid (225 points) over every
16-frame window (a new window every ``--stride`` steps) and compares each track with the
exact one (:mod:`magma_ros.sim.point_tracks`). Errors count points visible in every frame of
their window (ground truth), at every frame after the first. Frames/s is tracking time only
(not rendering; also per CPU-second of this process, steadier on a shared machine). The
default tracker and plain OpenCV LK with the same forward-backward check
(flat, textureless points lost as OpenCV reports them, lost points held) run side by side on
the same windows. Then the ToM labels built from the default tracker's tracks are checked the
same way: each answer's traces (grid cells read back as pixels) against the exact tracks of the
points the marks sit on.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from magma_ros.codecs import grid_point_to_pixel
from magma_ros.sim import TaskFamily, Workcell, WorkcellConfig, task_for_seed
from magma_ros.sim.point_tracks import GROUND_TRUTH_CAMERA, GroundTruthTracks, record_expert_episode, track_errors
from magma_ros.training.trace_labels import TraceLabelConfig, label_window
from magma_ros.training.tracking import (
    LucasKanadeConfig,
    LucasKanadeTracker,
    PointTracker,
    PointTracks,
    grid_queries,
)

MEDIAN_FLOOR_PX = 3.0
"""Issue floor: median error at 256 x 256 over 16-frame windows for points visible throughout."""


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if values.size else float("nan")


def _quantile(values: np.ndarray, q: float) -> float:
    return float(np.quantile(values, q)) if values.size else float("nan")


def label_errors(frames: np.ndarray, instruction: str, tracks: PointTracks, truth: GroundTruthTracks,
                 tracker: PointTracker, config: TraceLabelConfig, step: int) -> tuple[list[np.ndarray], list[bool]]:
    """Pixel errors of one window's ToM answer traces against the ground truth, and whether each
    answer mark sits on something that moves; ([], []) when the window gets no label."""
    label = label_window(frames, instruction, tracker, config, episode_id="bench", step=step, tracks=tracks)
    if isinstance(label, str):
        return [], []
    size = (frames.shape[2], frames.shape[1])
    errors, on_moving = [], []
    for mark_id, trace in label.sample.traces.items():
        source = label.sources[mark_id]
        pixels = np.array([grid_point_to_pixel(x, y, size) for x, y in trace])
        seen = truth.visible[1:1 + len(pixels), source]
        errors.append(np.linalg.norm(pixels - truth.points[1:1 + len(pixels), source], axis=1)[seen])
        on_moving.append(bool(truth.moving[source]))
    return errors, on_moving


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=3, help="simulated episodes (alternating pick / reach)")
    parser.add_argument("--steps", type=int, default=64, help="control steps (frames) per episode")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--grid", type=int, default=15, help="query grid side (15 -> 225 points)")
    parser.add_argument("--window", type=int, default=16, help="frames per window")
    parser.add_argument("--stride", type=int, default=4, help="steps between window starts")
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.steps < args.window or args.window < 2 or args.stride < 1 or args.grid < 1:
        parser.error("need --episodes >= 1, --steps >= --window >= 2, --stride >= 1, --grid >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """``argv`` None (as bench/run.py calls it): the defaults, not the caller's command line."""
    args = parse_args([] if argv is None else argv)
    trackers: dict[str, PointTracker] = {
        "lk (default)": LucasKanadeTracker(),
        "plain OpenCV LK + FB": LucasKanadeTracker(LucasKanadeConfig(hold_flat_points=False, follow_radius_px=0.0)),
    }
    queries = grid_queries((GROUND_TRUTH_CAMERA.width, GROUND_TRUTH_CAMERA.height), args.grid)
    results = {name: {"all": [], "moving": [], "kept_moving": [], "kept": 0, "counted": 0, "seconds": 0.0,
                      "cpu_seconds": 0.0, "frames": 0} for name in trackers}
    families = [TaskFamily.PICK.value, TaskFamily.REACH.value]
    render_s = 0.0
    windows = 0
    label_config = TraceLabelConfig(window=args.window, grid_size=args.grid)
    trace_errors: list[np.ndarray] = []
    marks_on_moving: list[bool] = []
    print(f"{args.episodes} expert episodes x {args.steps} frames at 256x256, {args.grid}x{args.grid} = "
          f"{len(queries)} points, {args.window}-frame windows every {args.stride} steps", flush=True)
    with Workcell(WorkcellConfig(cameras=(GROUND_TRUTH_CAMERA,))) as cell:
        for e in range(args.episodes):
            seed = args.seed + e
            task = task_for_seed(families[e % 2], seed)
            start = time.perf_counter()
            recording = record_expert_episode(cell, task, seed, args.steps)
            render_s += time.perf_counter() - start
            for first in range(0, args.steps - args.window + 1, args.stride):
                truth = recording.ground_truth(first, args.window, queries)
                frames = recording.rgb[first:first + args.window]
                windows += 1
                for name, tracker in trackers.items():
                    start, cpu_start = time.perf_counter(), time.process_time()
                    tracks = tracker.track(frames, queries)
                    row = results[name]
                    row["seconds"] += time.perf_counter() - start
                    row["cpu_seconds"] += time.process_time() - cpu_start
                    row["frames"] += args.window
                    errors = track_errors(tracks.points, tracks.visible, truth)
                    row["all"].append(errors.all)
                    row["moving"].append(errors.moving)
                    row["kept_moving"].append(errors.kept_moving)
                    row["kept"] += errors.kept
                    row["counted"] += errors.counted
                    if name == "lk (default)":
                        errs, moving = label_errors(frames, recording.instruction, tracks, truth, tracker,
                                                    label_config, first)
                        trace_errors += errs
                        marks_on_moving += moving
            print(f"  episode {e + 1}/{args.episodes}: {task.instruction!r} seed {seed}", flush=True)
    print(f"{windows} windows; rendering + physics {render_s:.1f} s (not in frames/s)")
    print(f"{'tracker':<22}{'median px':>10}{'p90 px':>8}{'moving med':>11}{'moving p90':>11}"
          f"{'kept mov med':>13}{'kept mov p90':>13}{'moving pts':>11}{'kept':>7}{'frames/s':>10}{'/CPU-s':>8}")
    failures = 0
    for name, row in results.items():
        every = np.concatenate(row["all"])
        moving = np.concatenate(row["moving"])
        kept_moving = np.concatenate(row["kept_moving"])
        fps = row["frames"] / row["seconds"]
        print(f"{name:<22}{np.median(every):>10.2f}{np.quantile(every, 0.9):>8.2f}{np.median(moving):>11.2f}"
              f"{np.quantile(moving, 0.9):>11.2f}{_median(kept_moving):>13.2f}{_quantile(kept_moving, 0.9):>13.2f}"
              f"{moving.size // (args.window - 1):>11d}"
              f"{row['kept'] / max(row['counted'], 1):>7.1%}{fps:>10.1f}"
              f"{row['frames'] / max(row['cpu_seconds'], 1e-9):>8.1f}")
        if name == "lk (default)" and np.median(every) > MEDIAN_FLOOR_PX:
            print(f"FAIL: median error {np.median(every):.2f} px is above the {MEDIAN_FLOOR_PX} px floor")
            failures += 1
    print("(median/p90: all points visible throughout their window; moving: those moving > 1 px; kept mov: "
          "moving points the tracker reports visible throughout; kept: share of all counted points it reports "
          "visible throughout)")
    if trace_errors:
        traced = np.concatenate(trace_errors)
        print(f"ToM labels (default tracker): {len(trace_errors)} answer traces; trace error median "
              f"{np.median(traced):.2f} px, p90 {np.quantile(traced, 0.9):.2f} px; "
              f"{np.mean(marks_on_moving):.0%} of answer marks on something that moves")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
