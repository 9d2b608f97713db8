"""The ROS-free safety core of the servo bridge: what may be sent to MoveIt Servo, and when.

* :class:`SafetyFilter` turns one end-effector step (plus the current EE position and the
  velocity being streamed now) into a :class:`Command` in speed units, or a
  :class:`Rejection` with a reason. Pure: no clock, no state.
* :class:`Watchdog` and :class:`CommandStream` decide, on each stream tick, whether the
  current command, a zero twist or nothing goes out. Clock-injected.
* :class:`EStopLatch`: an e-stop that stays engaged until reset, and refuses a reset while
  its input is still asserted.

Decisions, per axis of the base frame (so clamping and cutting may change the direction):

1. Reject non-finite numbers, a step period outside the limits, a stale (or future) stamp.
2. Clamp: ``|v| <= min(max_step / T, max_speed)`` with ``v = delta / T``. The speed caps
   (Servo's ``scale``) always apply; the per-step clamps can be turned off.
3. Workspace box on the predicted target ``p + v T``: a step that would leave the box is
   cut so the target lands on the boundary. The box is shrunk by the distance the arm may
   have moved since the pose was measured (``|v_prev| * pose_age``). An EE outside the box
   is pulled back only if one clamped step reaches the box; further out, the step is rejected
   (``OUTSIDE_WORKSPACE``) and the operator must recover the arm. Without a fresh pose the
   step is rejected (``NO_POSE`` / ``STALE_POSE``).
4. Rate limit: ``|v - v_prev| <= max_speed_change``. Clamp and box win over the rate limit:
   when they cannot all hold, the nearest speed the clamp and the box allow is taken.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

Vec3 = tuple[float, float, float]
Clock = Callable[[], float]


class SafetyError(Exception):
    """Root of the safety core's errors."""


class SafetyConfigError(SafetyError, ValueError):
    """Safety limits that do not make sense."""


class EStopAssertedError(SafetyError):
    """The e-stop input is still asserted, so the latch cannot be reset."""


class Velocity(NamedTuple):
    """A Cartesian velocity in the base frame: m/s and rad/s."""

    linear: Vec3
    angular: Vec3

    def is_zero(self) -> bool:
        return not any(self.linear) and not any(self.angular)


ZERO = Velocity((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))


class RejectReason(enum.Enum):
    NON_FINITE = "non_finite"
    BAD_STEP_PERIOD = "bad_step_period"
    STALE_DELTA = "stale_delta"
    FRAME_MISMATCH = "frame_mismatch"
    NO_POSE = "no_pose"
    STALE_POSE = "stale_pose"
    OUTSIDE_WORKSPACE = "outside_workspace"
    ESTOP = "estop"


class Adjustment(enum.Enum):
    CLAMPED = "clamped"
    WORKSPACE_CUT = "workspace_cut"
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True)
class Delta:
    """One end-effector step: metres and radians in the base frame, over ``step_period_s``."""

    translation: Vec3
    rotation: Vec3  # roll, pitch, yaw increments about the base axes
    gripper: float
    step_period_s: float
    age_s: float  # now - the source stamp


@dataclass(frozen=True)
class Pose:
    """The measured EE position in the base frame and how old the measurement is."""

    position: Vec3
    age_s: float


@dataclass(frozen=True)
class Command:
    """A safe velocity to stream for ``duration_s``; ``adjustments`` says what the filter changed."""

    velocity: Velocity
    duration_s: float
    adjustments: frozenset[Adjustment]


@dataclass(frozen=True)
class Rejection:
    reason: RejectReason
    detail: str


def _finite(values: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in values)


