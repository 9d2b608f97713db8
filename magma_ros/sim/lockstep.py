"""Synchronous stepping: simulated time moves one control period per answered observation.

ROS-free and clock-injected (wall seconds passed in), so it is tested without ROS.

The protocol ``sim_arm_node`` runs in synchronous mode, one control step at a time:

1. The sim publishes an observation (camera, joint states, EE pose) at clock time t and
   calls :meth:`LockstepGate.observation_published`. Simulated time stands still.
2. Whatever answers sends twist and (optionally) gripper commands. The first twist of the
   answer is the command for the step; the last gripper command is the gripper's. When the
   answer is complete depends on the sender (``end``):

   * ``"zero_twist"`` (a Servo bridge): the bridge re-sends its twist at 50 Hz for one step
     period, then sends zero twists. The answer opens with the first non-zero twist and is
     complete at the zero that ends that stream; zeros never open an answer (they are the
     tail of the previous one). No wall-clock guess is involved, so a starved executor makes
     the run slower, never different.
   * ``"first_twist"`` (a teleop sending one twist per observation, its gripper command, if
     any, before it; or a Servo bridge with ``synchronous_stream``, which answers each step at
     once: gripper command, then the step's twist): the answer is complete at its first
     twist, zero or not. A twist stamped before the observation is the tail of an older answer
     and is ignored. Nothing waits on the wall clock.
   * ``"quiet"`` (a teleop whose order is unknown): the answer is complete once a twist has
     arrived and no command followed for ``quiet_s`` wall seconds.

   The sim steps from the callback that completed the answer (:meth:`LockstepGate.poll` right
   after :meth:`LockstepGate.on_twist`), not from a polling timer.

   Either way an answer that never completes is cut ``timeout_s`` after it began.
3. :meth:`LockstepGate.poll` then hands back a :class:`StepCommand`. If no twist answers
   within ``timeout_s``, the step runs with no new twist (the arm halts, as Servo does when its
   input goes quiet) and any gripper command that did arrive.

The sim executes the command (Servo semantics still apply to its stamp) and advances one
control period; then the next observation. Given a deterministic policy, the same seed
gives the same trajectory however slowly the policy answers.
"""

from __future__ import annotations

import enum
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from magma_ros.sim.errors import ConfigError

ANSWER_ENDS = ("zero_twist", "first_twist", "quiet")


class GateState(enum.Enum):
    HOLDING = "holding"  # no observation outstanding (paused, or the episode is over)
    AWAITING = "awaiting"  # observation published, no twist of its answer yet
    COLLECTING = "collecting"  # an answer is arriving


@dataclass(frozen=True)
class StepCommand:
    """What one control step executes: a twist and a gripper command, either may be None.

    ``twist`` and ``gripper`` are whatever the caller fed in (message-like objects);
    ``timed_out`` says no complete answer came within the timeout.
    """

    twist: Any | None
    gripper: Any | None
    timed_out: bool
    commands: int


class LockstepGate:
    """Decides when a synchronous step may run; thread-safe (callbacks feed it, a timer polls).

    ``is_zero(twist)`` tells a zero twist (needed for ``end="zero_twist"``).
    """

    def __init__(self, timeout_s: float, quiet_s: float, end: str = "zero_twist",
                 is_zero: Callable[[Any], bool] = lambda twist: not any(twist)) -> None:
        for name, value in (("timeout_s", timeout_s), ("quiet_s", quiet_s)):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"lockstep {name} must be finite and > 0, got {value}")
        if quiet_s >= timeout_s:
            raise ConfigError(f"lockstep quiet_s ({quiet_s}) must be shorter than timeout_s ({timeout_s})")
        if end not in ANSWER_ENDS:
            raise ConfigError(f"lockstep end must be one of {', '.join(ANSWER_ENDS)}, got {end!r}")
        self.timeout_s = timeout_s
        self.quiet_s = quiet_s
        self.end = end
        self.is_zero = is_zero
        self._lock = threading.Lock()
        self.state = GateState.HOLDING
        self._published_at = 0.0
        self._first_at = 0.0
        self._last_at = 0.0
        self._complete = False
        self._twist: Any | None = None
        self._gripper: Any | None = None
        self._count = 0
        self._stamp_ns: int | None = None
        self.ignored = 0  # commands that belong to no answer (holding, or a stream's tail)

    def observation_published(self, now: float, stamp_ns: int | None = None) -> None:
        """An observation (stamped ``stamp_ns``, if given) is out: wait for its answer from ``now``."""
        with self._lock:
            self.state = GateState.AWAITING
            self._published_at = now
            self._stamp_ns = stamp_ns
            self._complete = False
            self._twist = self._gripper = None
            self._count = 0

    def hold(self) -> None:
        """Stop stepping (pause, episode over): later commands are ignored until the next observation."""
        with self._lock:
            self.state = GateState.HOLDING
            self._twist = self._gripper = None

    def on_twist(self, twist: Any, now: float, stamp_ns: int | None = None) -> None:
        """A twist arrived at wall time ``now``; with ``first_twist``, ``stamp_ns`` (its header stamp) tells
        the tail of an older answer apart."""
        with self._lock:
            if self.state is GateState.HOLDING or self._complete:
                self.ignored += 1
                return
            if self.end == "first_twist" and stamp_ns is not None and self._stamp_ns is not None \
                    and stamp_ns < self._stamp_ns:
                self.ignored += 1  # stamped before the observation: it answers an older one
                return
            zero = self.is_zero(twist)
            if self.state is GateState.AWAITING:
                if zero and self.end == "zero_twist":
                    self.ignored += 1  # the tail of the last stream
                    return
                self.state = GateState.COLLECTING
                self._first_at = now
                self._twist = twist
                self._complete = self.end == "first_twist"
            elif zero and self.end == "zero_twist":
                self._complete = True
            self._last_at = now
            self._count += 1

    def on_gripper(self, gripper: Any, now: float) -> None:
        with self._lock:
            if self.state is GateState.HOLDING or self._complete:
                self.ignored += 1
                return
            self._gripper = gripper
            self._last_at = now
            self._count += 1

    def poll(self, now: float) -> StepCommand | None:
        """The command to step with, once the answer is complete or timed out; else None."""
        with self._lock:
            if self.state is GateState.COLLECTING:
                quiet = self.end == "quiet" and now - self._last_at >= self.quiet_s
                endless = now - self._first_at >= self.timeout_s
                if not (self._complete or quiet or endless):
                    return None
                command = StepCommand(self._twist, self._gripper, endless and not (self._complete or quiet),
                                      self._count)
            elif self.state is GateState.AWAITING and now - self._published_at >= self.timeout_s:
                command = StepCommand(None, self._gripper, True, self._count)
            else:
                return None
            self.state = GateState.HOLDING
            self._twist = self._gripper = None
            return command
