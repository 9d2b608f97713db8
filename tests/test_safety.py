"""The servo bridge's ROS-free safety core: filter, watchdog, command stream, e-stop latch, stamps."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from magma_ros.contract import ContractError, ServoBridgeParameters
from magma_ros.safety import (
    ZERO,
    AccelerationLimit,
    Adjustment,
    Command,
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
    non_braking_change,
    norm,
    ramp,
)
from magma_ros.stamps import StampError, split_ns, stamp_age_s, stamp_to_ns

BOX = WorkspaceBox((0.2, -0.5, 0.0), (0.8, 0.5, 0.6))
LIMITS = SafetyLimits(workspace=BOX)
EPS = 1e-9


def delta(dx: float = 0.0, dy: float = 0.0, dz: float = 0.0, rot: tuple = (0.0, 0.0, 0.0), *,
          period: float = 0.2, age: float = 0.01, gripper: float = 1.0) -> Delta:
    return Delta((dx, dy, dz), rot, gripper, period, age)


def at(x: float = 0.5, y: float = 0.0, z: float = 0.3, age: float = 0.01) -> Pose:
    return Pose((x, y, z), age)


def command(result: Command | Rejection) -> Command:
    assert isinstance(result, Command), result
    return result


def rejection(result: Command | Rejection) -> RejectReason:
    assert isinstance(result, Rejection), result
    return result.reason


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


# -- filter: examples ------------------------------------------------------------------
def test_speed_units_and_vector_caps_keep_the_direction() -> None:
    f = SafetyFilter(LIMITS)
    cmd = command(f.check(delta(0.01, -0.02, 0.0, (0.05, 0.0, 0.0)), at()))
    assert cmd.velocity.linear == pytest.approx((0.05, -0.1, 0.0))
    assert cmd.velocity.angular == pytest.approx((0.25, 0.0, 0.0))
    assert cmd.duration_s == 0.2 and cmd.adjustments == frozenset()
    # 0.3 m each on x and y over 0.2 s: |dp| = 0.42 m is scaled to 0.05 m (the step clamp), the
    # direction kept; 2 rad on roll and yaw: scaled to Servo's 0.8 rad/s as a vector.
    cmd = command(f.check(delta(0.3, -0.3, 0.0, (2.0, 0.0, -2.0)), at()))
    assert norm(cmd.velocity.linear) == pytest.approx(0.25)
    assert cmd.velocity.linear == pytest.approx((0.25 / math.sqrt(2), -0.25 / math.sqrt(2), 0.0))
    assert norm(cmd.velocity.angular) == pytest.approx(0.8)
    assert cmd.velocity.angular == pytest.approx((0.8 / math.sqrt(2), 0.0, -0.8 / math.sqrt(2)))
    assert Adjustment.CLAMPED in cmd.adjustments
    # Short step on three axes: the 0.4 m/s norm cap, not the step clamp, binds; per axis 0.4 / sqrt(3).
    cmd = command(f.check(delta(0.05, 0.05, 0.05, period=0.05), at()))
    assert norm(cmd.velocity.linear) == pytest.approx(0.4)
    assert cmd.velocity.linear == pytest.approx((0.4 / math.sqrt(3),) * 3)


def test_per_axis_caps_in_addition_scale_the_whole_vector() -> None:
    f = SafetyFilter(replace(LIMITS, workspace=None, linear_axis_speeds=(math.inf, math.inf, 0.05),
                             angular_axis_speeds=(0.1, math.inf, math.inf)))
    cmd = command(f.check(delta(0.02, 0.0, 0.02, (0.04, 0.04, 0.0)), None))
    assert cmd.velocity.linear == pytest.approx((0.05, 0.0, 0.05))  # z capped at 0.05, x scaled alike
    assert cmd.velocity.angular == pytest.approx((0.1, 0.1, 0.0))
    assert Adjustment.CLAMPED in cmd.adjustments


def test_huge_finite_steps_are_scaled_not_overflowed() -> None:
    f = SafetyFilter(replace(LIMITS, workspace=None))
    cmd = command(f.check(delta(1.7e308, 1.7e308, -1e308, (5e-324, 1e300, 0.0)), None))
    assert norm(cmd.velocity.linear) == pytest.approx(0.25) and cmd.velocity.linear[0] > 0 > cmd.velocity.linear[2]
    assert norm(cmd.velocity.angular) == pytest.approx(0.8) and cmd.velocity.angular[1] == pytest.approx(0.8)


def test_clamps_can_be_turned_off_but_speed_caps_stay() -> None:
    f = SafetyFilter(replace(LIMITS, clamp_enabled=False, workspace=None))
    cmd = command(f.check(delta(0.06, period=1.0), None))
    assert cmd.velocity.linear[0] == pytest.approx(0.06)
    cmd = command(f.check(delta(5.0, 5.0, period=1.0), None))
    assert norm(cmd.velocity.linear) == pytest.approx(0.4)


def test_step_leaving_the_box_is_cut_to_the_boundary() -> None:
    f = SafetyFilter(LIMITS)
    cmd = command(f.check(delta(0.04, 0.0, -0.04), at(x=0.78, z=0.01)))
    assert 0.78 + cmd.velocity.linear[0] * 0.2 == pytest.approx(0.8)
    assert 0.01 + cmd.velocity.linear[2] * 0.2 == pytest.approx(0.0)
    assert Adjustment.WORKSPACE_CUT in cmd.adjustments
    # Slightly outside (tracking error): pulled back onto the boundary.
    back = command(f.check(delta(), at(x=0.81)))
    assert 0.81 + back.velocity.linear[0] * 0.2 == pytest.approx(0.8)
    # Further out than one clamped step: refused.
    assert rejection(f.check(delta(-0.05), at(x=0.9))) is RejectReason.OUTSIDE_WORKSPACE
    # Outside on two axes: the pull-back velocity stays within the norm cap (0.25 m/s at 0.2 s steps).
    back = command(f.check(delta(), at(x=0.83, z=-0.03)))
    assert norm(back.velocity.linear) <= 0.25 + EPS
    assert 0.83 + back.velocity.linear[0] * 0.2 <= 0.8 + EPS and -0.03 + back.velocity.linear[2] * 0.2 >= -EPS
    # Pulling back needs 0.04 m on x and 0.04 m on z: 0.057 m > one 0.05 m step: refused.
    assert rejection(f.check(delta(), at(x=0.84, z=-0.04))) is RejectReason.OUTSIDE_WORKSPACE


def test_heading_out_of_the_box() -> None:
    assert BOX.heading_out((0.81, 0.0, 0.3), (0.1, 0.0, 0.0))
    assert not BOX.heading_out((0.81, 0.0, 0.3), (-0.1, 0.0, 0.0))  # coming back in
    assert not BOX.heading_out((0.5, 0.0, 0.3), (0.4, 0.4, 0.4))  # inside
    assert BOX.heading_out((0.5, 0.0, -0.01), (0.0, 0.0, -0.01))


def test_box_is_shrunk_by_the_motion_since_the_pose_was_measured() -> None:
    f = SafetyFilter(LIMITS)
    moving = Velocity((0.25, 0.0, 0.0), (0.0, 0.0, 0.0))
    cmd = command(f.check(delta(0.05), at(x=0.7, age=0.2), previous=moving))
    assert 0.7 + 0.25 * 0.2 + cmd.velocity.linear[0] * 0.2 == pytest.approx(0.8)


@pytest.mark.parametrize(("bad", "reason"), [
    (delta(math.nan), RejectReason.NON_FINITE),
    (delta(rot=(0.0, math.inf, 0.0)), RejectReason.NON_FINITE),
    (delta(gripper=math.nan), RejectReason.NON_FINITE),
    (delta(gripper=1.5), RejectReason.OUT_OF_RANGE),
    (delta(gripper=-0.1), RejectReason.OUT_OF_RANGE),
    (delta(period=0.0), RejectReason.BAD_STEP_PERIOD),
    (delta(period=-0.2), RejectReason.BAD_STEP_PERIOD),
    (delta(period=5.0), RejectReason.BAD_STEP_PERIOD),
    (delta(period=math.inf), RejectReason.NON_FINITE),
    (delta(age=0.6), RejectReason.STALE_DELTA),
    (delta(age=-3.0), RejectReason.STALE_DELTA),
])
def test_rejections_name_the_reason(bad: Delta, reason: RejectReason) -> None:
    result = SafetyFilter(LIMITS).check(bad, at())
    assert rejection(result) is reason
    assert isinstance(result, Rejection) and result.detail


def test_workspace_check_needs_a_fresh_finite_pose() -> None:
    f = SafetyFilter(LIMITS)
    assert rejection(f.check(delta(0.01), None)) is RejectReason.NO_POSE
    assert rejection(f.check(delta(0.01), at(age=1.0))) is RejectReason.STALE_POSE
    assert rejection(f.check(delta(0.01), at(x=math.nan))) is RejectReason.NON_FINITE
    assert isinstance(SafetyFilter(replace(LIMITS, workspace=None)).check(delta(0.01), None), Command)


def test_bad_limits_are_named() -> None:
    with pytest.raises(SafetyConfigError, match="max_linear_step"):
        SafetyLimits(max_linear_step=-1.0)
    with pytest.raises(SafetyConfigError, match="min_step_period_s"):
        SafetyLimits(min_step_period_s=2.0, max_step_period_s=1.0)
    with pytest.raises(SafetyConfigError, match="below maximum"):
        WorkspaceBox((0.0, 0.0, 1.0), (1.0, 1.0, 0.5))
    with pytest.raises(SafetyConfigError, match="max_linear_acceleration"):
        SafetyLimits(max_linear_acceleration=math.nan)
    with pytest.raises(SafetyConfigError, match="linear_axis_speeds"):
        SafetyLimits(linear_axis_speeds=(0.1, 0.0, math.inf))


def test_bridge_parameters_validate_and_name_bad_values() -> None:
    assert ServoBridgeParameters().watchdog_timeout_s == 0.2
    with pytest.raises(ContractError, match="max_linear_speed"):
        ServoBridgeParameters(max_linear_speed=math.nan)
    with pytest.raises(ContractError, match="workspace_min_xyz"):
        ServoBridgeParameters(workspace_min_xyz=[0.0, 0.0])
    with pytest.raises(ContractError, match="gripper_close_threshold"):
        ServoBridgeParameters(gripper_close_threshold=0.7)
    with pytest.raises(ContractError, match="ee_pose_topic or ee_frame"):
        ServoBridgeParameters(ee_pose_topic="")
    with pytest.raises(ContractError, match="max_angular_axis_speeds"):
        ServoBridgeParameters(max_angular_axis_speeds=[0.1, -1.0, 0.0])
    with pytest.raises(ContractError, match="max_angular_acceleration"):
        ServoBridgeParameters(max_angular_acceleration=0.0)


def test_the_contract_marks_safety_limits_live_and_structure_read_only() -> None:
    live = set(ServoBridgeParameters.live_parameters())
    assert {"max_linear_speed", "max_angular_speed", "max_linear_step_m", "max_angular_step_rad",
            "max_linear_axis_speeds", "max_angular_axis_speeds", "max_linear_acceleration",
            "max_angular_acceleration", "workspace_min_xyz", "workspace_max_xyz", "watchdog_timeout_s",
            "max_pose_age_s", "max_delta_age_s", "min_step_period_s", "max_step_period_s", "step_overrun_s"} == live
    assert not live & {"ee_delta_topic", "twist_topic", "base_frame", "stream_rate_hz", "dry_run",
                       "workspace_enabled", "clamp_enabled", "watchdog_enabled", "acceleration_limit_enabled"}


# -- filter: 10,000 generated deltas ----------------------------------------------------
SPECIAL = [math.nan, math.inf, -math.inf, 1e300, -1e300, 1e-300, 5e-324, 0.0, -0.0, 0.05, 0.049999, -0.0500001,
           0.25, -0.25, 0.3, -7.0]
BAD_PERIODS = [0.0, -0.2, 1e-9, 0.019, 5.0, math.nan, math.inf]
BAD_AGES = [0.51, -1.0, 1e9, math.nan]
EDGE_COORDINATES = [0.2, 0.8, 0.0, 0.6, -0.5, 0.5, 0.79999, 0.81, 0.19, 0.95]
N = 50  # deltas per generated sequence; 200 sequences = 10,000 deltas
LIMIT_SETS = [LIMITS, replace(LIMITS, linear_axis_speeds=(0.3, 0.05, 0.2), angular_axis_speeds=(0.5, math.inf, 0.2)),
              replace(LIMITS, clamp_enabled=False), replace(LIMITS, workspace=None, max_linear_speed=0.1),
              replace(LIMITS, step_overrun_s=0.04), replace(LIMITS, step_overrun_s=1.0)]


def generated_steps(rnd: random.Random, weird: float) -> list[tuple[Delta | str, Any, bool]]:
    """One sequence: (delta | "repeat" | "flip", pose | "tracked" | None, stream ended before it).

    Delta values have magnitudes over four decades, with NaN/inf/huge/boundary values injected
    at rate ``weird``; bursts repeat the previous delta, sign flips negate it; poses are the
    tracked arm's, generated (inside, outside, on the boundary, stale, NaN) or unknown.
    """

    def number(scale: float) -> float:
        if rnd.random() < weird:
            return rnd.choice(SPECIAL)
        return rnd.choice((-1, 1)) * scale * 10 ** rnd.uniform(-4, 0.3)

    steps: list[tuple[Delta | str, Any, bool]] = []
    for _ in range(N):
        kind = rnd.random()
        if kind < 0.15:
            item: Delta | str = "repeat"
        elif kind < 0.3:
            item = "flip"
        else:
            period = rnd.choice(BAD_PERIODS) if rnd.random() < weird / 3 else rnd.choice(
                [0.1, 0.2, 0.5, rnd.uniform(0.02, 1.0)])
            age = rnd.choice(BAD_AGES) if rnd.random() < weird / 3 else rnd.uniform(-0.05, 0.3)
            item = Delta((number(0.05), number(0.05), number(0.05)), (number(0.2), number(0.2), number(0.2)),
                         rnd.random() if rnd.random() > weird else rnd.choice(SPECIAL), period, age)
        which = rnd.random()
        if which < 0.6:
            pose: Any = "tracked"
        elif which < 0.85:
            position = tuple(rnd.choice(EDGE_COORDINATES) if rnd.random() < 0.3 else rnd.uniform(-0.1, 1.0)
                             for _ in range(3))
            pose = Pose(position, rnd.choice([1.0, math.nan]) if rnd.random() < 0.1 else rnd.uniform(0.0, 0.3))
        else:
            pose = None
        steps.append((item, pose, rnd.random() < 0.2))
    return steps


def flipped(d: Delta) -> Delta:
    return replace(d, translation=tuple(-v for v in d.translation), rotation=tuple(-v for v in d.rotation))


def check_invariants(limits: SafetyLimits, d: Delta, pose: Pose | None, cmd: Command) -> None:
    numbers = [*cmd.velocity.linear, *cmd.velocity.angular]
    assert all(math.isfinite(v) for v in numbers)
    assert cmd.duration_s == d.step_period_s
    linear_cap, angular_cap = limits.speed_caps(d.step_period_s)
    assert linear_cap <= limits.max_linear_speed and angular_cap <= limits.max_angular_speed
    assert norm(cmd.velocity.linear) <= linear_cap * (1 + EPS) + EPS
    assert norm(cmd.velocity.angular) <= angular_cap * (1 + EPS) + EPS
    assert all(abs(v) <= c * (1 + EPS) for v, c in zip(cmd.velocity.linear, limits.linear_axis_speeds, strict=True))
    assert all(abs(v) <= c * (1 + EPS) for v, c in zip(cmd.velocity.angular, limits.angular_axis_speeds, strict=True))
    if limits.clamp_enabled:
        assert norm(cmd.velocity.linear) * d.step_period_s <= limits.max_linear_step + EPS
        assert norm(cmd.velocity.angular) * d.step_period_s <= limits.max_angular_step + EPS
    if limits.workspace is not None:
        assert pose is not None
        # where the step ends if it runs its overrun (the box is convex: from inside, the whole path stays in)
        horizon = d.step_period_s + limits.step_overrun_s
        target = [p + v * horizon for p, v in zip(pose.position, cmd.velocity.linear, strict=True)]
        assert limits.workspace.contains(target, tolerance=EPS), (pose, cmd, target)
    elif Adjustment.CLAMPED not in cmd.adjustments:  # not capped and no box: exactly delta / T
        assert cmd.velocity.linear == pytest.approx([v / d.step_period_s for v in d.translation])
    if limits.workspace is None or Adjustment.WORKSPACE_CUT not in cmd.adjustments:
        # Caps scale the whole vector: the direction of the step is kept.
        for out, step in ((cmd.velocity.linear, d.translation), (cmd.velocity.angular, d.rotation)):
            assert same_direction(out, step), (out, step)


def same_direction(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Whether ``a`` is a non-negative multiple of ``b`` (either may be zero or subnormal)."""
    if not any(a):
        return True
    unit_a = [x / max(abs(v) for v in a) for x in a]
    unit_b = [x / max(abs(v) for v in b) for x in b]
    cosine = sum(x * y for x, y in zip(unit_a, unit_b, strict=True)) / (norm(unit_a) * norm(unit_b))
    return cosine == pytest.approx(1.0, abs=1e-9)