@dataclass(frozen=True)
class WorkspaceBox:
    """An axis-aligned box in the base frame (m)."""

    minimum: Vec3
    maximum: Vec3

    def __post_init__(self) -> None:
        if len(self.minimum) != 3 or len(self.maximum) != 3 or not _finite([*self.minimum, *self.maximum]):
            raise SafetyConfigError(f"workspace corners must be three finite numbers each, got "
                                    f"{self.minimum} / {self.maximum}")
        if not all(lo < hi for lo, hi in zip(self.minimum, self.maximum, strict=True)):
            raise SafetyConfigError(f"workspace minimum must be below maximum on every axis, got "
                                    f"{self.minimum} / {self.maximum}")

    def contains(self, point: Sequence[float], tolerance: float = 0.0) -> bool:
        return all(lo - tolerance <= p <= hi + tolerance
                   for lo, p, hi in zip(self.minimum, point, self.maximum, strict=True))

    def heading_out(self, point: Sequence[float], linear: Sequence[float]) -> bool:
        """Whether ``point`` is outside the box on some axis and ``linear`` moves it further out."""
        return any((p > hi and v > 0) or (p < lo and v < 0)
                   for lo, p, hi, v in zip(self.minimum, point, self.maximum, linear, strict=True))


@dataclass(frozen=True)
class SafetyLimits:
    """What the filter allows. Linear in m, angular in rad, per axis of the base frame."""

    max_linear_step: float = 0.05
    max_angular_step: float = 0.25
    max_linear_speed: float = 0.4
    max_angular_speed: float = 0.8
    clamp_enabled: bool = True
    max_linear_speed_change: float = 0.2
    max_angular_speed_change: float = 0.6
    rate_limit_enabled: bool = True
    workspace: WorkspaceBox | None = WorkspaceBox((0.15, -0.6, 0.02), (0.85, 0.6, 0.9))  # None = no box
    max_pose_age_s: float = 0.25
    max_delta_age_s: float = 0.5
    min_step_period_s: float = 0.02
    max_step_period_s: float = 1.0

    def __post_init__(self) -> None:
        positive = {name: getattr(self, name) for name in (
            "max_linear_step", "max_angular_step", "max_linear_speed", "max_angular_speed",
            "max_linear_speed_change", "max_angular_speed_change", "max_pose_age_s", "max_delta_age_s",
            "min_step_period_s", "max_step_period_s")}
        bad = {name: value for name, value in positive.items() if not (math.isfinite(value) and value > 0)}
        if bad:
            raise SafetyConfigError(f"limits must be finite and > 0, got {bad}")
        if self.min_step_period_s >= self.max_step_period_s:
            raise SafetyConfigError(f"min_step_period_s ({self.min_step_period_s}) must be below "
                                    f"max_step_period_s ({self.max_step_period_s})")

    def speed_caps(self, step_period_s: float) -> tuple[float, float]:
        """Largest per-axis linear and angular speed for a step of this period."""
        linear, angular = self.max_linear_speed, self.max_angular_speed
        if self.clamp_enabled:
            linear = min(linear, self.max_linear_step / step_period_s)
            angular = min(angular, self.max_angular_step / step_period_s)
        return linear, angular


