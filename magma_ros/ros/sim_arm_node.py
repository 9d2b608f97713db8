"""sim_arm_node: the pybullet workcell (magma_ros.sim) behind the ROS interfaces of a real arm.

Out: RGB camera, aligned depth (32FC1 m) and CameraInfo, optionally the wrist camera,
/joint_states, the TCP PoseStamped in ``panda_link0``, /clock, the episode's instruction
(latched), the episode status (JSON, latched), cube markers and /diagnostics.
In: TwistStamped on Servo's ``delta_twist_cmds`` (speed units, frame_id required, older than
0.1 s ignored -> the arm halts) and the gripper JointTrajectory; Servo's ``pause_servo``.

Two modes:

* ``realtime``: sim time follows the wall clock (times ``realtime_factor``); commands act
  the moment they arrive. Physics keeps time first: a camera frame that could only be
  rendered late (more than one camera period behind) is skipped and counted, so a machine
  too slow to render at ``camera_rate_hz`` gets fewer frames, not a slower world. If even
  physics falls behind, sim time slips (counted), never jumps. The real-time factor, the
  camera rate achieved and what each costs (render ms per frame, physics ms per sim second)
  are measured over every diagnostics period, published on /diagnostics (WARN when behind)
  and logged when the sim cannot keep up.
* ``synchronous``: sim time stands still after each observation until it is answered, then
  advances one control period (see :mod:`magma_ros.sim.lockstep`). Deterministic for a seed.
  The step runs as soon as the answer is complete, from the callback that completed it.

Episodes: ``~/reset`` (std_srvs/Trigger) starts one from the ``seed``/``task``/``color``/
``max_steps`` parameters (settable at run time) and answers the status JSON; ``~/pause``
(std_srvs/SetBool) holds or runs sim time. An episode ends at success or when its step
budget is spent; sim time then holds until the next reset (or the next seed, ``continuous``).
The clock jumps one second at each reset (:data:`magma_ros.sim.session.EPISODE_GAP_S`), so
nothing still answering the last episode is fresh enough to act in the next.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Pose as PoseMsg
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import CameraInfo, JointState
from std_msgs.msg import Header, String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory
from visualization_msgs.msg import Marker, MarkerArray

from magma_ros import contract
from magma_ros.contract import ContractError, SimArmParameters
from magma_ros.image_codec import numpy_to_image
from magma_ros.ros.runtime import declare_parameters, message_type, qos, run_node
from magma_ros.sim import (
    CUBE_COLORS,
    THIRD_PERSON_CAMERA,
    WRIST_CAMERA,
    CameraFrame,
    SimError,
    Workcell,
    WorkcellConfig,
    policy_cameras,
)
from magma_ros.sim.camera import with_inset
from magma_ros.sim.lockstep import LockstepGate, StepCommand
from magma_ros.sim.render_detail import arm_urdf_for
from magma_ros.sim.render_worker import RenderWorker, RenderWorkerError
from magma_ros.sim.session import EpisodeSession, EpisodeStatus, choose_task
from magma_ros.sim.transforms import Pose

WARN_PERIOD_S = 2.0
MAX_LAG_S = 0.25
"""Realtime mode: sim time may trail the wall clock by this much before it slips."""
REALTIME_WARN_FACTOR = 0.9
"""Realtime mode: below this real-time factor (or camera-rate fraction) the sim says it is behind."""


def stamp_of(seconds: float) -> Any:
    """A builtin_interfaces/Time for clock seconds (nanosecond-rounded)."""
    from builtin_interfaces.msg import Time as TimeMsg

    nanoseconds = round(seconds * 1e9)
    return TimeMsg(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def seconds_of(stamp: Any) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def twist_is_zero(msg: TwistStamped) -> bool:
    t = msg.twist
    return not any((t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z))


def pose_message(pose: Pose) -> PoseMsg:
    msg = PoseMsg()
    msg.position.x, msg.position.y, msg.position.z = (float(v) for v in pose.position)
    o = msg.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in pose.orientation)
    return msg


class SimArmNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(SimArmParameters.NODE_NAME, **kwargs)
        self.params = p = declare_parameters(self, SimArmParameters, self._apply_parameters)
        self.sync = p.mode == "synchronous"
        camera = dataclasses.replace(THIRD_PERSON_CAMERA, width=p.image_width, height=p.image_height)
        cameras = policy_cameras(camera, p.wrist_inset, wrist=p.wrist_camera)
        try:
            config = WorkcellConfig(seed=p.seed, cameras=cameras, arm_urdf=arm_urdf_for(p.render_detail))
            self.cell = Workcell(config)
            self.session = EpisodeSession(self.cell, p.control_period_s)
            self.gate = LockstepGate(p.sync_timeout_s, p.sync_quiet_s, p.sync_answer_end, is_zero=twist_is_zero)
        except SimError as err:
            self.get_logger().error(f"cannot build the workcell: {err}")
            raise ContractError(str(err)) from err
        self._lock = threading.RLock()
        self._closed = False
        self.paused = True
        # realtime: frames rendered by a process of their own (magma_ros.sim.render_worker), published when back
        self._renderer: RenderWorker | None = None
        if not self.sync and p.render_process:
            try:
                self._renderer = RenderWorker(config)
            except RenderWorkerError as err:
                self.get_logger().error(f"no render process ({err}): rendering in the sim's thread, which takes no "
                                        "twists while a frame renders")
        self._anchor: tuple[float, float] | None = None  # realtime: (wall, sim) of the last (re)start
        self._next = {"state": 0, "camera": 0, "control": 1}
        self.counters = {"twists": 0, "accepted": 0, "stale": 0, "out_of_order": 0, "paused": 0, "rejected": 0,
                         "ignored": 0, "gripper_commands": 0, "gripper_rejected": 0, "sync_timeouts": 0,
                         "frames": 0, "frames_skipped": 0, "lag_slips": 0, "episodes": 0, "sync_steps": 0}
        self._camera = camera
        self._camera_info = self._make_camera_info(camera.name)
        self._wall_start = time.monotonic()
        # cost accounting since the last diagnostics (wall seconds): physics, rendering, running time
        self._costs = {"physics_s": 0.0, "render_s": 0.0, "frames": 0, "skipped": 0, "sim_s": 0.0, "wall_s": 0.0,
                       "steps": 0}
        self._running_since: tuple[float, float] | None = None  # (wall, sim) while time runs
        self.realtime_report: dict[str, float] = {}
        self._last_report_at = self._wall_start

        def publisher(topic: contract.Topic, name: str) -> Any:
            return self.create_publisher(message_type(topic), name, qos(topic))

        self._out = {
            "image": publisher(contract.CAMERA_IMAGE, p.image_topic),
            "info": publisher(contract.CAMERA_INFO, p.camera_info_topic),
            "depth": publisher(contract.CAMERA_DEPTH, p.depth_topic) if p.publish_depth else None,
            "wrist": publisher(contract.WRIST_IMAGE, p.wrist_image_topic) if p.wrist_camera else None,
            "joints": publisher(contract.JOINT_STATES, p.joint_states_topic),
            "pose": publisher(contract.EE_POSE, p.ee_pose_topic),
            "objects": publisher(contract.SIM_OBJECTS, p.objects_topic),
            "episode": publisher(contract.SIM_EPISODE, p.episode_topic),
            "instruction": publisher(contract.INSTRUCTION, p.instruction_topic),
            "clock": publisher(contract.CLOCK, contract.CLOCK.name) if p.publish_clock else None,
            "diagnostics": publisher(contract.DIAGNOSTICS, contract.DIAGNOSTICS.name),
        }
        inputs = ReentrantCallbackGroup()
        # Commands one at a time, gripper first when both wait (answers send it before their twist).
        commands = MutuallyExclusiveCallbackGroup()
        self._gripper_sub = self.create_subscription(JointTrajectory, p.gripper_topic, self._on_gripper,
                                                     qos(contract.GRIPPER_TRAJECTORY), callback_group=commands)
        self._twist_sub = self.create_subscription(TwistStamped, p.twist_topic, self._on_twist,
                                                   qos(contract.SERVO_TWIST), callback_group=commands)
        self._reset_srv = self.create_service(Trigger, contract.SIM_RESET_SERVICE, self._on_reset,
                                              callback_group=inputs)
        self._pause_srv = self.create_service(SetBool, contract.SIM_PAUSE_SERVICE, self._on_pause,
                                              callback_group=inputs)
        self._servo_pause_srv = None
        if p.servo_node:
            self._servo_pause_srv = self.create_service(
                SetBool, f"{p.servo_node.rstrip('/')}/{contract.SERVO_PAUSE_SERVICE}", self._on_servo_pause,
                callback_group=inputs)
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        # synchronous: answers step the sim from their callback; the timer only cuts answers that never
        # complete (or waits out sync_quiet_s); realtime: wake once per state period of wall time
        if self.sync:
            tick = 0.005 if p.sync_answer_end == "quiet" else 0.02
        else:
            tick = min(0.02, max(0.002, 1.0 / (p.state_rate_hz * p.realtime_factor)))
        self._step_timer = self.create_timer(tick, self._on_step_timer, callback_group=MutuallyExclusiveCallbackGroup(),
                                             clock=steady)
        self._diagnostics_timer = self.create_timer(p.diagnostics_period_s, self._publish_diagnostics, clock=steady)
        if p.autostart_episode:
            self.start_episode()
        if not p.start_paused:
            self.set_paused(False)
        self.get_logger().info(f"{p.mode} workcell up: camera {p.image_width}x{p.image_height} on {p.image_topic}, "
                               f"twists on {p.twist_topic}")

    # -- episodes --------------------------------------------------------------------
    def start_episode(self) -> EpisodeStatus:
        """A new episode from the current parameters; keeps the pause state."""
        p = self.params
        task = choose_task(p.task, p.seed, p.color, p.max_steps)
        with self._lock:
            self._close_running_window()
            self.session.reset(task, p.seed)
            if not p.publish_clock:
                self.session.offset = max(time.time(), self.session.offset)
            status = self.session.status()
            self.gate.hold()
            self._next = {"state": 0, "camera": 0, "control": 1}
            self._anchor = None
            self.counters["episodes"] += 1
            self._out["instruction"].publish(String(data=task.instruction))
            self._out["episode"].publish(String(data=status.to_json()))
            self._publish_state()
            self._next["state"] = 1
            if not self.paused:
                self._begin_running()
        self.get_logger().info(f"episode {status.episode}: seed {p.seed}, {task.instruction!r}, "
                               f"{task.max_steps} steps")
        return status

    @property
    def status(self) -> EpisodeStatus:
        with self._lock:
            return self.session.status()

    def set_paused(self, paused: bool) -> None:
        with self._lock:
            if paused == self.paused:
                return
            self.paused = paused
            if paused:
                self.gate.hold()
                self._anchor = None
                self._close_running_window()
            elif not self.session.done:
                self._begin_running()

    def _begin_running(self) -> None:
        """Time starts to run (realtime) or the current observation goes out (synchronous)."""
        self._anchor = None
        if self.sync:
            self._publish_cameras()
            self._next["camera"] = max(self._next["camera"], self._tick_index("camera", self.cell.ticks) + 1)

    def _episode_over(self, status: EpisodeStatus) -> None:
        self.gate.hold()
        self.get_logger().info(f"episode {status.episode} over: {'success' if status.success else 'failure'} "
                               f"after {status.step} steps")
        if self.params.continuous:
            self.set_parameters([Parameter("seed", value=(self.params.seed + 1) % 2**32)])
            self.start_episode()

    # -- stepping --------------------------------------------------------------------
    def _period(self, kind: str) -> float:
        p = self.params
        if kind == "state":
            return 1.0 / p.state_rate_hz
        if kind == "camera" and not self.sync:
            return 1.0 / p.camera_rate_hz
        return p.control_period_s

    def _tick_of(self, kind: str, index: int) -> int:
        """Physics tick of the index-th event of a schedule (the same rounding as Workcell.advance_to)."""
        return math.ceil(index * self._period(kind) / self.cell.timestep - 1e-6)

    def _tick_index(self, kind: str, tick: int) -> int:
        """Index of the last event of a schedule at or before ``tick``."""
        index = int(tick * self.cell.timestep / self._period(kind)) + 1
        while index > 0 and self._tick_of(kind, index) > tick:
            index -= 1
        return index

    def _advance(self, target_tick: int) -> None:
        """Step to ``target_tick``, publishing every state, camera frame and control step due on the way.

        Realtime: a camera frame due more than one camera period before ``target_tick`` is skipped
        (rendering it would only put the world further behind the wall clock).
        """
        late_frame = math.inf if self.sync else math.ceil(self._period("camera") / self.cell.timestep)
        while not self._closed:
            due = {kind: self._tick_of(kind, index) for kind, index in self._next.items()}
            tick = min(due.values())
            if tick > target_tick:
                break
            if due["camera"] == tick and target_tick - tick > late_frame:
                self._next["camera"] += 1
                self.counters["frames_skipped"] += 1
                self._costs["skipped"] += 1
                continue
            started = time.perf_counter()
            self.cell.step_ticks(tick - self.cell.ticks)
            self._costs["physics_s"] += time.perf_counter() - started
            if due["control"] == tick:
                self._next["control"] += 1
                status = self.session.control_step_done()
                self._out["episode"].publish(String(data=status.to_json()))
                if status.done:
                    self._finish_tick(due, tick)
                    self._episode_over(status)
                    return
            self._finish_tick(due, tick)
        started = time.perf_counter()
        self.cell.step_ticks(max(0, target_tick - self.cell.ticks))
        self._costs["physics_s"] += time.perf_counter() - started

    def _finish_tick(self, due: dict[str, int], tick: int) -> None:
        if due["state"] == tick:
            self._next["state"] += 1
            self._publish_state()
        if due["camera"] == tick:
            self._next["camera"] += 1
            self._publish_cameras()

    def _on_step_timer(self) -> None:
        if self._closed:
            return
        if self.sync:
            self._try_sync_step()
            return
        try:
            self._realtime_step()
        except SimError as err:
            self.get_logger().error(f"simulation step failed: {err}", throttle_duration_sec=WARN_PERIOD_S)

    def _try_sync_step(self) -> None:
        """Run the synchronous step if its answer is complete (or timed out); callbacks and the timer call it."""
        try:
            command = self.gate.poll(time.monotonic())
            if command is not None:
                self._sync_step(command)
        except SimError as err:
            self.get_logger().error(f"simulation step failed: {err}", throttle_duration_sec=WARN_PERIOD_S)

    def _sync_step(self, command: StepCommand) -> None:
        with self._lock:
            if self.paused or self.session.done or self._closed:
                return
            if command.timed_out:
                self.counters["sync_timeouts"] += 1
            if command.gripper is not None:
                self._apply_gripper(command.gripper)
            if command.twist is not None:
                self._apply_twist(command.twist)
            self.counters["sync_steps"] += 1
            self._costs["steps"] += 1
            self._advance(self._tick_of("control", self._next["control"]))

    def _realtime_step(self) -> None:
        with self._lock:
            self._collect_frames()
            if self.paused or self.session.done:
                self._anchor = None
                self._close_running_window()
                return
            now = time.monotonic()
            if self._anchor is None:
                self._anchor = (now, self.cell.sim_time)
                if not self.params.publish_clock:  # stamps follow the system clock (forward only)
                    self.session.offset = max(self.session.offset, time.time() - self.cell.sim_time)
            if self._running_since is None:
                self._running_since = (now, self.cell.sim_time)
            target = self._anchor[1] + (now - self._anchor[0]) * self.params.realtime_factor
            if target - self.cell.sim_time > MAX_LAG_S:
                self.counters["lag_slips"] += 1
                slip = target - self.cell.sim_time - MAX_LAG_S
                if not self.params.publish_clock:
                    self.session.offset += slip  # stamps keep following the system clock
                target = self.cell.sim_time + MAX_LAG_S
                self._anchor = (now, target)
            self._advance(math.floor(target / self.cell.timestep + 1e-9))

    # -- commands --------------------------------------------------------------------
    def _on_twist(self, msg: TwistStamped) -> None:
        self.counters["twists"] += 1
        if self.sync:
            stamp = msg.header.stamp
            self.gate.on_twist(msg, time.monotonic(), stamp.sec * 1_000_000_000 + stamp.nanosec)
            self._try_sync_step()
            return
        with self._lock:
            self._apply_twist(msg)

    def _on_gripper(self, msg: JointTrajectory) -> None:
        if self.sync:
            self.gate.on_gripper(msg, time.monotonic())
            self._try_sync_step()
            return
        with self._lock:
            self._apply_gripper(msg)

    def _apply_twist(self, msg: TwistStamped) -> None:
        if self.paused or self.session.done:
            self.counters["ignored"] += 1
            return
        t = msg.twist
        try:
            outcome = self.cell.command_twist((t.linear.x, t.linear.y, t.linear.z),
                                              (t.angular.x, t.angular.y, t.angular.z),
                                              self.session.to_cell_time(seconds_of(msg.header.stamp)),
                                              msg.header.frame_id)
        except SimError as err:
            self.counters["rejected"] += 1
            self.get_logger().warning(f"twist rejected: {err}", throttle_duration_sec=WARN_PERIOD_S)
            return
        self.counters[outcome.value] += 1

    def _apply_gripper(self, msg: JointTrajectory) -> None:
        if self.paused or self.session.done:
            self.counters["ignored"] += 1
            return
        try:
            if not msg.points:
                raise SimError("gripper trajectory has no points")
            self.cell.command_gripper_joints(list(msg.joint_names), list(msg.points[-1].positions))
        except SimError as err:
            self.counters["gripper_rejected"] += 1
            self.get_logger().warning(f"gripper command rejected: {err}", throttle_duration_sec=WARN_PERIOD_S)
            return
        self.counters["gripper_commands"] += 1

    # -- services and parameters -------------------------------------------------------
    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            status = self.start_episode()
        except SimError as err:
            response.success, response.message = False, str(err)
            return response
        response.success, response.message = True, status.to_json()
        return response

    def _on_pause(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        self.set_paused(bool(request.data))
        with self._lock:
            started = self.session.task is not None
        response.success, response.message = True, self.status.to_json() if started else "no episode yet"

        return response

    def _on_servo_pause(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        with self._lock:
            self.cell.set_servo_paused(bool(request.data))
        response.success, response.message = True, "servo paused" if request.data else "servo running"
        return response

    def _apply_parameters(self, new: SimArmParameters, changed: set[str]) -> None:
        """The live parameters (contract): read at the next ~/reset."""
        self.params = new

    # -- output ----------------------------------------------------------------------
    def _header(self, frame_id: str = "") -> Header:
        return Header(stamp=stamp_of(self.session.clock()), frame_id=frame_id)

    def _publish_state(self) -> None:
        header = self._header()
        if self._out["clock"] is not None:
            self._out["clock"].publish(ClockMsg(clock=header.stamp))
        joints = self.cell.joint_state()
        msg = JointState(header=header, name=list(joints.names), position=joints.positions.tolist(),
                         velocity=joints.velocities.tolist(), effort=joints.efforts.tolist())
        self._out["joints"].publish(msg)
        self._out["pose"].publish(PoseStamped(header=self._header(self.cell.base_frame),
                                              pose=pose_message(self.cell.ee_pose())))

    def _publish_cameras(self) -> None:
        """Render and publish the cameras (an observation: synchronous mode now waits for its answer).
        With a render process: hand it the scene as it looks now; the frames go out when they come back
        (:meth:`_collect_frames`), and a frame due while one is still rendering is skipped."""
        if self._renderer is not None:
            self._collect_frames()
            if self._renderer.busy:
                self.counters["frames_skipped"] += 1
                self._costs["skipped"] += 1
                return
            names = tuple(c.name for c in self.cell.config.cameras)
            tag = (self._header(self._camera.optical_frame), self.session.status().episode)
            self._renderer.submit(self.cell.look(), names, tag)
            return
        header = self._header(self._camera.optical_frame)
        started = time.perf_counter()
        frame = self.cell.render_view(self._camera.name, self.cell.inset_camera)
        self._costs["render_s"] += time.perf_counter() - started
        self._costs["frames"] += 1
        if self.sync and not self.paused and not self.session.done:
            # before publishing: answers may come at once
            self.gate.observation_published(time.monotonic(), header.stamp.sec * 1_000_000_000 + header.stamp.nanosec)
        self._send_frame(header, frame, lambda: self.cell.render(WRIST_CAMERA.name))

    def _collect_frames(self) -> None:
        """Publish the render process's frames if they are back (lock held): stamped with the sim time
        they show; dropped if the episode changed or time was paused meanwhile."""
        try:
            rendered = self._renderer.poll() if self._renderer is not None else None
        except RenderWorkerError as err:
            self.get_logger().error(f"render process failed ({err}): rendering in the sim's thread from now on")
            self._renderer.close()
            self._renderer = None
            return
        if rendered is None:
            return
        self._costs["render_s"] += rendered.render_s
        self._costs["frames"] += 1
        header, episode = rendered.tag
        if self.paused or self.session.status().episode != episode:
            return
        frames = dict(zip((c.name for c in self.cell.config.cameras), rendered.frames, strict=False))
        frame = frames[self._camera.name]
        if self.cell.inset_camera is not None:
            frame = with_inset(frame, frames[self.cell.inset_camera])
        wrist = frames.get(WRIST_CAMERA.name)
        self._send_frame(header, frame, None if wrist is None else lambda: wrist)

    def _send_frame(self, header: Header, frame: CameraFrame, wrist: Callable[[], CameraFrame] | None) -> None:
        """Publish one observation: image, depth and CameraInfo under ``header``, then the wrist image
        (``wrist`` renders or returns it; only asked for when the wrist camera is on) and the objects."""
        self._out["image"].publish(numpy_to_image(frame.rgb, "rgb8", header=header))
        if self._out["depth"] is not None:
            self._out["depth"].publish(numpy_to_image(frame.depth, "32FC1", header=header))
        self._camera_info.header = header
        self._out["info"].publish(self._camera_info)
        if self._out["wrist"] is not None and wrist is not None:
            view = wrist()
            self._out["wrist"].publish(numpy_to_image(view.rgb, "rgb8",
                                                      header=Header(stamp=header.stamp, frame_id=view.frame_id)))
        self._publish_objects()
        self.counters["frames"] += 1

    def _publish_objects(self) -> None:
        header = self._header(self.cell.base_frame)
        size = self.cell.config.scene.cube_size
        markers = MarkerArray()
        for color, pose in self.cell.cube_poses().items():
            marker = Marker(header=header, ns=color, id=0, type=Marker.CUBE, action=Marker.ADD,
                            pose=pose_message(pose), text=color)
            marker.scale.x = marker.scale.y = marker.scale.z = float(size)
            marker.color.r, marker.color.g, marker.color.b, marker.color.a = (float(c) for c in CUBE_COLORS[color])
            markers.markers.append(marker)
        self._out["objects"].publish(markers)

    def _make_camera_info(self, camera: str) -> CameraInfo:
        intrinsics = self.cell.camera_intrinsics(camera)
        info = CameraInfo()
        info.width, info.height = intrinsics.width, intrinsics.height
        info.distortion_model = "plumb_bob"
        info.d = [0.0] * 5
        info.k = intrinsics.k.reshape(-1).tolist()
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.p = intrinsics.p.reshape(-1).tolist()
        return info

    # -- real-time accounting ------------------------------------------------------------
    def _close_running_window(self) -> None:
        """Book the wall and sim time run since the window opened (lock held); time runs no more."""
        if self._running_since is not None:
            wall, sim = self._running_since
            self._costs["wall_s"] += time.monotonic() - wall
            self._costs["sim_s"] += max(0.0, self.cell.sim_time - sim)
            self._running_since = None

    def _take_realtime_report(self, period_s: float) -> dict[str, float]:
        """What time ran and what it cost since the last report (lock held); starts a new window."""
        running = self._running_since is not None
        self._close_running_window()
        if running:
            self._running_since = (time.monotonic(), self.cell.sim_time)
        c, p = self._costs, self.params
        report = {"render_ms": c["render_s"] / c["frames"] * 1e3 if c["frames"] else 0.0,
                  "physics_ms_per_sim_s": c["physics_s"] / c["sim_s"] * 1e3 if c["sim_s"] > 0 else 0.0,
                  "frames": float(c["frames"]), "frames_skipped": float(c["skipped"])}
        if self.sync:
            report["steps_per_wall_s"] = c["steps"] / period_s if period_s > 0 else 0.0
        elif c["wall_s"] >= 0.5:
            report["real_time_factor"] = c["sim_s"] / c["wall_s"]
            report["camera_hz"] = c["frames"] / c["sim_s"] if c["sim_s"] > 0 else 0.0
            # wall seconds of rendering one sim second at the configured rate asks for
            report["render_load"] = report["render_ms"] * 1e-3 * p.camera_rate_hz * p.realtime_factor
        self._costs = dict.fromkeys(c, 0.0)  # type: ignore[arg-type]
        return report

    def _behind(self, report: dict[str, float]) -> str:
        """Why realtime mode is not keeping up ('' when it is)."""
        p = self.params
        if "real_time_factor" not in report:
            return ""
        reasons = []
        if report["real_time_factor"] < REALTIME_WARN_FACTOR * p.realtime_factor:
            reasons.append(f"runs at {report['real_time_factor']:.2f}x real time (wanted {p.realtime_factor:g}x)")
        if report["camera_hz"] < REALTIME_WARN_FACTOR * p.camera_rate_hz:
            reasons.append(f"renders {report['camera_hz']:.1f} of {p.camera_rate_hz:g} camera frames per sim second")
        if not reasons:
            return ""
        return (f"cannot keep real time: {' and '.join(reasons)}; one {p.image_width}x{p.image_height} render costs "
                f"{report['render_ms']:.0f} ms (x {p.camera_rate_hz:g} Hz = {report['render_load']:.2f} s per "
                f"second), physics {report['physics_ms_per_sim_s']:.0f} ms per sim second. Lower camera_rate_hz, "
                "the image size or realtime_factor, or give the sim its own core")

    def _publish_diagnostics(self) -> None:
        if self._closed:
            return
        now = time.monotonic()
        with self._lock:
            status = self.session.status() if self.session.task is not None else None
            sim_time = self.session.clock()
            report = self._take_realtime_report(now - self._last_report_at)
            self._last_report_at = now
        self.realtime_report = report
        wall = now - self._wall_start
        diag = DiagnosticStatus(name=f"{self.get_name()}: simulated workcell", hardware_id="pybullet panda")
        behind = "" if self.sync else self._behind(report)
        if behind:
            self.get_logger().warning(behind, throttle_duration_sec=10.0)
        diag.level = DiagnosticStatus.WARN if behind else DiagnosticStatus.OK
        diag.message = f"{self.params.mode}" + (", paused" if self.paused else "") + (f", {behind}" if behind else "")
        values = {"mode": self.params.mode, "paused": self.paused, "clock_s": f"{sim_time:.3f}",
                  "sim_seconds_per_wall_second": f"{(sim_time - 1.0) / wall:.3f}" if wall > 0 else "0",
                  **{key: f"{value:.3f}" for key, value in report.items()},
                  **self.counters}
        if status is not None:
            values.update(episode=status.episode, seed=status.seed, instruction=status.instruction,
                          step=status.step, success=status.success, done=status.done)
        diag.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array = DiagnosticArray()
        array.header.stamp = stamp_of(sim_time)
        array.status = [diag]
        self._out["diagnostics"].publish(array)

    def close(self) -> None:
        """Stop stepping and release the physics client."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.gate.hold()
            self._step_timer.cancel()
            self._diagnostics_timer.cancel()
            if self._renderer is not None:
                self._renderer.close()
            self.cell.close()


NODE = SimArmNode


def main(args: list[str] | None = None) -> int:
    return run_node(SimArmNode, args)
