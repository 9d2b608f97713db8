"""`magma-ros evaluate`: closed-loop success rate of a checkpoint in the simulated workcell.

The loop is the real ROS stack, started in this process from a bringup description
(default ``config/bringup/sim.yaml``): sim_arm_node (synchronous mode) -> camera ->
magma_policy_node -> EndEffectorDelta -> servo_bridge_node -> Servo twist and gripper
trajectory -> sim_arm_node. Between episodes the policy and the bridge are deactivated (the
arm stops), the sim is reset to the next seed and the policy is told the instruction; then
both are activated and sim time runs. With a greedy policy an evaluation is deterministic.

Writes ``OUT/summary.json`` (per task: success rate, 95% Wilson interval, mean steps; every
episode) and ``OUT/summary.png``; with ``--gif`` an animation of the first episode with the
TCP path and the policy's predicted motion drawn over the camera frames.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_BRINGUP = "config/bringup/sim.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    from magma_ros.backends.options import add_backend_arguments

    parser = subparsers.add_parser(
        "evaluate", help="closed-loop success rate of a checkpoint in the simulated workcell",
        description="Run episodes of the simulated workcell closed-loop through sim_arm_node -> "
                    "magma_policy_node -> servo_bridge_node -> sim_arm_node and report the success rate "
                    "per task with a 95% Wilson interval and mean steps (summary JSON + PNG plot).")
    parser.add_argument("--checkpoint", default="", help="checkpoint directory ('' = the embedded default)")
    parser.add_argument("--task", nargs="+", choices=("reach", "pick"), default=["reach"], help="task families")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task (seeds SEED .. SEED+N-1)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (the target colour cycles with the seed)")
    parser.add_argument("--max-steps", type=int, default=0, help="step budget per episode (0 = the task's default)")
    parser.add_argument("--out", default="evaluation", help="directory for summary.json and summary.png")
    parser.add_argument("--gif", default=None, metavar="PATH", help="write an overlay animation of the first episode")
    parser.add_argument("--bringup", default=DEFAULT_BRINGUP, help="bringup description with the three nodes")
    parser.add_argument("--verbose", action="store_true", help="show the nodes' INFO logs")
    parser.add_argument("--realtime", type=float, default=0.0, metavar="CAMERA_HZ",
                        help="run the sim in realtime mode (sim time follows the wall clock, like an arm) with "
                             "the camera at CAMERA_HZ; the policy acts on the newest frame (0 = synchronous)")
    parser.add_argument("--wrist-inset", action=argparse.BooleanOptionalAction, default=None,
                        help="the sim pastes the wrist camera's view into the camera image (its wrist_inset "
                             "parameter); unset: the bringup's sim config decides. Use what the model was trained on")
    parser.add_argument("--gripper-hold", type=int, default=None, metavar="STEPS",
                        help="the policy's gripper dwell (gripper_min_hold_steps): after the gripper command "
                             "changes it is kept this many more actions; unset: the bringup's policy config")
    add_backend_arguments(parser, default_backend=None)   # unset: the bringup's policy config decides
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class EvaluationSettings:
    checkpoint: str = ""
    tasks: tuple[str, ...] = ("reach",)
    episodes: int = 10
    seed: int = 0
    max_steps: int = 0
    out: Path = Path("evaluation")
    gif: Path | None = None
    bringup: str = DEFAULT_BRINGUP
    verbose: bool = False
    # magma_policy_node parameters choosing the backend (backend, export_dir, ...); {} = the bringup's
    backend_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    # > 0: sim in realtime mode with the camera at this rate (Hz); 0: synchronous (deterministic)
    realtime_camera_hz: float = 0.0
    # the sim's wrist_inset parameter (the wrist view pasted into the camera image); None = the bringup's
    wrist_inset: bool | None = None
    # the policy's gripper_min_hold_steps; None = the bringup's
    gripper_hold: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.realtime_camera_hz <= 120.0:
            raise ValueError(f"--realtime must be a camera rate in (0, 120] Hz or 0, got {self.realtime_camera_hz}")
        if self.episodes < 1:
            raise ValueError(f"--episodes must be at least 1, got {self.episodes}")
        if not 0 <= self.seed < 2**32 - self.episodes:
            raise ValueError(f"--seed must be in [0, 2**32 - episodes), got {self.seed}")
        if self.max_steps < 0:
            raise ValueError(f"--max-steps must be >= 0, got {self.max_steps}")
        from magma_ros.contract import GRIPPER_HOLD_MAX

        if self.gripper_hold is not None and not 0 <= self.gripper_hold <= GRIPPER_HOLD_MAX:
            raise ValueError(f"--gripper-hold must be in 0..{GRIPPER_HOLD_MAX}, got {self.gripper_hold}")


@dataclass
class EvaluationRun:
    """What :func:`evaluate` produced."""

    outcomes: list[Any]
    model_id: str
    summary_json: Path
    plot: Path
    gif: Path | None
    wall_s: float


def backend_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """magma_policy_node parameters from --backend and the compiled-backend options (non-defaults only)."""
    from magma_ros.backends.options import BackendOptions, options_from_args

    # --backend given (torch too) overrides the bringup's policy configuration; unset leaves it
    params: dict[str, Any] = {"backend": args.backend} if getattr(args, "backend", None) else {}
    chosen, default = dataclasses.asdict(options_from_args(args)), dataclasses.asdict(BackendOptions())
    params.update({k: v for k, v in chosen.items() if v != default[k]})
    return params


def run(args: argparse.Namespace) -> int:
    from magma_ros.bringup import BringupError
    from magma_ros.evaluation import format_table, summarize
    from magma_ros.ros.sim_episodes import EpisodeClientError

    try:
        settings = EvaluationSettings(args.checkpoint, tuple(dict.fromkeys(args.task)), args.episodes, args.seed,
                                      args.max_steps, Path(args.out), Path(args.gif) if args.gif else None,
                                      args.bringup, args.verbose, backend_parameters(args), args.realtime,
                                      args.wrist_inset, args.gripper_hold)
    except ValueError as err:
        print(f"magma-ros evaluate: {err}", file=sys.stderr)
        return 2
    try:
        result = evaluate(settings)
    except (BringupError, EpisodeClientError) as err:
        print(f"magma-ros evaluate: {err}", file=sys.stderr)
        return 1
    print()
    print(format_table(summarize(result.outcomes)))
    print(f"\nsummary: {result.summary_json}\nplot:    {result.plot}")
    if result.gif is not None:
        print(f"gif:     {result.gif}")
    return 0


def evaluate(settings: EvaluationSettings, say: Callable[[str], None] = print) -> EvaluationRun:
    """Run the episodes and write the summary JSON, the plot and (optionally) the GIF."""
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    import rclpy
    from rclpy.logging import LoggingSeverity

    from magma_ros.bringup import BringupError, load_bringup, node_parameters
    from magma_ros.contract import PolicyNodeParameters, SimArmParameters
    from magma_ros.evaluation import EpisodeOutcome, plot_summary, summary_document, write_json
    from magma_ros.ros.bringup_runner import create_nodes, start_processes, stop_processes
    from magma_ros.ros.overlay_recorder import OverlayRecorder
    from magma_ros.ros.sim_episodes import (
        ClosedLoop,
        ProgressLine,
        RunningGraph,
        domain_warning,
        ros_session,
        synchronous_loop_overrides,
    )
    from magma_ros.sim.session import choose_task

    bringup = load_bringup(settings.bringup)
    names = {n.executable: n.name for n in bringup.nodes}
    missing = {"sim_arm_node", "magma_policy_node", "servo_bridge_node"} - set(names)
    if missing:
        raise BringupError(f"{bringup.source}: evaluation needs {', '.join(sorted(missing))}")
    # no --checkpoint: the parameter file's value (normally '', the embedded default)
    overrides = synchronous_loop_overrides(settings.checkpoint)
    if settings.realtime_camera_hz > 0:  # the regime of a real arm: time runs, the policy takes the newest frame
        overrides["sim_arm_node"].update(mode="realtime", camera_rate_hz=float(settings.realtime_camera_hz))
        overrides["servo_bridge_node"]["synchronous_stream"] = False
        overrides["magma_policy_node"]["control_rate_hz"] = 0.0
        overrides["magma_policy_node"]["action_thread"] = True   # the newest frame, as on an arm
    if settings.wrist_inset is not None:
        overrides["sim_arm_node"]["wrist_inset"] = settings.wrist_inset
    if settings.gripper_hold is not None:
        overrides["magma_policy_node"]["gripper_min_hold_steps"] = settings.gripper_hold
    if settings.backend_params:
        overrides["magma_policy_node"] = {**overrides.get("magma_policy_node", {}), **settings.backend_params}
    bringup = bringup.with_overrides(overrides)
    progress = ProgressLine()
    outcomes: list[EpisodeOutcome] = []
    started = time.monotonic()
    # Realtime (a real arm's regime): each node in its own process, as ros2 launch and `magma-ros up` run
    # them; composed in one interpreter, rendering and the model would take turns at the GIL
    # (bench/realtime_bench.py). Synchronous: one process (deterministic, and the fastest loop).
    separate = settings.realtime_camera_hz > 0
    with ros_session(), contextlib.ExitStack() as cleanup:
        where = "one process per node" if separate else "this process"
        say(f"starting {', '.join(names.values())} in {where} (loading the model)...")
        nodes = []
        if separate:
            settings.out.mkdir(parents=True, exist_ok=True)
            log = cleanup.enter_context(open(settings.out / "nodes.log", "w"))
            processes = start_processes(bringup, stdout=None if settings.verbose else log.fileno())
            cleanup.callback(stop_processes, processes)
            if not settings.verbose:
                say(f"  node logs: {settings.out / 'nodes.log'}")
        else:
            nodes = create_nodes(bringup)
        if not settings.verbose:
            for node in nodes:
                node.get_logger().set_level(LoggingSeverity.WARN)
        control = rclpy.create_node("magma_evaluate")
        frames = OverlayRecorder()
        graph = RunningGraph([*nodes, control, frames])
        try:
            loop = ClosedLoop(control, names["sim_arm_node"], names["magma_policy_node"], names["servo_bridge_node"])
            if not loop.wait_for_discovery(timeout=90.0 if separate else 15.0):
                raise BringupError("the nodes' topics never connected" + (
                    f" (see {settings.out / 'nodes.log'})" if separate and not settings.verbose else ""))
            crowded = loop.foreign_publishers()
            if crowded:
                say(domain_warning(crowded))
            say(f"{len(settings.tasks)} task(s) x {settings.episodes} episode(s), "
                f"seeds {settings.seed}..{settings.seed + settings.episodes - 1}")
            for task_name in settings.tasks:
                for i in range(settings.episodes):
                    seed = settings.seed + i
                    task = choose_task(task_name, seed, "", settings.max_steps)
                    label = f"  {task_name} {i + 1}/{settings.episodes} seed {seed} {task.instruction!r}"
                    record = settings.gif is not None and not outcomes
                    episode_start = time.monotonic()
                    if record:
                        frames.start()
                    status = loop.prepare(seed, task_name, settings.max_steps)
                    final = loop.run(status, timeout=task.max_steps * 5.0 + 60.0,
                                     progress=lambda s, label=label: progress.update(
                                         f"{label}: step {s.step}/{s.max_steps}"))
                    if record:
                        time.sleep(0.3)  # the last frame's prediction is still on its way
                        frames.stop(final)
                    wall = time.monotonic() - episode_start
                    outcomes.append(EpisodeOutcome(task_name, seed, final.color, final.instruction, final.success,
                                                   final.step, final.max_steps, final.sim_time, round(wall, 3)))
                    progress.finish(f"{label}: {'success' if final.success else 'failure'} after {final.step} "
                                    f"steps ({wall:.1f} s)")
            loop.stop()
        finally:
            graph.close()
    wall_s = time.monotonic() - started
    model_id = frames.model_id or settings.checkpoint or "(embedded default)"
    ran_with = {"camera_hz": settings.realtime_camera_hz} if settings.realtime_camera_hz > 0 else {}
    ran_with["wrist_inset"] = bool(node_parameters(bringup, "sim_arm_node", SimArmParameters).wrist_inset)
    ran_with["gripper_min_hold_steps"] = int(
        node_parameters(bringup, "magma_policy_node", PolicyNodeParameters).gripper_min_hold_steps)
    document = summary_document(outcomes, checkpoint=settings.checkpoint or "(embedded default)", model_id=model_id,
                                bringup=str(bringup.source),
                                mode="realtime" if settings.realtime_camera_hz > 0 else "synchronous",
                                control_rate_hz=10.0,
                                **ran_with,
                                wall_s=round(wall_s, 1))
    summary_json = write_json(settings.out / "summary.json", document)
    title = f"{model_id}: closed loop in the simulated workcell"
    plot = plot_summary(outcomes, settings.out / "summary.png", title)
    gif = frames.write_gif(settings.gif) if settings.gif is not None and frames.frames else None
    return EvaluationRun(outcomes, model_id, summary_json, plot, gif, wall_s)