def test_ten_thousand_generated_deltas_never_exceed_the_limits() -> None:
    seen = {"deltas": 0, "accepted": 0}
    reasons: set[RejectReason] = set()
    distinct: set[str] = set()

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example, HealthCheck.data_too_large])
    @given(st.sampled_from(LIMIT_SETS), st.randoms(use_true_random=True), st.sampled_from([0.0, 0.05, 0.2, 0.5]))
    def run(limits: SafetyLimits, rnd: random.Random, weird: float) -> None:
        f = SafetyFilter(limits)
        previous, last, arm = ZERO, delta(), (0.5, 0.0, 0.3)
        for item, pose_item, stream_ended in generated_steps(rnd, weird):
            d = last = last if item == "repeat" else flipped(last) if item == "flip" else item  # type: ignore[assignment]
            pose = Pose(arm, 0.0) if pose_item == "tracked" else pose_item
            if stream_ended:
                previous = ZERO
            result = f.check(d, pose, previous)
            seen["deltas"] += 1
            distinct.add(repr(d))
            if isinstance(result, Rejection):
                reasons.add(result.reason)
                previous = ZERO  # a rejection stops the stream
                continue
            seen["accepted"] += 1
            check_invariants(limits, d, pose, result)
            if pose_item == "tracked":   # the step is not followed in time: it runs its overrun too
                horizon = d.step_period_s + limits.step_overrun_s
                arm = tuple(p + v * horizon for p, v in zip(arm, result.velocity.linear, strict=True))
                assert limits.workspace is None or BOX.contains(arm, tolerance=EPS)  # it never leaves the box
            previous = result.velocity

    run()
    assert seen["deltas"] >= 10_000
    assert seen["accepted"] > 3_000 and len(distinct) > 5_000, (seen, len(distinct))
    assert {RejectReason.NON_FINITE, RejectReason.BAD_STEP_PERIOD, RejectReason.STALE_DELTA, RejectReason.NO_POSE,
            RejectReason.STALE_POSE, RejectReason.OUTSIDE_WORKSPACE} <= reasons


