"""MoveIt Servo semantics for Cartesian twist commands, in plain numpy.

What is modelled (see docs/ros-reference.md, "MoveIt Servo"):

- a twist command carries a stamp and a frame id; the frame must be one the workcell knows;
- commands whose stamp is older than ``incoming_command_timeout`` are ignored on arrival,
  and once the latest command ages past it the arm halts (zero joint velocity);
- ``speed_units`` twists are m/s and rad/s, capped at ``scale_linear`` / ``scale_rotational``
  (direction kept); ``unitless`` twists are fractions of those scales;
- the twist is turned into joint velocities by damped least squares on the Jacobian, joints
  never enter their limit margin, and joint speeds stay under the arm's velocity limits.

Not modelled: Servo's collision checking, singularity slow-down thresholds and smoothing
plugins (the damping of the least-squares inverse plays the singularity role).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from magma_ros.sim.config import ServoConfig
from magma_ros.sim.errors import CommandError

Vector = NDArray[np.float64]


class ServoStatus(enum.IntEnum):
    """Status codes, numbered as ``moveit_msgs/ServoStatus`` (the subset the sim produces)."""

    NO_WARNING = 0
    JOINT_BOUND = 6


class CommandOutcome(enum.Enum):
    """What happened to a twist command handed to the workcell."""

    ACCEPTED = "accepted"
    STALE = "stale"  # older than incoming_command_timeout: ignored, as Servo does
    OUT_OF_ORDER = "out_of_order"  # stamped before the command in force: ignored
    PAUSED = "paused"  # servo paused (Servo's ~/pause_servo): ignored


def _vector3(values: ArrayLike, what: str) -> Vector:
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise CommandError(f"{what} must be three numbers, got {values!r}") from err
    if array.shape != (3,):
        raise CommandError(f"{what} must be three numbers, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise CommandError(f"{what} must be finite, got {array.tolist()}")
    return array


@dataclass(frozen=True, eq=False)
class TwistCommand:
    """A validated ``TwistStamped``: linear and angular velocity, stamp (sim s), frame id."""

    linear: Vector
    angular: Vector
    stamp: float
    frame_id: str

    @classmethod
    def create(cls, linear: ArrayLike, angular: ArrayLike, stamp: float, frame_id: str) -> TwistCommand:
        """Validate shapes, finiteness and the stamp; raise :class:`CommandError` if bad."""
        if not isinstance(frame_id, str) or not frame_id:
            raise CommandError("twist frame_id is required (Servo transforms by it); got an empty frame_id")
        stamp = float(stamp)
        if not math.isfinite(stamp):
            raise CommandError(f"twist stamp must be finite, got {stamp}")
        return cls(_vector3(linear, "twist linear"), _vector3(angular, "twist angular"), stamp, frame_id)

    def age(self, now: float) -> float:
        return now - self.stamp


def is_stale(command: TwistCommand, now: float, timeout: float) -> bool:
    """True once ``command`` is older than ``timeout`` (a command exactly ``timeout`` old still counts)."""
    return command.age(now) > timeout + 1e-9


def scale_twist(linear: Vector, angular: Vector, config: ServoConfig) -> tuple[Vector, Vector]:
    """Apply ``command_in_type`` and the speed caps; directions are kept, magnitudes capped."""
    if config.command_in_type == "unitless":
        linear = np.clip(linear, -1.0, 1.0) * config.scale_linear
        angular = np.clip(angular, -1.0, 1.0) * config.scale_rotational
    return _cap(linear, config.scale_linear), _cap(angular, config.scale_rotational)


def _cap(vector: Vector, limit: float) -> Vector:
    norm = float(np.linalg.norm(vector))
    return vector * (limit / norm) if norm > limit else vector


def damped_least_squares(jacobian: NDArray[np.float64], twist: Vector, damping: float) -> Vector:
    """Joint velocities ``J^T (J J^T + damping^2 I)^-1 twist`` (6 x n Jacobian, 6-vector twist)."""
    jjt = jacobian @ jacobian.T
    return jacobian.T @ np.linalg.solve(jjt + (damping**2) * np.eye(jjt.shape[0]), twist)


@dataclass(frozen=True)
class JointLimits:
    """Per-joint position bounds (radians) and speed limits (rad/s)."""

    lower: Vector
    upper: Vector
    velocity: Vector


def joint_velocities(
    jacobian: NDArray[np.float64],
    twist: Vector,
    positions: Vector,
    limits: JointLimits,
    config: ServoConfig,
) -> tuple[Vector, ServoStatus]:
    """Differential IK step: joint velocities that realise ``twist`` within joint limits.

    A joint that would cross into its limit margin within one servo period is frozen and
    the remaining joints re-solved (status ``JOINT_BOUND``); the result is then scaled so
    no joint exceeds its speed limit, which keeps the Cartesian direction.
    """
    lower = limits.lower + config.joint_limit_margin
    upper = limits.upper - config.joint_limit_margin
    dt = config.publish_period
    active = np.ones(len(positions), dtype=bool)
    qdot = damped_least_squares(jacobian, twist, config.ik_damping)
    status = ServoStatus.NO_WARNING
    for _ in range(len(positions)):
        nxt = positions + qdot * dt
        blocked = active & (((nxt < lower) & (qdot < 0)) | ((nxt > upper) & (qdot > 0)))
        if not blocked.any():
            break
        status = ServoStatus.JOINT_BOUND
        active &= ~blocked
        qdot = np.zeros_like(qdot)
        if active.any():
            qdot[active] = damped_least_squares(jacobian[:, active], twist, config.ik_damping)
    ratio = float(np.max(np.abs(qdot) / limits.velocity))
    if ratio > 1.0:
        qdot = qdot / ratio
    # Never leave the allowed band, even from a start inside the margin.
    qdot = np.where((positions + qdot * dt > upper) & (qdot > 0), np.maximum(upper - positions, 0.0) / dt, qdot)
    qdot = np.where((positions + qdot * dt < lower) & (qdot < 0), np.minimum(lower - positions, 0.0) / dt, qdot)
    return qdot, status


HALT_SETTLED_SPEED = 0.01
"""rad/s: while halting, joints faster than this are braked (the reference follows them); slower, held."""

TwistToBase = Callable[[TwistCommand], tuple[Vector, Vector]]
JacobianAt = Callable[[Vector], NDArray[np.float64]]


class ServoLoop:
    """The servo's state between ticks: the command in force, pause, joint reference and velocities.

    Pure numpy; the workcell feeds it measured joints, a Jacobian and frame rotations. Per
    servo period call :meth:`update`; per physics substep call :meth:`integrate` and send
    :attr:`reference` / :attr:`velocities` to the joint position motors.
    """

    def __init__(self, config: ServoConfig, limits: JointLimits, home: ArrayLike) -> None:
        self.config = config
        self.limits = limits
        self.reset(home)

    def reset(self, positions: ArrayLike) -> None:
        self.command: TwistCommand | None = None
        self.paused = False
        self.status = ServoStatus.NO_WARNING
        self.reference = np.array(positions, dtype=np.float64)
        self.velocities = np.zeros_like(self.reference)

    @property
    def active(self) -> bool:
        """True while joint velocities are commanded (a fresh, non-zero twist)."""
        return bool(np.any(self.velocities != 0.0))

    def accept(self, command: TwistCommand, now: float) -> CommandOutcome:
        """Take a new twist at sim time ``now``; a stamp too far ahead raises :class:`CommandError`."""
        timeout = self.config.incoming_command_timeout
        if command.stamp > now + timeout:
            raise CommandError(
                f"twist stamp {command.stamp:.4f} s is ahead of sim time {now:.4f} s by more than {timeout} s"
            )
        if self.paused:
            return CommandOutcome.PAUSED
        if is_stale(command, now, timeout):
            return CommandOutcome.STALE
        if self.command is not None and command.stamp < self.command.stamp:
            return CommandOutcome.OUT_OF_ORDER
        self.command = command
        return CommandOutcome.ACCEPTED

    def set_paused(self, paused: bool) -> None:
        self.paused = bool(paused)
        if self.paused:
            self.command = None

    def update(
        self, now: float, positions: Vector, velocities: Vector, to_base: TwistToBase, jacobian_at: JacobianAt
    ) -> None:
        """One servo tick: new joint velocities from the command in force, or a halt."""
        config = self.config
        command = self.command
        if self.paused or command is None or is_stale(command, now, config.incoming_command_timeout):
            self.command = None
            self.velocities = np.zeros_like(self.reference)
            self.status = ServoStatus.NO_WARNING
            if np.max(np.abs(velocities)) > HALT_SETTLED_SPEED:
                # Braking: keep the reference on the measured joints so the motors only damp
                # the motion, never pull the arm back to where the halt began.
                self.reference = np.array(positions, dtype=np.float64)
            return
        linear, angular = scale_twist(*to_base(command), config)
        error = config.max_tracking_error  # anti wind-up when the arm is blocked
        self.reference = np.clip(self.reference, positions - error, positions + error)
        self.velocities, self.status = joint_velocities(
            jacobian_at(positions), np.concatenate([linear, angular]), self.reference, self.limits, config
        )

    def integrate(self, dt: float) -> None:
        """Advance the joint reference by one physics substep."""
        self.reference = self.reference + self.velocities * dt
