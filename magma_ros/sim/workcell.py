"""The simulated workcell: a pybullet Franka Panda, a table, three cubes and cameras.

:class:`Workcell` is the ROS-free core that ``sim_arm_node`` wraps. It speaks the
interfaces of a real arm stack: Servo-style twist commands (see :mod:`magma_ros.sim.servo`)
and gripper position commands in; joint states, the end-effector pose and RGB-D frames out.
Time only advances in :meth:`Workcell.step`, in whole physics substeps, so the same seed
and the same command sequence give the same trajectory bit for bit (synchronous mode: the
caller decides when time moves).

Each instance owns its own pybullet DIRECT client; several can live in one process.
Everything is reported in the arm's base frame (``config.servo.base_frame``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pybullet as pb
import pybullet_data
from numpy.typing import ArrayLike, NDArray

from magma_ros.sim import camera as camera_model
from magma_ros.sim.camera import CameraFrame, CameraIntrinsics
from magma_ros.sim.config import (
    CUBE_COLORS,
    PANDA_ARM_JOINTS,
    PANDA_FINGER_JOINTS,
    WRIST_INSET_NAME,
    CameraConfig,
    WorkcellConfig,
)
from magma_ros.sim.description import WorkcellDescription
from magma_ros.sim.errors import CommandError, ConfigError, DescriptionError, FrameError, SceneError, SimError
from magma_ros.sim.scene import CubePlacement, sample_layout
from magma_ros.sim.servo import CommandOutcome, JointLimits, ServoLoop, ServoStatus, TwistCommand
from magma_ros.sim.transforms import Pose, quat_from_rpy

WORLD_FRAME = "world"


@dataclass(frozen=True)
class SceneLook:
    """What a camera would see of a workcell at ``sim_time``: its movable arm joints (pybullet order) and
    each cube as (colour, world position, world orientation xyzw). Small and picklable."""

    sim_time: float
    joints: tuple[float, ...]
    cubes: tuple[tuple[str, tuple[float, ...], tuple[float, ...]], ...]


@dataclass(frozen=True, eq=False)
class JointState:
    """Like ``sensor_msgs/JointState``: arm joints then finger joints (rad, m; rad/s, m/s; Nm, N)."""

    names: tuple[str, ...]
    positions: NDArray[np.float64]
    velocities: NDArray[np.float64]
    efforts: NDArray[np.float64]


class Workcell:
    """A Panda workcell in its own pybullet client. Use as a context manager or call :meth:`close`.

    Typical synchronous loop (what ``sim_arm_node`` and :func:`run_episode` do)::

        with Workcell(WorkcellConfig(seed=3)) as cell:
            cell.command_twist([0.1, 0, 0], [0, 0, 0], stamp=cell.sim_time, frame_id=cell.base_frame)
            cell.step(0.1)
            pose = cell.ee_pose()
    """

    def __init__(self, config: WorkcellConfig | None = None) -> None:
        self.config = config if config is not None else WorkcellConfig()
        self.description = WorkcellDescription.load(self.config.description_path)
        self._cameras: dict[str, CameraConfig] = {c.name: c for c in self.config.cameras}
        self._check_description()
        self._client = pb.connect(pb.DIRECT)
        if self._client < 0:
            raise SimError("pybullet could not open a DIRECT physics client")
        self._closed = False
        try:
            self._build_static()
            self._place(self.config.seed)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ lifecycle

    def _check_description(self) -> None:
        servo = self.config.servo
        anchor, _ = self.description.resolve(servo.base_frame)
        if anchor != WORLD_FRAME:
            raise DescriptionError(f"base frame {servo.base_frame!r} must hang off {WORLD_FRAME!r}, not {anchor!r}")
        for cam in self._cameras.values():
            self.description.resolve(cam.optical_frame)

    def _build_static(self) -> None:
        """Table and arm, once per instance; ``reset`` restores this snapshot instead of reloading."""
        cid = self._client
        physics = self.config.physics
        pb.resetSimulation(physicsClientId=cid)
        pb.setPhysicsEngineParameter(
            fixedTimeStep=physics.timestep,
            numSolverIterations=physics.solver_iterations,
            numSubSteps=0,
            deterministicOverlappingPairs=1,
            physicsClientId=cid,
        )
        pb.setGravity(0.0, 0.0, -physics.gravity, physicsClientId=cid)
        _, self._base_in_world = self.description.resolve(self.config.servo.base_frame)
        self._world_in_base = self._base_in_world.inverse()
        self._world_to_base_rotation = self._world_in_base.rotation()
        self._build_boxes()
        self._load_arm()
        self._boxes = self._draw_boxes()
        half = [self.config.scene.cube_size / 2.0] * 3
        self._cube_shape = pb.createCollisionShape(pb.GEOM_BOX, halfExtents=half, physicsClientId=cid)
        self._cube_visuals = {
            color: pb.createVisualShape(
                pb.GEOM_BOX, halfExtents=half, rgbaColor=CUBE_COLORS[color], physicsClientId=cid
            )
            for color in self.config.scene.colors
        }
        self._static_state = pb.saveState(physicsClientId=cid)
        self._cubes: dict[str, int] = {}
        self._shown_time: float | None = None   # set by show(): the time of the look being rendered

    def _place(self, seed: int) -> None:
        """Back to the static snapshot, arm at home, cubes laid out for ``seed``, time 0.

        A fresh instance and a reset one run the same code from the same snapshot, so a
        seed gives the same trajectory either way (cubes are removed newest first, so
        pybullet hands out the same body ids again).
        """
        cid = self._client
        for body in reversed(list(self._cubes.values())):
            pb.removeBody(body, physicsClientId=cid)
        pb.restoreState(self._static_state, physicsClientId=cid)
        self.seed = seed
        self._ticks = 0
        home = self.config.home_joint_positions
        for index, q in zip(self._arm_joints, home, strict=True):
            pb.resetJointState(self._arm, index, q, 0.0, physicsClientId=cid)
        for index in self._finger_joints:
            pb.resetJointState(self._arm, index, self.config.gripper.max_width / 2.0, 0.0, physicsClientId=cid)
        self._cubes = {}
        self._initial_cube_poses: dict[str, Pose] = {}
        for placement in sample_layout(self.config.scene, seed):
            self._add_cube(placement)
        self._servo.reset(home)
        self._gripper_target = self.config.gripper.max_width
        self._apply_gripper_target()
        self._apply_arm_targets()

    def reset(self, seed: int | None = None) -> None:
        """Start over: arm at home, gripper open, cubes laid out for ``seed``, sim time 0.

        Sim time restarts at zero; a ROS wrapper publishing /clock should add its own
        offset so clock time stays monotonic across episodes.
        """
        self._require_open()
        if seed is not None and not (isinstance(seed, int) and 0 <= seed < 2**32):
            raise ConfigError(f"seed must be an int in [0, 2**32), got {seed!r}")
        self._place(self.config.seed if seed is None else seed)

    def close(self) -> None:
        """Disconnect the pybullet client; the workcell is unusable afterwards."""
        if not self._closed:
            self._closed = True
            pb.disconnect(physicsClientId=self._client)

    def __enter__(self) -> Workcell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_open(self) -> None:
        if self._closed:
            raise SimError("this Workcell is closed")

    # ------------------------------------------------------------------ scene building

    def _build_boxes(self) -> None:
        """Static boxes of the description (table, floor), placed by their frames: their collision bodies,
        drawn by :meth:`_draw_boxes`."""
        for link, box in self.description.boxes.items():
            anchor, pose = self.description.resolve(link)
            if anchor != WORLD_FRAME:
                raise DescriptionError(f"box link {link!r} must hang off {WORLD_FRAME!r}, not {anchor!r}")
            half = [s / 2.0 for s in box.size]
            position, orientation = pose.as_tuple()
            pb.createMultiBody(
                baseMass=0.0,
                baseCollisionShapeIndex=pb.createCollisionShape(
                    pb.GEOM_BOX, halfExtents=half, physicsClientId=self._client
                ),
                # transparent: without a visual shape pybullet would draw the collision shape
                baseVisualShapeIndex=pb.createVisualShape(
                    pb.GEOM_BOX, halfExtents=half, rgbaColor=(1.0, 1.0, 1.0, 0.0), physicsClientId=self._client
                ),
                basePosition=position,
                baseOrientation=orientation,
                physicsClientId=self._client,
            )

    def _draw_boxes(self) -> dict[str, int]:
        """The boxes' looks: visual-only bodies made after the arm, smallest first. The TinyRenderer draws in
        body order and shades every fragment that is nearest so far, so what is in front should come first:
        the arm, then the table, then the 8 m floor behind both. A 320x240 frame then costs about a fifth
        less (33 -> 27 ms) with the same pixels and depths (tests/sim/test_camera.py). Body id of each, for
        segmentation."""
        bodies = {}
        by_size = sorted(self.description.boxes.items(), key=lambda item: math.prod(item[1].size[:2]))
        for link, box in by_size:
            _, pose = self.description.resolve(link)
            position, orientation = pose.as_tuple()
            bodies[link] = pb.createMultiBody(
                baseMass=0.0,
                baseVisualShapeIndex=pb.createVisualShape(
                    pb.GEOM_BOX, halfExtents=[s / 2.0 for s in box.size], rgbaColor=box.rgba,
                    physicsClientId=self._client
                ),
                basePosition=position,
                baseOrientation=orientation,
                physicsClientId=self._client,
            )
        return bodies

    def _load_arm(self) -> None:
        cid = self._client
        urdf = Path(self.config.arm_urdf)
        self.arm_urdf_path = urdf if urdf.is_absolute() else Path(pybullet_data.getDataPath()) / urdf
        position, orientation = self._base_in_world.as_tuple()
        try:
            self._arm = pb.loadURDF(
                str(self.arm_urdf_path),
                basePosition=position,
                baseOrientation=orientation,
                useFixedBase=True,
                flags=pb.URDF_ENABLE_CACHED_GRAPHICS_SHAPES,
                physicsClientId=cid,
            )
        except pb.error as err:
            raise SimError(f"pybullet cannot load the arm from {self.arm_urdf_path}: {err}") from err
        joints: dict[str, int] = {}
        self._links: dict[str, int] = {}
        lower, upper, velocity, effort = [], [], [], []
        for index in range(pb.getNumJoints(self._arm, physicsClientId=cid)):
            info = pb.getJointInfo(self._arm, index, physicsClientId=cid)
            joints[info[1].decode()] = index
            self._links[info[12].decode()] = index
        missing = [name for name in (*PANDA_ARM_JOINTS, *PANDA_FINGER_JOINTS) if name not in joints]
        if missing or self.config.servo.ee_frame not in self._links:
            raise SimError(f"{self.arm_urdf_path} lacks joints {missing} or link {self.config.servo.ee_frame!r}")
        self._arm_joints = [joints[name] for name in PANDA_ARM_JOINTS]
        self._finger_joints = [joints[name] for name in PANDA_FINGER_JOINTS]
        self._finger_links = list(self._finger_joints)  # a joint's index is its child link's index
        self._ee_link = self._links[self.config.servo.ee_frame]
        for index in self._arm_joints:
            info = pb.getJointInfo(self._arm, index, physicsClientId=cid)
            lower.append(info[8])
            upper.append(info[9])
            effort.append(info[10])
            velocity.append(info[11])
        limits = JointLimits(np.array(lower), np.array(upper), np.array(velocity))
        self._servo = ServoLoop(self.config.servo, limits, self.config.home_joint_positions)
        self._efforts = effort
        self._movable = [
            i
            for i in range(pb.getNumJoints(self._arm, physicsClientId=cid))
            if pb.getJointInfo(self._arm, i, physicsClientId=cid)[2] != pb.JOINT_FIXED
        ]
        self._arm_columns = [self._movable.index(i) for i in self._arm_joints]
        self._zeros = [0.0] * len(self._movable)
        # calculateJacobian wants the point in the link's centre-of-mass frame.
        com = pb.getLinkState(self._arm, self._ee_link, physicsClientId=cid)
        self._ee_in_com = Pose(com[2], com[3]).inverse().position.tolist()
        for index in self._finger_joints:
            pb.changeDynamics(
                self._arm, index, lateralFriction=self.config.gripper.finger_friction, physicsClientId=cid
            )
        # The grasp relies on contact forces alone: no constraints tie a cube to the hand.

    def _add_cube(self, placement: CubePlacement) -> None:
        scene = self.config.scene
        cid = self._client
        pose_base = Pose([placement.x, placement.y, scene.cube_size / 2.0], quat_from_rpy(0.0, 0.0, placement.yaw))
        position, orientation = self._base_in_world.compose(pose_base).as_tuple()
        body = pb.createMultiBody(
            baseMass=scene.cube_mass,
            baseCollisionShapeIndex=self._cube_shape,
            baseVisualShapeIndex=self._cube_visuals[placement.color],
            basePosition=position,
            baseOrientation=orientation,
            physicsClientId=cid,
        )
        pb.changeDynamics(
            body,
            -1,
            lateralFriction=scene.cube_friction,
            spinningFriction=0.001,
            rollingFriction=0.0,
            physicsClientId=cid,
        )
        self._cubes[placement.color] = body
        self._initial_cube_poses[placement.color] = pose_base

    # ------------------------------------------------------------------ frames and time

    @property
    def base_frame(self) -> str:
        """The planning frame: twists in, poses out."""
        return self.config.servo.base_frame

    @property
    def ee_frame(self) -> str:
        """The controlled end-effector link (the TCP between the fingertips)."""
        return self.config.servo.ee_frame

    @property
    def command_frames(self) -> tuple[str, ...]:
        """Frames a twist may be expressed in: the base frame, ``world``, every arm link
        (the end effector among them) and every frame of the workcell description."""
        frames = dict.fromkeys((self.base_frame, WORLD_FRAME, self.ee_frame, *self._links, *self.description.frames))
        return tuple(frames)

    @property
    def joint_names(self) -> tuple[str, ...]:
        return (*PANDA_ARM_JOINTS, *PANDA_FINGER_JOINTS)

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(self._cameras)

    @property
    def inset_camera(self) -> str | None:
        """The wrist inset's camera (:func:`~magma_ros.sim.config.wrist_inset_camera`) if configured, else None:
        what :meth:`render_view` pastes into the policy's image."""
        return WRIST_INSET_NAME if WRIST_INSET_NAME in self._cameras else None

    @property
    def cube_colors(self) -> tuple[str, ...]:
        return tuple(self._cubes)

    @property
    def timestep(self) -> float:
        """Physics substep, seconds; ``step`` durations are whole multiples of it."""
        return self.config.physics.timestep

    @property
    def ticks(self) -> int:
        """Physics substeps since the last reset."""
        return self._ticks

    @property
    def sim_time(self) -> float:
        """Simulated seconds since the last reset (``ticks * timestep``: no drift)."""
        return self._ticks * self.config.physics.timestep

    # ------------------------------------------------------------------ stepping

    def step(self, duration: float) -> None:
        """Advance simulated time by ``duration`` seconds, a whole number of physics substeps."""
        self._require_open()
        ticks = duration / self.config.physics.timestep
        if not math.isfinite(ticks) or ticks < 0.5 or abs(ticks - round(ticks)) > 1e-6:
            raise CommandError(
                f"step duration {duration} s must be a positive multiple of the physics timestep "
                f"{self.config.physics.timestep} s"
            )
        self.step_ticks(round(ticks))

    def advance_to(self, time: float) -> int:
        """Step until sim time reaches ``time`` (the first substep boundary at or after it).

        For callers whose periods are not multiples of the timestep (a 100 Hz command
        stream, a wall-clock timeout): passing absolute times never accumulates rounding.
        Returns the number of substeps taken (0 if ``time`` is not in the future).
        """
        self._require_open()
        time = float(time)
        if not math.isfinite(time):
            raise CommandError(f"advance_to needs a finite time, got {time}")
        target = math.ceil(time / self.config.physics.timestep - 1e-6)
        count = max(0, target - self._ticks)
        self.step_ticks(count)
        return count

    def step_ticks(self, count: int) -> None:
        """Advance ``count`` physics substeps (the servo loop runs on its own period inside)."""
        self._require_open()
        if count < 0:
            raise CommandError(f"cannot step a negative number of ticks ({count})")
        dt = self.config.physics.timestep
        servo_every = max(1, round(self.config.servo.publish_period / dt))
        for _ in range(count):
            if self._ticks % servo_every == 0:
                positions, velocities = self._arm_positions_velocities()
                self._servo.update(self.sim_time, positions, velocities, self._twist_in_base, self._jacobian)
            self._servo.integrate(dt)
            self._apply_arm_targets()
            pb.stepSimulation(physicsClientId=self._client)
            self._ticks += 1

    # ------------------------------------------------------------------ servo

    def command_twist(self, linear: ArrayLike, angular: ArrayLike, stamp: float, frame_id: str) -> CommandOutcome:
        """Hand the servo a ``TwistStamped`` (speed units by default: m/s and rad/s).

        ``frame_id`` must be one of :attr:`command_frames` (else :class:`FrameError`); the
        twist moves the end-effector origin. Ignored, with the reason returned: a command
        older than ``incoming_command_timeout`` (``STALE``), one stamped before the command
        in force (``OUT_OF_ORDER``), any while paused (``PAUSED``). One stamped further
        ahead of sim time than the timeout raises :class:`CommandError`. The accepted
        command drives the arm until it goes stale, then the arm halts.
        """
        self._require_open()
        command = TwistCommand.create(linear, angular, stamp, frame_id)
        if command.frame_id not in self.command_frames:
            raise FrameError(
                f"twist frame_id {command.frame_id!r} is unknown; use one of {', '.join(self.command_frames)}"
            )
        return self._servo.accept(command, self.sim_time)

    def set_servo_paused(self, paused: bool) -> None:
        """Servo's ``~/pause_servo``: while paused, twists are ignored and the arm holds still."""
        self._servo.set_paused(paused)

    @property
    def servo_paused(self) -> bool:
        return self._servo.paused

    @property
    def servo_status(self) -> ServoStatus:
        """Servo status code (``moveit_msgs/ServoStatus`` numbering)."""
        return self._servo.status

    @property
    def servo_active(self) -> bool:
        """True while a fresh, non-zero twist is moving the arm (joint velocities commanded)."""
        return self._servo.active

    def _twist_in_base(self, command: TwistCommand) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Re-express a twist in the base frame (rotation only: it still moves the TCP)."""
        if command.frame_id == self.base_frame:
            return command.linear, command.angular
        rotation = self.frame_pose(command.frame_id).rotation()
        return rotation @ command.linear, rotation @ command.angular

    def _jacobian(self, arm_positions: NDArray[np.float64]) -> NDArray[np.float64]:
        """6 x 7 Jacobian of the end-effector frame origin, rows expressed in the base frame."""
        cid = self._client
        all_positions = [s[0] for s in pb.getJointStates(self._arm, self._movable, physicsClientId=cid)]
        for slot, q in zip(self._arm_columns, arm_positions, strict=True):
            all_positions[slot] = float(q)
        linear, angular = pb.calculateJacobian(
            self._arm, self._ee_link, self._ee_in_com, all_positions, self._zeros, self._zeros, physicsClientId=cid
        )
        rotation = self._world_to_base_rotation
        return np.vstack(
            [rotation @ np.asarray(linear)[:, self._arm_columns], rotation @ np.asarray(angular)[:, self._arm_columns]]
        )

    def _apply_arm_targets(self) -> None:
        servo = self.config.servo
        count = len(self._arm_joints)
        pb.setJointMotorControlArray(
            self._arm,
            self._arm_joints,
            pb.POSITION_CONTROL,
            targetPositions=self._servo.reference.tolist(),
            targetVelocities=self._servo.velocities.tolist(),
            forces=self._efforts,
            positionGains=[servo.position_gain] * count,
            velocityGains=[servo.velocity_gain] * count,
            physicsClientId=self._client,
        )

    # ------------------------------------------------------------------ gripper

    def command_gripper(self, width: float) -> float:
        """Move the fingers to an opening of ``width`` metres (0 closed, ``max_width`` open).

        Values outside the range are clamped; returns the width actually targeted. The
        fingers push with at most ``gripper.force`` each, so closing on a cube squeezes it.
        """
        self._require_open()
        width = float(width)
        if not math.isfinite(width):
            raise CommandError(f"gripper width must be finite, got {width}")
        self._gripper_target = min(max(width, 0.0), self.config.gripper.max_width)
        self._apply_gripper_target()
        return self._gripper_target

    def command_gripper_joints(self, names: Sequence[str], positions: Sequence[float]) -> float:
        """A ``JointTrajectory`` point for the finger joints (each finger's travel, metres).

        Either finger joint may be named; with both, their mean is used (the fingers are
        coupled, as by the URDF's mimic tag). Returns the targeted width.
        """
        if len(names) != len(positions) or not names:
            raise CommandError(
                f"gripper trajectory needs one position per joint name, got {list(names)} / {list(positions)}"
            )
        unknown = [n for n in names if n not in PANDA_FINGER_JOINTS]
        if unknown:
            raise CommandError(f"unknown gripper joints {unknown}; expected some of {list(PANDA_FINGER_JOINTS)}")
        travel = float(np.mean(np.asarray(positions, dtype=np.float64)))
        return self.command_gripper(2.0 * travel)

    def _apply_gripper_target(self) -> None:
        gripper = self.config.gripper
        for index in self._finger_joints:
            pb.setJointMotorControl2(
                self._arm,
                index,
                pb.POSITION_CONTROL,
                targetPosition=self._gripper_target / 2.0,
                force=gripper.force,
                maxVelocity=gripper.speed / 2.0,
                physicsClientId=self._client,
            )

    @property
    def gripper_target(self) -> float:
        """The commanded opening, metres."""
        return self._gripper_target

    def gripper_width(self) -> float:
        """The measured opening between the fingers, metres."""
        states = pb.getJointStates(self._arm, self._finger_joints, physicsClientId=self._client)
        return float(sum(s[0] for s in states))

    # ------------------------------------------------------------------ state

    def _arm_positions(self) -> NDArray[np.float64]:
        return self._arm_positions_velocities()[0]

    def _arm_positions_velocities(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        states = pb.getJointStates(self._arm, self._arm_joints, physicsClientId=self._client)
        return np.array([s[0] for s in states]), np.array([s[1] for s in states])

    def joint_state(self) -> JointState:
        """Arm and finger joints: positions, velocities and applied motor efforts."""
        self._require_open()
        states = pb.getJointStates(self._arm, self._arm_joints + self._finger_joints, physicsClientId=self._client)
        return JointState(
            self.joint_names,
            np.array([s[0] for s in states]),
            np.array([s[1] for s in states]),
            np.array([s[3] for s in states]),
        )

    def _link_pose_world(self, link: int) -> Pose:
        state = pb.getLinkState(self._arm, link, computeForwardKinematics=True, physicsClientId=self._client)
        return Pose(state[4], state[5])

    def ee_pose(self) -> Pose:
        """End-effector (TCP) pose in the base frame."""
        self._require_open()
        return self._world_in_base.compose(self._link_pose_world(self._ee_link))

    def ee_velocity(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """End-effector linear (m/s) and angular (rad/s) velocity in the base frame, ``J qdot``."""
        self._require_open()
        states = pb.getJointStates(self._arm, self._arm_joints, physicsClientId=self._client)
        positions = np.array([s[0] for s in states])
        twist = self._jacobian(positions) @ np.array([s[1] for s in states])
        return twist[:3], twist[3:]

    def cube_pose(self, color: str) -> Pose:
        """A cube's pose (centre) in the base frame."""
        self._require_open()
        body = self._cube_body(color)
        position, orientation = pb.getBasePositionAndOrientation(body, physicsClientId=self._client)
        return self._world_in_base.compose(Pose(position, orientation))

    def cube_poses(self) -> dict[str, Pose]:
        return {color: self.cube_pose(color) for color in self._cubes}

    def initial_cube_pose(self, color: str) -> Pose:
        """Where the cube started at the last reset, base frame."""
        self._cube_body(color)
        return self._initial_cube_poses[color]

    def is_grasped(self, color: str) -> bool:
        """True while the cube touches both finger links (a contact grasp)."""
        body = self._cube_body(color)
        return all(
            pb.getContactPoints(bodyA=body, bodyB=self._arm, linkIndexB=link, physicsClientId=self._client)
            for link in self._finger_links
        )

    def _cube_body(self, color: str) -> int:
        if color not in self._cubes:
            raise SceneError(f"no {color!r} cube; the cubes are {', '.join(self._cubes)}")
        return self._cubes[color]

    def segmentation_ids(self) -> dict[str, int]:
        """Body id of each named object in segmentation images: cubes by colour, ``arm``, boxes by link."""
        return {**self._cubes, "arm": self._arm, **self._boxes}

    def frame_pose(self, frame: str) -> Pose:
        """Pose in the base frame of any frame of the description, or of an arm link."""
        self._require_open()
        if frame == self.config.servo.base_frame:
            return Pose.identity()
        if frame == WORLD_FRAME:
            return self._world_in_base
        if frame in self._links:
            return self._world_in_base.compose(self._link_pose_world(self._links[frame]))
        try:
            anchor, pose = self.description.resolve(frame)
        except DescriptionError as err:
            raise FrameError(str(err)) from err
        if anchor == WORLD_FRAME:
            return self._world_in_base.compose(pose)
        if anchor in self._links:
            return self.frame_pose(anchor).compose(pose)
        raise FrameError(f"frame {frame!r} hangs off {anchor!r}, which is neither {WORLD_FRAME!r} nor an arm link")

    # ------------------------------------------------------------------ cameras

    def camera_config(self, name: str) -> CameraConfig:
        if name not in self._cameras:
            raise FrameError(f"no camera {name!r}; configured cameras: {', '.join(self._cameras) or 'none'}")
        return self._cameras[name]

    def camera_intrinsics(self, name: str) -> CameraIntrinsics:
        """Pinhole intrinsics of a configured camera (K and P for ``CameraInfo``)."""
        return CameraIntrinsics.from_config(self.camera_config(name))

    def look(self) -> SceneLook:
        """What the cameras would see now: every movable arm joint and every cube's world pose (for
        :meth:`show` in another workcell of the same configuration, e.g. a render process)."""
        self._require_open()
        cid = self._client
        joints = tuple(float(s[0]) for s in pb.getJointStates(self._arm, self._movable, physicsClientId=cid))
        cubes = tuple((color, *pb.getBasePositionAndOrientation(body, physicsClientId=cid))
                      for color, body in self._cubes.items())
        return SceneLook(self.sim_time, joints, tuple((c, tuple(p), tuple(q)) for c, p, q in cubes))

    def show(self, look: SceneLook) -> None:
        """Pose this workcell as ``look`` says, for rendering only: joints and cubes are placed, not
        simulated (a workcell used this way should not be stepped)."""
        self._require_open()
        cid = self._client
        if len(look.joints) != len(self._movable):
            raise SceneError(f"a look with {len(look.joints)} joints, this arm has {len(self._movable)}")
        for index, q in zip(self._movable, look.joints, strict=True):
            pb.resetJointState(self._arm, index, q, 0.0, physicsClientId=cid)
        for color, position, orientation in look.cubes:
            if color not in self._cubes:
                if color not in self._cube_visuals:
                    raise SceneError(f"no {color!r} cube in this workcell's scene")
                self._add_cube(CubePlacement(color, 0.0, 0.0, 0.0))
            pb.resetBasePositionAndOrientation(self._cubes[color], position, orientation, physicsClientId=cid)
        self._shown_time = look.sim_time

    def render(self, name: str = "third_person", segmentation: bool = False) -> CameraFrame:
        """Render a configured camera: RGB uint8, aligned float32 depth (m), optional segmentation."""
        self._require_open()
        config = self.camera_config(name)
        pose_base = self.frame_pose(config.optical_frame)
        rgb, depth, seg = camera_model.render(
            self._client, config, self._base_in_world.compose(pose_base), segmentation
        )
        stamp = self.sim_time if self._shown_time is None else self._shown_time
        return CameraFrame(rgb, depth, seg, CameraIntrinsics.from_config(config), config.optical_frame, stamp,
                           pose_base)

    def render_view(self, name: str, inset: str | None = None) -> CameraFrame:
        """Render camera ``name``; with ``inset``, that camera's view pasted into its top-right corner
        (:func:`magma_ros.sim.camera.with_inset`: the policy's image with the wrist inset)."""
        frame = self.render(name)
        return frame if inset is None else camera_model.with_inset(frame, self.render(inset))
