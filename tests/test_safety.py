"""The servo bridge's ROS-free safety core: filter, watchdog, command stream, e-stop latch."""

from __future__ import annotations

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
)

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
def test_speed_units_and_per_axis_clamps() -> None:
    f = SafetyFilter(replace(LIMITS, rate_limit_enabled=False))
    cmd = command(f.check(delta(0.01, -0.02, 0.0, (0.05, 0.0, 0.0)), at()))
    assert cmd.velocity.linear == pytest.approx((0.05, -0.1, 0.0))
    assert cmd.velocity.angular == pytest.approx((0.25, 0.0, 0.0))
    assert cmd.duration_s == 0.2 and cmd.adjustments == frozenset()
    # 0.3 m over 0.2 s: clamped to 0.05 m per step; 2 rad: clamped by Servo's 0.8 rad/s.
    cmd = command(f.check(delta(0.3, -0.3, 0.0, (2.0, 0.0, -2.0)), at()))
    assert cmd.velocity.linear == pytest.approx((0.25, -0.25, 0.0))
    assert cmd.velocity.angular == pytest.approx((0.8, 0.0, -0.8))
    assert Adjustment.CLAMPED in cmd.adjustments
    # Short step: the speed cap (0.4 m/s), not the step clamp, binds.
    cmd = command(f.check(delta(0.05, period=0.05), at()))
    assert cmd.velocity.linear[0] == pytest.approx(0.4)


def test_clamps_can_be_turned_off_but_speed_caps_stay() -> None:
    f = SafetyFilter(replace(LIMITS, clamp_enabled=False, rate_limit_enabled=False, workspace=None))
    cmd = command(f.check(delta(0.06, period=1.0), None))
    assert cmd.velocity.linear[0] == pytest.approx(0.06)
    cmd = command(f.check(delta(5.0, period=1.0), None))
    assert cmd.velocity.linear[0] == pytest.approx(0.4)


def test_rate_limit_between_consecutive_commands() -> None:
    f = SafetyFilter(replace(LIMITS, workspace=None))
    cmd = command(f.check(delta(0.05), None, previous=ZERO))
    assert cmd.velocity.linear[0] == pytest.approx(0.2) and Adjustment.RATE_LIMITED in cmd.adjustments
    flip = command(f.check(delta(-0.05), None, previous=cmd.velocity))
    assert flip.velocity.linear[0] == pytest.approx(0.0)


def test_step_leaving_the_box_is_cut_to_the_boundary() -> None:
    f = SafetyFilter(replace(LIMITS, rate_limit_enabled=False))
    cmd = command(f.check(delta(0.04, 0.0, -0.04), at(x=0.78, z=0.01)))
    assert 0.78 + cmd.velocity.linear[0] * 0.2 == pytest.approx(0.8)
    assert 0.01 + cmd.velocity.linear[2] * 0.2 == pytest.approx(0.0)
    assert Adjustment.WORKSPACE_CUT in cmd.adjustments
    # Slightly outside (tracking error): pulled back onto the boundary.
    back = command(f.check(delta(), at(x=0.81)))
    assert 0.81 + back.velocity.linear[0] * 0.2 == pytest.approx(0.8)
    # Further out than one clamped step: refused.
    assert rejection(f.check(delta(-0.05), at(x=0.9))) is RejectReason.OUTSIDE_WORKSPACE


def test_heading_out_of_the_box() -> None:
    assert BOX.heading_out((0.81, 0.0, 0.3), (0.1, 0.0, 0.0))
    assert not BOX.heading_out((0.81, 0.0, 0.3), (-0.1, 0.0, 0.0))  # coming back in
    assert not BOX.heading_out((0.5, 0.0, 0.3), (0.4, 0.4, 0.4))  # inside
    assert BOX.heading_out((0.5, 0.0, -0.01), (0.0, 0.0, -0.01))


