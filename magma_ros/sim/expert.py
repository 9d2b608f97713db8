"""A scripted expert that drives the arm like a teleoperator: twists and gripper widths at 10 Hz.

It reads only what a teleoperator watching the scene would know (the TCP pose, the gripper
opening and the target cube's pose) and answers with an :class:`~magma_ros.sim.episode.Action`;
the episode runner sends it through the Servo-compatible interface. No joint-space moves,
no teleporting, no grasp constraints.

Reach: fly to the point 5 cm above the cube, hand pointing down. Pick: hover above the cube
with the fingers turned to its faces, descend, close, and lift; if the fingers close on
nothing or the cube slips out, open and try again.

:class:`PerturbedExpert` is the same expert with a shaky hand (DART, Laskey et al. 2017):
zero-mean noise on its twist on its way to the cube (none in the last few centimetres above
it, so the moment to close is the same in every recording). A recording then holds states
off the expert's own path together with the expert's correction from them, which a policy
that imitates it needs as soon as its own small errors take it off that path; the mean of the
recorded motion at a state is still the expert's.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from magma_ros.sim.episode import Action, Observation
from magma_ros.sim.errors import TaskError
from magma_ros.sim.tasks import Task, TaskFamily
from magma_ros.sim.transforms import Pose, quat_conjugate, quat_from_rpy, quat_multiply, rotation_vector, yaw_of

# TCP orientation with the fingers pointing straight down (x forward, z down): Rx(pi).
TOOL_DOWN = quat_from_rpy(math.pi, 0.0, 0.0)


@dataclass(frozen=True)
class ExpertConfig:
    """Gains, speed limits and thresholds of the scripted expert (metres, radians, seconds)."""

    position_gain: float = 4.0
    max_speed: float = 0.25
    rotation_gain: float = 3.0
    max_rotation_speed: float = 0.6
    hover_height: float = 0.10
    grasp_depth: float = 0.0
    close_height: float = 0.015
    slow_height: float = 0.05
    slow_speed: float = 0.06
    lift_height: float = 0.12
    lift_speed: float = 0.08
    position_tolerance: float = 0.008
    yaw_tolerance: float = 0.05
    close_steps: int = 5
    yaw_slack: float = 0.0
    open_width: float = 0.08
    cube_size: float = 0.055

    def __post_init__(self) -> None:
        for name in (
            "position_gain",
            "max_speed",
            "rotation_gain",
            "max_rotation_speed",
            "hover_height",
            "lift_height",
            "lift_speed",
            "close_height",
            "slow_height",
            "slow_speed",
            "position_tolerance",
            "yaw_tolerance",
            "open_width",
            "cube_size",
        ):
            if not getattr(self, name) > 0.0:
                raise TaskError(f"expert: {name} must be positive, got {getattr(self, name)}")
        if not (math.isfinite(self.yaw_slack) and 0.0 <= self.yaw_slack <= math.pi / 4):
            raise TaskError(f"expert: yaw_slack must be in [0, pi/4] rad, got {self.yaw_slack}")
        if self.close_steps < 1:
            raise TaskError(f"expert: close_steps must be at least 1, got {self.close_steps}")


class Phase(enum.Enum):
    APPROACH = "approach"
    DESCEND = "descend"
    CLOSE = "close"
    LIFT = "lift"


def _clip_norm(vector: NDArray[np.float64], limit: float) -> NDArray[np.float64]:
    norm = float(np.linalg.norm(vector))
    return vector * (limit / norm) if norm > limit else vector


def grasp_yaw(cube_yaw: float, current_yaw: float) -> float:
    """The TCP heading that squares the fingers with the cube's faces, closest to ``current_yaw``.

    A cube looks the same every quarter turn, so candidates are ``cube_yaw + k * pi/2``.
    """
    quarter = math.pi / 2
    k = round((current_yaw - cube_yaw) / quarter)
    return cube_yaw + k * quarter


class ScriptedExpert:
    """A stateful policy for one task; call it with each observation, ``reset()`` between episodes."""

    def __init__(self, task: Task, config: ExpertConfig | None = None) -> None:
        self.task = task
        self.config = config if config is not None else ExpertConfig()
        self.reset()

    def reset(self) -> None:
        self.phase = Phase.APPROACH
        self._phase_steps = 0
        self._lift_from: NDArray[np.float64] | None = None
        self._yaw: float | None = None
        self.attempts = 1

    def __call__(self, observation: Observation) -> Action:
        if self.task.family is TaskFamily.REACH:
            return self._reach(observation)
        return self._pick(observation)

    # ---------------------------------------------------------------- control laws

    def _servo_to(self, observation: Observation, target: NDArray[np.float64], yaw: float, width: float,
                  max_speed: float | None = None) -> Action:
        """Proportional twist towards ``target`` with the tool down at heading ``yaw``."""
        cfg = self.config
        speed = cfg.max_speed if max_speed is None else max_speed
        linear = _clip_norm(cfg.position_gain * (target - observation.ee_pose.position), speed)
        desired = quat_multiply(quat_from_rpy(0.0, 0.0, yaw), TOOL_DOWN)
        error = rotation_vector(quat_multiply(desired, quat_conjugate(observation.ee_pose.orientation)))
        angular = _clip_norm(cfg.rotation_gain * error, cfg.max_rotation_speed)
        return Action.create(linear, angular, width)

    def _reach(self, observation: Observation) -> Action:
        cube = observation.cube_poses[self.task.color]
        target = cube.position + np.array([0.0, 0.0, self.task.criteria.reach_height])
        return self._servo_to(observation, target, yaw_of(observation.ee_pose.orientation), self.config.open_width)

    def _pick(self, observation: Observation) -> Action:
        cfg = self.config
        cube: Pose = observation.cube_poses[self.task.color]
        ee = observation.ee_pose.position
        self._phase_steps += 1
        if self.phase in (Phase.APPROACH, Phase.DESCEND):
            heading = yaw_of(observation.ee_pose.orientation)
            square = grasp_yaw(yaw_of(cube.orientation), heading)
            # turn only as far as needed to come within yaw_slack of square: the open fingers (8 cm) close
            # around the cube (5.5 cm) from up to about 30 degrees off and square it as they close
            off = math.remainder(heading - square, 2 * math.pi)
            self._yaw = square + min(max(off, -cfg.yaw_slack), cfg.yaw_slack)
        yaw = self._yaw if self._yaw is not None else yaw_of(observation.ee_pose.orientation)
        yaw_error = abs(math.remainder(yaw - yaw_of(observation.ee_pose.orientation), 2 * math.pi))

        if self.phase is Phase.APPROACH:
            target = cube.position + np.array([0.0, 0.0, cfg.hover_height])
            if np.linalg.norm(target - ee) < cfg.position_tolerance * 2 and yaw_error < cfg.yaw_tolerance:
                self._enter(Phase.DESCEND)
            return self._servo_to(observation, target, yaw, cfg.open_width)

        if self.phase is Phase.DESCEND:
            target = cube.position + np.array([0.0, 0.0, -cfg.grasp_depth])
            horizontal = np.linalg.norm((target - ee)[:2])
            if horizontal > 3 * cfg.position_tolerance + 0.01:  # the cube moved: hover again
                self._enter(Phase.APPROACH)
            elif horizontal < cfg.position_tolerance and (ee - target)[2] < cfg.close_height \
                    and yaw_error < cfg.yaw_tolerance:
                # close from close_height above the grasp point down: the fingers still reach around the
                # cube there (a grasp holds from 2.5 cm above its centre to 1 cm below), and a policy that
                # judges the hand's height from a camera to a centimetre or two sees one rule, "low: close"
                self._enter(Phase.CLOSE)
                return Action.create(np.zeros(3), np.zeros(3), 0.0)
            # the last centimetres slowly: at full speed the hand drops 2 cm per control step there, so
            # a recording holds no frame between "well above: descend" and "low: close", and a policy
            # learns a boundary halfway (attempt 10: closing 3 cm above the centre, where no grasp holds)
            slow = (ee - target)[2] < cfg.slow_height
            return self._servo_to(observation, target, yaw, cfg.open_width,
                                  max_speed=cfg.slow_speed if slow else None)

        if self.phase is Phase.CLOSE:
            if self._phase_steps >= cfg.close_steps:
                if observation.gripper_width < 0.5 * cfg.cube_size:  # closed on nothing
                    return self._retry()
                self._lift_from = ee.copy()
                self._enter(Phase.LIFT)
            return Action.create(np.zeros(3), np.zeros(3), 0.0)

        # LIFT: carry the cube up and hold it there, at ``lift_speed``: at the bottom, where the
        # fingers may still be settling, the hand moves about as little as while it closes.
        if observation.gripper_width < 0.5 * cfg.cube_size:  # slipped out
            return self._retry()
        start = self._lift_from if self._lift_from is not None else ee
        target = start + np.array([0.0, 0.0, cfg.lift_height])
        return self._servo_to(observation, target, yaw, 0.0, max_speed=cfg.lift_speed)

    def _enter(self, phase: Phase) -> None:
        self.phase = phase
        self._phase_steps = 0

    def _retry(self) -> Action:
        self.attempts += 1
        self._enter(Phase.APPROACH)
        up = np.array([0.0, 0.0, self.config.max_speed])
        return Action.create(up, np.zeros(3), self.config.open_width)


class PerturbedExpert:
    """A :class:`ScriptedExpert` whose linear twist gets N(0, ``std``) noise per axis (m/s) while it
    approaches and descends, until the hand is within ``quiet_height`` of the target cube's centre
    (pick): the last centimetres before the grasp, the close and the lift stay exact, so the moment
    to close looks the same in every recording. ``seed`` fixes the noise (one episode)."""

    def __init__(self, expert: ScriptedExpert, std: float, seed: int, quiet_height: float = 0.04) -> None:
        if not (math.isfinite(std) and std >= 0.0):
            raise TaskError(f"expert: perturbation std must be a finite number >= 0, got {std}")
        self.expert = expert
        self.std = std
        self.quiet_height = quiet_height
        self._rng = np.random.default_rng(seed)

    @property
    def phase(self) -> Phase:
        return self.expert.phase

    def __call__(self, observation: Observation) -> Action:
        action = self.expert(observation)
        if self.std <= 0.0 or self.expert.phase not in (Phase.APPROACH, Phase.DESCEND):
            return action
        cube = observation.cube_poses.get(self.expert.task.color)
        if (self.expert.task.family is TaskFamily.PICK and cube is not None
                and observation.ee_pose.position[2] - cube.position[2] < self.quiet_height):
            return action
        noise = self._rng.normal(0.0, self.std, 3)
        return Action.create(action.linear + noise, action.angular, action.gripper_width)


AIM_ERROR_MAX = 0.03
"""m: within this the misjudged hover still counts as over the cube once the expert sees it (the
descent turns back to hovering beyond 3.4 cm across)."""


class MisjudgingExpert:
    """A :class:`ScriptedExpert` that misjudges where a pick's cube is until it starts to descend.

    While it approaches, the expert aims at the cube's place shifted across the table by a fixed
    error (uniform direction, length uniform in ``[error / 2, error]``, seeded by the episode),
    so it hovers off the cube; once it descends it sees the cube where it is and re-centres on the
    way down, as it always does. Unlike :class:`PerturbedExpert`'s shake, every recorded motion is
    the expert's own answer to the state it was in: the descent of a recording shows a clean
    correction from a visible offset (centimetres, not the millimetres an exact expert leaves),
    which is what a policy needs to learn to centre its hand over the cube (training/recipes/README.md,
    attempt 13). A retry after a missed grasp aims true. Reach tasks are left exact.
    """

    def __init__(self, expert: ScriptedExpert, error: float, seed: int) -> None:
        if not (math.isfinite(error) and 0.0 <= error <= AIM_ERROR_MAX):
            raise TaskError(f"expert: aim error must be in [0, {AIM_ERROR_MAX}] m, got {error}")
        self.expert = expert
        rng = np.random.default_rng(seed)
        angle, length = rng.uniform(0.0, 2 * math.pi), rng.uniform(0.5, 1.0) * error
        self.error = np.array([length * math.cos(angle), length * math.sin(angle), 0.0])
        self._seen = False

    @property
    def phase(self) -> Phase:
        return self.expert.phase

    @property
    def task(self) -> Task:
        return self.expert.task

    def __call__(self, observation: Observation) -> Action:
        self._seen = self._seen or self.expert.phase is not Phase.APPROACH
        color = self.expert.task.color
        if self._seen or self.expert.task.family is not TaskFamily.PICK or color not in observation.cube_poses:
            return self.expert(observation)
        cube = observation.cube_poses[color]
        shifted = Pose(cube.position + self.error, cube.orientation)
        return self.expert(dataclasses.replace(observation, cube_poses={**observation.cube_poses, color: shifted}))
