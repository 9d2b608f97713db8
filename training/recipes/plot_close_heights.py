"""Where does a model close the gripper? Heights of its closing commands from ``closed_loop_trace.py`` CSVs.

    .venv/bin/python training/recipes/plot_close_heights.py LABEL=TRACE_DIR [LABEL=TRACE_DIR ...] --out PNG

Each TRACE_DIR is a ``closed_loop_trace.py --task pick --out`` directory. A close is a step where the
model's gripper command goes from open to closed; its height is the hand's height above the target
cube's centre then (``dz_cm``), counted only when the hand is within 2 cm of the cube horizontally
(elsewhere no height grasps), with how many steps the model kept it closed (the expert keeps it
closed 5 steps before it lifts). A grasp holds from 2.5 cm above the centre to 1 cm below (the expert's
comment in magma_ros/sim/expert.py); the plot shades that band. Prints the same numbers as a table.
This is the diagnostic behind training/recipes/README.md's attempt 10.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

GRASP_BAND_CM = (-1.0, 2.5)
NEAR_CM = 2.0


def close_heights(trace_dir: Path) -> tuple[list[float], list[int], int, int]:
    """(heights of the closes near the cube, for how many steps each was held, successes, episodes)."""
    heights: list[float] = []
    held: list[int] = []
    files = sorted(trace_dir.glob("pick_*.csv"))
    if not files:
        raise SystemExit(f"{trace_dir}: no pick_*.csv (closed_loop_trace.py --task pick --out DIR)")
    for path in files:
        with path.open() as handle:
            commands = [(int(float(r["model_gripper"])), float(r["dx_cm"]), float(r["dy_cm"]), float(r["dz_cm"]))
                        for r in csv.DictReader(handle)]
        previous = 1
        for i, (command, dx, dy, dz) in enumerate(commands):
            if previous == 1 and command == 0 and math.hypot(dx, dy) <= NEAR_CM:
                heights.append(dz)
                run = next((j for j in range(i, len(commands)) if commands[j][0] == 1), len(commands)) - i
                held.append(run)
            previous = command
    summary = json.loads((trace_dir / "summary.json").read_text())
    return heights, held, int(summary["successes"]), len(summary["episodes"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=TRACE_DIR")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = []
    for spec in args.runs:
        label, _, directory = spec.partition("=")
        runs.append((label, *close_heights(Path(directory))))

    print(f"{'run':<16} {'closes near':>11} {'in grasp band':>13} {'median cm':>9} {'held 5+ steps':>13} {'pick':>6}")
    for label, heights, held, wins, episodes in runs:
        inside = sum(GRASP_BAND_CM[0] <= h <= GRASP_BAND_CM[1] for h in heights)
        median = sorted(heights)[len(heights) // 2] if heights else float("nan")
        long = sum(n >= 5 for n in held)
        print(f"{label:<16} {len(heights):>11} {inside:>13} {median:>9.1f} {long:>13} {wins:>3}/{episodes}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    bins = [x * 0.5 for x in range(-4, 21)]
    ax.axvspan(*GRASP_BAND_CM, color="0.85", label="a grasp holds")
    for label, heights, _, wins, episodes in runs:
        ax.hist([min(max(h, bins[0]), bins[-1]) for h in heights], bins=bins, histtype="step", linewidth=2,
                label=f"{label}: {len(heights)} closes, pick {wins}/{episodes}")
    ax.set_xlabel("hand above the target cube's centre when the model closes (cm)")
    ax.set_ylabel("closes (hand within 2 cm horizontally)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
