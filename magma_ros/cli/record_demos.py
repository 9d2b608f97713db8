"""`magma-ros record-demos`: scripted-expert demonstrations in the simulated workcell, one rosbag2 per episode.

Everything runs in this process but talks over ROS: sim_arm_node in synchronous mode, the
scripted expert as a teleoperator (it sees /ee_pose, /joint_states and the cube markers and
answers every 10 Hz observation with a Servo twist and, on change, a gripper trajectory) and a
recorder subscribed to the topics a real teleop recording holds. Episodes end at success or
when the step budget is spent.

Output: ``OUT/episode_NNNN/`` per episode (an mcap rosbag2 with ``episode.json`` beside its
metadata.yaml: seed, task, instruction, success, steps) and ``OUT/index.json`` listing them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "record-demos", help="record scripted-expert demonstrations in the simulated workcell as rosbag2 (mcap)",
        description="Run scripted-expert episodes in the simulated workcell through its ROS interfaces and write "
                    "one rosbag2 (mcap) per episode: camera image, aligned depth, camera info, joint states, "
                    "EE pose, gripper commands, Servo twist commands, the instruction and the episode status.")
    parser.add_argument("--task", choices=("reach", "pick"), required=True, help="task family")
    parser.add_argument("--episodes", type=int, default=10, help="number of episodes (seeds SEED .. SEED+N-1)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (the target colour cycles with the seed)")
    parser.add_argument("--out", required=True, help="output directory (created; existing episodes are refused)")
    parser.add_argument("--max-steps", type=int, default=0, help="step budget per episode (0 = the task's default)")
    parser.add_argument("--wrist-camera", action="store_true", help="also record the wrist camera")
    parser.add_argument("--wrist-inset", action=argparse.BooleanOptionalAction, default=None,
                        help="paste the wrist camera's view into the camera image's top-right corner (the sim's "
                             "wrist_inset parameter; default: config/sim_arm.yaml's, as `magma-ros evaluate` runs "
                             "it). A model trained on these frames needs them: evaluate it with the same setting")
    parser.add_argument("--perturb-std", type=float, default=0.0, metavar="M_PER_S",
                        help="shake the expert's hand: zero-mean noise of this std (m/s, per axis) on its twist while "
                             "it approaches and descends (none in the last --perturb-quiet-height above a pick's "
                             "cube), seeded by each episode's seed (DART); the recording then shows it recovering "
                             "from off-path states. 0 = none")
    parser.add_argument("--perturb-quiet-height", type=float, default=None, metavar="M",
                        help="with --perturb-std, in a pick the shake stops once the hand is less than this above the "
                             "cube's centre (default 0.04: the last centimetres exact). Lower, e.g. 0.015, shakes "
                             "the final approach too: the recording shows the expert re-centring over the cube")
    parser.add_argument("--aim-error", type=float, default=0.0, metavar="M",
                        help="in a pick, the expert misjudges the cube's place across the table by up to this "
                             "(at least half, seeded by each episode's seed) until it starts to descend, then "
                             "re-centres on the way down: recordings of a clean correction from a visible offset. "
                             "0 = none")
    parser.add_argument("--final-descent-speed", type=float, default=None, metavar="M_PER_S",
                        help="the expert's top speed in the last 5 cm of a pick's descent (default 0.06: the hand "
                             "is seen step by step down to where it closes; 0.25 = recordings before attempt 10)")
    parser.add_argument("--yaw-slack", type=float, default=None, metavar="RAD",
                        help="in a pick, the expert keeps its heading when it is within this of square with the "
                             "cube's faces and turns only as far as needed otherwise (default 0: square every time; "
                             "the fingers close around the cube from up to about 0.5 rad off)")
    parser.add_argument("--close-steps", type=int, default=None, metavar="N",
                        help="in a pick, the control steps the expert holds still while the gripper closes, before "
                             "it lifts (default 5)")
    parser.add_argument("--keep-failures", action=argparse.BooleanOptionalAction, default=True,
                        help="keep the bags of episodes the expert failed (marked success: false)")
    parser.set_defaults(func=run)


def sim_wrist_inset() -> bool:
    """The sim bringup's wrist_inset (config/sim_arm.yaml): record the frames `magma-ros evaluate` shows."""
    from magma_ros.bringup import SIM_BRINGUP, node_parameters
    from magma_ros.contract import SimArmParameters

    return bool(node_parameters(SIM_BRINGUP, "sim_arm_node", SimArmParameters).wrist_inset)


def _fail(message: str) -> int:
    print(f"magma-ros record-demos: {message}", file=sys.stderr, flush=True)
    return 2