# -- watchdog, stream, e-stop -------------------------------------------------------------
def test_watchdog_expires_without_feeding() -> None:
    clock = FakeClock()
    dog = Watchdog(0.2, clock)
    assert dog.expired()
    dog.feed()
    clock.t += 0.2
    assert not dog.expired()
    clock.t += 0.001
    assert dog.expired()
    dog.feed(age_s=0.15)  # input published 0.15 s ago: 0.05 s left
    clock.t += 0.05
    assert not dog.expired()
    clock.t += 0.001
    assert dog.expired()
    dog.feed(age_s=-1.0)  # a clock ahead of ours never extends the timeout
    assert dog.deadline == clock.t + 0.2
    with pytest.raises(SafetyConfigError):
        Watchdog(0.0)


def stream_for(clock: FakeClock, watchdog_s: float | None = None) -> CommandStream:
    dog = Watchdog(watchdog_s, clock) if watchdog_s is not None else None
    return CommandStream(0.02, 3, dog, clock)


MOVE = Command(Velocity((0.1, 0.0, 0.0), (0.0, 0.0, 0.2)), 0.2, frozenset())


def run_ticks(stream: CommandStream, clock: FakeClock, n: int) -> list[Velocity | None]:
    out = []
    for _ in range(n):
        out.append(stream.next_message())
        clock.t += 0.02
    return out


