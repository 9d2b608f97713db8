"""Scripted-expert benchmark: success rate, mean steps and throughput per task family.

    .venv/bin/python bench/expert_bench.py --episodes 100 --seed 0

Runs seeds ``seed .. seed + episodes - 1`` for each family, without rendering, reusing one
workcell (as the expert success test does). Prints one row per family.
"""

from __future__ import annotations

import argparse
import sys
import time

from magma_ros.sim import ScriptedExpert, TaskFamily, Workcell, run_episode, task_for_seed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100, help="episodes (seeds) per task family")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument(
        "--task",
        dest="tasks",
        action="append",
        choices=[f.value for f in TaskFamily],
        help="task family to run (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.seed < 0:
        parser.error("--episodes must be >= 1 and --seed >= 0")
    return args


def bench_family(cell: Workcell, family: str, seeds: range) -> dict[str, float]:
    """Run the expert on ``seeds``; returns success rate, mean steps, episodes/s, sim speed-up."""
    successes, steps, sim_seconds = 0, 0, 0.0
    failed: list[int] = []
    start = time.perf_counter()
    for seed in seeds:
        task = task_for_seed(family, seed)
        result = run_episode(task, seed, ScriptedExpert(task), workcell=cell)
        successes += result.success
        steps += result.steps
        sim_seconds += result.sim_time
        if not result.success:
            failed.append(seed)
    wall = time.perf_counter() - start
    if failed:
        print(f"  {family}: failed seeds {failed}")
    return {
        "success_rate": successes / len(seeds),
        "mean_steps": steps / len(seeds),
        "episodes_per_s": len(seeds) / wall,
        "realtime_factor": sim_seconds / wall,
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    families = args.tasks or [f.value for f in TaskFamily]
    seeds = range(args.seed, args.seed + args.episodes)
    print(f"scripted expert, seeds {seeds.start}..{seeds.stop - 1}, no rendering, 10 Hz control")
    print(f"{'task':<8}{'success':>10}{'mean steps':>12}{'episodes/s':>12}{'x realtime':>12}{'wall s':>9}")
    with Workcell() as cell:
        for family in families:
            row = bench_family(cell, family, seeds)
            print(
                f"{family:<8}{row['success_rate']:>10.1%}{row['mean_steps']:>12.1f}"
                f"{row['episodes_per_s']:>12.2f}{row['realtime_factor']:>12.1f}{row['wall_s']:>9.1f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
