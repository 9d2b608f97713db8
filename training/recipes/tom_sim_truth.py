"""Trace-of-Mark answers of a checkpoint scored against the simulator's exact motion.

usage: python training/recipes/tom_sim_truth.py CHECKPOINT [--task reach pick] [--episodes 10]
           [--seed 6000] [--steps 48] [--backend torch] [--out DIR]

The scripted expert runs ``--episodes`` episodes of each task from ``--seed`` (>= 5000: never
recorded for training) in a workcell that renders what the policy sees (320 x 240, arm at
render_detail low); every window of the recipe's label stage (9 frames, stride 8, seed 0) is
labelled from the exact tracks of its query grid (magma_ros.training.tom_truth), and the model is
asked each label's own question about its marked frame. Endpoint errors are in pixels of the frame
scaled to 256 x 256 (= cells of Magma's 256 grid), beside those of the answer "nothing moves".

Writes DIR/summary.json and DIR/traces.png (a few windows: the marked frame with the simulator's
trace in green and the model's in red); prints a line per episode and one summary line. The
compiled backends (onnxruntime) cannot be asked a ToM question yet (no answer_traces), so with
them only the standing-still baseline is scored.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from magma_ros.backends import PolicyOutput, create_backend
from magma_ros.sim.expert import ExpertConfig
from magma_ros.training.offline_eval import trace_endpoint_errors
from magma_ros.training.records import TraceSample
from magma_ros.training.tom_truth import (
    POLICY_CAMERA,
    POLICY_RENDER_DETAIL,
    POLICY_WRIST_INSET,
    RECIPE_LABEL_CONFIG,
    TRUTH_TRACKER,
    SimTraceSet,
    TruthWindow,
    evaluate_traces_against_sim,
    label_sim_episodes,
    standing_still_errors,
)

GREEN = (40, 200, 40)
RED = (230, 30, 30)
SCALE = 2


def _path(points: list[tuple[float, float]]) -> np.ndarray:
    return np.round(np.asarray(points, np.float64).reshape(-1, 2) * SCALE).astype(np.int32)


def draw_window(window: TruthWindow, output: PolicyOutput | None) -> np.ndarray:
    """The marked frame (upscaled) with each moved mark's true trace (green) and the answered one (red)."""
    sample = window.sample
    height, width = sample.image.shape[:2]
    panel = cv2.resize(sample.image, (width * SCALE, height * SCALE), interpolation=cv2.INTER_NEAREST)
    marks = {m.id: (m.u, m.v) for m in window.label.marks}
    for mark_id, trace in window.label.pixel_traces.items():
        path = _path([marks[mark_id], *[tuple(p) for p in trace]])
        cv2.polylines(panel, [path], False, GREEN, 2, cv2.LINE_AA)
        cv2.circle(panel, tuple(int(c) for c in path[-1]), 4, GREEN, -1, cv2.LINE_AA)
    errors: list[float] = []
    if output is not None:
        for mark_id, trace in output.traces:
            start = [marks[mark_id]] if mark_id in marks else []
            path = _path(start + [tuple(p) for p in trace.pixels])
            cv2.polylines(panel, [path], False, RED, 2, cv2.LINE_AA)
            cv2.circle(panel, tuple(int(c) for c in path[-1]), 4, RED, -1, cv2.LINE_AA)
        errors = trace_endpoint_errors(sample, output)[0]
    still = list(standing_still_errors(sample).values())
    answer = (f"model {np.mean(errors):.1f} px" if errors else "no trace answered") if output is not None \
        else "not asked"
    text = f"{sample.episode_id} step {sample.step}: {answer}, still {np.mean(still):.1f} px (256 grid)"
    caption = np.full((24, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(caption, text[:100], (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([panel, caption], axis=0)


def write_figure(path: Path, windows: list[TruthWindow], outputs: dict[int, PolicyOutput], count: int = 6,
                 columns: int = 2) -> Path:
    """A grid of ``count`` windows spread over the windows' steps in their episodes, first windows to
    last (so an episode's start, its middle and its end all show), ``outputs``: by index into ``windows``."""
    by_step = sorted(range(len(windows)), key=lambda i: (windows[i].sample.step, i))
    picks = ([by_step[int(j)] for j in sorted({int(j) for j in np.linspace(0, len(windows) - 1,
                                                                            min(count, len(windows)))})]
             if windows else [])
    panels = [draw_window(windows[i], outputs.get(i)) for i in picks]
    if not panels:
        panels = [np.full((64, 320, 3), 255, np.uint8)]
        cv2.putText(panels[0], "no labelled window", (8, 36), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1)
    height, width = max(p.shape[0] for p in panels), max(p.shape[1] for p in panels)
    tiles = [np.pad(p, ((0, height - p.shape[0]), (0, width - p.shape[1]), (0, 0)), constant_values=255)
             for p in panels]
    tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % columns)
    rows = [np.concatenate(tiles[r:r + columns], axis=1) for r in range(0, len(tiles), columns)]
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    return path


def _fmt(distribution: dict[str, Any]) -> str:
    if distribution.get("median") is None:
        return "n/a"
    return f"median {distribution['median']:.1f} / mean {distribution['mean']:.1f} / p90 {distribution['p90']:.1f}"


def summary_line(summary: dict[str, Any], episodes: int) -> str:
    """One line: how many samples, how many answers parsed, the model's and standing still's errors."""
    still = summary["standing_still"]
    parsed = summary.get("answers_parsed")
    traced = summary.get("marks_traced")
    model = (f"answers parsed {parsed:.0%}, marks traced {traced:.0%}; model endpoint error "
             f"{_fmt(summary['endpoint_error_grid'])} px vs standing still on those marks "
             f"{_fmt(still['endpoint_error_grid_on_traced_marks'])} px; over all moved marks (untraced = "
             f"standing still) {_fmt(summary['endpoint_error_grid_all_marks'])} px"
             if parsed is not None and traced is not None else summary.get("note", "not asked"))
    return (f"ToM vs simulator truth: {summary['samples']} window(s), {summary['labelled_marks']} moved mark(s) from "
            f"{episodes} episode(s); {model}; standing still on all marks {_fmt(still['endpoint_error_grid'])} px "
            "(256 x 256)")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint directory (or export directory for a compiled backend)")
    parser.add_argument("--task", nargs="+", choices=("reach", "pick"), default=["reach", "pick"])
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task")
    parser.add_argument("--seed", type=int, default=6000, help="first seed (>= 5000: held out from training)")
    parser.add_argument("--steps", type=int, default=48, help="control steps recorded per episode")
    parser.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch")
    parser.add_argument("--statistics", default="", help="action statistics (default: the checkpoint's own)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=POLICY_CAMERA.width)
    parser.add_argument("--height", type=int, default=POLICY_CAMERA.height)
    parser.add_argument("--render-detail", choices=("full", "low"), default=POLICY_RENDER_DETAIL)
    parser.add_argument("--final-descent-speed", type=float, default=None, metavar="M_PER_S",
                        help="the expert's top speed in the last 5 cm of a pick's descent, as record-demos's "
                             "(default: the expert's own, 0.06; 0.25 = recordings before attempt 10)")
    parser.add_argument("--yaw-slack", type=float, default=0.0, metavar="RAD",
                        help="the expert's heading may stay this far from square with the cube (record-demos's)")
    parser.add_argument("--wrist-inset", action=argparse.BooleanOptionalAction, default=POLICY_WRIST_INSET,
                        help="the wrist view in the frames' top-right corner, as the sim node's wrist_inset "
                             "(default: the sim's default); use what the model was trained on")
    parser.add_argument("--figure-samples", type=int, default=6, help="windows drawn in traces.png")
    parser.add_argument("--out", type=Path, default=Path("tom_sim_truth"))
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.steps < 2:
        parser.error("--episodes must be >= 1 and --steps >= 2")
    if args.seed < 5000:
        print(f"warning: seeds from {args.seed} include training seeds (< 5000)", file=sys.stderr)

    started = time.monotonic()
    camera = dataclasses.replace(POLICY_CAMERA, width=args.width, height=args.height)
    seeds = range(args.seed, args.seed + args.episodes)
    print(f"labelling {len(args.task)} x {args.episodes} episode(s) from seed {args.seed}, {args.steps} steps, "
          f"{camera.width}x{camera.height} render_detail {args.render_detail}", flush=True)
    speed = {} if args.final_descent_speed is None else {"slow_speed": args.final_descent_speed}
    expert = ExpertConfig(yaw_slack=args.yaw_slack, **speed)
    labels: SimTraceSet = label_sim_episodes(args.task, seeds, args.steps, camera=camera,
                                             render_detail=args.render_detail, wrist_inset=args.wrist_inset,
                                             expert=expert,
                                             on_episode=lambda e: print(f"  label {e.line()}", flush=True))
    windows = labels.windows
    episode_of = {id(w.sample): e for e in labels.episodes for w in e.windows}
    index_of = {id(w.sample): i for i, w in enumerate(windows)}
    outputs: dict[int, PolicyOutput] = {}
    answered: dict[str, list[int]] = {}

    def on_answer(sample: TraceSample, output: PolicyOutput) -> None:
        outputs[index_of[id(sample)]] = output
        episode = episode_of[id(sample)]
        seen = answered.setdefault(episode.episode_id, [0, 0, 0])
        seen[0] += 1
        seen[1] += int(not output.error)
        seen[2] += len(output.traces)
        if seen[0] == len(episode.windows):
            print(f"  answer {episode.episode_id}: {seen[0]} window(s), {seen[1]} answer(s) parsed, "
                  f"{seen[2]} trace(s)", flush=True)

    backend = create_backend(args.backend, checkpoint=str(args.checkpoint), device=args.device,
                             statistics=args.statistics)
    try:
        evaluation = evaluate_traces_against_sim(backend, labels.samples, on_answer=on_answer)
        model_id = backend.model_id
    finally:
        backend.close()
    args.out.mkdir(parents=True, exist_ok=True)
    figure = write_figure(args.out / "traces.png", windows, outputs, args.figure_samples)
    summary = {
        "checkpoint": str(args.checkpoint), "model_id": model_id, "backend": args.backend, "tasks": args.task,
        "seeds": [args.seed, args.seed + args.episodes - 1], "steps": args.steps,
        "camera": {"width": camera.width, "height": camera.height, "render_detail": args.render_detail},
        "label_config": {**RECIPE_LABEL_CONFIG.as_dict(), "tracker": {"name": TRUTH_TRACKER}},
        "windows_without_label": dict(labels.skipped),
        **evaluation,
        "episodes": [{"episode_id": e.episode_id, "instruction": e.instruction, "windows": len(e.windows),
                      "skipped": dict(e.skipped)} for e in labels.episodes],
        "figure": figure.name, "wall_s": time.monotonic() - started,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(summary_line(evaluation, len(labels.episodes)))
    print(f"wrote {args.out / 'summary.json'} and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
