"""Parameters set at run time, through a real rclpy SetParameters client, on live nodes.

Every safety limit of servo_bridge_node is set on a streaming bridge and the next twists obey
it; structural parameters are refused as read-only; bad values are refused with a reason and
change nothing. The policy node takes its instruction the same way.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from rcl_interfaces.msg import SetParametersResult
from rcl_interfaces.srv import GetParameters, SetParameters, SetParametersAtomically
from rclpy.node import Node
from rclpy.parameter import Parameter

from magma_ros.contract import PolicyNodeParameters, ServoBridgeParameters, SyntheticCameraParameters
from magma_ros.ros.policy_node import PolicyNode
from magma_ros.ros.synthetic_camera_node import SyntheticCameraNode
from magma_ros.safety import non_braking_change, norm
from tests.ros.harness import RosGraph, wait_for
from tests.ros.test_servo_bridge import POSE, Rig, is_zero, stamp_ns

NAME = ServoBridgeParameters.NODE_NAME


def call(probe: Node, srv_type: Any, name: str, request: Any) -> Any:
    client = probe.create_client(srv_type, name)
    assert client.wait_for_service(timeout_sec=5.0)
    future = client.call_async(request)
    assert wait_for(future.done, 10.0)
    probe.destroy_client(client)
    return future.result()


def set_parameters(probe: Node, node_name: str, atomically: bool = False, **values: Any) -> list[SetParametersResult]:
    parameters = [Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
    if atomically:
        reply = call(probe, SetParametersAtomically, f"/{node_name}/set_parameters_atomically",
                     SetParametersAtomically.Request(parameters=parameters))
        return [reply.result]
    reply = call(probe, SetParameters, f"/{node_name}/set_parameters", SetParameters.Request(parameters=parameters))
    return list(reply.results)


def vectors(msg: Any) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    t = msg.twist
    return (t.linear.x, t.linear.y, t.linear.z), (t.angular.x, t.angular.y, t.angular.z)


class Streamer:
    """Publishes steps far over the caps (0.3, -0.3, 0.15 m; 2, -2, 1 rad over 0.1 s) every 50 ms."""

    def __init__(self, rig: Rig, period: float = 0.1, **kwargs: Any) -> None:
        self.rig, self.period, self.kwargs = rig, period, kwargs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.rig.send(0.3, dy=-0.3, dz=0.15, rot=(2.0, -2.0, 1.0), period=self.period, **self.kwargs)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def twists_after(rig: Rig, t_ns: int) -> list[Any]:
    return sorted((m for m in rig.twists.messages() if stamp_ns(m) > t_ns), key=stamp_ns)


def apply_and_watch(rig: Rig, seconds: float = 0.4, atomically: bool = False, **values: Any) -> list[Any]:
    """Set parameters (must succeed), then return the twists stamped after the reply for ``seconds``."""
    return watch(rig, seconds, atomically, **values)[1]


def watch(rig: Rig, seconds: float = 0.4, atomically: bool = False, **values: Any) -> tuple[int, list[Any]]:
    """(reply time in ns, the twists stamped after it during ``seconds``) for a change that must succeed."""
    results = set_parameters(rig.probe, NAME, atomically, **values)
    assert all(r.successful for r in results), [r.reason for r in results]
    after = time.time_ns()
    time.sleep(seconds)
    return after, twists_after(rig, after)


@pytest.fixture
def rig(graph: RosGraph) -> Rig:
    rig = Rig(graph)
    rig.wait_ready()
    return rig


def test_lower_speed_and_step_caps_bind_the_very_next_twists(rig: Rig) -> None:
    streamer = Streamer(rig)
    try:
        assert wait_for(lambda: any(norm(vectors(m)[0]) > 0.399 for m in rig.twists.messages()), 5.0)
        checks: list[tuple[dict[str, Any], Callable[[Any], float], float]] = [
            ({"max_linear_speed": 0.3}, lambda m: norm(vectors(m)[0]), 0.3),
            ({"max_angular_speed": 0.5}, lambda m: norm(vectors(m)[1]), 0.5),
            ({"max_linear_step_m": 0.02}, lambda m: norm(vectors(m)[0]), 0.02 / 0.1),
            ({"max_angular_step_rad": 0.03}, lambda m: norm(vectors(m)[1]), 0.03 / 0.1),
            ({"max_linear_axis_speeds": [0.0, 0.0, 0.05]}, lambda m: abs(vectors(m)[0][2]), 0.05),
            ({"max_angular_axis_speeds": [0.1, 0.0, 0.0]}, lambda m: abs(vectors(m)[1][0]), 0.1),
        ]
        for values, measure, cap in checks:
            after = apply_and_watch(rig, **values)
            moving = [m for m in after if not is_zero(m)]
            assert len(moving) >= 5, (values, len(after))
            assert max(measure(m) for m in after) <= cap + 1e-9, (values, [measure(m) for m in after])
            assert max(measure(m) for m in moving) >= 0.98 * cap, values  # the new cap is what binds
        # Caps scale the whole vector: the direction of the step (2, -2, 1) / 3 is kept.
        linear = vectors(moving[-1])[0]
        assert all(abs(v / norm(linear) - c / 3 * 2) < 1e-6 for v, c in zip(linear, (1.0, -1.0, 0.5), strict=True))
    finally:
        streamer.stop()


def test_a_lower_acceleration_limit_applies_to_the_ramp_in_flight(rig: Rig) -> None:
    streamer = Streamer(rig)
    try:
        assert wait_for(lambda: any(norm(vectors(m)[0]) > 0.05 for m in rig.twists.messages()), 5.0)
        after = apply_and_watch(rig, 0.5, max_linear_acceleration=0.2, max_angular_acceleration=0.5)
    finally:
        streamer.stop()
    worst_linear = worst_angular = 0.0
    for before, now in itertools.pairwise(after):
        dt = (stamp_ns(now) - stamp_ns(before)) * 1e-9
        linear = non_braking_change(vectors(before)[0], vectors(now)[0])
        angular = non_braking_change(vectors(before)[1], vectors(now)[1])
        assert linear <= 0.2 * dt + 1e-9 and angular <= 0.5 * dt + 1e-9, (linear / dt, angular / dt)
        worst_linear, worst_angular = max(worst_linear, linear / dt), max(worst_angular, angular / dt)
    assert worst_linear > 0.19 and worst_angular > 0.45  # still ramping, at the new limit


def test_box_age_period_and_watchdog_limits_apply_from_the_next_command(rig: Rig) -> None:
    x = POSE[0]
    streamer = Streamer(rig)
    try:
        assert wait_for(lambda: rig.moving() > 5, 5.0)
        # Box: the stream in flight stops at once (zeros); the next steps land inside the new box.
        before = time.time_ns()
        replied, after = watch(rig, workspace_max_xyz=[x + 0.02, 0.6, 0.9])
        assert any(is_zero(m) for m in twists_after(rig, before) if stamp_ns(m) <= replied)
        moving = [m for m in after if not is_zero(m)]
        assert moving and all(x + vectors(m)[0][0] * 0.1 <= x + 0.02 + 1e-9 for m in moving)
        # A box the arm is far outside of: every step refused, nothing moves.
        rejected = rig.node.rejected["outside_workspace"]
        after = apply_and_watch(rig, atomically=True, workspace_min_xyz=[x + 0.1, -0.6, 0.02],
                                workspace_max_xyz=[0.85, 0.6, 0.9])
        assert all(is_zero(m) for m in after) and rig.node.rejected["outside_workspace"] > rejected + 3
        apply_and_watch(rig, 0.0, atomically=True, workspace_min_xyz=[0.15, -0.6, 0.02],
                        workspace_max_xyz=[0.85, 0.6, 0.9])
        assert wait_for(lambda: rig.moving() > 0 and not is_zero(rig.twists.messages()[-1]), 3.0)
        for values, reason in [({"max_pose_age_s": 1e-6}, "stale_pose"),
                               ({"max_pose_age_s": 1.0, "min_step_period_s": 0.15}, "bad_step_period"),
                               ({"min_step_period_s": 0.02, "max_step_period_s": 0.08}, "bad_step_period")]:
            count = rig.node.rejected[reason]
            replied, after = watch(rig, atomically=True, **values)
            # The next step is refused, which stops the stream: nothing moves from then on.
            assert not [m for m in after if not is_zero(m) and stamp_ns(m) > replied + 0.1e9], values
            assert rig.node.rejected[reason] > count + 3, (values, rig.node.rejected)
            apply_and_watch(rig, 0.0, atomically=True, max_pose_age_s=1.0, min_step_period_s=0.02,
                            max_step_period_s=1.0)
            assert wait_for(lambda: not is_zero(rig.twists.messages()[-1]), 3.0), values
    finally:
        streamer.stop()
    # Delta age: steps inferred 0.1 s ago pass at 0.5 s, not at 0.05 s.
    count = rig.node.rejected["stale_delta"]
    assert set_parameters(rig.probe, NAME, max_delta_age_s=0.05)[0].successful
    rig.send(0.02, period=1.0, age=0.1)
    assert wait_for(lambda: rig.node.rejected["stale_delta"] == count + 1, 3.0)
    # Watchdog: 1 s in this rig; set to 0.1 s, a 1 s step stops 0.1 s after the delta was published.
    assert set_parameters(rig.probe, NAME, watchdog_timeout_s=0.1, max_delta_age_s=0.5)[0].successful
    time.sleep(0.2)
    published = time.time_ns()
    rig.send(0.02, period=1.0)
    assert wait_for(lambda: any(is_zero(m) for m in twists_after(rig, published)), 3.0)
    time.sleep(0.1)
    moving = [stamp_ns(m) for m in twists_after(rig, published) if not is_zero(m)]
    assert moving and max(moving) - published <= 0.1e9, (max(moving) - published) * 1e-9


def test_read_only_and_bad_values_are_refused_with_a_reason_and_change_nothing(rig: Rig) -> None:
    for name, value in [("twist_topic", "/elsewhere"), ("stream_rate_hz", 10.0), ("dry_run", True),
                        ("workspace_enabled", False), ("acceleration_limit_enabled", False), ("base_frame", "world")]:
        result = set_parameters(rig.probe, NAME, **{name: value})[0]
        assert not result.successful and "read-only" in result.reason and name in result.reason, result.reason
    for values, words in [({"max_linear_speed": -1.0}, "max_linear_speed"), ({"max_linear_speed": math.nan},
                                                                              "max_linear_speed"),
                          ({"watchdog_timeout_s": 0.0}, "watchdog_timeout_s"),
                          ({"max_linear_axis_speeds": [0.1, -0.1, 0.0]}, "max_linear_axis_speeds"),
                          ({"workspace_min_xyz": [0.9, -0.6, 0.02]}, "workspace_min_xyz"),
                          ({"max_linear_speed": "fast"}, "")]:
        result = set_parameters(rig.probe, NAME, **values)[0]
        assert not result.successful and words in result.reason, (values, result.reason)
    # Nothing changed: the node's values and the parameters it reports are the defaults.
    assert rig.node.params.max_linear_speed == 0.4 and rig.node.filter.limits.max_linear_speed == 0.4
    reply = call(rig.probe, GetParameters, f"/{NAME}/get_parameters",
                 GetParameters.Request(names=["max_linear_speed", "twist_topic"]))
    assert reply.values[0].double_value == 0.4 and reply.values[1].string_value == "/servo_node/delta_twist_cmds"
    rig.send(0.3, period=1.0)
    assert wait_for(lambda: rig.moving() > 3, 3.0)


def test_the_policy_node_takes_its_instruction_at_run_time(graph: RosGraph) -> None:
    node = graph.add(PolicyNode(context=graph.context, parameter_overrides=[
        Parameter("backend", value="none"), Parameter("autostart", value=True)]))
    probe = graph.node("probe")
    assert set_parameters(probe, PolicyNodeParameters.NODE_NAME, instruction="reach the blue cube")[0].successful
    assert node.instruction == "reach the blue cube"
    result = set_parameters(probe, PolicyNodeParameters.NODE_NAME, instruction="   ")[0]
    assert not result.successful and "must not be empty" in result.reason and node.instruction == "reach the blue cube"
    result = set_parameters(probe, PolicyNodeParameters.NODE_NAME, backend="torch")[0]
    assert not result.successful and "read-only" in result.reason


def test_a_node_without_live_parameters_refuses_every_change(graph: RosGraph) -> None:
    # Before: `ros2 param set` was accepted and silently ignored by every node but the sim.
    node = graph.add(SyntheticCameraNode(context=graph.context, parameter_overrides=[
        Parameter("width", value=64), Parameter("height", value=48)]))
    probe = graph.node("probe")
    result = set_parameters(probe, SyntheticCameraParameters.NODE_NAME, rate_hz=5.0)[0]
    assert not result.successful and "rate_hz is read-only" in result.reason
    assert set_parameters(probe, SyntheticCameraParameters.NODE_NAME, width=64)[0].successful  # unchanged value
    assert node.params.rate_hz == 30.0
