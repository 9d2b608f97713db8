"""The ROS-free safety core of the servo bridge: what may be sent to MoveIt Servo, and when.

* :class:`SafetyFilter` turns one end-effector step (plus the current EE position and the
  velocity being streamed now) into a :class:`Command` (a target velocity in speed units),
  or a :class:`Rejection` with a reason. Pure: no clock, no state.
* :class:`CommandStream` decides, on each stream tick, whether a velocity (ramped towards
  the target under the acceleration limit), a zero twist or nothing goes out;
  :class:`Watchdog` bounds how long after the last accepted delta it may move. Clock-injected.
* :class:`EStopLatch`: an e-stop that stays engaged until reset, and refuses a reset while
  its input is still asserted.

The rules, in the order they are applied:

1. Reject a malformed step: non-finite numbers, a gripper outside [0, 1], a step period
   outside the limits, a stale (or future) stamp.
2. Speed caps, on the vector: the linear velocity ``v = delta / T`` is scaled as a whole
   (direction kept) so that ``|v| <= min(max_linear_speed, max_linear_step / T)`` and, where
   per-axis caps are set, ``|v_i| <= cap_i`` on every axis; the same for the angular
   velocity. The speed caps (Servo's ``scale``) always apply; the step clamp can be off.
3. Workspace box on the predicted target ``p + v (T + overrun)`` (``step_overrun_s``, below):
   per axis, a step that would leave the
   box is cut so the target lands on the boundary (this may change the direction). The box
   is shrunk by the distance the arm may have moved since the pose was measured. An EE
   outside the box is pulled back only if one capped step reaches the box; further out,
   the step is rejected (``OUTSIDE_WORKSPACE``). Without a fresh pose: ``NO_POSE`` /
   ``STALE_POSE``. The caps of rule 2 hold after the cut.
4. Acceleration, per unit of elapsed time, on every streamed sample (:func:`ramp`): the
   velocity moves towards the target by at most ``max_acceleration * dt`` (linear and
   angular separately, as vectors), ``dt`` being the time since the previous sample (at most
   one tick). Braking is never delayed: any part of the change that only scales the previous
   velocity towards zero is free, so stops, zero twists and slower targets act at once.
5. Overrun: a step's velocity may go on for ``step_overrun_s`` past its period (never past the
   watchdog) so that the next step, computed while this one moves, takes over from it instead of
   from rest. Without it a policy whose answer comes a few milliseconds after the step's end
   makes the arm stop, send zeros and ramp up again under the acceleration limit on every step
   (at 10 Hz with 1 m/s^2 that is about half the commanded speed). The overrun is part of the
   workspace check (rule 3); a step that is not followed moves at most ``v * step_overrun_s``
   further than it asked for. Servo itself holds a twist until its ``incoming_command_timeout``.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from magma_ros.conventions import delta_to_twist

Vec3 = tuple[float, float, float]
Clock = Callable[[], float]
NO_CAP = (math.inf, math.inf, math.inf)


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
    OUT_OF_RANGE = "out_of_range"
    BAD_STAMP = "bad_stamp"
    BAD_STEP_PERIOD = "bad_step_period"
    STALE_DELTA = "stale_delta"
    FRAME_MISMATCH = "frame_mismatch"
    NO_POSE = "no_pose"
    STALE_POSE = "stale_pose"
    OUTSIDE_WORKSPACE = "outside_workspace"
    ESTOP = "estop"
    INTERNAL_ERROR = "internal_error"


class Adjustment(enum.Enum):
    CLAMPED = "clamped"
    WORKSPACE_CUT = "workspace_cut"


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
    """A safe target velocity to stream for ``duration_s``; ``adjustments`` says what the filter changed."""

    velocity: Velocity
    duration_s: float
    adjustments: frozenset[Adjustment]


@dataclass(frozen=True)
class Rejection:
    reason: RejectReason
    detail: str


def _finite(values: Sequence[float]) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def norm(vector: Sequence[float]) -> float:
    """Euclidean norm (math.hypot: no overflow in the squares; inf only if the norm itself is beyond float)."""
    return math.hypot(*vector)


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
    """What the filter and the stream allow. Linear in m, angular in rad, base frame.

    Speed and step limits bound the vector norm; ``*_axis_speeds`` add per-axis caps (inf = none).
    """

    max_linear_step: float = 0.05
    max_angular_step: float = 0.25
    max_linear_speed: float = 0.4
    max_angular_speed: float = 0.8
    linear_axis_speeds: Vec3 = NO_CAP
    angular_axis_speeds: Vec3 = NO_CAP
    clamp_enabled: bool = True
    max_linear_acceleration: float = 1.0
    max_angular_acceleration: float = 3.0
    acceleration_limit_enabled: bool = True
    workspace: WorkspaceBox | None = WorkspaceBox((0.15, -0.6, 0.02), (0.85, 0.6, 0.9))  # None = no box
    max_pose_age_s: float = 0.25
    max_delta_age_s: float = 0.5
    min_step_period_s: float = 0.02
    max_step_period_s: float = 1.0
    step_overrun_s: float = 0.0

    def __post_init__(self) -> None:
        positive = {name: getattr(self, name) for name in (
            "max_linear_step", "max_angular_step", "max_linear_speed", "max_angular_speed",
            "max_linear_acceleration", "max_angular_acceleration", "max_pose_age_s", "max_delta_age_s",
            "min_step_period_s", "max_step_period_s")}
        bad = {name: value for name, value in positive.items()
               if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0)}
        if bad:
            raise SafetyConfigError(f"limits must be finite and > 0, got {bad}")
        for name in ("linear_axis_speeds", "angular_axis_speeds"):
            caps = getattr(self, name)
            if len(caps) != 3 or not all(isinstance(c, (int, float)) and not math.isnan(c) and c > 0 for c in caps):
                raise SafetyConfigError(f"{name} must be three numbers > 0 (inf = no cap), got {caps}")
        if not (isinstance(self.step_overrun_s, (int, float)) and 0.0 <= self.step_overrun_s <= 1.0):
            raise SafetyConfigError(f"step_overrun_s must be in [0, 1] s, got {self.step_overrun_s}")
        if self.min_step_period_s >= self.max_step_period_s:
            raise SafetyConfigError(f"min_step_period_s ({self.min_step_period_s}) must be below "
                                    f"max_step_period_s ({self.max_step_period_s})")

    def speed_caps(self, step_period_s: float) -> tuple[float, float]:
        """Largest linear and angular speed (vector norm) for a step of this period."""
        linear, angular = self.max_linear_speed, self.max_angular_speed
        if self.clamp_enabled:
            linear = min(linear, self.max_linear_step / step_period_s)
            angular = min(angular, self.max_angular_step / step_period_s)
        return linear, angular

    def cap(self, velocity: Velocity, step_period_s: float) -> Velocity:
        """``velocity`` scaled down (direction kept) to the caps for this step period."""
        linear_cap, angular_cap = self.speed_caps(step_period_s)
        linear = _scale_to(velocity.linear, linear_cap, self.linear_axis_speeds)
        angular = _scale_to(velocity.angular, angular_cap, self.angular_axis_speeds)
        return Velocity(linear, angular)


def _scale_factor(vector: Sequence[float], norm_cap: float, axis_caps: Sequence[float]) -> float:
    """The largest s <= 1 with |s v| <= norm_cap and |s v_i| <= axis_caps[i] (finite v, any magnitude)."""
    biggest = max(abs(v) for v in vector)
    if biggest == 0:
        return 1.0
    unit_length = math.hypot(*(v / biggest for v in vector))  # in [1, sqrt(3)]: |v| = biggest * unit_length
    factor = min(1.0, (norm_cap / biggest) / unit_length)
    for value, cap in zip(vector, axis_caps, strict=True):
        if abs(value) * factor > cap:
            factor = cap / abs(value)
    return factor


def _scale_to(vector: Sequence[float], norm_cap: float, axis_caps: Sequence[float]) -> Vec3:
    factor = _scale_factor(vector, norm_cap, axis_caps)
    return tuple(v * factor for v in vector)  # type: ignore[return-value]


def _clip(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def ramp(current: Sequence[float], target: Sequence[float], max_change: float) -> Vec3:
    """One sample from ``current`` towards ``target``: braking is free, any other change <= ``max_change``.

    The free part is the point of the segment [0, current] nearest the target (current scaled
    towards zero); from there the sample moves towards the target by at most ``max_change``.
    """
    length_sq = sum(c * c for c in current)
    scale = 0.0
    if length_sq > 0:
        scale = _clip(sum(c * t for c, t in zip(current, target, strict=True)) / length_sq, 0.0, 1.0)
    base = [c * scale for c in current]
    step = [t - b for t, b in zip(target, base, strict=True)]
    distance = norm(step)
    if distance <= max_change:
        return tuple(float(t) for t in target)  # type: ignore[return-value]
    fraction = max_change / distance
    return tuple(b + s * fraction for b, s in zip(base, step, strict=True))  # type: ignore[return-value]


def non_braking_change(previous: Sequence[float], current: Sequence[float]) -> float:
    """The part of the change from ``previous`` to ``current`` that :func:`ramp` limits (for checks)."""
    length_sq = sum(p * p for p in previous)
    scale = 0.0
    if length_sq > 0:
        scale = _clip(sum(p * c for p, c in zip(previous, current, strict=True)) / length_sq, 0.0, 1.0)
    return norm([c - p * scale for p, c in zip(previous, current, strict=True)])


class SafetyFilter:
    """Per-step checks of an end-effector delta; see the module docstring for the rules."""

    def __init__(self, limits: SafetyLimits) -> None:
        self.limits = limits

    def check(self, delta: Delta, pose: Pose | None, previous: Velocity = ZERO) -> Command | Rejection:
        """A safe target for ``delta``, or why there is none.

        ``pose`` is the latest EE measurement (None when none is known); ``previous`` bounds the
        velocity streamed since that measurement (per axis; ZERO when stopped).
        """
        lim = self.limits
        numbers = [*delta.translation, *delta.rotation, delta.gripper, delta.step_period_s, delta.age_s]
        if len(delta.translation) != 3 or len(delta.rotation) != 3 or not _finite(numbers):
            return Rejection(RejectReason.NON_FINITE, f"non-finite or malformed delta {numbers}")
        if not 0.0 <= delta.gripper <= 1.0:
            return Rejection(RejectReason.OUT_OF_RANGE, f"gripper {delta.gripper} is outside [0, 1]")
        period = delta.step_period_s
        if not lim.min_step_period_s <= period <= lim.max_step_period_s:
            return Rejection(RejectReason.BAD_STEP_PERIOD, f"step period {period} s is outside "
                             f"[{lim.min_step_period_s}, {lim.max_step_period_s}]")
        if abs(delta.age_s) > lim.max_delta_age_s:
            return Rejection(RejectReason.STALE_DELTA, f"delta stamp is {delta.age_s:.3f} s from now "
                             f"(max {lim.max_delta_age_s} s)")
        linear_cap, angular_cap = lim.speed_caps(period)
        adjustments: set[Adjustment] = set()
        # Scale the step itself (not delta / T, which may overflow to inf for huge finite steps).
        linear_factor = _scale_factor(delta.translation, linear_cap * period, [c * period for c in
                                                                              lim.linear_axis_speeds])
        angular_factor = _scale_factor(delta.rotation, angular_cap * period, [c * period for c in
                                                                             lim.angular_axis_speeds])
        if linear_factor < 1.0 or angular_factor < 1.0:
            adjustments.add(Adjustment.CLAMPED)
        # the shared step -> twist convention (magma_ros.conventions), which training labels also follow
        linear_v, angular_v = delta_to_twist([*(d * linear_factor for d in delta.translation),
                                              *(d * angular_factor for d in delta.rotation)], period)
        linear = [float(v) for v in linear_v]
        angular = tuple(float(v) for v in angular_v)
        if lim.workspace is not None:
            bounds = self._workspace_bounds(lim.workspace, pose, previous, period)
            if isinstance(bounds, Rejection):
                return bounds
            cut = self._fit_box(linear, bounds, linear_cap)
            if isinstance(cut, Rejection):
                return cut
            if cut != linear:
                adjustments.add(Adjustment.WORKSPACE_CUT)
            linear = cut
        return Command(Velocity(tuple(linear), angular), period, frozenset(adjustments))  # type: ignore[arg-type]

    def _workspace_bounds(self, box: WorkspaceBox, pose: Pose | None, previous: Velocity,
                          period: float) -> list[tuple[float, float]] | Rejection:
        """Per linear axis, the speeds whose target stays in the (uncertainty-shrunk) box, within the axis caps."""
        lim = self.limits
        if pose is None:
            return Rejection(RejectReason.NO_POSE, "no end-effector pose known for the workspace check")
        if len(pose.position) != 3 or not _finite([*pose.position, pose.age_s]):
            return Rejection(RejectReason.NON_FINITE, f"non-finite end-effector pose {pose}")
        if abs(pose.age_s) > lim.max_pose_age_s:
            return Rejection(RejectReason.STALE_POSE, f"end-effector pose is {pose.age_s:.3f} s old "
                             f"(max {lim.max_pose_age_s} s)")
        bounds = []
        for lo, p, hi, v_prev, cap in zip(box.minimum, pose.position, box.maximum, previous.linear,
                                          lim.linear_axis_speeds, strict=True):
            drift = abs(v_prev) * max(pose.age_s, 0.0)
            horizon = period + lim.step_overrun_s   # the step may go on for the overrun (rule 5)
            bounds.append((max((lo - p + drift) / horizon, -cap), min((hi - p - drift) / horizon, cap)))
        return bounds

    def _fit_box(self, linear: list[float], bounds: list[tuple[float, float]],
                 linear_cap: float) -> list[float] | Rejection:
        """The velocity nearest ``linear`` (per axis) inside the box bounds and within the norm cap."""
        nearest = [_clip(0.0, low, high) for low, high in bounds]  # slowest velocity that reaches the box
        if any(low > high for low, high in bounds) or norm(nearest) > linear_cap:
            axis = next((i for i, (low, high) in enumerate(bounds) if low > 0 or high < 0), 0)
            return Rejection(RejectReason.OUTSIDE_WORKSPACE,
                             f"end effector is outside the workspace on {'xyz'[axis]} by more than one capped step")
        cut = [_clip(v, low, high) for v, (low, high) in zip(linear, bounds, strict=True)]
        if norm(cut) <= linear_cap:
            return cut
        # Pulling back from outside raised some component: walk from `nearest` (in the box, under
        # the cap) towards `cut` (in the box, over the cap) up to the cap; the box is convex.
        d = [c - n for c, n in zip(cut, nearest, strict=True)]
        a = sum(x * x for x in d)
        b = 2 * sum(n * x for n, x in zip(nearest, d, strict=True))
        c = sum(n * n for n in nearest) - linear_cap ** 2
        t = _clip((-b + math.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a), 0.0, 1.0) if a > 0 else 0.0
        return [n + t * x for n, x in zip(nearest, d, strict=True)]


class Watchdog:
    """Expires when it was not fed within ``timeout_s`` (and before the first feed)."""

    def __init__(self, timeout_s: float, clock: Clock = time.monotonic) -> None:
        self._check(timeout_s)
        self.timeout_s = timeout_s
        self._clock = clock
        self._fed_at: float | None = None
        self._deadline = -math.inf

    @staticmethod
    def _check(timeout_s: float) -> None:
        if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
            raise SafetyConfigError(f"watchdog timeout must be finite and > 0, got {timeout_s}")

    def feed(self, age_s: float = 0.0) -> None:
        """Fresh input arrived; ``age_s`` > 0 says it was produced that long ago (counts against the timeout)."""
        self._fed_at = self._clock() - (age_s if math.isfinite(age_s) and age_s > 0 else 0.0)
        self._deadline = self._fed_at + self.timeout_s

    def set_timeout(self, timeout_s: float) -> None:
        """A new timeout from the next feed; a shorter one also cuts the deadline running now."""
        self._check(timeout_s)
        self.timeout_s = timeout_s
        if self._fed_at is not None:
            self._deadline = min(self._deadline, self._fed_at + timeout_s)

    @property
    def deadline(self) -> float:
        """Clock time at which it expires (-inf before the first feed)."""
        return self._deadline

    def expired(self) -> bool:
        return self._clock() > self.deadline

    def reset(self) -> None:
        self._fed_at = None
        self._deadline = -math.inf


class StreamEnd(enum.Enum):
    STEP_DONE = "step_done"
    WATCHDOG = "watchdog"
    STOPPED = "stopped"


@dataclass(frozen=True)
class AccelerationLimit:
    """Largest non-braking change of the streamed velocity per second: m/s^2 and rad/s^2."""

    linear: float
    angular: float

    def __post_init__(self) -> None:
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in (self.linear, self.angular)):
            raise SafetyConfigError(f"accelerations must be finite and > 0, got {self.linear} / {self.angular}")


def _checked_overrun(overrun_s: float) -> float:
    if not (math.isfinite(overrun_s) and overrun_s >= 0):
        raise SafetyConfigError(f"need overrun_s >= 0, got {overrun_s}")
    return overrun_s


class CommandStream:
    """What goes to Servo on each tick: the command for one step period, a few zeros, then nothing.

    A message sent at time t is what Servo executes until the next tick, so the command is
    sent only while ``t + tick_period_s`` is within its deadline: the earlier of the step's
    end plus ``overrun_s`` (rule 5 of the module docstring) and the watchdog's. Then
    ``zero_messages`` zero twists, then silence. A command that starts while the previous one is
    still streaming (or in its overrun) ramps from the velocity last sent. Each sample
    approaches the command's target under ``acceleration`` (see :func:`ramp`), over the time
    since the previous sample, at most one tick.
    """

    def __init__(self, tick_period_s: float, zero_messages: int, watchdog: Watchdog | None = None,
                 clock: Clock = time.monotonic, acceleration: AccelerationLimit | None = None,
                 overrun_s: float = 0.0) -> None:
        if not (math.isfinite(tick_period_s) and tick_period_s > 0) or zero_messages < 1:
            raise SafetyConfigError(f"need tick_period_s > 0 and zero_messages >= 1, got {tick_period_s} / "
                                    f"{zero_messages}")
        self.tick_period_s = tick_period_s
        self.overrun_s = _checked_overrun(overrun_s)
        self._next_overrun_s = overrun_s
        self.zero_messages = zero_messages
        self.watchdog = watchdog
        self.acceleration = acceleration
        self._next_acceleration = acceleration
        self._clock = clock
        self._target = ZERO
        self._duration_s = 0.0
        self._sent = ZERO
        self._sent_at = -math.inf  # sample time of the last message (the clock of next_message's `at`)
        self._step_end = -math.inf
        self._zeros_left = 0
        self.ends: dict[StreamEnd, int] = dict.fromkeys(StreamEnd, 0)
        self.limited_samples = 0

    @property
    def velocity(self) -> Velocity:
        """The target being commanded now (ZERO when stopping or silent)."""
        return self._target

    @property
    def sent(self) -> Velocity:
        """The last velocity sent."""
        return self._sent

    @property
    def speed_bound(self) -> Velocity:
        """Per axis, the larger magnitude of the last sample and the target: how fast the arm may be moving."""
        def bound(a: Vec3, b: Vec3) -> Vec3:
            return tuple(max(abs(x), abs(y)) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]
        return Velocity(bound(self._sent.linear, self._target.linear), bound(self._sent.angular,
                                                                              self._target.angular))

    @property
    def active(self) -> bool:
        """Whether anything (command or zeros) is still to be sent."""
        return not self._target.is_zero() or self._zeros_left > 0

    def start(self, command: Command, age_s: float = 0.0) -> None:
        """Stream ``command`` from now, replacing whatever was streaming (a zero command stops it).

        ``age_s``: how long ago the command's input was published; the watchdog counts from then.
        """
        if self.watchdog is not None:
            self.watchdog.feed(age_s)
        self.acceleration = self._next_acceleration
        self.overrun_s = self._next_overrun_s
        if command.velocity.is_zero():
            self.stop(StreamEnd.STEP_DONE)
            return
        self._step_end = self._clock() + command.duration_s
        self._target = command.velocity
        self._duration_s = command.duration_s
        self._zeros_left = 0

    def set_acceleration(self, acceleration: AccelerationLimit | None) -> None:
        """New acceleration limits: from the next command; a lower one also at once (never a faster ramp
        towards a target already accepted)."""
        self._next_acceleration = acceleration
        if acceleration is None or self.acceleration is None:
            return
        self.acceleration = AccelerationLimit(min(self.acceleration.linear, acceleration.linear),
                                              min(self.acceleration.angular, acceleration.angular))

    def set_overrun(self, overrun_s: float) -> None:
        """A new overrun: from the next command (checked against the workspace with it); a shorter one also
        at once."""
        self._next_overrun_s = _checked_overrun(overrun_s)
        self.overrun_s = min(self.overrun_s, overrun_s)

    def restrict(self, limit: Callable[[Velocity, float], Velocity]) -> None:
        """Apply tighter limits to the stream in flight: ``limit(velocity, step_period)`` for the target and the
        last sample (so the next sample obeys them; lowering a velocity is braking)."""
        if not self._target.is_zero():
            self._target = limit(self._target, self._duration_s)
            self._sent = limit(self._sent, self._duration_s)

    def stop(self, why: StreamEnd = StreamEnd.STOPPED) -> None:
        """End the command now; the zero twists follow (only if something was streaming)."""
        if self.active:
            if not self._target.is_zero():
                self.ends[why] += 1
            self._target = ZERO
            self._zeros_left = self.zero_messages

    def silence(self, at: float | None = None) -> None:
        """Forget everything still to be sent (the caller already sent its zeros, the last one at ``at``,
        in :meth:`next_message`'s sample time; default now)."""
        self._target = ZERO
        self._sent = ZERO
        self._sent_at = self._clock() if at is None else at
        self._zeros_left = 0

    def next_message(self, at: float | None = None) -> Velocity | None:
        """Call once per tick: the velocity to send now, or None to send nothing.

        ``at``: the sample's time (seconds, e.g. its header stamp) for the acceleration limit;
        default the stream's clock. Deadlines always use the stream's clock.
        """
        now = self._clock()
        at = now if at is None else at
        if not self._target.is_zero():
            watchdog_end = self.watchdog.deadline if self.watchdog is not None else math.inf
            step_end = self._step_end + self.overrun_s
            end = min(step_end, watchdog_end)
            if now + self.tick_period_s <= end:
                return self._sample(self._ramped(at), at)
            self.stop(StreamEnd.WATCHDOG if watchdog_end < step_end else StreamEnd.STEP_DONE)
        if self._zeros_left > 0:
            self._zeros_left -= 1
            return self._sample(ZERO, at)
        return None

    def _ramped(self, at: float) -> Velocity:
        target = self._target
        if self.acceleration is None:
            return target
        dt = _clip(at - self._sent_at, 0.0, self.tick_period_s) if math.isfinite(self._sent_at) \
            else self.tick_period_s
        sample = Velocity(ramp(self._sent.linear, target.linear, self.acceleration.linear * dt),
                          ramp(self._sent.angular, target.angular, self.acceleration.angular * dt))
        if sample != target:
            self.limited_samples += 1
        return sample

    def _sample(self, velocity: Velocity, at: float) -> Velocity:
        self._sent, self._sent_at = velocity, at
        return velocity


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
