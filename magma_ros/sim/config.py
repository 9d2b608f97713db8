"""Typed, self-validating configuration for the simulated workcell.

Every dataclass checks itself in ``__post_init__`` and raises :class:`ConfigError` naming
the bad value. Defaults describe the standard workcell: a Franka Panda on a table, three
5.5 cm cubes, a 320x240 third-person RGB-D camera, Servo limits as MoveIt's defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from magma_ros.sim.errors import ConfigError

CUBE_COLORS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.1, 0.1, 1.0),
    "green": (0.1, 0.7, 0.15, 1.0),
    "blue": (0.1, 0.2, 0.85, 1.0),
}
"""Cube colour name -> RGBA; the names are the words used in task instructions."""

PANDA_ARM_JOINTS: tuple[str, ...] = tuple(f"panda_joint{i}" for i in range(1, 8))
PANDA_FINGER_JOINTS: tuple[str, ...] = ("panda_finger_joint1", "panda_finger_joint2")
PANDA_READY_POSE: tuple[float, ...] = (0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785)
"""The Panda's "ready" configuration: hand above the table, pointing down."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _is_multiple(value: float, step: float) -> bool:
    ratio = value / step
    return ratio >= 1 - 1e-9 and abs(ratio - round(ratio)) < 1e-6


@dataclass(frozen=True)
class PhysicsConfig:
    """pybullet stepping: a fixed timestep, so the same inputs give the same trajectory.

    Attributes:
        timestep: physics substep in seconds (240 Hz default, pybullet's own).
        solver_iterations: constraint solver iterations per substep (grasp stability).
        gravity: magnitude of gravity along -z, m/s^2.
    """

    timestep: float = 1.0 / 240.0
    solver_iterations: int = 50
    gravity: float = 9.81

    def __post_init__(self) -> None:
        _require(1e-4 <= self.timestep <= 0.02, f"physics.timestep must be in [1e-4, 0.02] s, got {self.timestep}")
        _require(
            1 <= self.solver_iterations <= 1000,
            f"physics.solver_iterations must be in [1, 1000], got {self.solver_iterations}",
        )
        _require(0.0 <= self.gravity <= 20.0, f"physics.gravity must be in [0, 20] m/s^2, got {self.gravity}")


@dataclass(frozen=True)
class ServoConfig:
    """MoveIt Servo-like Cartesian control of the arm (names follow Servo's parameters).

    Attributes:
        base_frame: planning frame; twists and reported poses are expressed in it.
        ee_frame: the controlled end-effector link (the TCP between the fingertips).
        command_in_type: ``"speed_units"`` (m/s, rad/s) or ``"unitless"`` (in [-1, 1],
            multiplied by the scales).
        incoming_command_timeout: a twist older than this (sim seconds) is stale: ignored
            on arrival, and the arm halts once the current one ages past it.
        scale_linear: cap on the commanded linear speed, m/s (Servo's ``scale.linear``).
        scale_rotational: cap on the commanded angular speed, rad/s (``scale.rotational``).
        publish_period: period of the servo loop (differential IK), seconds; a multiple of
            the physics timestep.
        ik_damping: damping factor of the damped least-squares inverse (near singularities).
        joint_limit_margin: radians kept clear of each joint limit; joints never enter it.
        max_tracking_error: radians the joint reference may lead the measured joints
            (anti wind-up when the arm is blocked).
        position_gain, velocity_gain: gains of pybullet's joint position motors.
    """

    base_frame: str = "panda_link0"
    ee_frame: str = "panda_grasptarget"
    command_in_type: str = "speed_units"
    incoming_command_timeout: float = 0.1
    scale_linear: float = 0.4
    scale_rotational: float = 0.8
    publish_period: float = 1.0 / 120.0
    ik_damping: float = 0.05
    joint_limit_margin: float = 0.1
    max_tracking_error: float = 0.05
    position_gain: float = 0.3
    velocity_gain: float = 1.0

    def __post_init__(self) -> None:
        _require(bool(self.base_frame), "servo.base_frame must not be empty")
        _require(bool(self.ee_frame), "servo.ee_frame must not be empty")
        _require(
            self.command_in_type in ("speed_units", "unitless"),
            f"servo.command_in_type must be 'speed_units' or 'unitless', got {self.command_in_type!r}",
        )
        _require(
            0.0 < self.incoming_command_timeout <= 10.0,
            f"servo.incoming_command_timeout must be in (0, 10] s, got {self.incoming_command_timeout}",
        )
        _require(0.0 < self.scale_linear <= 2.0, f"servo.scale_linear must be in (0, 2] m/s, got {self.scale_linear}")
        _require(
            0.0 < self.scale_rotational <= 4.0,
            f"servo.scale_rotational must be in (0, 4] rad/s, got {self.scale_rotational}",
        )
        _require(
            0.0 < self.publish_period <= 0.1, f"servo.publish_period must be in (0, 0.1] s, got {self.publish_period}"
        )
        _require(0.0 <= self.ik_damping <= 1.0, f"servo.ik_damping must be in [0, 1], got {self.ik_damping}")
        _require(
            0.0 <= self.joint_limit_margin <= 0.5,
            f"servo.joint_limit_margin must be in [0, 0.5] rad, got {self.joint_limit_margin}",
        )
        _require(
            0.0 < self.max_tracking_error <= 1.0,
            f"servo.max_tracking_error must be in (0, 1] rad, got {self.max_tracking_error}",
        )
        _require(0.0 < self.position_gain <= 1.0, f"servo.position_gain must be in (0, 1], got {self.position_gain}")
        _require(0.0 <= self.velocity_gain <= 2.0, f"servo.velocity_gain must be in [0, 2], got {self.velocity_gain}")