def test_stream_sends_the_command_for_one_step_then_zeros_then_nothing() -> None:
    clock = FakeClock()
    stream = stream_for(clock)
    assert stream.next_message() is None
    stream.start(MOVE)
    out = run_ticks(stream, clock, 20)
    assert out[:10] == [MOVE.velocity] * 10  # ticks at 0 .. 0.18 s: each held until the next tick
    assert out[10:13] == [ZERO] * 3 and out[13:] == [None] * 7
    assert stream.ends[StreamEnd.STEP_DONE] == 1 and not stream.active


def test_watchdog_cuts_a_long_step() -> None:
    clock = FakeClock()
    stream = stream_for(clock, watchdog_s=0.2)
    stream.start(replace(MOVE, duration_s=1.0))
    out = run_ticks(stream, clock, 20)
    assert out[:10] == [MOVE.velocity] * 10 and out[10:13] == [ZERO] * 3 and out[13:] == [None] * 7
    assert stream.ends[StreamEnd.WATCHDOG] == 1
    stream.start(replace(MOVE, duration_s=1.0), age_s=0.1)  # arrived 0.1 s after it was published
    assert run_ticks(stream, clock, 8) == [MOVE.velocity] * 5 + [ZERO] * 3
    # Fresh commands keep it going.
    stream.start(replace(MOVE, duration_s=1.0))
    for _ in range(5):
        assert run_ticks(stream, clock, 5) == [MOVE.velocity] * 5
        stream.start(replace(MOVE, duration_s=1.0))


