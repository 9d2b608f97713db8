"""servo_bridge_node: the safety layer between the policy's end-effector steps and MoveIt Servo.

A lifecycle node (:class:`magma_ros.ros.lifecycle_node.ManagedNode`): it comes up
unconfigured (or configures and activates itself with ``autostart``) and commands nothing
unless active. Each accepted EndEffectorDelta becomes a target twist in speed units
(delta / step_period); a stream thread re-stamps and sends it to Servo at ``stream_rate_hz``
for one step period, ramping towards it under the acceleration limit, then a few zero
twists, then silence (Servo halts when its input stops). The checks live in
:mod:`magma_ros.safety`; this file moves messages and validates them where they enter.

* Every input is checked where it enters: deltas (frame, stamp, every number), poses (frame,
  stamp, every number), parameter changes (the contract, then the safety core) and service
  calls. A bad one is counted by reason (diagnostics), logged at most every ``WARN_PERIOD_S``
  per reason, and never raises: a rejected delta stops the stream (zeros); the node goes on.
* A rejected delta, an e-stop, the watchdog or deactivation stop the stream at once (zeros).
  Deltas inferred from frames taken before the last activation are never acted on.
* The e-stop (std_msgs/Bool, true = stop) latches in every lifecycle state until
  ``~/reset_estop`` is called with the input released.
* ``dry_run``: diagnostics and ``~/filtered_twist`` are published, Servo and gripper are not.
* MoveIt extras are used only where importable: Servo's ``~/switch_command_type``
  (moveit_msgs), the GripperCommand action (control_msgs), TF for the EE pose (tf2_ros),
  ``~/go_home`` (moveit_py).
* Timing: callbacks run on a single-threaded executor (each is short, and rclpy's multi-threaded
  executor delayed deltas by 30-160 ms on an idle 2-core machine: see ``runtime.make_executor``);
  ``~/go_home``, which blocks while MoveIt moves the arm, is served by a hidden companion node on
  its own thread. The stream and the watchdog run on their own thread, on the steady clock, so a
  busy executor (callbacks, parameter and lifecycle services) cannot delay a zero twist; a stop
  wakes the thread at once. Where the OS allows, that thread runs SCHED_FIFO
  (``stream_thread_priority``), so CPU-bound neighbours delay it less. It still needs the
  GIL, so the executable also raises its own CPU share (nice -5, where permitted: the threads
  that hold the GIL are not left waiting behind other processes) and hands the GIL over every
  1 ms. The watchdog counts from the delta's DDS
  publication time where rclpy provides it (Iron+), else from its acceptance. Stamps and
  ages use the node clock.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
import threading
import time
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.duration import Duration
from rclpy.executors import Executor
from rclpy.node import Node
from rclpy.subscription import Subscription
from rclpy.time import Time
from std_msgs.msg import Bool
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from magma_ros import contract
from magma_ros.codecs import GripperHysteresis
from magma_ros.contract import ContractError, ServoBridgeParameters
from magma_ros.conventions import GripperJoints
from magma_ros.ros.lifecycle_node import ManagedNode, SetupError, ThrottledLog
from magma_ros.ros.runtime import make_executor, message_type, qos, run_node
from magma_ros.safety import (
    ZERO,
    AccelerationLimit,
    Adjustment,
    CommandStream,
    Delta,
    EStopAssertedError,
    EStopLatch,
    Pose,
    Rejection,
    RejectReason,
    SafetyConfigError,
    SafetyFilter,
    SafetyLimits,
    StreamEnd,
    Velocity,
    Watchdog,
    WorkspaceBox,
)
from magma_ros.stamps import StampError, split_ns, stamp_to_ns

WARN_PERIOD_S = 2.0
MOVEIT_UNAVAILABLE = "MoveIt (moveit_py) is not available"
PROCESS_NICE = -5
"""The bridge executable's nice value where permitted (its threads hold the GIL the stream thread needs)."""
GIL_SWITCH_INTERVAL_S = 0.001
"""The bridge process hands the GIL over every 1 ms (Python's default: 5 ms) so the stream thread
waits less behind callbacks; set in main() only, never when the node is built inside another program."""