def _clip(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def _limit_axis(raw: float, cap: float, box: tuple[float, float] | None, previous: float,
                max_change: float | None, adjustments: set[Adjustment]) -> float:
    """One axis: clamp, then the box, then the rate limit (clamp and box win)."""
    value = _clip(raw, -cap, cap)
    if value != raw:
        adjustments.add(Adjustment.CLAMPED)
    low, high = -cap, cap
    if box is not None:
        low, high = max(low, box[0]), min(high, box[1])  # non-empty: checked by the caller
        cut = _clip(value, low, high)
        if cut != value:
            adjustments.add(Adjustment.WORKSPACE_CUT)
        value = cut
    if max_change is not None:
        rate_low, rate_high = previous - max_change, previous + max_change
        if rate_low > high:
            rate_low = rate_high = high
        elif rate_high < low:
            rate_low = rate_high = low
        limited = _clip(value, max(low, rate_low), min(high, rate_high))
        if limited != value:
            adjustments.add(Adjustment.RATE_LIMITED)
        value = limited
    return value


class SafetyFilter:
    """Per-step checks of an end-effector delta; see the module docstring for the rules."""

    def __init__(self, limits: SafetyLimits) -> None:
        self.limits = limits

    def check(self, delta: Delta, pose: Pose | None, previous: Velocity = ZERO) -> Command | Rejection:
        """A safe command for ``delta``, or why there is none.

        ``pose`` is the latest EE measurement (None when none is known); ``previous`` is the
        velocity being streamed now (ZERO when the stream is stopped).
        """
        lim = self.limits
        numbers = [*delta.translation, *delta.rotation, delta.gripper, delta.step_period_s, delta.age_s]
        if len(delta.translation) != 3 or len(delta.rotation) != 3 or not _finite(numbers):
            return Rejection(RejectReason.NON_FINITE, f"non-finite or malformed delta {numbers}")
        period = delta.step_period_s
        if not lim.min_step_period_s <= period <= lim.max_step_period_s:
            return Rejection(RejectReason.BAD_STEP_PERIOD, f"step period {period} s is outside "
                             f"[{lim.min_step_period_s}, {lim.max_step_period_s}]")
        if abs(delta.age_s) > lim.max_delta_age_s:
            return Rejection(RejectReason.STALE_DELTA, f"delta stamp is {delta.age_s:.3f} s from now "
                             f"(max {lim.max_delta_age_s} s)")
        boxes: list[tuple[float, float] | None] = [None, None, None]
        if lim.workspace is not None:
            found = self._workspace_bounds(lim.workspace, pose, previous, period)
            if isinstance(found, Rejection):
                return found
            boxes = list(found)
        linear_cap, angular_cap = lim.speed_caps(period)
        linear_change = lim.max_linear_speed_change if lim.rate_limit_enabled else None
        angular_change = lim.max_angular_speed_change if lim.rate_limit_enabled else None
        adjustments: set[Adjustment] = set()
        linear = tuple(_limit_axis(d / period, linear_cap, box, prev, linear_change, adjustments)
                       for d, box, prev in zip(delta.translation, boxes, previous.linear, strict=True))
        angular = tuple(_limit_axis(d / period, angular_cap, None, prev, angular_change, adjustments)
                        for d, prev in zip(delta.rotation, previous.angular, strict=True))
        return Command(Velocity(linear, angular), period, frozenset(adjustments))  # type: ignore[arg-type]

    def _workspace_bounds(self, box: WorkspaceBox, pose: Pose | None, previous: Velocity,
                          period: float) -> list[tuple[float, float]] | Rejection:
        """Per linear axis, the speeds whose target stays in the (uncertainty-shrunk) box."""
        lim = self.limits
        if pose is None:
            return Rejection(RejectReason.NO_POSE, "no end-effector pose known for the workspace check")
        if not _finite([*pose.position, pose.age_s]):
            return Rejection(RejectReason.NON_FINITE, f"non-finite end-effector pose {pose}")
        if abs(pose.age_s) > lim.max_pose_age_s:
            return Rejection(RejectReason.STALE_POSE, f"end-effector pose is {pose.age_s:.3f} s old "
                             f"(max {lim.max_pose_age_s} s)")
        linear_cap, _ = lim.speed_caps(period)
        bounds = []
        for axis, (lo, p, hi, v_prev) in enumerate(zip(box.minimum, pose.position, box.maximum, previous.linear,
                                                       strict=True)):
            drift = abs(v_prev) * max(pose.age_s, 0.0)
            low, high = (lo - p + drift) / period, (hi - p - drift) / period
            if low > high or low > linear_cap or high < -linear_cap:
                return Rejection(RejectReason.OUTSIDE_WORKSPACE,
                                 f"end effector at {'xyz'[axis]}={p:.3f} m is outside the workspace "
                                 f"[{lo}, {hi}] by more than one step")
            bounds.append((low, high))
        return bounds


class Watchdog:
    """Expires when it was not fed within ``timeout_s`` (and before the first feed)."""

    def __init__(self, timeout_s: float, clock: Clock = time.monotonic) -> None:
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise SafetyConfigError(f"watchdog timeout must be finite and > 0, got {timeout_s}")
        self.timeout_s = timeout_s
        self._clock = clock
        self._fed_at: float | None = None

    def feed(self, age_s: float = 0.0) -> None:
        """Fresh input arrived; ``age_s`` > 0 says it was produced that long ago (counts against the timeout)."""
        self._fed_at = self._clock() - (age_s if math.isfinite(age_s) and age_s > 0 else 0.0)

    @property
    def deadline(self) -> float:
        """Clock time at which it expires (-inf before the first feed)."""
        return -math.inf if self._fed_at is None else self._fed_at + self.timeout_s

    def expired(self) -> bool:
        return self._clock() > self.deadline

    def reset(self) -> None:
        self._fed_at = None


class StreamEnd(enum.Enum):
    STEP_DONE = "step_done"
    WATCHDOG = "watchdog"
    STOPPED = "stopped"


class CommandStream:
    """What goes to Servo on each tick: the command for one step period, a few zeros, then nothing.

    A message sent at time t is what Servo executes until the next tick, so the command is
    sent only while ``t + tick_period_s`` is within its deadline: the earlier of the step's
    end and the watchdog's. Then ``zero_messages`` zero twists, then silence.
    """

    def __init__(self, tick_period_s: float, zero_messages: int, watchdog: Watchdog | None = None,
                 clock: Clock = time.monotonic) -> None:
        if not (math.isfinite(tick_period_s) and tick_period_s > 0) or zero_messages < 1:
            raise SafetyConfigError(f"need tick_period_s > 0 and zero_messages >= 1, got {tick_period_s} / "
                                    f"{zero_messages}")
        self.tick_period_s = tick_period_s
        self.zero_messages = zero_messages
        self.watchdog = watchdog
        self._clock = clock
        self._velocity = ZERO
        self._step_end = -math.inf
        self._zeros_left = 0
        self.ends: dict[StreamEnd, int] = dict.fromkeys(StreamEnd, 0)

    @property
    def velocity(self) -> Velocity:
        """The velocity being commanded now (ZERO when stopping or silent)."""
        return self._velocity

    @property
    def active(self) -> bool:
        """Whether anything (command or zeros) is still to be sent."""
        return not self._velocity.is_zero() or self._zeros_left > 0

    def start(self, command: Command, age_s: float = 0.0) -> None:
        """Stream ``command`` from now, replacing whatever was streaming (a zero command stops it).

        ``age_s``: how long ago the command's input was published; the watchdog counts from then.
        """
        if self.watchdog is not None:
            self.watchdog.feed(age_s)
        if command.velocity.is_zero():
            self.stop(StreamEnd.STEP_DONE)
            return
        self._step_end = self._clock() + command.duration_s
        self._velocity = command.velocity
        self._zeros_left = 0

    def stop(self, why: StreamEnd = StreamEnd.STOPPED) -> None:
        """End the command now; the zero twists follow (only if something was streaming)."""
        if self.active:
            if not self._velocity.is_zero():
                self.ends[why] += 1
            self._velocity = ZERO
            self._zeros_left = self.zero_messages

    def silence(self) -> None:
        """Forget everything still to be sent (the caller already sent its zeros)."""
        self._velocity = ZERO
        self._zeros_left = 0

    def next_message(self) -> Velocity | None:
        """Call once per tick: the velocity to send now, or None to send nothing."""
        if not self._velocity.is_zero():
            now = self._clock()
            watchdog_end = self.watchdog.deadline if self.watchdog is not None else math.inf
            end = min(self._step_end, watchdog_end)
            if now + self.tick_period_s <= end:
                return self._velocity
            self.stop(StreamEnd.WATCHDOG if watchdog_end < self._step_end else StreamEnd.STEP_DONE)
        if self._zeros_left > 0:
            self._zeros_left -= 1
            return ZERO
        return None


class EStopLatch:
    """An e-stop: any asserted input engages it; only :meth:`reset` (with the input released) clears it."""

    def __init__(self) -> None:
        self.engaged = False
        self.asserted = False
        self.trips = 0

    def update(self, asserted: bool) -> bool:
        """Feed the e-stop input; True when this call engaged the latch."""
        self.asserted = bool(asserted)
        if self.asserted and not self.engaged:
            self.engaged = True
            self.trips += 1
            return True
        return False

    def reset(self) -> None:
        """Clear the latch; raises EStopAssertedError while the input is still asserted."""
        if self.asserted:
            raise EStopAssertedError("the e-stop input is still asserted (publish false first)")
        self.engaged = False