def test_stop_and_zero_command_end_the_stream_with_zeros() -> None:
    clock = FakeClock()
    stream = stream_for(clock)
    stream.start(MOVE)
    assert stream.next_message() == MOVE.velocity
    stream.stop()
    assert run_ticks(stream, clock, 5) == [ZERO, ZERO, ZERO, None, None]
    stream.start(MOVE)
    stream.start(Command(ZERO, 0.2, frozenset()))
    assert run_ticks(stream, clock, 4) == [ZERO, ZERO, ZERO, None]
    stream.stop()  # nothing streaming: nothing to send
    assert stream.next_message() is None


def test_estop_latches_until_reset_with_the_input_released() -> None:
    latch = EStopLatch()
    assert latch.update(False) is False and not latch.engaged
    assert latch.update(True) is True and latch.engaged
    assert latch.update(True) is False
    latch.update(False)
    assert latch.engaged  # releasing the input does not clear it
    latch.update(True)
    with pytest.raises(EStopAssertedError):
        latch.reset()
    assert latch.engaged
    latch.update(False)
    latch.reset()
    assert not latch.engaged and latch.trips == 1


def test_watchdog_shorter_timeout_cuts_the_running_deadline_longer_waits_for_the_next_feed() -> None:
    clock = FakeClock()
    dog = Watchdog(0.5, clock)
    dog.feed()
    dog.set_timeout(1.0)  # longer: the deadline running now stays
    assert dog.deadline == pytest.approx(clock.t + 0.5)
    dog.set_timeout(0.1)  # shorter: at once
    assert dog.deadline == pytest.approx(clock.t + 0.1)
    dog.feed()
    assert dog.deadline == pytest.approx(clock.t + 0.1)
    with pytest.raises(SafetyConfigError):
        dog.set_timeout(math.nan)


