"""Closed-loop throughput: synchronous control steps per second, through ROS and without it.

Three loops on the same episode (reach, seed 0), model (the policy parameter file's
checkpoint: the embedded magma-tiny default) and camera (the sim parameter file's 320x240),
measured side by side in one run:

* ROS-free: the workcell and the model called directly (render, act, twist, one 0.1 s step);
* ROS, one process: config/bringup/sim.yaml's sim_arm_node -> magma_policy_node ->
  servo_bridge_node -> sim_arm_node on one executor (what ``magma-ros evaluate`` runs);
* ROS, one process per node: the same nodes as ``magma-ros up`` starts them.

The ROS loops run synchronous mode exactly as ``evaluate`` does (the bridge answers each
step at once, see magma_ros.sim.lockstep), without Trace-of-Mark queries (trace_period_s 0).
Floors: >= 15 steps/s through ROS and ROS adding
<= 30% per step over the ROS-free loop. Absolute numbers depend on the machine and on what
else runs on it; the ratio is measured in the same run (the ROS-free loop runs before and
after the ROS loops and its mean is the reference). Each loop's rate is the median of three
episodes; a ROS episode is timed from its first control step's status to its last one's (the
lifecycle calls that start and stop an episode are not control steps).

usage: python bench/closed_loop_bench.py [--steps N] [--render-detail full|low] [--check]
(--check: exit 1 when a floor fails)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ["ROS_DOMAIN_ID"] = os.environ.get("MAGMA_ROS_BENCH_DOMAIN_ID", str(171 + os.getpid() % 25))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as magma-ros sets it (see magma_ros/cli/__init__.py)

from magma_ros.bringup import apply_local_dds_profile, node_parameters  # noqa: E402

apply_local_dds_profile()

BRINGUP = "config/bringup/sim.yaml"
TASK, SEED = "reach", 0
MIN_ROS_STEPS_PER_S = 15.0
MAX_ROS_OVERHEAD = 0.30


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="control steps per measured loop")
    parser.add_argument("--check", action="store_true", help="exit 1 when a floor is not met")
    parser.add_argument("--render-detail", choices=("full", "low"), default=None,
                        help="sim_arm_node render_detail for every loop (default: the parameter file's)")
    args = parser.parse_args([] if argv is None else argv)
    if args.steps < 5:
        parser.error("--steps must be at least 5")
    return args


def ros_free_loop(bringup, steps: int, repeats: int = 3) -> float:  # type: ignore[no-untyped-def]
    """Steps per second of render -> model -> twist -> one control period, no ROS at all (median of
    ``repeats`` episodes)."""
    import numpy as np

    from magma_ros.backends import create_backend
    from magma_ros.backends.options import backend_options
    from magma_ros.contract import PolicyNodeParameters, SimArmParameters
    from magma_ros.sim import THIRD_PERSON_CAMERA, Workcell, WorkcellConfig, policy_cameras
    from magma_ros.sim.episode import apply_policy_delta
    from magma_ros.sim.render_detail import arm_urdf_for
    from magma_ros.sim.session import EpisodeSession, choose_task

    sim = node_parameters(bringup, "sim_arm_node", SimArmParameters)
    policy = node_parameters(bringup, "magma_policy_node", PolicyNodeParameters)
    camera = dataclasses.replace(THIRD_PERSON_CAMERA, width=sim.image_width, height=sim.image_height)
    backend = create_backend(policy.backend, checkpoint=policy.checkpoint, dtype=policy.dtype, device=policy.device,
                             statistics=policy.statistics, temperature=policy.sampling_temperature,
                             options=backend_options(policy))   # threads etc. as the node runs it
    cameras = policy_cameras(camera, sim.wrist_inset)   # the image the sim node publishes
    with Workcell(WorkcellConfig(seed=SEED, cameras=cameras, arm_urdf=arm_urdf_for(sim.render_detail))) as cell:
        session = EpisodeSession(cell, sim.control_period_s)
        task = choose_task(TASK, SEED, "", steps + 1)
        ticks = round(sim.control_period_s / cell.timestep)

        def step(gripper_open: list[bool]) -> None:
            frame = cell.render_view(camera.name, cell.inset_camera)
            output = backend.act(frame.rgb, task.instruction)
            if output.valid and np.all(np.isfinite(output.action)):
                gripper_open[0] = apply_policy_delta(cell, output.action, policy.step_period_s, gripper_open[0])
            cell.step_ticks(ticks)
            session.control_step_done()

        session.reset(task, SEED)
        state = [True]
        step(state)  # warm-up (first render, first model call)
        rates = []
        for _ in range(repeats):
            session.reset(task, SEED)
            state = [True]
            started = time.perf_counter()
            for _ in range(steps):
                step(state)
            rates.append(steps / (time.perf_counter() - started))
    backend.close()
    return statistics.median(rates)


def ros_loop(bringup, steps: int, separate_processes: bool, log: Path,  # type: ignore[no-untyped-def]
             repeats: int = 3) -> float:
    """Steps per second of the synchronous closed loop through the ROS nodes (median of ``repeats`` episodes)."""
    import rclpy
    from rclpy.logging import LoggingSeverity

    from magma_ros.ros.bringup_runner import create_nodes, start_processes, stop_processes
    from magma_ros.ros.sim_episodes import ClosedLoop, RunningGraph, ros_session

    names = {n.executable: n.name for n in bringup.nodes}
    with ros_session():
        processes, nodes = [], []
        with open(log, "a") as out:
            if separate_processes:
                processes = start_processes(bringup, stdout=out.fileno())
            else:
                nodes = create_nodes(bringup)
                for node in nodes:
                    node.get_logger().set_level(LoggingSeverity.WARN)
        control = rclpy.create_node("magma_closed_loop_bench")
        graph = RunningGraph([*nodes, control])
        try:
            loop = ClosedLoop(control, names["sim_arm_node"], names["magma_policy_node"], names["servo_bridge_node"])
            if not loop.wait_for_discovery(timeout=90.0):
                raise RuntimeError(f"the loop's topics never connected (see {log})")
            crowded = loop.foreign_publishers()
            if crowded:
                print(f"  WARNING: other publishers in this ROS domain: {crowded}")
            # warm-up episode (model load finished, first render, first model call, DDS paths)
            loop.run(loop.prepare(SEED, TASK, 2), timeout=120.0)
            rates = []
            for _ in range(repeats):
                seen: dict[int, float] = {}   # step -> when its status arrived
                final = loop.run(loop.prepare(SEED, TASK, steps), timeout=steps * 5.0 + 60.0,
                                 progress=lambda status, seen=seen: seen.setdefault(status.step, time.perf_counter()))
                if final.step != steps and not final.success:
                    raise RuntimeError(f"episode ended after {final.step} of {steps} steps")
                # the control steps themselves, from the first step's status to the last one's (the
                # lifecycle calls that start and stop an episode are not control steps)
                first, last = min(s for s in seen if s >= 1), max(seen)
                rates.append((last - first) / (seen[last] - seen[first]))
            loop.stop()
            return statistics.median(rates)
        finally:
            graph.close()
            if processes:
                stop_processes(processes)


def main(argv: list[str] | None = None) -> int:
    from magma_ros.bringup import load_bringup
    from magma_ros.ros.sim_episodes import synchronous_loop_overrides

    args = parse_args(argv)
    bringup = load_bringup(REPO / BRINGUP)
    overrides = synchronous_loop_overrides()
    # the control loop alone: the Trace-of-Mark thread (trace_period_s, wall-clock) would take CPU
    # from it at a rate set by the clock, not by the loop
    overrides["magma_policy_node"]["trace_period_s"] = 0.0
    if args.render_detail:
        overrides["sim_arm_node"]["render_detail"] = args.render_detail
    bringup = bringup.with_overrides(overrides)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"synchronous closed loop, {TASK} seed {SEED}, {args.steps} steps per loop, {BRINGUP}; "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at start (other work on the machine slows every row)")
    log = Path(tempfile.mkdtemp(prefix="magma_closed_loop_")) / "nodes.log"
    rows: list[tuple[str, float]] = []
    free_first = ros_free_loop(bringup, args.steps)
    rows.append(("ROS, one process", ros_loop(bringup, args.steps, False, log)))
    rows.append(("ROS, one process per node", ros_loop(bringup, args.steps, True, log)))
    free_last = ros_free_loop(bringup, args.steps)
    free = 2.0 / (1.0 / free_first + 1.0 / free_last)  # mean time per step, as a rate
    print(f"{'loop':<28}{'steps/s':>9}{'ms/step':>9}{'ROS adds':>10}")
    print(f"{'ROS-free (sim + model)':<28}{free:>9.1f}{1e3 / free:>9.1f}{'':>10}"
          f"   (runs: {free_first:.1f} before, {free_last:.1f} after)")
    failed = []
    for label, rate in rows:
        overhead = free / rate - 1.0
        print(f"{label:<28}{rate:>9.1f}{1e3 / rate:>9.1f}{overhead:>+10.0%}")
        if rate < MIN_ROS_STEPS_PER_S:
            failed.append(f"{label}: {rate:.1f} steps/s < {MIN_ROS_STEPS_PER_S:g}")
        if overhead > MAX_ROS_OVERHEAD:
            failed.append(f"{label}: ROS adds {overhead:.0%} > {MAX_ROS_OVERHEAD:.0%}")
    print("floors (>= 15 steps/s through ROS, ROS adds <= 30%): " + ("met" if not failed else "NOT met: "
                                                                      + "; ".join(failed)))
    return 1 if failed and args.check else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
