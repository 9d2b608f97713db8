"""magma_ros.conventions: the conversions training labels and the Servo bridge share."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from magma_ros import conventions as cv
from magma_ros.safety import Delta, SafetyFilter, SafetyLimits


def random_path(n: int, seed: int, scale: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = np.cumsum(rng.normal(scale=0.01, size=(n, 3)), axis=0)
    q = [cv.quat_from_rpy(rng.uniform(-np.pi, np.pi, 3))]
    for r in rng.normal(scale=scale, size=(n - 1, 3)):
        q.append(cv.quat_multiply(cv.quat_from_rotvec(r), q[-1]))
    return p, np.stack(q)


@pytest.mark.parametrize("convention", cv.ROTATION_CONVENTIONS)
@pytest.mark.parametrize("scale", [0.01, 0.5])
def test_steps_integrate_back_to_the_path(convention: str, scale: float) -> None:
    p, q = random_path(60, seed=1, scale=scale)
    steps = cv.relative_steps(p, q, convention)
    positions, quats = cv.integrate_steps(p[0], q[0], steps, convention)
    np.testing.assert_allclose(positions, p, atol=1e-12)
    np.testing.assert_allclose(np.abs(np.sum(quats * q, axis=1)), 1.0, atol=1e-12)


def test_rotvec_steps_are_what_a_constant_base_frame_twist_executes() -> None:
    """The bridge streams w = rotation / T about the base axes for T: integrating that twist finely
    (left-multiplied small rotations, as Servo does in the base frame) lands on the labelled pose."""
    p, q = random_path(2, seed=3, scale=0.2)
    step = cv.relative_steps(p, q)[0]
    period = 0.2
    linear, angular = cv.delta_to_twist(step, period)
    position, orientation, dt = p[0].copy(), q[0].copy(), period / 2000
    for _ in range(2000):
        position += linear * dt
        orientation = cv.quat_multiply(cv.quat_from_rotvec(angular * dt), orientation)
    np.testing.assert_allclose(position, p[1], atol=1e-12)
    assert abs(abs(float(np.dot(orientation, q[1]))) - 1) < 1e-10
    # roll/pitch/yaw of the same relative rotation agree to second order for small steps
    small_p, small_q = random_path(2, seed=4, scale=0.02)
    rotvec = cv.relative_steps(small_p, small_q)[0, 3:]
    rpy = cv.relative_steps(small_p, small_q, cv.ROTATION_BASE_RPY)[0, 3:]
    assert np.abs(rotvec - rpy).max() < 2 * np.linalg.norm(rotvec) ** 2


def test_delta_twist_round_trip_and_errors() -> None:
    delta = np.array([0.01, -0.02, 0.005, 0.1, 0.0, -0.05])
    linear, angular = cv.delta_to_twist(delta, 0.2)
    np.testing.assert_allclose(linear, delta[:3] / 0.2)
    np.testing.assert_allclose(cv.twist_to_delta(linear, angular, 0.2), delta)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(cv.ConventionError, match="step period"):
            cv.delta_to_twist(delta, bad)
    with pytest.raises(cv.ConventionError, match="finite"):
        cv.delta_to_twist([np.nan] * 6, 0.1)
    with pytest.raises(cv.ConventionError, match="6 values"):
        cv.delta_to_twist([0.0] * 5, 0.1)


def test_the_safety_filter_streams_the_shared_twist() -> None:
    """What the bridge sends for an unclamped step is exactly delta_to_twist of it."""
    limits = SafetyLimits(workspace=None)
    delta = Delta((0.01, -0.005, 0.002), (0.02, -0.01, 0.03), 1.0, 0.1, 0.0)
    command = SafetyFilter(limits).check(delta, None)
    linear, angular = cv.delta_to_twist([*delta.translation, *delta.rotation], delta.step_period_s)
    np.testing.assert_allclose(command.velocity.linear, linear, rtol=1e-12)
    np.testing.assert_allclose(command.velocity.angular, angular, rtol=1e-12)


def test_gripper_opening_command_and_joint_position() -> None:
    fingers = cv.GripperJoints(open_position=0.04, closed_position=0.0)
    assert fingers.opening(0.04) == 1.0 and fingers.opening(0.0) == 0.0 and fingers.opening(0.02) == 0.5
    assert fingers.opening(0.05) == 1.0  # clipped
    np.testing.assert_allclose(fingers.opening(np.array([0.0, 0.01])), [0.0, 0.25])
    assert fingers.position(cv.gripper_command(0.9)) == 0.04 and fingers.position(cv.gripper_command(0.1)) == 0.0
    inverted = cv.GripperJoints(open_position=0.0, closed_position=0.8)  # e.g. a Robotiq knuckle: 0.8 = closed
    assert inverted.opening(0.8) == 0.0 and inverted.opening(0.0) == 1.0 and inverted.position(1.0) == 0.0
    assert cv.gripper_command(0.5) == 0.0 and cv.gripper_command(0.51) == 1.0
    with pytest.raises(cv.ConventionError):
        cv.GripperJoints(0.1, 0.1)
    with pytest.raises(cv.ConventionError):
        cv.gripper_command(float("nan"))


def test_episode_metadata_round_trip_keeps_unknown_keys(tmp_path: Path) -> None:
    meta = cv.EpisodeMetadata(instruction="pick up the red cube", success=True, seed=3, control_rate_hz=10.0,
                              extra={"operator": "ann"})
    meta.write(tmp_path)
    data = json.loads((tmp_path / cv.EPISODE_FILE).read_text())
    assert data["operator"] == "ann" and data["seed"] == 3
    assert cv.EpisodeMetadata.read(tmp_path) == meta
    assert cv.EpisodeMetadata.read(tmp_path / "nothing") is None
    (tmp_path / cv.EPISODE_FILE).write_text("{not json")
    with pytest.raises(cv.ConventionError, match="unreadable episode metadata"):
        cv.EpisodeMetadata.read(tmp_path)


def test_recorder_and_record_demos_use_the_shared_topic_set() -> None:
    from magma_ros.ros import demo_recorder

    assert demo_recorder.RECORDED_TOPICS is cv.RECORDED_TOPICS
    source = (Path(cv.__file__).parent / "cli" / "record_demos.py").read_text()
    assert "EpisodeMetadata(" in source and "RECORDED_TOPICS" in source