# -- acceleration: over elapsed time, at every sample --------------------------------------
ACCEL = AccelerationLimit(1.0, 3.0)


def test_ramp_limits_speeding_up_and_turning_but_never_braking() -> None:
    assert ramp((0.0, 0.0, 0.0), (0.4, 0.0, 0.0), 0.02) == pytest.approx((0.02, 0.0, 0.0))
    assert ramp((0.3, 0.0, 0.0), (0.05, 0.0, 0.0), 0.02) == pytest.approx((0.05, 0.0, 0.0))  # slower: at once
    assert ramp((0.3, 0.0, 0.0), (0.0, 0.0, 0.0), 0.02) == (0.0, 0.0, 0.0)  # stop: at once
    # Reversal: brake to zero for free, then at most 0.02 the other way.
    assert ramp((0.3, 0.0, 0.0), (-0.3, 0.0, 0.0), 0.02) == pytest.approx((-0.02, 0.0, 0.0))
    # Turning by 90 degrees: the old direction may drop at once, the new one grows by 0.02.
    assert ramp((0.3, 0.0, 0.0), (0.0, 0.3, 0.0), 0.02) == pytest.approx((0.0, 0.02, 0.0))
    assert non_braking_change((0.3, 0.0, 0.0), (0.0, 0.02, 0.0)) == pytest.approx(0.02)
    assert non_braking_change((0.3, 0.0, 0.0), (0.1, 0.0, 0.0)) == pytest.approx(0.0, abs=1e-15)


def test_a_1khz_burst_reaches_speed_no_faster_than_the_acceleration_limit() -> None:
    # The defect: 0 -> 0.4 m/s in 2 ms when the limit acted per message. Per unit time, a burst
    # of commands 1 ms apart (the sample after each) gains at most 1 m/s^2 * 1 ms per sample.
    clock = FakeClock()
    stream = CommandStream(0.02, 3, Watchdog(0.2, clock), clock, ACCEL)
    fast = Command(Velocity((0.4, 0.0, 0.0), (0.0, 0.0, 0.8)), 0.2, frozenset())
    samples = []
    for _ in range(20):
        stream.start(fast)
        samples.append(stream.next_message())
        clock.t += 0.001
    assert samples[0].linear[0] == pytest.approx(0.02)  # from rest: one tick's worth
    assert samples[-1].linear[0] == pytest.approx(0.02 + 19 * 0.001)
    assert samples[-1].angular[2] == pytest.approx(0.06 + 19 * 0.003)
    assert stream.limited_samples == 20


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(
    st.sampled_from(["command", "tick", "tick", "tick", "stop", "wait"]),
    st.tuples(*[st.floats(-0.5, 0.5)] * 3), st.tuples(*[st.floats(-1.0, 1.0)] * 3),
    st.floats(0.0, 0.05)), min_size=5, max_size=80))
def test_every_sample_keeps_the_acceleration_limit(script: list) -> None:
    clock = FakeClock()
    tick = 0.02
    stream = CommandStream(tick, 3, Watchdog(0.2, clock), clock, ACCEL)
    previous, previous_at = ZERO, -math.inf
    for kind, linear, angular, pause in script:
        if kind == "command":
            stream.start(Command(Velocity(linear, angular), 0.2, frozenset()))
        elif kind == "stop":
            stream.stop()
        elif kind == "wait":
            clock.t += 10 * pause
            continue
        sample = stream.next_message()
        if sample is not None:
            dt = min(clock.t - previous_at, tick)
            assert non_braking_change(previous.linear, sample.linear) <= ACCEL.linear * dt + EPS
            assert non_braking_change(previous.angular, sample.angular) <= ACCEL.angular * dt + EPS
            previous, previous_at = sample, clock.t
        clock.t += pause