def _optional(module: str) -> Any:
    """The module, or None where it is not installed (MoveIt and friends are optional)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def _axis_caps(values: list[float]) -> tuple[float, float, float]:
    return tuple(v if v > 0 else math.inf for v in values)  # type: ignore[return-value]


def safety_limits(p: ServoBridgeParameters) -> SafetyLimits:
    """The core's limits from the node parameters (a step never shorter than one stream tick)."""
    box = WorkspaceBox(tuple(p.workspace_min_xyz), tuple(p.workspace_max_xyz))  # type: ignore[arg-type]
    return SafetyLimits(
        max_linear_step=p.max_linear_step_m, max_angular_step=p.max_angular_step_rad,
        max_linear_speed=p.max_linear_speed, max_angular_speed=p.max_angular_speed,
        linear_axis_speeds=_axis_caps(p.max_linear_axis_speeds), angular_axis_speeds=_axis_caps(
            p.max_angular_axis_speeds), clamp_enabled=p.clamp_enabled,
        max_linear_acceleration=p.max_linear_acceleration, max_angular_acceleration=p.max_angular_acceleration,
        acceleration_limit_enabled=p.acceleration_limit_enabled, workspace=box if p.workspace_enabled else None,
        max_pose_age_s=p.max_pose_age_s, max_delta_age_s=p.max_delta_age_s,
        min_step_period_s=max(p.min_step_period_s, 1.0 / p.stream_rate_hz), max_step_period_s=p.max_step_period_s,
        step_overrun_s=0.0 if p.synchronous_stream else p.step_overrun_s)  # a synchronous answer is one twist


def acceleration_limit(limits: SafetyLimits) -> AccelerationLimit | None:
    if not limits.acceleration_limit_enabled:
        return None
    return AccelerationLimit(limits.max_linear_acceleration, limits.max_angular_acceleration)