def run(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        return _fail(f"--episodes must be at least 1, got {args.episodes}")
    if not 0 <= args.seed < 2**32 - args.episodes:
        return _fail(f"--seed must be in [0, 2**32 - episodes), got {args.seed}")
    from magma_ros.contract import PERTURB_STD_MAX

    if not (math.isfinite(args.perturb_std) and 0.0 <= args.perturb_std <= PERTURB_STD_MAX):
        return _fail(f"--perturb-std must be in [0, {PERTURB_STD_MAX:g}] m/s, got {args.perturb_std}")
    if args.final_descent_speed is not None and not (
            math.isfinite(args.final_descent_speed) and 0.0 < args.final_descent_speed <= PERTURB_STD_MAX):
        return _fail(f"--final-descent-speed must be in (0, {PERTURB_STD_MAX:g}] m/s, got {args.final_descent_speed}")
    from magma_ros.contract import CLOSE_STEPS_MAX, PERTURB_QUIET_HEIGHT_MAX, YAW_SLACK_MAX

    if args.perturb_quiet_height is not None and not (
            math.isfinite(args.perturb_quiet_height) and 0.0 <= args.perturb_quiet_height <= PERTURB_QUIET_HEIGHT_MAX):
        return _fail(f"--perturb-quiet-height must be in [0, {PERTURB_QUIET_HEIGHT_MAX:g}] m, "
                     f"got {args.perturb_quiet_height}")

    from magma_ros.contract import AIM_ERROR_MAX

    if not (math.isfinite(args.aim_error) and 0.0 <= args.aim_error <= AIM_ERROR_MAX):
        return _fail(f"--aim-error must be in [0, {AIM_ERROR_MAX:g}] m, got {args.aim_error}")
    if args.yaw_slack is not None and not (math.isfinite(args.yaw_slack) and 0.0 <= args.yaw_slack <= YAW_SLACK_MAX):
        return _fail(f"--yaw-slack must be in [0, {YAW_SLACK_MAX:.4f}] rad, got {args.yaw_slack}")
    if args.close_steps is not None and not 1 <= args.close_steps <= CLOSE_STEPS_MAX:
        return _fail(f"--close-steps must be in [1, {CLOSE_STEPS_MAX}], got {args.close_steps}")
    out = Path(args.out).expanduser()
    bags = [out / f"episode_{i:04d}" for i in range(args.episodes)]
    taken = [b for b in bags if b.exists()]
    if taken:
        return _fail(f"{taken[0]} already exists; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    return _record(args, out, bags)


def _record(args: argparse.Namespace, out: Path, bags: list[Path]) -> int:
    import json
    import shutil
    import time

    import rclpy
    from rclpy.parameter import Parameter

    from magma_ros import contract
    from magma_ros.conventions import RECORDED_TOPICS, EpisodeMetadata
    from magma_ros.ros.demo_recorder import DemoRecorder
    from magma_ros.ros.expert_teleop_node import ExpertTeleopNode
    from magma_ros.ros.sim_arm_node import SimArmNode
    from magma_ros.ros.sim_episodes import (
        EpisodeClientError,
        ProgressLine,
        RunningGraph,
        SimEpisodeClient,
        domain_warning,
        foreign_publishers,
        ros_session,
    )
    from magma_ros.sim.session import choose_task

    topics = RECORDED_TOPICS + ((contract.WRIST_IMAGE,) if args.wrist_camera else ())
    sim_parameters = {"mode": "synchronous", "autostart_episode": False, "start_paused": True, "continuous": False,
                      "task": args.task, "seed": args.seed, "max_steps": args.max_steps,
                      "wrist_camera": args.wrist_camera, "sync_timeout_s": 2.0,
                      "wrist_inset": sim_wrist_inset() if args.wrist_inset is None else args.wrist_inset,
                      # the expert answers each observation with one twist (after a gripper command, on change):
                      # the step runs as soon as that twist is in, no wall-clock wait
                      "sync_answer_end": "first_twist"}
    driver = "ScriptedExpert over ROS (Servo twist + gripper JointTrajectory at 10 Hz)"
    progress = ProgressLine()
    print(f"magma-ros record-demos: {args.episodes} '{args.task}' episode(s) from seed {args.seed} -> {out}")
    index: list[dict] = []
    started = time.monotonic()
    with ros_session():
        sim = SimArmNode(parameter_overrides=[Parameter(k, value=v) for k, v in sim_parameters.items()])
        render_detail = sim.params.render_detail   # the look of the arm the frames show (evaluate: the same)
        wrist_inset = sim.params.wrist_inset
        final_descent_speed = yaw_slack = close_steps = perturb_quiet_height = None
        sim_time = [Parameter("use_sim_time", value=True)]
        options = {"perturb_std": args.perturb_std, "perturb_quiet_height": args.perturb_quiet_height,
                   "aim_error": args.aim_error,
                   "final_descent_speed": args.final_descent_speed,
                   "yaw_slack": args.yaw_slack, "close_steps": args.close_steps}   # None: the node's default
        expert = ExpertTeleopNode(parameter_overrides=[*sim_time, *(Parameter(k, value=v)
                                                                    for k, v in options.items() if v is not None)])
        if args.task == "pick":
            final_descent_speed, yaw_slack = expert.params.final_descent_speed, expert.params.yaw_slack
            close_steps = expert.params.close_steps
            perturb_quiet_height = expert.params.perturb_quiet_height if args.perturb_std > 0 else None
            driver += (f", final descent at {final_descent_speed:g} m/s, heading within {yaw_slack:g} rad of square, "
                       f"{close_steps} steps closing")
        if args.aim_error > 0 and args.task == "pick":
            driver += (f", misjudging the cube's place by {args.aim_error * 50:g}-{args.aim_error * 100:g} cm until "
                       "it descends")
        if args.perturb_std > 0:
            driver += f", perturbed while approaching and descending (std {args.perturb_std:g} m/s per axis"
            if args.task == "pick":
                driver += f", none in the last {expert.params.perturb_quiet_height * 100:g} cm above the cube"
            driver += ")"
        recorder = DemoRecorder(topics, parameter_overrides=sim_time)
        control = rclpy.create_node("magma_record_demos")
        graph = RunningGraph([sim, expert, recorder, control])
        try:
            client = SimEpisodeClient(control, sim.get_name())
            _wait_for_discovery(control, recorder, topics)
            crowded = foreign_publishers(control, topics)
            if crowded:
                print(domain_warning(crowded), file=sys.stderr)
            for i, bag in enumerate(bags):
                seed = args.seed + i
                task = choose_task(args.task, seed, "", args.max_steps)
                label = f"  episode {i + 1}/{args.episodes} seed {seed} {task.instruction!r}"
                episode_start = time.monotonic()
                client.pause(True)
                client.configure(seed, args.task, "", args.max_steps)
                recorder.start(bag)
                status = client.reset()
                client.pause(False)
                final = client.wait_done(status.episode, timeout=task.max_steps * 3.0 + 30.0,
                                         progress=lambda s, label=label: progress.update(
                                             f"{label}: step {s.step}/{s.max_steps}"))
                client.pause(True)
                time.sleep(0.3)  # the final observation's messages are still on their way
                metadata = EpisodeMetadata(
                    seed=seed, task=final.task, color=final.color, instruction=final.instruction,
                    success=final.success, steps=final.step, max_steps=final.max_steps, sim_time_s=final.sim_time,
                    start_time_s=final.start_time, control_rate_hz=round(1.0 / sim.params.control_period_s, 6),
                    driver=driver).to_dict()
                metadata.pop("messages")
                counts = recorder.stop(metadata)
                wall = time.monotonic() - episode_start
                kept = final.success or args.keep_failures
                if not kept:
                    shutil.rmtree(bag, ignore_errors=True)
                index.append({**metadata, "bag": bag.name if kept else None, "messages": counts})
                progress.finish(f"{label}: {'success' if final.success else 'FAILED'} in {final.step} steps, "
                                f"{sum(counts.values())} messages, {wall:.1f} s" + ("" if kept else " (dropped)"))
        except EpisodeClientError as err:
            print(f"magma-ros record-demos: {err}", file=sys.stderr)
            return 1
        finally:
            recorder.stop()
            graph.close()
    successes = sum(row["success"] for row in index)
    (out / "index.json").write_text(json.dumps({"task": args.task, "seed": args.seed,
                                                "render_detail": render_detail, "wrist_inset": wrist_inset,
                                                "final_descent_speed": final_descent_speed, "yaw_slack": yaw_slack,
                                                "close_steps": close_steps, "perturb_std": args.perturb_std,
                                                "perturb_quiet_height": perturb_quiet_height,
                                                "aim_error": args.aim_error,
                                                "episodes": index},
                                               indent=2) + "\n")
    print(f"expert success {successes}/{len(index)}; {time.monotonic() - started:.0f} s; index: {out / 'index.json'}")
    return 0


def _wait_for_discovery(control, recorder, topics, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Until the recorder sees a publisher on every topic the sim publishes (DDS matching is asynchronous)."""
    import time

    from magma_ros import contract

    published_by_sim = [t for t in topics if t not in (contract.SERVO_TWIST, contract.GRIPPER_TRAJECTORY)]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(recorder.count_publishers(t.name) > 0 for t in published_by_sim) and \
                control.count_subscribers(contract.SERVO_TWIST.name) > 0:
            time.sleep(0.3)
            return
        time.sleep(0.05)