def test_restrict_applies_lower_caps_to_the_stream_in_flight() -> None:
    clock = FakeClock()
    stream = CommandStream(0.02, 3, None, clock, None)
    stream.start(Command(Velocity((0.3, 0.4, 0.0), (0.0, 0.0, 0.5)), 0.5, frozenset()))
    assert stream.next_message() == Velocity((0.3, 0.4, 0.0), (0.0, 0.0, 0.5))
    tighter = replace(LIMITS, max_linear_speed=0.1, max_angular_speed=0.2)
    stream.restrict(tighter.cap)
    sample = stream.next_message()
    assert norm(sample.linear) == pytest.approx(0.1) and sample.linear == pytest.approx((0.06, 0.08, 0.0))
    assert sample.angular == pytest.approx((0.0, 0.0, 0.2))
    stream.restrict(LIMITS.cap)  # looser again: the stream in flight does not speed up
    assert stream.next_message().linear == pytest.approx((0.06, 0.08, 0.0))


# -- overrun: the next step takes over from the moving arm --------------------------------
def test_without_overrun_a_late_step_restarts_from_rest_with_it_from_the_velocity_sent() -> None:
    # The realtime defect: at 10 Hz the policy's next delta arrives a few ms after the step's end; with
    # no overrun the stream has sent zeros by then and the new step ramps from rest (under 1 m/s^2 the
    # arm never reaches 0.1 m/s in a 0.1 s step).
    step = Command(Velocity((0.1, 0.0, 0.0), (0.0, 0.0, 0.0)), 0.1, frozenset())
    speeds = {}
    for overrun in (0.0, 0.04):
        clock = FakeClock()
        stream = CommandStream(0.02, 3, Watchdog(0.2, clock), clock, ACCEL, overrun_s=overrun)
        sent: list[Velocity | None] = []
        for _ in range(10):   # ten steps, each arriving 0.105 s after the previous one
            stream.start(step)
            for _ in range(5):
                sent.append(stream.next_message())
                clock.t += 0.021
        zeros = sum(1 for v in sent if v is not None and v.is_zero())
        speeds[overrun] = [v.linear[0] for v in sent if v is not None and not v.is_zero()]
        if overrun == 0.0:
            assert zeros >= 9   # every step ended in zeros before the next one came
            assert max(speeds[overrun]) < 0.09
        else:
            assert zeros == 0
            assert speeds[overrun][-20:] == pytest.approx([0.1] * 20)   # cruising at the commanded speed
    # Travelled distance over the ten steps: with the overrun close to the commanded 0.1 m.
    assert 0.021 * sum(speeds[0.04]) > 0.09 > 0.07 > 0.021 * sum(speeds[0.0])


def test_a_lone_step_moves_for_its_period_plus_the_overrun_then_zeros() -> None:
    clock = FakeClock()
    stream = CommandStream(0.02, 3, Watchdog(0.5, clock), clock, None, overrun_s=0.04)
    stream.start(MOVE)   # 0.2 s step
    out = run_ticks(stream, clock, 20)
    assert out[:12] == [MOVE.velocity] * 12   # ticks at 0 .. 0.22 s: 0.24 s of motion
    assert out[12:15] == [ZERO] * 3 and out[15:] == [None] * 5
    assert stream.ends[StreamEnd.STEP_DONE] == 1


def test_the_watchdog_bounds_the_overrun() -> None:
    clock = FakeClock()
    stream = CommandStream(0.02, 3, Watchdog(0.2, clock), clock, None, overrun_s=1.0)
    stream.start(MOVE)
    out = run_ticks(stream, clock, 16)
    assert out[:10] == [MOVE.velocity] * 10 and out[10:13] == [ZERO] * 3 and out[13:] == [None] * 3
    assert stream.ends[StreamEnd.WATCHDOG] == 1


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.floats(0.0, 0.3), st.floats(0.02, 0.5), st.floats(0.05, 0.5), st.lists(st.floats(0.0, 0.6), max_size=12),
       st.floats(0.001, 0.03))
def test_motion_never_outlasts_the_step_plus_overrun_nor_the_watchdog(overrun: float, period: float,
                                                                       watchdog: float, gaps: list[float],
                                                                       tick: float) -> None:
    """Steps started ``gaps`` apart, ticked until long after the last: every moving sample (held by
    Servo until the next tick) ends within min(period + overrun, watchdog) of the latest step's start."""
    clock = FakeClock()
    stream = CommandStream(tick, 3, Watchdog(watchdog, clock), clock, ACCEL, overrun_s=overrun)
    step = replace(MOVE, duration_s=period)
    starts = [clock.t + sum(gaps[:i]) for i in range(len(gaps) + 1)]
    limit = min(period + overrun, watchdog)
    moving, until = 0, starts[-1] + period + overrun + watchdog + 5 * tick
    while clock.t < until:
        while starts and starts[0] <= clock.t:
            starts.pop(0)
            latest = clock.t
            stream.start(step)
        sample = stream.next_message()
        if sample is not None and not sample.is_zero():
            moving += 1
            assert clock.t + tick <= latest + limit + 1e-9
        clock.t += tick
    assert moving >= (1 if limit >= tick else 0)
    assert not stream.active


