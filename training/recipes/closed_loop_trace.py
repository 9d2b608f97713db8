"""Why does a checkpoint fail in closed loop? Step-by-step traces of the model driving the workcell.

    .venv/bin/python training/recipes/closed_loop_trace.py CHECKPOINT --task pick --seed 5000 --episodes 10 \
        [--verbose] [--max-steps N] [--out DIR] [--[no-]wrist-inset]

ROS-free (sim + model called directly, as ``bench/closed_loop_bench.py``'s ROS-free loop): each step
renders the third-person camera, asks the model for its action, applies it as the Servo bridge would
(twist = delta / step period; the gripper through the policy node's hysteresis and, with
``--gripper-hold``, its dwell), and records beside it what a scripted expert
running alongside would answer from the same state. That expert keeps its own phase (it never
hovered where the model did), so read its answer as "where the target is from here", not as the
label the model was trained on. Per step: the hand's offset from
the target cube (cm; base frame), the gripper opening, the hand's yaw error to the cube's nearest
face, the model's delta (mm) and gripper command, the expert's twist (mm per step) and phase.

``--out`` writes ``<task>_<seed>.csv`` per episode and ``summary.json`` (successes, steps, gripper
closes and, for pick, how each episode failed: :func:`failure_mode`, and whether the model centres
its hand over the cube: :func:`near_cube_servo`, also printed). This is the diagnostic behind
training/recipes/README.md's attempts 8-12.
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np

FIELDS = ("step", "dx_cm", "dy_cm", "dz_cm", "gripper_width_cm", "yaw_error_rad", "model_dx_mm", "model_dy_mm",
          "model_dz_mm", "model_dyaw_mrad", "model_gripper", "command_gripper", "expert_dx_mm", "expert_dy_mm",
          "expert_dz_mm", "expert_phase")


def trace_episode(backend, cell, session, family: str, seed: int, max_steps: int = 0,  # type: ignore[no-untyped-def]
                  step_period: float = 0.1, gripper_hold: int = 0) -> tuple[list[dict], bool]:
    """Run one episode with ``backend`` driving; returns (rows, success).

    The gripper command goes through the policy node's hysteresis, with ``gripper_hold`` as its
    dwell time (``gripper_min_hold_steps``).
    """
    from magma_ros.codecs import GripperHysteresis
    from magma_ros.contract import PolicyNodeParameters
    from magma_ros.sim.episode import apply_policy_delta, observe
    from magma_ros.sim.expert import ScriptedExpert
    from magma_ros.sim.session import choose_task
    from magma_ros.sim.transforms import yaw_of

    task = choose_task(family, seed, "", max_steps)
    status = session.reset(task, seed)
    expert = ScriptedExpert(task)
    ticks = round(step_period / cell.timestep)
    policy = PolicyNodeParameters()
    hysteresis = GripperHysteresis(policy.gripper_open_threshold, policy.gripper_close_threshold,
                                   min_hold_steps=gripper_hold)
    rows: list[dict] = []
    for step in range(task.max_steps):
        observation = observe(cell, step, task.instruction)
        hint = expert(observation)
        output = backend.act(cell.render_view(cell.camera_names[0], cell.inset_camera).rgb, task.instruction)
        action = np.asarray(output.action, dtype=np.float64)
        usable = output.valid and bool(np.all(np.isfinite(action)))
        if usable:
            command, was_open = action.copy(), hysteresis.is_open
            command[6] = hysteresis.update(action[6])
            apply_policy_delta(cell, command, step_period, was_open)
        cube = observation.cube_poses[task.color]
        offset = (observation.ee_pose.position - cube.position) * 100.0
        yaw_error = math.remainder(yaw_of(cube.orientation) - yaw_of(observation.ee_pose.orientation), math.pi / 2)
        rows.append({
            "step": step, "dx_cm": offset[0], "dy_cm": offset[1], "dz_cm": offset[2],
            "gripper_width_cm": observation.gripper_width * 100.0, "yaw_error_rad": yaw_error,
            "model_dx_mm": action[0] * 1e3 if usable else float("nan"),
            "model_dy_mm": action[1] * 1e3 if usable else float("nan"),
            "model_dz_mm": action[2] * 1e3 if usable else float("nan"),
            "model_dyaw_mrad": action[5] * 1e3 if usable else float("nan"),
            "model_gripper": (1 if action[6] > 0.5 else 0) if usable else -1,
            "command_gripper": int(hysteresis.is_open),
            "expert_dx_mm": hint.linear[0] * step_period * 1e3, "expert_dy_mm": hint.linear[1] * step_period * 1e3,
            "expert_dz_mm": hint.linear[2] * step_period * 1e3, "expert_phase": expert.phase.value,
        })
        cell.step_ticks(ticks)
        status = session.control_step_done()
        if status.success or session.done:
            break
    return rows, bool(status.success)


def close_indices(commands: list[int]) -> list[int]:
    """Where a gripper command goes from open (1) to closed (0); the gripper starts open, and -1 (no
    usable answer) keeps the previous command."""
    indices, previous = [], 1
    for i, command in enumerate(commands):
        if command < 0:
            continue
        if previous == 1 and command == 0:
            indices.append(i)
        previous = command
    return indices


def closes(rows: list[dict]) -> int:
    """How many times the model's gripper command went from open to closed."""
    return len(close_indices([r["model_gripper"] for r in rows]))


