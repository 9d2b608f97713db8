"""Episode runner shared by the scripted expert and learned policies.

A policy is any callable ``Observation -> Action`` stepped at the control rate (10 Hz). Each
action becomes exactly what a teleoperator or the Servo bridge would send: a twist stamped
with the current sim time in the base frame, and a gripper width. The runner then advances
sim time by one control period (synchronous mode), so a seed and a deterministic policy give
the same episode every time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from magma_ros.sim.camera import CameraFrame
from magma_ros.sim.config import PANDA_FINGER_JOINTS, WorkcellConfig
from magma_ros.sim.errors import SimError, TaskError
from magma_ros.sim.tasks import SuccessTracker, Task
from magma_ros.sim.transforms import Pose
from magma_ros.sim.workcell import JointState, Workcell


@dataclass(frozen=True, eq=False)
class Observation:
    """What a policy sees at one control step (poses in the base frame).

    ``cube_poses`` is privileged state (the scripted expert uses it, a camera policy should
    not); ``images`` holds the configured cameras when the runner renders.
    """

    step: int
    sim_time: float
    instruction: str
    ee_pose: Pose
    gripper_width: float
    joint_state: JointState
    cube_poses: dict[str, Pose]
    images: dict[str, CameraFrame] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Action:
    """One control step's command: twist (m/s, rad/s, base frame) and gripper width (m)."""

    linear: NDArray[np.float64]
    angular: NDArray[np.float64]
    gripper_width: float

    @classmethod
    def create(cls, linear: ArrayLike, angular: ArrayLike, gripper_width: float) -> Action:
        return cls(np.asarray(linear, dtype=np.float64), np.asarray(angular, dtype=np.float64), float(gripper_width))

    def as_vector(self) -> NDArray[np.float64]:
        """[vx, vy, vz, wx, wy, wz, gripper_width]."""
        return np.concatenate([self.linear, self.angular, [self.gripper_width]])


PolicyFn = Callable[[Observation], Action]
StepObserver = Callable[[Observation, Action], None]


@dataclass(frozen=True, eq=False)
class Trajectory:
    """Per control step, before the action: times, TCP poses, joints, gripper; and the actions."""

    times: NDArray[np.float64]  # (N,)
    ee_poses: NDArray[np.float64]  # (N, 7): x, y, z, qx, qy, qz, qw
    joint_positions: NDArray[np.float64]  # (N, 9)
    gripper_widths: NDArray[np.float64]  # (N,)
    actions: NDArray[np.float64]  # (N, 7): see Action.as_vector


@dataclass(frozen=True, eq=False)
class EpisodeResult:
    """Outcome of one episode: ``steps`` control steps were taken (the budget if it failed)."""

    task: Task
    seed: int
    success: bool
    steps: int
    sim_time: float
    trajectory: Trajectory


@dataclass(frozen=True)
class EpisodeConfig:
    """How episodes run.

    Attributes:
        control_period: seconds between policy calls (0.1 = 10 Hz).
        render: render the workcell's cameras into each observation (slow; off for the expert).
        stop_on_success: end the episode at the first successful step.
        workcell: the workcell built when ``run_episode`` is not handed one.
    """

    control_period: float = 0.1
    render: bool = False
    stop_on_success: bool = True
    workcell: WorkcellConfig = field(default_factory=WorkcellConfig)

    def __post_init__(self) -> None:
        if not 0.0 < self.control_period <= 1.0:
            raise TaskError(f"control_period must be in (0, 1] s, got {self.control_period}")


def observe(cell: Workcell, step: int, instruction: str, render: bool = False) -> Observation:
    """Snapshot the workcell into an :class:`Observation`."""
    images = {name: cell.render(name) for name in cell.camera_names} if render else {}
    return Observation(
        step=step,
        sim_time=cell.sim_time,
        instruction=instruction,
        ee_pose=cell.ee_pose(),
        gripper_width=cell.gripper_width(),
        joint_state=cell.joint_state(),
        cube_poses=cell.cube_poses(),
        images=images,
    )


def apply_policy_delta(cell: Workcell, action: ArrayLike, step_period: float, gripper_open: bool) -> bool:
    """Send a decoded 7-DoF delta (dx dy dz droll dpitch dyaw gripper) to ``cell`` as the Servo bridge would.

    The twist is the delta over ``step_period`` in the base frame, stamped now (one the servo
    refuses halts the arm, as over ROS); the gripper opens above 0.5 and closes below, and a
    JointTrajectory goes out only when that changes from ``gripper_open``. Returns the gripper's
    new state. ROS-free loops (bench/closed_loop_bench.py, training/recipes/closed_loop_trace.py).
    """
    delta = np.asarray(action, dtype=np.float64)
    with contextlib.suppress(SimError):
        cell.command_twist(delta[:3] / step_period, delta[3:6] / step_period, cell.sim_time, cell.base_frame)
    opened = bool(delta[6] > 0.5)
    if opened != gripper_open:
        width = 0.04 if opened else 0.0
        cell.command_gripper_joints(list(PANDA_FINGER_JOINTS), [width, width])
    return opened


def run_episode(
    task: Task,
    seed: int,
    policy_fn: PolicyFn,
    max_steps: int | None = None,
    *,
    config: EpisodeConfig | None = None,
    workcell: Workcell | None = None,
    observer: StepObserver | None = None,
) -> EpisodeResult:
    """Run ``policy_fn`` on ``task`` in the scene of ``seed``.

    ``workcell`` is reset to ``seed`` and reused if given (cheaper across many episodes),
    otherwise one is built from ``config.workcell`` and closed at the end. ``observer`` sees
    each (observation, action) pair, e.g. to record a demonstration.
    """
    config = config if config is not None else EpisodeConfig()
    budget = task.max_steps if max_steps is None else max_steps
    if budget < 1:
        raise TaskError(f"max_steps must be at least 1, got {budget}")
    owned = workcell is None
    cell = workcell if workcell is not None else Workcell(config.workcell)
    try:
        cell.reset(seed)
        tracker = SuccessTracker(task)
        rows: list[tuple[float, NDArray[np.float64], NDArray[np.float64], float, NDArray[np.float64]]] = []
        success = False
        steps = 0
        while steps < budget:
            observation = observe(cell, steps, task.instruction, config.render)
            action = policy_fn(observation)
            if observer is not None:
                observer(observation, action)
            rows.append(
                (
                    observation.sim_time,
                    np.concatenate([observation.ee_pose.position, observation.ee_pose.orientation]),
                    observation.joint_state.positions,
                    observation.gripper_width,
                    action.as_vector(),
                )
            )
            cell.command_twist(action.linear, action.angular, stamp=cell.sim_time, frame_id=cell.base_frame)
            cell.command_gripper(action.gripper_width)
            cell.step(config.control_period)
            steps += 1
            success = tracker.update(cell) or success
            if success and config.stop_on_success:
                break
        times, poses, joints, widths, actions = zip(*rows, strict=True)
        trajectory = Trajectory(np.array(times), np.array(poses), np.array(joints), np.array(widths), np.array(actions))
        return EpisodeResult(task, seed, success, steps, cell.sim_time, trajectory)
    finally:
        if owned:
            cell.close()