def test_a_longer_overrun_waits_for_the_next_command_a_shorter_one_applies_at_once() -> None:
    clock = FakeClock()
    stream = CommandStream(0.02, 3, None, clock, None, overrun_s=0.04)
    stream.start(MOVE)
    stream.set_overrun(0.5)   # the step in flight was checked against the box with 0.04 s
    assert sum(1 for v in run_ticks(stream, clock, 30) if v == MOVE.velocity) == 12
    stream.start(MOVE)
    assert sum(1 for v in run_ticks(stream, clock, 40) if v == MOVE.velocity) == 35
    stream.start(MOVE)
    stream.set_overrun(0.0)
    assert sum(1 for v in run_ticks(stream, clock, 30) if v == MOVE.velocity) == 10
    with pytest.raises(SafetyConfigError):
        stream.set_overrun(-0.1)
    with pytest.raises(SafetyConfigError):
        CommandStream(0.02, 3, overrun_s=math.nan)


def test_the_workspace_check_counts_the_overrun() -> None:
    f = SafetyFilter(replace(LIMITS, step_overrun_s=0.05))
    cmd = command(f.check(delta(0.04), at(x=0.78)))   # 0.2 s step: the target at +0.04 would leave the box
    assert 0.78 + cmd.velocity.linear[0] * 0.25 == pytest.approx(0.8)
    free = command(f.check(delta(0.01), at(x=0.5)))   # far inside: not cut
    assert free.velocity.linear[0] == pytest.approx(0.05) and Adjustment.WORKSPACE_CUT not in free.adjustments
    with pytest.raises(SafetyConfigError, match="step_overrun_s"):
        SafetyLimits(step_overrun_s=-0.01)
    with pytest.raises(ContractError, match="step_overrun_s"):
        ServoBridgeParameters(step_overrun_s=2.0)


# -- stamps -------------------------------------------------------------------------------
class Stamp:
    def __init__(self, sec: Any, nanosec: Any) -> None:
        self.sec, self.nanosec = sec, nanosec


@pytest.mark.parametrize(("sec", "nanosec", "match"), [
    (-1, 0, "negative"), (-2**31, 999_999_999, "negative"), (0, 0, "unset"), (5, 1_000_000_000, "nanosec"),
    (5, 2**32 - 1, "nanosec"), (1.5, 0, "not a time"), (True, 0, "not a time"), (None, None, "not a time"),
])
def test_bad_stamps_are_named_errors(sec: Any, nanosec: Any, match: str) -> None:
    with pytest.raises(StampError, match=match):
        stamp_to_ns(Stamp(sec, nanosec))


def test_stamp_conversion_and_age() -> None:
    assert stamp_to_ns(Stamp(2**31 - 1, 999_999_999)) == (2**31 - 1) * 10**9 + 999_999_999
    assert stamp_to_ns(Stamp(0, 1)) == 1
    assert stamp_age_s(Stamp(10, 500_000_000), 12 * 10**9) == pytest.approx(1.5)
    assert stamp_age_s(Stamp(2**31 - 1, 0), 10**18) < -1e9  # huge: far in the future, not an error
    assert split_ns(12_500_000_001) == (12, 500_000_001)
    with pytest.raises(StampError):
        split_ns(-1)


def test_a_raised_acceleration_waits_for_the_next_command_a_lower_one_applies_at_once() -> None:
    clock = FakeClock()
    stream = CommandStream(0.02, 3, None, clock, ACCEL)
    fast = Command(Velocity((0.4, 0.0, 0.0), (0.0, 0.0, 0.0)), 1.0, frozenset())
    stream.start(fast)
    speeds = [stream.next_message().linear[0]]
    clock.t += 0.02
    stream.set_acceleration(AccelerationLimit(10.0, 30.0))  # raised: not for the target in flight
    speeds.append(stream.next_message().linear[0])
    clock.t += 0.02
    stream.set_acceleration(AccelerationLimit(0.5, 30.0))  # lowered: at once
    speeds.append(stream.next_message().linear[0])
    clock.t += 0.02
    stream.start(fast)  # the next command takes the latest setting
    speeds.append(stream.next_message().linear[0])
    assert [b - a for a, b in itertools.pairwise(speeds)] == pytest.approx([0.02, 0.01, 0.01])
    stream.set_acceleration(AccelerationLimit(10.0, 30.0))
    clock.t += 0.02
    stream.start(fast)
    assert stream.next_message().linear[0] - speeds[-1] == pytest.approx(0.2)
