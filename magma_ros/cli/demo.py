"""`magma-ros demo` (what `make demo` runs): the whole stack closed-loop in the simulated workcell.

Brings up config/bringup/sim.yaml in this process (sim_arm_node in synchronous mode,
magma_policy_node on the embedded default checkpoint, servo_bridge_node), runs a few reach
and pick episodes on held-out seeds (5000.., never used in training) through it, prints the
success table and writes the summary JSON, the plot and an animation of the first episode
with the policy's predicted motion (and its Trace-of-Mark traces when the policy queries them) drawn.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_OUT = "runs/demo"
DEMO_SEED = 5000
"""Seeds from 5000 up are held out: the shipped default never trained on these layouts."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="closed loop in the simulated workcell on the embedded default (what `make demo` runs)",
        description="Bring up sim + policy + Servo bridge, run a few short episodes, print the success table "
                    "and write an overlay animation.")
    parser.add_argument("--bringup", default="config/bringup/sim.yaml", help="bringup description to run")
    parser.add_argument("--checkpoint", default="", help="checkpoint directory ('' = the embedded default)")
    parser.add_argument("--episodes", type=int, default=3, help="episodes per task")
    parser.add_argument("--max-steps", type=int, default=0,
                        help="step budget per episode (10 Hz steps; 0, the default = the task's own: 80 reach, "
                             "150 pick, what `magma-ros evaluate` gives; the expert needs ~20 for reach, ~40 for pick)")
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help="first seed (5000 and up: held out from training)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="where the summary, plot and animation go")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from magma_ros.backends.default_checkpoint import default_checkpoint, shipped_evaluation
    from magma_ros.bringup import BringupError
    from magma_ros.cli.evaluate import EvaluationSettings, evaluate
    from magma_ros.evaluation import format_table, summarize
    from magma_ros.ros.sim_episodes import EpisodeClientError

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    out = Path(args.out)
    checkpoint_note = args.checkpoint or default_checkpoint()[1]
    untrained = not args.checkpoint and "untrained" in checkpoint_note
    print("magma-ros demo: simulated Panda workcell -> magma_policy_node -> servo_bridge_node -> Servo twists -> sim")
    print(f"  checkpoint: {checkpoint_note}")
    for line in describe_default(None if args.checkpoint else shipped_evaluation(), untrained):
        print(f"  {line}")
    steps = "the task's step budget" if args.max_steps == 0 else f"{args.max_steps} steps"
    print(f"  {args.episodes} reach + {args.episodes} pick episode(s), seeds {args.seed}.., {steps} each, "
          "synchronous sim (deterministic; slow CPUs only make it slower)\n")
    started = time.monotonic()
    try:
        settings = EvaluationSettings(checkpoint=args.checkpoint, tasks=("reach", "pick"), episodes=args.episodes,
                                      seed=args.seed, max_steps=args.max_steps, out=out, gif=out / "overlay.gif",
                                      bringup=args.bringup)
        result = evaluate(settings)
    except (ValueError, BringupError, EpisodeClientError) as err:
        print(f"magma-ros demo: {err}", file=sys.stderr)
        return 1
    print()
    print(format_table(summarize(result.outcomes)))
    if untrained:
        print("(untrained model: 0% is the expected result; `magma-ros record-demos` writes expert demonstrations "
              "to train on)")
    print(f"\nsummary JSON:      {result.summary_json}")
    print(f"plot:              {result.plot}")
    if result.gif is not None:
        print(f"overlay animation: {result.gif}  (yellow: TCP path, cyan: the policy's predicted motion x5; "
              "with trace_period_s > 0 also its Trace-of-Mark traces)")
    print(f"wall time:         {time.monotonic() - started:.0f} s")
    return 0


def describe_default(evaluation: dict | None, untrained: bool) -> list[str]:
    """What the embedded default is and how well it was measured to do (from its evaluation.json)."""
    if untrained:
        return ["NOTE: the trained default is missing from this install, so this is an untrained magma-tiny:",
                "expect about 0% success (the demo then only shows the closed loop running)."]
    if not evaluation:
        return []
    lines = [str(evaluation.get("description", "")).strip()] if evaluation.get("description") else []
    runs = evaluation.get("realtime_runs")   # every realtime run, each with its camera rate (newer cards)
    realtime = runs if isinstance(runs, list) else [evaluation.get("realtime")]
    blocks = [("synchronous", evaluation.get("synchronous")), *(("realtime", run) for run in realtime)]
    for mode, block in blocks:
        if not isinstance(block, dict):
            continue
        if mode == "realtime" and isinstance(block.get("camera_hz"), (int, float)):
            mode = f"realtime, camera {block['camera_hz']:g} Hz"
        rows = []
        for task, row in sorted(block.get("tasks", {}).items()):
            try:
                rows.append(f"{task} {row['successes']}/{row['episodes']} ({100 * row['success_rate']:.0f}%, "
                            f"95% CI {100 * row['ci95_low']:.0f}-{100 * row['ci95_high']:.0f}%)")
            except (KeyError, TypeError):
                continue
        if rows:
            lines.append(f"measured ({mode}, {block.get('seeds', 'held-out seeds')}): {'; '.join(rows)}")
    return lines