# Where a failed pick went wrong, judged at its best close (the one nearest the cube's centre).
OFF_CENTRE_CM = 1.5      # the fingers' pads are ~2 cm wide: further off, they close beside the cube
TOO_HIGH_CM = 2.5        # the expert closes at most 1.5 cm above the centre (ExpertConfig.close_height)
ASKEW_RAD = 0.35         # about this far off square the fingers land on the cube's corners
HOLD_WIDTH_CM = (4.0, 7.0)   # a 5.5 cm cube between the fingers


def failure_mode(rows: list[dict], success: bool) -> str:
    """One word for how a pick episode ended, from its trace rows: success, never-closed, off-centre,
    too-high, askew (the best close had the hand at one of those), held (the fingers shut on the cube
    within 5 steps, then it was not lifted 5 cm or it was let go) or slipped (a close in place that
    did not hold the cube)."""
    if success:
        return "success"
    events = close_indices([r["command_gripper"] for r in rows])
    if not events:
        return "never-closed"
    best = min(events, key=lambda i: math.hypot(rows[i]["dx_cm"], rows[i]["dy_cm"]))
    r = rows[best]
    if math.hypot(r["dx_cm"], r["dy_cm"]) > OFF_CENTRE_CM:
        return "off-centre"
    if r["dz_cm"] > TOO_HIGH_CM:
        return "too-high"
    if abs(r["yaw_error_rad"]) > ASKEW_RAD:
        return "askew"
    after = rows[best + 1: best + 6]
    if any(HOLD_WIDTH_CM[0] <= a["gripper_width_cm"] <= HOLD_WIDTH_CM[1] and a["command_gripper"] == 0
           for a in after[2:]):
        return "held"
    return "slipped"


# Near the cube (hand open, < 6 cm above and < 4 cm across from its centre) a pick must centre the hand:
# the expert moves against the offset, about 3 mm per step for every cm (training/recipes/README.md, attempt 12).
NEAR_HEIGHT_CM, NEAR_ACROSS_CM, OPEN_WIDTH_CM = 6.0, 4.0, 6.0
NEAR_MIN_ROWS = 10


def near_cube_servo(rows: list[dict]) -> dict | None:
    """Does the model centre its hand over the cube? Over the rows with the hand open near the cube,
    the least-squares slope (mm of lateral action per cm of offset, x and y) and the correlation of the
    model's lateral action with the hand's offset, beside the same for the expert alongside. A model that
    servos has a negative slope like the expert's; ~0 means it moves the same whatever the offset.
    None with fewer than ``NEAR_MIN_ROWS`` such rows."""
    near = [r for r in rows if abs(r["dz_cm"]) < NEAR_HEIGHT_CM and math.hypot(r["dx_cm"], r["dy_cm"]) < NEAR_ACROSS_CM
            and r["gripper_width_cm"] > OPEN_WIDTH_CM]
    if len(near) < NEAR_MIN_ROWS:
        return None
    result: dict = {"rows": len(near)}
    for who in ("model", "expert"):
        gains, correlations = [], []
        for axis in ("x", "y"):
            offset = np.array([r[f"d{axis}_cm"] for r in near])
            action = np.array([r[f"{who}_d{axis}_mm"] for r in near])
            gains.append(round(float(np.polyfit(offset, action, 1)[0]), 3) if offset.std() > 0 else 0.0)
            correlations.append(round(float(np.corrcoef(offset, action)[0, 1]), 3)
                                if offset.std() * action.std() > 0 else 0.0)
        result[f"{who}_gain_mm_per_cm"], result[f"{who}_correlation"] = gains, correlations
    return result