def test_box_is_shrunk_by_the_motion_since_the_pose_was_measured() -> None:
    f = SafetyFilter(replace(LIMITS, rate_limit_enabled=False))
    moving = Velocity((0.25, 0.0, 0.0), (0.0, 0.0, 0.0))
    cmd = command(f.check(delta(0.05), at(x=0.7, age=0.2), previous=moving))
    assert 0.7 + 0.25 * 0.2 + cmd.velocity.linear[0] * 0.2 == pytest.approx(0.8)


@pytest.mark.parametrize(("bad", "reason"), [
    (delta(math.nan), RejectReason.NON_FINITE),
    (delta(rot=(0.0, math.inf, 0.0)), RejectReason.NON_FINITE),
    (delta(gripper=math.nan), RejectReason.NON_FINITE),
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


# -- filter: 10,000 generated deltas ----------------------------------------------------
SPECIAL = [math.nan, math.inf, -math.inf, 1e300, -1e300, 1e-300, 5e-324, 0.0, -0.0, 0.05, 0.049999, -0.0500001,
           0.25, -0.25, 0.3, -7.0]
BAD_PERIODS = [0.0, -0.2, 1e-9, 0.019, 5.0, math.nan, math.inf]
BAD_AGES = [0.51, -1.0, 1e9, math.nan]
EDGE_COORDINATES = [0.2, 0.8, 0.0, 0.6, -0.5, 0.5, 0.79999, 0.81, 0.19, 0.95]
N = 50  # deltas per generated sequence; 200 sequences = 10,000 deltas
LIMIT_SETS = [LIMITS, replace(LIMITS, rate_limit_enabled=False), replace(LIMITS, clamp_enabled=False),
              replace(LIMITS, workspace=None, max_linear_speed=0.1)]


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


def check_invariants(limits: SafetyLimits, d: Delta, pose: Pose | None, previous: Velocity,
                     cmd: Command) -> None:
    numbers = [*cmd.velocity.linear, *cmd.velocity.angular]
    assert all(math.isfinite(v) for v in numbers)
    assert cmd.duration_s == d.step_period_s
    linear_cap, angular_cap = limits.speed_caps(d.step_period_s)
    assert linear_cap <= limits.max_linear_speed and angular_cap <= limits.max_angular_speed
    assert all(abs(v) <= linear_cap * (1 + EPS) for v in cmd.velocity.linear)
    assert all(abs(v) <= angular_cap * (1 + EPS) for v in cmd.velocity.angular)
    if limits.clamp_enabled:
        assert all(abs(v * d.step_period_s) <= limits.max_linear_step + EPS for v in cmd.velocity.linear)
        assert all(abs(v * d.step_period_s) <= limits.max_angular_step + EPS for v in cmd.velocity.angular)
    if limits.workspace is not None:
        assert pose is not None
        target = [p + v * d.step_period_s for p, v in zip(pose.position, cmd.velocity.linear, strict=True)]
        assert limits.workspace.contains(target, tolerance=EPS), (pose, cmd, target)
    if limits.rate_limit_enabled:
        period = d.step_period_s
        for axis, (v, prev) in enumerate(zip(numbers, [*previous.linear, *previous.angular], strict=True)):
            change = limits.max_linear_speed_change if axis < 3 else limits.max_angular_speed_change
            cap = linear_cap if axis < 3 else angular_cap
            pinned = [-cap, cap]  # over the rate limit only when pinned to a clamp or the box (they win)
            if axis < 3 and limits.workspace is not None and pose is not None:
                lo, p, hi = limits.workspace.minimum[axis], pose.position[axis], limits.workspace.maximum[axis]
                drift = abs(prev) * max(pose.age_s, 0.0)
                pinned += [(lo - p + drift) / period, (hi - p - drift) / period]
            assert abs(v - prev) <= change + EPS or min(abs(v - b) for b in pinned) <= EPS, (axis, v, prev)

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
            check_invariants(limits, d, pose, previous, result)
            if pose_item == "tracked":
                arm = tuple(p + v * d.step_period_s for p, v in zip(arm, result.velocity.linear, strict=True))
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