@dataclass(frozen=True)
class GripperConfig:
    """The Panda hand's two fingers, position-controlled with a force limit.

    Attributes:
        max_width: opening between the fingers when fully open, metres.
        force: force limit of each finger's motor, newtons (the squeeze on a grasped cube).
        speed: closing/opening speed of the width, m/s.
        finger_friction: lateral friction coefficient of the finger pads.
    """

    max_width: float = 0.08
    force: float = 40.0
    speed: float = 0.1
    finger_friction: float = 1.0

    def __post_init__(self) -> None:
        _require(0.0 < self.max_width <= 0.08, f"gripper.max_width must be in (0, 0.08] m, got {self.max_width}")
        _require(0.0 < self.force <= 200.0, f"gripper.force must be in (0, 200] N, got {self.force}")
        _require(0.0 < self.speed <= 1.0, f"gripper.speed must be in (0, 1] m/s, got {self.speed}")
        _require(
            0.0 < self.finger_friction <= 5.0, f"gripper.finger_friction must be in (0, 5], got {self.finger_friction}"
        )


@dataclass(frozen=True)
class SceneConfig:
    """The cubes: size, mass, friction and the seeded placement region (base frame).

    Attributes:
        cube_size: edge length, metres.
        cube_mass: kilograms.
        cube_friction: lateral friction coefficient (pybullet combines pairs by product).
        region_min, region_max: (x, y) corners of the box the cube centres are drawn from.
        min_separation: least distance between two cube centres, metres (room for fingers).
        max_yaw: cube yaw is drawn uniformly from [-max_yaw, max_yaw], radians.
        colors: the cube colours, one cube each (names from :data:`CUBE_COLORS`).
    """

    cube_size: float = 0.055
    cube_mass: float = 0.1
    cube_friction: float = 1.0
    region_min: tuple[float, float] = (0.35, -0.2)
    region_max: tuple[float, float] = (0.65, 0.2)
    min_separation: float = 0.11
    max_yaw: float = math.pi / 4
    colors: tuple[str, ...] = ("red", "green", "blue")

    def __post_init__(self) -> None:
        _require(0.01 <= self.cube_size <= 0.07, f"scene.cube_size must be in [0.01, 0.07] m, got {self.cube_size}")
        _require(0.0 < self.cube_mass <= 2.0, f"scene.cube_mass must be in (0, 2] kg, got {self.cube_mass}")
        _require(0.0 < self.cube_friction <= 5.0, f"scene.cube_friction must be in (0, 5], got {self.cube_friction}")
        _require(
            len(self.region_min) == 2 and len(self.region_max) == 2,
            f"scene.region_min/region_max must be (x, y) pairs, got {self.region_min}, {self.region_max}",
        )
        _require(
            all(lo < hi for lo, hi in zip(self.region_min, self.region_max, strict=True)),
            f"scene.region_min {self.region_min} must be below region_max {self.region_max} in x and y",
        )
        _require(
            self.min_separation >= self.cube_size * math.sqrt(2),
            f"scene.min_separation {self.min_separation} m lets cubes of {self.cube_size} m overlap",
        )
        _require(0.0 <= self.max_yaw <= math.pi, f"scene.max_yaw must be in [0, pi], got {self.max_yaw}")
        unknown = [c for c in self.colors if c not in CUBE_COLORS]
        _require(not unknown, f"scene.colors has unknown colours {unknown}; known: {sorted(CUBE_COLORS)}")
        _require(
            0 < len(self.colors) == len(set(self.colors)),
            f"scene.colors must be distinct and non-empty, got {self.colors}",
        )


@dataclass(frozen=True)
class CameraConfig:
    """A pinhole RGB-D camera rendered by pybullet's CPU renderer.

    Attributes:
        name: the camera's name in the API (``render(name)``).
        optical_frame: frame of the workcell URDF the camera sits at (z forward, x right,
            y down); its pose comes from the description, never from here.
        width, height: image size, pixels.
        fov_y_deg: vertical field of view, degrees (square pixels: fx == fy).
        near, far: clipping planes, metres; depth beyond ``far`` reads +inf.
    """

    name: str
    optical_frame: str
    width: int = 320
    height: int = 240
    fov_y_deg: float = 50.0
    near: float = 0.05
    far: float = 5.0

    def __post_init__(self) -> None:
        _require(bool(self.name), "camera name must not be empty")
        _require(bool(self.optical_frame), f"camera {self.name!r}: optical_frame must not be empty")
        _require(
            8 <= self.width <= 4096 and 8 <= self.height <= 4096,
            f"camera {self.name!r}: size must be in [8, 4096] px, got {self.width}x{self.height}",
        )
        _require(
            1.0 <= self.fov_y_deg <= 170.0, f"camera {self.name!r}: fov_y_deg must be in [1, 170], got {self.fov_y_deg}"
        )
        _require(
            0.0 < self.near < self.far,
            f"camera {self.name!r}: need 0 < near < far, got near={self.near}, far={self.far}",
        )