class ServoBridgeNode(ManagedNode[ServoBridgeParameters]):
    PARAMETERS = ServoBridgeParameters

    # -- always on -----------------------------------------------------------------
    def initialize(self) -> None:
        p = self.params
        try:
            self.filter = SafetyFilter(safety_limits(p))
        except SafetyConfigError as err:
            self.get_logger().error(f"invalid parameters: {err}")
            raise ContractError(str(err)) from err
        self._lock = threading.RLock()
        self._homing = False
        self.watchdog = Watchdog(p.watchdog_timeout_s) if p.watchdog_enabled else None
        self.stream = CommandStream(1.0 / p.stream_rate_hz, p.zero_messages, self.watchdog,
                                    acceleration=acceleration_limit(self.filter.limits),
                                    overrun_s=self.filter.limits.step_overrun_s)
        self.estop = EStopLatch()
        self.gripper = GripperHysteresis(p.gripper_open_threshold, p.gripper_close_threshold)
        self._gripper_sent: float | None = None
        self._activated_at_ns: int | None = None
        self._epoch_ns = self.get_clock().now().nanoseconds
        self._pose: tuple[tuple[float, float, float], int] | None = None  # (position, stamp ns), validated
        self._tf_buffer: Any = None
        self._moveit: Any = None
        self._pause_client: Any = None
        self._servo_command_client: Any = None
        self._gripper_action: Any = None
        self._gripper_goal_type: Any = None
        self._twist_pub: Any = None
        self._wake = threading.Event()
        self._warn = ThrottledLog(self.get_logger(), WARN_PERIOD_S)
        self.counters = dict.fromkeys(("received", "inactive", "ignored_homing", "commands", "twists_sent",
                                       "zero_twists_sent", "gripper_commands", "workspace_breach_stops", "burst",
                                       "acceleration_limited", "internal_errors", "late_ticks",
                                       *(a.value for a in Adjustment)), 0)
        self.rejected = {r.value: 0 for r in RejectReason}
        self.pose_rejected = {r.value: 0 for r in (RejectReason.FRAME_MISMATCH, RejectReason.BAD_STAMP,
                                                     RejectReason.NON_FINITE)}
        self.timing = {"tick_late_max_ms": 0.0, "publish_max_ms": 0.0, "realtime": 0.0}
        self._last_accepted: float | None = None
        # In every lifecycle state: the e-stop latch, its reset, and go_home's answer.
        self._estop_sub = self.create_subscription(Bool, p.estop_topic, self._on_estop, qos(contract.ESTOP))
        self._reset_srv = self.create_service(Trigger, contract.RESET_ESTOP_SERVICE, self._on_reset_estop)
        self._home_node, self._home_executor = self._start_home_service()

    # -- lifecycle -------------------------------------------------------------------
    def setup(self) -> None:
        p = self.params
        if not p.ee_pose_topic and p.workspace_enabled:
            tf2_ros = _optional("tf2_ros")
            if tf2_ros is None:
                raise SetupError("the workspace check needs ee_pose_topic: tf2_ros is not available")
            self._tf_buffer = tf2_ros.Buffer()
            listener = tf2_ros.TransformListener(self._tf_buffer, self)
            self.own("TF listener", listener.unregister)
        self._twist_pub = self.own_publisher(TwistStamped, p.twist_topic, qos(contract.SERVO_TWIST))
        self._filtered_pub = self.own_publisher(TwistStamped, contract.FILTERED_TWIST_TOPIC, qos("reliable"))
        self._gripper_pub = self.own_publisher(JointTrajectory, p.gripper_topic, qos(contract.GRIPPER_TRAJECTORY))
        self._diagnostics_pub = self.own_publisher(DiagnosticArray, contract.DIAGNOSTICS.name,
                                                   qos(contract.DIAGNOSTICS), lifecycle=False)
        with_info = p.watchdog_from_publish_time and hasattr(Subscription, "CallbackType")  # Iron+: MessageInfo
        self.own_subscription(message_type(contract.EE_DELTA), p.ee_delta_topic,
                              self._on_delta_with_info if with_info else self._on_delta, qos(contract.EE_DELTA))
        if p.ee_pose_topic:  # best effort matches both reliable and best-effort pose publishers
            self.own_subscription(PoseStamped, p.ee_pose_topic, self._on_pose, qos("sensor_data"))
        if p.servo_node:
            self._pause_client = self.own_client(SetBool, f"{p.servo_node}/{contract.SERVO_PAUSE_SERVICE}")
            moveit_srv = _optional("moveit_msgs.srv")
            if moveit_srv is not None:
                self._servo_command_client = self.own_client(moveit_srv.ServoCommandType,
                                                             f"{p.servo_node}/switch_command_type")
        control_action = _optional("control_msgs.action") if p.gripper_action and p.gripper_enabled else None
        if control_action is not None:
            from rclpy.action import ActionClient

            self._gripper_action = ActionClient(self, control_action.GripperCommand, p.gripper_action)
            self._gripper_goal_type = control_action.GripperCommand.Goal
            self.own("gripper action client", self._gripper_action.destroy)
        self.own_timer(p.diagnostics_period_s, self._guard(self._publish_diagnostics))
        self._start_stream_thread()
        self.get_logger().info(f"configured: {p.ee_delta_topic} -> {p.twist_topic}"
                               f"{' (dry run)' if p.dry_run else ''}")

    def teardown(self) -> None:
        with self._lock:
            self.stream.silence(self._sample_time(self.get_clock().now().nanoseconds))
        self._pause_client = self._servo_command_client = self._tf_buffer = self._pose = None
        self._gripper_action = self._twist_pub = None

    def activate(self) -> None:
        with self._lock:
            self.stream.silence(self._sample_time(self.get_clock().now().nanoseconds))
            if self.watchdog is not None:
                self.watchdog.reset()
            self._gripper_sent = None
            self._last_accepted = None
            self._activated_at_ns = self.get_clock().now().nanoseconds
        if not self.estop.engaged:
            self._prepare_servo()
        self.get_logger().info("active: streaming accepted steps to Servo"
                               if not self.params.dry_run else "active (dry run): Servo is never commanded")

    def safety_action(self) -> None:
        with self._lock:
            self._halt()

    def apply_parameters(self, new: ServoBridgeParameters, changed: set[str]) -> None:
        """Live limits: from the next delta; at once on the stream in flight where that is safer."""
        try:
            limits = safety_limits(new)
            acceleration = acceleration_limit(limits)
        except SafetyConfigError as err:
            raise ContractError(str(err)) from err
        with self._lock:
            box_changed = limits.workspace != self.filter.limits.workspace
            self.filter = SafetyFilter(limits)
            self.stream.set_acceleration(acceleration)
            self.stream.set_overrun(limits.step_overrun_s)
            if self.watchdog is not None:
                self.watchdog.set_timeout(new.watchdog_timeout_s)
            self.stream.restrict(limits.cap)  # lower caps bind the very next sample
            if box_changed and self.stream.active:
                self.stream.stop(StreamEnd.STOPPED)  # the target was checked against the old box
                self._wake.set()
        self.get_logger().info("limits changed at run time: " + ", ".join(
            f"{name}={getattr(new, name)}" for name in sorted(changed)))

    def close(self) -> None:
        """Stop the arm (zeros, if anything was streaming) and release everything."""
        try:
            super().close()
        except Exception as err:  # the context may already be shut down (Ctrl-C); Servo halts on silence
            self.get_logger().warning(f"could not close cleanly: {err!r}")
        if getattr(self, "_home_executor", None) is not None:
            home_node, home_executor, self._home_node, self._home_executor = (self._home_node, self._home_executor,
                                                                               None, None)
            with contextlib.suppress(Exception):
                home_executor.shutdown(timeout_sec=1.0)
            with contextlib.suppress(Exception):
                home_node.destroy_node()

    def _start_home_service(self) -> tuple[Node, Executor]:
        """``~/go_home`` on a hidden companion node with its own executor thread: planning and executing
        a move takes seconds, which must not hold up the bridge's own (single-threaded) executor, where
        e-stops, poses, parameters and lifecycle requests are handled."""
        home = rclpy.create_node(f"_{self.get_name()}_home", namespace=self.get_namespace(), context=self.context)
        home.create_service(Trigger, f"{self.get_fully_qualified_name()}/{contract.GO_HOME_SERVICE[2:]}",
                            self._on_go_home)
        executor = make_executor(1, self.context)
        executor.add_node(home)

        def spin() -> None:
            with contextlib.suppress(Exception):  # ends with the executor's shutdown or the context's
                executor.spin()

        threading.Thread(target=spin, name="servo-bridge-home", daemon=True).start()
        return home, executor

    # -- the stream thread -----------------------------------------------------------
    def _start_stream_thread(self) -> None:
        stop = threading.Event()
        thread = threading.Thread(target=self._run_stream, args=(stop,), name="servo-bridge-stream", daemon=True)

        def release() -> None:
            stop.set()
            self._wake.set()
            thread.join(timeout=5.0)

        thread.start()
        self.own("stream thread", release)

    def _run_stream(self, stop: threading.Event) -> None:
        """Tick at the stream rate on the steady clock; a stop (``_wake``) is sent at once."""
        self._raise_priority()
        period = self.stream.tick_period_s
        next_tick = time.monotonic()
        while not stop.is_set():
            woken = self._wake.wait(timeout=max(0.0, next_tick - time.monotonic()))
            if stop.is_set():
                return
            if woken:
                self._wake.clear()
            now = time.monotonic()
            if now >= next_tick:
                if self._active and self.stream.active:  # lateness that matters: while streaming
                    self.timing["tick_late_max_ms"] = max(self.timing["tick_late_max_ms"], (now - next_tick) * 1e3)
                next_tick += period
                if next_tick <= now:  # more than a tick behind: skip, never send a burst to catch up
                    self.counters["late_ticks"] += 1
                    next_tick = now + period
            try:
                self._on_tick()
            except Exception as err:  # the stream must outlive anything one tick does
                self.counters["internal_errors"] += 1
                self._warn.warning("tick", f"stream tick failed: {err!r}")

    def _raise_priority(self) -> None:
        """Real-time scheduling for this thread only (Linux), where the OS allows it."""
        priority = self.params.stream_thread_priority
        self.timing["realtime"] = 0.0
        if priority <= 0 or not hasattr(os, "sched_setscheduler"):
            return
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))  # 0: the calling thread
        except (OSError, ValueError) as err:
            self.get_logger().info(f"stream thread keeps normal scheduling (SCHED_FIFO {priority}: {err}); "
                                   "grant CAP_SYS_NICE or an rtprio limit for tighter watchdog timing")
            return
        self.timing["realtime"] = float(priority)

    def _on_tick(self) -> None:
        with self._lock:
            if not self._active:
                return
            velocity = self.stream.velocity
            box = self.filter.limits.workspace
            if box is not None and not velocity.is_zero():
                pose = self._current_pose(self.get_clock().now().nanoseconds)
                if pose is not None and box.heading_out(pose.position, velocity.linear):
                    self.counters["workspace_breach_stops"] += 1
                    self._warn.warning("breach", f"EE at {pose.position} is outside the workspace: stream stopped")
                    self.stream.stop(StreamEnd.STOPPED)
            self._send_tick()

    def _send_tick(self) -> None:
        """One stream sample (lock held): stamped now; its stamp is also the acceleration limit's time
        (except under simulated time, which may stand still: then the steady clock)."""
        now_ns = self.get_clock().now().nanoseconds
        before = self.stream.limited_samples
        velocity = self.stream.next_message(self._sample_time(now_ns))
        self.counters["acceleration_limited"] += self.stream.limited_samples - before
        if velocity is not None:
            self._publish_twist(velocity, now_ns)

    def _sample_time(self, stamp_ns: int) -> float | None:
        """A sample's time for the acceleration limit: its stamp, or None (the steady clock) under simulated
        time, which may stand still. Every time handed to the stream comes from here (one time base)."""
        if getattr(self.get_clock(), "ros_time_is_active", False):
            return None
        return (stamp_ns - self._epoch_ns) * 1e-9  # relative: full ns precision in a float

    def _publish_twist(self, velocity: Velocity, stamp_ns: int | None = None) -> None:
        if self.params.dry_run or self._twist_pub is None:
            return
        started = time.monotonic()
        stamp_ns = self.get_clock().now().nanoseconds if stamp_ns is None else stamp_ns
        self._twist_pub.publish(self._twist(velocity, stamp_ns))
        self.timing["publish_max_ms"] = max(self.timing["publish_max_ms"], (time.monotonic() - started) * 1e3)
        self.counters["zero_twists_sent" if velocity.is_zero() else "twists_sent"] += 1

    def _halt(self) -> None:
        """Stop now (lock held): if anything was streaming, send all the zero twists at once."""
        last_ns = None
        if self.stream.active or not self.stream.sent.is_zero():
            self.stream.stop(StreamEnd.STOPPED)
            for _ in range(self.params.zero_messages):
                last_ns = self.get_clock().now().nanoseconds
                self._publish_twist(ZERO, last_ns)
        self.stream.silence(self._sample_time(self.get_clock().now().nanoseconds if last_ns is None else last_ns))

    def _twist(self, velocity: Velocity, stamp_ns: int) -> TwistStamped:
        msg = TwistStamped()
        msg.header.stamp.sec, msg.header.stamp.nanosec = split_ns(stamp_ns)
        msg.header.frame_id = self.params.base_frame
        msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(v) for v in velocity.linear)
        msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = (float(v) for v in velocity.angular)
        return msg

    # -- inputs ----------------------------------------------------------------------
    def _guard(self, callback: Any) -> Any:
        """A callback that never raises into the executor (which would end the node)."""
        def guarded(*args: Any) -> Any:
            try:
                return callback(*args)
            except Exception as err:
                self.counters["internal_errors"] += 1
                self._warn.warning(f"internal {callback.__name__}", f"{callback.__name__} failed: {err!r}")
                return None
        return guarded

    def _on_delta_with_info(self, msg: Any, info: Any) -> None:
        """The watchdog counts from the delta's publication, so queueing here cannot extend motion."""
        source_ns = info.get("source_timestamp") if hasattr(info, "get") else None
        age = (time.time_ns() - source_ns) * 1e-9 if isinstance(source_ns, int) and source_ns > 0 else 0.0
        if age > self.params.watchdog_timeout_s:
            self._warn.warning("late_delta", f"delta published {age:.3f} s ago, more than the watchdog timeout: "
                                             "not streamed (slow transport or unsynchronized clocks?)")
        self._on_delta(msg, age)

    def _on_delta(self, msg: Any, publish_age_s: float = 0.0) -> None:
        with self._lock:  # (re-entrant) with synchronous_stream the whole answer goes out before any tick
            try:
                self._handle_delta(msg, publish_age_s)
            except Exception as err:  # a message must never end the node: count it, stop, go on
                self._reject(Rejection(RejectReason.INTERNAL_ERROR, f"unexpected {err!r}"))
            if self.params.synchronous_stream and self._active and not self._homing:
                self._answer_synchronously()

    def _answer_synchronously(self) -> None:
        """synchronous_stream (a synchronous simulator, see magma_ros.sim.lockstep): answer this delta
        at once with the step's twist, stamped now (zero when nothing was accepted), and end the
        stream there: no re-sends, no trailing zeros (the simulator holds the twist for the whole
        step; the next answer replaces it, none lets it go stale). Not ramped. Lock held."""
        self._publish_twist(self.stream.velocity)
        self.stream.silence()

    def _handle_delta(self, msg: Any, publish_age_s: float) -> None:
        self.counters["received"] += 1
        if not self._active or self._homing:
            self.counters["inactive" if not self._active else "ignored_homing"] += 1
            return
        p = self.params
        with self._lock:
            if self.estop.engaged:
                self._reject(Rejection(RejectReason.ESTOP, "e-stop engaged: call ~/reset_estop"))
                return
            if msg.header.frame_id != p.base_frame:
                self._reject(Rejection(RejectReason.FRAME_MISMATCH, f"delta in frame {msg.header.frame_id!r}, "
                                                                    f"expected {p.base_frame!r}"))
                return
            now_ns = self.get_clock().now().nanoseconds
            try:
                stamp_ns = stamp_to_ns(msg.header.stamp)
            except StampError as err:
                self._reject(Rejection(RejectReason.BAD_STAMP, f"delta {err}"))
                return
            if self._activated_at_ns is not None and stamp_ns < self._activated_at_ns <= now_ns:
                self._reject(Rejection(RejectReason.STALE_DELTA, "inferred from a frame taken before activation"))
                return
            delta = Delta((msg.dx, msg.dy, msg.dz), (msg.droll, msg.dpitch, msg.dyaw), msg.gripper,
                          msg.step_period, (now_ns - stamp_ns) * 1e-9)
            result = self.filter.check(delta, self._current_pose(now_ns), self.stream.speed_bound)
            if isinstance(result, Rejection):
                self._reject(result)
                return
            accepted, burst_interval = time.monotonic(), self.filter.limits.min_step_period_s
            if self._last_accepted is not None and accepted - self._last_accepted < burst_interval:
                self.counters["burst"] += 1  # harmless (acceleration is limited per second), but a sign of trouble
                self._warn.warning("burst", f"deltas arrive faster than one per min_step_period_s "
                                            f"({self.filter.limits.min_step_period_s} s); the newest wins")
            self._last_accepted = accepted
            self.counters["commands"] += 1
            for adjustment in result.adjustments:
                self.counters[adjustment.value] += 1
            self.stream.start(result, publish_age_s)
            if self.stream.velocity.is_zero():
                self._wake.set()  # a zero step stops the stream: zeros now
            self._filtered_pub.publish(self._twist(result.velocity, stamp_ns))
            self._update_gripper(msg.gripper)

    def _on_pose(self, msg: PoseStamped) -> None:
        try:
            reason, detail = self._check_pose(msg)
        except Exception as err:
            reason, detail = RejectReason.NON_FINITE, f"unreadable pose: {err!r}"
        if reason is not None:
            self.pose_rejected[reason.value] += 1
            self._warn.warning(f"pose {reason.value}", f"EE pose ignored ({reason.value}): {detail}")

    def _check_pose(self, msg: PoseStamped) -> tuple[RejectReason | None, str]:
        if msg.header.frame_id != self.params.base_frame:
            return RejectReason.FRAME_MISMATCH, f"frame {msg.header.frame_id!r}, expected {self.params.base_frame!r}"
        try:
            stamp_ns = stamp_to_ns(msg.header.stamp)
        except StampError as err:
            return RejectReason.BAD_STAMP, str(err)
        q, o = msg.pose.position, msg.pose.orientation
        numbers = (q.x, q.y, q.z, o.x, o.y, o.z, o.w)
        if not all(math.isfinite(v) for v in numbers):
            return RejectReason.NON_FINITE, f"non-finite pose {numbers}"
        self._pose = ((q.x, q.y, q.z), stamp_ns)
        return None, ""

    def _on_estop(self, msg: Bool) -> None:
        try:
            with self._lock:
                if not self.estop.update(bool(msg.data)):
                    return
                self.get_logger().error("E-STOP engaged: streaming stopped until ~/reset_estop")
                self.stream.stop(StreamEnd.STOPPED)
                self._wake.set()
            self._call_pause(True)
        except Exception as err:  # the latch is set before anything here can fail
            self.counters["internal_errors"] += 1
            self._warn.warning("estop", f"e-stop handling failed after latching: {err!r}")

    def _on_reset_estop(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            with self._lock:
                try:
                    self.estop.reset()
                except EStopAssertedError as err:
                    response.success, response.message = False, str(err)
                    return response
                self._gripper_sent = None
            self.get_logger().info("e-stop reset")
            if self._active:
                self._prepare_servo()
            response.success, response.message = True, "e-stop reset"
        except Exception as err:
            response.success, response.message = False, f"reset failed: {err!r}"
        return response

    def _update_gripper(self, opening: float) -> None:
        p = self.params
        if not p.gripper_enabled:
            return
        undecided = p.gripper_close_threshold < opening < p.gripper_open_threshold
        if self._gripper_sent is None and undecided:
            return  # after activation or a reset, wait for a clear open/close before commanding
        state = self.gripper.update(opening)
        if state == self._gripper_sent:
            return
        self._gripper_sent = state
        if p.dry_run:
            return
        position = GripperJoints(p.gripper_open_position, p.gripper_closed_position).position(state)
        msg = JointTrajectory()
        msg.joint_names = list(p.gripper_joint_names)
        point = JointTrajectoryPoint()
        point.positions = [float(position)] * len(msg.joint_names)
        point.time_from_start = Duration(seconds=p.gripper_motion_time_s).to_msg()
        msg.points = [point]
        self._gripper_pub.publish(msg)
        self.counters["gripper_commands"] += 1
        if self._gripper_action is not None and self._gripper_action.server_is_ready():
            goal = self._gripper_goal_type()
            goal.command.position = float(position)
            goal.command.max_effort = float(p.gripper_max_effort)
            self._gripper_action.send_goal_async(goal)

    def _reject(self, rejection: Rejection) -> None:
        """Count it, say why (rate-limited per reason), stop the stream: zeros go out now."""
        self.rejected[rejection.reason.value] += 1
        self._warn.warning(rejection.reason.value, f"delta rejected ({rejection.reason.value}): {rejection.detail}")
        self.stream.stop(StreamEnd.STOPPED)
        self._wake.set()

    # -- MoveIt Servo services (only where they exist) -------------------------------
    def _prepare_servo(self) -> None:
        """Switch Servo to twist commands and unpause it, where those services exist."""
        if self.params.dry_run:
            return
        client = self._servo_command_client
        if client is not None and client.service_is_ready():
            request = client.srv_type.Request()
            request.command_type = getattr(request, "TWIST", 1)
            client.call_async(request)
        self._call_pause(False)

    def _call_pause(self, pause: bool) -> None:
        client = self._pause_client
        if self.params.dry_run or client is None or not client.service_is_ready():
            return
        client.call_async(SetBool.Request(data=pause))

    # -- go home (MoveItPy only) -----------------------------------------------------
    def _on_go_home(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            success, message = self._go_home()
        except Exception as err:
            success, message = False, f"go_home failed: {err!r}"
        response.success, response.message = success, message
        return response

    def _go_home(self) -> tuple[bool, str]:
        planning = _optional("moveit.planning")
        if planning is None:
            return False, MOVEIT_UNAVAILABLE
        p = self.params
        if self.estop.engaged:
            return False, "e-stop engaged: call ~/reset_estop first"
        if p.dry_run:
            return False, "dry_run: the arm is never commanded"
        if not self._active:
            return False, "the bridge is not active"
        with self._lock:
            self._homing = True
            self._halt()
        try:
            if self._moveit is None:
                self._moveit = planning.MoveItPy(node_name=f"{self.get_name()}_moveit")
            component = self._moveit.get_planning_component(p.planning_group)
            component.set_start_state_to_current_state()
            component.set_goal_state(configuration_name=p.home_configuration)
            plan = component.plan()
            if not plan:
                return False, f"no plan to {p.home_configuration!r} for group {p.planning_group!r}"
            self._moveit.execute(plan.trajectory, controllers=[])
            return True, f"moved to {p.home_configuration!r}"
        except Exception as err:  # MoveIt reports failures as exceptions of its own types
            return False, f"go_home failed: {err}"
        finally:
            self._homing = False

    # -- helpers ---------------------------------------------------------------------
    def _current_pose(self, now_ns: int) -> Pose | None:
        if self._tf_buffer is not None:
            try:
                transform = self._tf_buffer.lookup_transform(self.params.base_frame, self.params.ee_frame, Time())
                stamp_ns = stamp_to_ns(transform.header.stamp)
            except Exception:  # tf2 lookup/extrapolation/connectivity errors, bad stamps: no pose known
                return None
            t = transform.transform.translation
            return Pose((t.x, t.y, t.z), (now_ns - stamp_ns) * 1e-9)
        known = self._pose
        if known is None:
            return None
        position, stamp_ns = known
        return Pose(position, (now_ns - stamp_ns) * 1e-9)

    def _publish_diagnostics(self) -> None:
        p = self.params
        status = DiagnosticStatus()
        status.name = f"{self.get_name()}: servo bridge"
        status.hardware_id = p.twist_topic
        if self.estop.engaged:
            status.level, status.message = DiagnosticStatus.ERROR, "e-stop engaged"
        elif not self._active:
            status.level, status.message = DiagnosticStatus.WARN, "inactive"
        else:
            status.level = DiagnosticStatus.WARN if p.dry_run else DiagnosticStatus.OK
            status.message = "active" + (" (dry run)" if p.dry_run else "")
        values = {**self.counters,
                  **{f"rejected_{reason}": count for reason, count in self.rejected.items()},
                  "rejected": sum(self.rejected.values()),
                  **{f"pose_rejected_{reason}": count for reason, count in self.pose_rejected.items()},
                  "watchdog_trips": self.stream.ends[StreamEnd.WATCHDOG],
                  **{key: f"{value:.2f}" for key, value in self.timing.items() if key != "realtime"},
                  "stream_thread_priority": int(self.timing["realtime"]),
                  "estop_engaged": self.estop.engaged, "estop_asserted": self.estop.asserted,
                  "estop_trips": self.estop.trips, "streaming": not self.stream.velocity.is_zero(),
                  "dry_run": p.dry_run}
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        self._diagnostics_pub.publish(array)


NODE = ServoBridgeNode


def main(args: list[str] | None = None) -> int:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    with contextlib.suppress(OSError, AttributeError):  # where not permitted: the normal share
        os.setpriority(os.PRIO_PROCESS, 0, PROCESS_NICE)  # inherited by every thread started after this
    return run_node(ServoBridgeNode, args)
