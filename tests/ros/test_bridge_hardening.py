"""servo_bridge_node in its own process against hostile input: it survives every message and keeps its limits.

One bridge process (defaults: caps 0.4 m/s and 0.8 rad/s on the vector norm, acceleration
1 m/s^2 and 3 rad/s^2, watchdog 0.2 s) gets, from a plain rclpy probe: steps far over the
caps, deltas with negative / zero / huge / malformed stamps, every numeric field NaN or
+-inf, wrong frames, an out-of-range gripper, poses with the same defects, a 1 kHz burst and
silence. At the end: the process is alive, every rejection was counted under its reason,
and every twist it sent (checked sample by sample, in the order it stamped them) kept the
caps, the acceleration limit, and stopped within the watchdog bound.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from magma_ros import contract
from magma_ros.contract import ServoBridgeParameters
from magma_ros.msg import EndEffectorDelta
from magma_ros.ros.runtime import qos
from magma_ros.ros.servo_bridge_node import MOVEIT_UNAVAILABLE
from magma_ros.safety import non_braking_change, norm
from tests.ros.harness import RosGraph, lifecycle_state, wait_for

NAME = ServoBridgeParameters.NODE_NAME
DEFAULTS = ServoBridgeParameters()
TICK = 1.0 / DEFAULTS.stream_rate_hz
POSE = (0.5, 0.0, 0.4)
DEEP = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE)
NUMERIC_FIELDS = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper", "step_period")
POSE_FIELDS = ("position.x", "position.y", "position.z", "orientation.x", "orientation.y", "orientation.z",
               "orientation.w")


def stamp_ns(msg: Any) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def vectors(msg: TwistStamped) -> tuple[tuple[float, ...], tuple[float, ...]]:
    t = msg.twist
    return (t.linear.x, t.linear.y, t.linear.z), (t.angular.x, t.angular.y, t.angular.z)


def is_zero(msg: TwistStamped) -> bool:
    linear, angular = vectors(msg)
    return not any(linear) and not any(angular)


class Probe:
    """Policy, robot state and observer in one rclpy node of the test's graph."""

    def __init__(self, graph: RosGraph) -> None:
        self.node = graph.node("hardening_probe")
        self.twists: list[tuple[int, TwistStamped]] = []  # (DDS receive time, msg)
        self.diagnostics: list[DiagnosticArray] = []
        self._lock = threading.Lock()
        self.node.create_subscription(TwistStamped, contract.SERVO_TWIST.name, self._on_twist, DEEP)
        self.node.create_subscription(DiagnosticArray, contract.DIAGNOSTICS.name, self._on_diagnostics,
                                      qos(contract.DIAGNOSTICS))
        self.deltas = self.node.create_publisher(EndEffectorDelta, contract.EE_DELTA.name, DEEP)
        self.poses = self.node.create_publisher(PoseStamped, contract.EE_POSE.name, qos("reliable"))
        self.good_poses = True
        self.node.create_timer(0.02, self._publish_pose)

    def _on_twist(self, msg: TwistStamped, info: Any) -> None:
        with self._lock:
            self.twists.append((info["received_timestamp"], msg))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        if msg.status and msg.status[0].name.startswith(NAME):
            with self._lock:
                self.diagnostics.append(msg)

    def _publish_pose(self) -> None:
        if self.good_poses:
            self.poses.publish(self.pose())

    def pose(self, **fields: Any) -> PoseStamped:
        msg = PoseStamped(header=Header(stamp=self.node.get_clock().now().to_msg(), frame_id="base_link"))
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = POSE
        msg.pose.orientation.w = 1.0
        for name, value in fields.items():
            if name in ("frame_id", "sec", "nanosec"):
                target = msg.header if name == "frame_id" else msg.header.stamp
                setattr(target, name, value)
            else:
                part, axis = name.split(".")
                setattr(getattr(msg.pose, part), axis, value)
        return msg

    def delta(self, dx: float = 0.3, *, period: float = 0.1, **fields: Any) -> EndEffectorDelta:
        """A step far over the caps (0.3 m on each axis over 0.1 s, 2 rad about each axis) unless changed."""
        msg = EndEffectorDelta()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = "base_link"
        msg.dx, msg.dy, msg.dz = dx, -dx, dx / 2
        msg.droll, msg.dpitch, msg.dyaw = 2.0, -2.0, 1.0
        msg.gripper, msg.step_period = 1.0, period
        for name, value in fields.items():
            if name in ("frame_id", "sec", "nanosec"):
                setattr(msg.header if name == "frame_id" else msg.header.stamp, name, value)
            else:
                setattr(msg, name, value)
        return msg

    def values(self) -> dict[str, str]:
        with self._lock:
            last = self.diagnostics[-1] if self.diagnostics else None
        return {kv.key: kv.value for kv in last.status[0].values} if last else {}

    def sent(self) -> list[TwistStamped]:
        with self._lock:
            return sorted((m for _, m in self.twists), key=stamp_ns)