def _line(seed: int, r: dict) -> str:
    return (f"{seed} k{r['step']:3d} hand-cube cm {r['dx_cm']:5.1f} {r['dy_cm']:5.1f} {r['dz_cm']:5.1f} "
            f"w {r['gripper_width_cm']:4.1f} yaw {r['yaw_error_rad']:5.2f} | model mm {r['model_dx_mm']:5.1f} "
            f"{r['model_dy_mm']:5.1f} {r['model_dz_mm']:5.1f} g {r['model_gripper']} | expert mm "
            f"{r['expert_dx_mm']:5.1f} {r['expert_dy_mm']:5.1f} {r['expert_dz_mm']:5.1f} {r['expert_phase']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--task", choices=("reach", "pick"), default="pick")
    parser.add_argument("--seed", type=int, default=5000)
    parser.add_argument("--episodes", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=0, help="step budget (0 = the task's)")
    parser.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch")
    parser.add_argument("--statistics", default="sim_panda", help="action statistics (the checkpoint's own first)")
    parser.add_argument("--verbose", action="store_true", help="print every step")
    parser.add_argument("--wrist-inset", action=argparse.BooleanOptionalAction, default=None,
                        help="the wrist view in the frame's top-right corner (default: config/sim_arm.yaml's "
                             "wrist_inset, what `magma-ros evaluate` runs)")
    parser.add_argument("--gripper-hold", type=int, default=0,
                        help="the policy's gripper dwell time in steps (gripper_min_hold_steps)")
    parser.add_argument("--out", type=Path, help="write <task>_<seed>.csv per episode and summary.json here")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be at least 1")

    from magma_ros.backends import BackendError, create_backend
    from magma_ros.bringup import SIM_BRINGUP, node_parameters
    from magma_ros.contract import SimArmParameters
    from magma_ros.sim import THIRD_PERSON_CAMERA, Workcell, WorkcellConfig, policy_cameras
    from magma_ros.sim.render_detail import arm_urdf_for
    from magma_ros.sim.session import EpisodeSession

    try:
        backend = create_backend(args.backend, checkpoint=args.checkpoint, statistics=args.statistics)
    except BackendError as err:
        print(f"closed_loop_trace: {err}", file=sys.stderr)
        return 2
    sim = node_parameters(SIM_BRINGUP, "sim_arm_node", SimArmParameters)   # the frames evaluate's sim publishes
    camera = dataclasses.replace(THIRD_PERSON_CAMERA, width=sim.image_width, height=sim.image_height)
    episodes, all_rows = [], []
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    wrist_inset = sim.wrist_inset if args.wrist_inset is None else args.wrist_inset
    cameras = policy_cameras(camera, wrist_inset)
    with Workcell(WorkcellConfig(seed=args.seed, cameras=cameras, arm_urdf=arm_urdf_for(sim.render_detail))) as cell:
        session = EpisodeSession(cell, sim.control_period_s)
        for seed in range(args.seed, args.seed + args.episodes):
            rows, success = trace_episode(backend, cell, session, args.task, seed, args.max_steps,
                                          sim.control_period_s, args.gripper_hold)
            if args.verbose:
                for r in rows:
                    print(_line(seed, r))
            all_rows += rows
            mode = failure_mode(rows, success) if args.task == "pick" else ("success" if success else "failure")
            episodes.append({"seed": seed, "success": success, "steps": len(rows), "closes": closes(rows),
                             "mode": mode})
            print(f"{args.task} seed {seed}: {'success' if success else 'failure'} after {len(rows)} steps, "
                  f"{closes(rows)} gripper close(s), {mode}", flush=True)
            if args.out:
                with (args.out / f"{args.task}_{seed}.csv").open("w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=FIELDS)
                    writer.writeheader()
                    writer.writerows(rows)
    backend.close()
    wins = sum(e["success"] for e in episodes)
    last = args.seed + len(episodes) - 1
    modes = dict(collections.Counter(e["mode"] for e in episodes).most_common())
    print(f"{args.task}: {wins}/{len(episodes)} successes (ROS-free, seeds {args.seed}..{last}); "
          + ", ".join(f"{m} {n}" for m, n in modes.items()))
    servo = near_cube_servo(all_rows) if args.task == "pick" else None
    if servo:
        print(f"near the cube ({servo['rows']} steps, hand open): lateral mm per cm of offset, model "
              f"{servo['model_gain_mm_per_cm']} (correlation {servo['model_correlation']}), expert "
              f"{servo['expert_gain_mm_per_cm']} ({servo['expert_correlation']})")
    if args.out:
        (args.out / "summary.json").write_text(json.dumps(
            {"checkpoint": str(args.checkpoint), "task": args.task, "gripper_hold": args.gripper_hold,
             "successes": wins, "modes": modes, "near_cube_servo": servo, "episodes": episodes}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