THIRD_PERSON_CAMERA = CameraConfig("third_person", "third_person_camera_optical_frame")
WRIST_CAMERA = CameraConfig(
    "wrist", "wrist_camera_optical_frame", width=160, height=120, fov_y_deg=70.0, near=0.01, far=2.0
)

INSET_FRACTION = 0.35
"""Side of the wrist inset over the side of the main view (see :func:`wrist_inset_camera`)."""
INSET_REGION = (1.0 - INSET_FRACTION, 0.0, 1.0, INSET_FRACTION)
"""The inset's box in the main view (x0, y0, x1, y1, fractions): as a preprocessor's ``action_regions``
entry it gives the model the wrist view as an image of its own (training/recipes/README.md, attempt 13)."""
WRIST_INSET_NAME = "wrist_inset"
"""The name of the inset's camera in a workcell (``Workcell.inset_camera``)."""


def wrist_inset_camera(main: CameraConfig) -> CameraConfig:
    """The wrist camera rendered at the size of an inset in ``main``'s top-right corner.

    A single camera cannot tell how far along its line of sight the hand is from a cube, and a
    grasp needs the fingers within about a centimetre of it (training/recipes/README.md, attempt 8);
    the wrist view, pasted into a corner of the third-person frame where only wall and the arm's
    upper links show, gives the policy both views in the one image it takes. Rendered at the inset's
    size directly (no resampling), with the wrist camera's optics.
    """
    width = max(8, round(main.width * INSET_FRACTION))
    height = max(8, round(width * WRIST_CAMERA.height / WRIST_CAMERA.width))
    return CameraConfig(WRIST_INSET_NAME, WRIST_CAMERA.optical_frame, width=width, height=height,
                        fov_y_deg=WRIST_CAMERA.fov_y_deg, near=WRIST_CAMERA.near, far=WRIST_CAMERA.far)


def policy_cameras(main: CameraConfig, wrist_inset: bool, wrist: bool = False) -> tuple[CameraConfig, ...]:
    """The cameras a workcell renders for a policy: ``main`` first, then the wrist camera (``wrist``)
    and the inset's camera (``wrist_inset``) when asked for."""
    return (main, *((WRIST_CAMERA,) if wrist else ()), *((wrist_inset_camera(main),) if wrist_inset else ()))


@dataclass(frozen=True)
class WorkcellConfig:
    """Everything a :class:`~magma_ros.sim.workcell.Workcell` is built from.

    Attributes:
        seed: places the cubes (``Workcell.reset(seed)`` draws a new scene).
        description_path: workcell URDF; ``None`` finds the package's ``urdf/workcell.urdf``.
        arm_urdf: the arm, relative to ``pybullet_data`` (or absolute).
        home_joint_positions: the arm's seven joint angles at reset, radians.
        cameras: the cameras to render; add :data:`WRIST_CAMERA` for the wrist view.
    """

    seed: int = 0
    description_path: Path | None = None
    arm_urdf: str = "franka_panda/panda.urdf"
    home_joint_positions: tuple[float, ...] = PANDA_READY_POSE
    physics: PhysicsConfig = field(default_factory=PhysicsConfig)
    servo: ServoConfig = field(default_factory=ServoConfig)
    gripper: GripperConfig = field(default_factory=GripperConfig)
    scene: SceneConfig = field(default_factory=SceneConfig)
    cameras: tuple[CameraConfig, ...] = (THIRD_PERSON_CAMERA,)

    def __post_init__(self) -> None:
        _require(
            isinstance(self.seed, int) and 0 <= self.seed < 2**32,
            f"seed must be an int in [0, 2**32), got {self.seed!r}",
        )
        _require(
            len(self.home_joint_positions) == len(PANDA_ARM_JOINTS),
            f"home_joint_positions needs {len(PANDA_ARM_JOINTS)} values, got {len(self.home_joint_positions)}",
        )
        _require(
            all(math.isfinite(q) for q in self.home_joint_positions),
            f"home_joint_positions must be finite, got {self.home_joint_positions}",
        )
        _require(
            _is_multiple(self.servo.publish_period, self.physics.timestep),
            f"servo.publish_period {self.servo.publish_period} s must be a whole multiple of "
            f"physics.timestep {self.physics.timestep} s",
        )
        _require(
            self.scene.cube_size < self.gripper.max_width,
            f"scene.cube_size {self.scene.cube_size} m does not fit in gripper.max_width {self.gripper.max_width} m",
        )
        names = [camera.name for camera in self.cameras]
        _require(len(names) == len(set(names)), f"camera names must be unique, got {names}")