def stream_good(probe: Probe, seconds: float, period: float = 0.1, every: float = 0.05) -> int:
    """Steps over the caps for ``seconds``: the stream ramps up to the caps and stays there."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        probe.deltas.publish(probe.delta(period=period))
        time.sleep(every)
    return stamp_ns(probe.delta())


def check_every_sample(twists: list[TwistStamped]) -> dict[str, float]:
    """Caps on every twist; the acceleration limit between every two consecutive ones (by stamp)."""
    lin_cap, ang_cap = DEFAULTS.max_linear_speed, DEFAULTS.max_angular_speed
    lin_acc, ang_acc = DEFAULTS.max_linear_acceleration, DEFAULTS.max_angular_acceleration
    worst = {"linear": 0.0, "angular": 0.0, "linear_acc": 0.0, "angular_acc": 0.0}
    previous: TwistStamped | None = None
    for msg in twists:
        linear, angular = vectors(msg)
        assert all(math.isfinite(v) for v in (*linear, *angular)), msg
        assert msg.header.frame_id == "base_link"
        assert norm(linear) <= lin_cap + 1e-9, (norm(linear), msg)
        assert norm(angular) <= ang_cap + 1e-9, (norm(angular), msg)
        worst["linear"], worst["angular"] = max(worst["linear"], norm(linear)), max(worst["angular"], norm(angular))
        if previous is not None:
            dt = (stamp_ns(msg) - stamp_ns(previous)) * 1e-9
            assert dt > 0, "twists are stamped in the order they are sent, each with its own stamp"
            before_linear, before_angular = vectors(previous)
            if is_zero(previous):  # from rest: at most one tick's worth, however long the pause was
                dt = min(dt, TICK)
            lin_change = non_braking_change(before_linear, linear)
            ang_change = non_braking_change(before_angular, angular)
            assert lin_change <= lin_acc * dt + 1e-9, (lin_change / dt, dt, previous, msg)
            assert ang_change <= ang_acc * dt + 1e-9, (ang_change / dt, dt, previous, msg)
            worst["linear_acc"] = max(worst["linear_acc"], lin_change / dt)
            worst["angular_acc"] = max(worst["angular_acc"], ang_change / dt)
        previous = msg
    return worst


def test_the_bridge_survives_every_malformed_input_and_keeps_its_limits(graph: RosGraph, spawn) -> None:
    proc = spawn("servo_bridge_node", "--ros-args", "-p", "autostart:=true", "-p", "diagnostics_period_s:=0.2")
    probe = Probe(graph)
    assert wait_for(lambda: probe.deltas.get_subscription_count() > 0 and len(probe.values()) > 0, 30.0), \
        proc.output()
    assert lifecycle_state(probe.node, NAME) == "active"
    time.sleep(0.3)  # poses arriving

    # 1. Steps far over the caps for 0.8 s: the stream ramps up (1 m/s^2) to exactly the caps.
    stream_good(probe, 0.8)
    assert wait_for(lambda: int(probe.values().get("commands", 0)) >= 10, 5.0), probe.values()

    # 2. Malformed deltas, each right after a good one (so each stops a live stream).
    bad: list[tuple[str, dict[str, Any]]] = [
        ("bad_stamp", {"sec": -1}), ("bad_stamp", {"sec": -2**31, "nanosec": 5}),
        ("bad_stamp", {"sec": 0, "nanosec": 0}),
        ("bad_stamp", {"nanosec": 1_500_000_000}), ("stale_delta", {"sec": 2**31 - 1}), ("stale_delta", {"sec": 1}),
        ("frame_mismatch", {"frame_id": "camera_link"}), ("frame_mismatch", {"frame_id": ""}),
        ("out_of_range", {"gripper": 3.0}), ("out_of_range", {"gripper": -1e300}),
        ("bad_step_period", {"step_period": 0.0}), ("bad_step_period", {"step_period": -0.1}),
        ("bad_step_period", {"step_period": 1e300}),
        *[("non_finite", {field: value}) for field in NUMERIC_FIELDS for value in (math.nan, math.inf, -math.inf)],
    ]
    for _, fields in bad:
        probe.deltas.publish(probe.delta())
        time.sleep(0.01)
        probe.deltas.publish(probe.delta(**fields))
        time.sleep(0.03)
    expected: dict[str, int] = {}
    for reason, _ in bad:
        expected[reason] = expected.get(reason, 0) + 1
    assert wait_for(lambda: all(int(probe.values().get(f"rejected_{r}", -1)) == n for r, n in expected.items()),
                    10.0), (expected, probe.values())

    # 3. Malformed poses (no deltas meanwhile): each counted, none stored.
    probe.good_poses = False
    time.sleep(0.05)
    bad_poses = [("bad_stamp", {"sec": -5}), ("bad_stamp", {"sec": 0, "nanosec": 0}),
                 ("bad_stamp", {"nanosec": 2_000_000_000}), ("frame_mismatch", {"frame_id": "world"}),
                 *[("non_finite", {field: value}) for field in POSE_FIELDS for value in (math.nan, math.inf)]]
    for _, fields in bad_poses:
        probe.poses.publish(probe.pose(**fields))
        time.sleep(0.01)
    pose_expected: dict[str, int] = {}
    for reason, _ in bad_poses:
        pose_expected[reason] = pose_expected.get(reason, 0) + 1
    assert wait_for(lambda: all(int(probe.values().get(f"pose_rejected_{r}", -1)) == n
                                for r, n in pose_expected.items()), 10.0), (pose_expected, probe.values())
    probe.poses.publish(probe.pose(sec=2**31 - 1))  # valid but from the far future: steps are refused
    time.sleep(0.05)
    stale = int(probe.values().get("rejected_stale_pose", 0))
    probe.deltas.publish(probe.delta())
    assert wait_for(lambda: int(probe.values().get("rejected_stale_pose", 0)) == stale + 1, 5.0), probe.values()
    probe.good_poses = True
    time.sleep(0.1)

    # 4. A 1 kHz burst of steps over the caps (0.3 s), then more normal streaming.
    commands = int(probe.values()["commands"])
    end = time.monotonic() + 0.3
    next_send = time.monotonic()
    while time.monotonic() < end:
        probe.deltas.publish(probe.delta(period=0.2))
        next_send += 0.001
        while time.monotonic() < next_send:
            pass
    assert wait_for(lambda: int(probe.values().get("burst", 0)) > 0, 5.0), probe.values()
    assert int(probe.values()["commands"]) > commands

    # 5. Silence: steps of 1 s, so only the watchdog can end them.
    stream_good(probe, 0.6, period=1.0)
    last_published = time.time_ns()
    probe.deltas.publish(probe.delta(period=1.0))
    assert wait_for(lambda: any(is_zero(m) and stamp_ns(m) > last_published for m in probe.sent()), 5.0)
    time.sleep(0.3)

    # Services answer, whatever the state.
    client = probe.node.create_client(Trigger, f"/{NAME}/go_home")
    assert client.wait_for_service(timeout_sec=5.0)
    future = client.call_async(Trigger.Request())
    assert wait_for(future.done, 5.0) and future.result().message == MOVEIT_UNAVAILABLE

    assert proc.alive(), proc.output()
    assert "Traceback" not in proc.output(), proc.output()
    twists = probe.sent()
    worst = check_every_sample(twists)
    print(f"{len(twists)} twists: max |v| {worst['linear']:.4f} m/s, max |w| {worst['angular']:.4f} rad/s, "
          f"max non-braking acceleration {worst['linear_acc']:.3f} m/s^2, {worst['angular_acc']:.3f} rad/s^2")
    # The caps were reached (the stream is not simply slow), and the ramp reached them at the limit.
    assert worst["linear"] > 0.99 * DEFAULTS.max_linear_speed and worst["angular"] > 0.99 * DEFAULTS.max_angular_speed
    assert worst["linear_acc"] > 0.9 * DEFAULTS.max_linear_acceleration
    # Direction kept: the capped twist points where the step did (1, -1, 0.5).
    fastest = max(twists, key=lambda m: norm(vectors(m)[0]))
    linear = vectors(fastest)[0]
    assert all(abs(v / norm(linear) - c / 1.5) < 1e-6 for v, c in zip(linear, (1.0, -1.0, 0.5), strict=True)), linear
    # Silence: the first zero after the last delta was sent within the watchdog bound (+ one tick).
    first_zero = min(stamp_ns(m) for m in twists if is_zero(m) and stamp_ns(m) > last_published)
    latency = (first_zero - last_published) * 1e-9
    bound = DEFAULTS.watchdog_timeout_s + TICK
    print(f"first zero {latency * 1e3:.1f} ms after the last delta (bound {bound * 1e3:.0f} ms)")
    assert latency <= bound, latency
    values = probe.values()
    sent = int(values["twists_sent"]) + int(values["zero_twists_sent"])
    assert wait_for(lambda: len(probe.twists) >= sent, 2.0)
    assert int(values["internal_errors"]) == 0 and proc.alive()
    assert proc.stop() == 0, proc.output()
