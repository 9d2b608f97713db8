"""Gripper conventions: raw labels in, decoded bin value -> binary command, hysteresis.

Magma's 7th action dimension is never normalized with the dataset statistics
(magma-reference.md, "Actions (7-DoF)"): the training label is the raw gripper command,
**0 = closed, 1 = open**, binned as it is (closed -> token ``V - 128``, open -> ``V - 256``),
and the decoded bin centre IS the gripper value (closed -> 0.0, open -> 0.996), never
remapped. Binarize at 0.5 (open iff the value is > 0.5, as SimplerEnv does for WidowX);
a :class:`GripperHysteresis` avoids chattering when the model hovers around the threshold.
"""

from __future__ import annotations

import math

from .errors import CodecError

__all__ = ["GRIPPER_THRESHOLD", "GripperHysteresis", "binarize_gripper", "gripper_label"]

GRIPPER_THRESHOLD = 0.5
"""A decoded gripper value above this is open, at or below it closed."""


def binarize_gripper(value: float, threshold: float = GRIPPER_THRESHOLD) -> float:
    """1.0 (open) when the decoded gripper ``value`` is ``> threshold``, else 0.0 (closed).

    Raises ``CodecError`` for a non-finite value.
    """
    v = float(value)
    if not math.isfinite(v):
        raise CodecError(f"gripper value must be finite, got {value!r}")
    return 1.0 if v > threshold else 0.0


def gripper_label(opening: float) -> float:
    """The training label of a gripper command ``opening`` (0 = closed .. 1 = open), clipped to ``[0, 1]``.

    The label is the raw value, not normalized (the codec bins it as it is). Raises
    ``CodecError`` for a non-finite value.
    """
    g = float(opening)
    if not math.isfinite(g):
        raise CodecError(f"gripper opening must be finite, got {opening!r}")
    return min(max(g, 0.0), 1.0)


class GripperHysteresis:
    """Binary gripper state with two thresholds, so values near one threshold don't chatter.

    ``update(g)`` with the decoded gripper value ``g`` (~0 closed, ~1 open): the gripper opens
    when ``g >= open_threshold`` and closes when ``g <= close_threshold``; in between it keeps
    its state. A non-finite ``g`` also keeps the state (hold the last command). Returns
    1.0 (open) or 0.0 (closed). Stateful: one instance per robot, ``reset()`` per episode.

    ``min_hold_steps`` > 0 is a dwell time: after the state changes it is kept for that many
    further updates, whatever they say (a "sticky" gripper, as SimplerEnv evaluates RT-1 and
    Octo). A policy that closes on the object and, one step later, seeing the fingers half
    shut, answers "open" would otherwise never finish the grasp it started.
    """

    def __init__(self, open_threshold: float = 0.6, close_threshold: float = 0.4, *,
                 initial_open: bool = True, min_hold_steps: int = 0) -> None:
        if not (math.isfinite(open_threshold) and math.isfinite(close_threshold)):
            raise CodecError(f"hysteresis thresholds must be finite, got open={open_threshold!r}, "
                             f"close={close_threshold!r}")
        if not close_threshold < open_threshold:
            raise CodecError(f"close_threshold ({close_threshold}) must be below open_threshold "
                             f"({open_threshold})")
        if isinstance(min_hold_steps, bool) or not isinstance(min_hold_steps, int) or min_hold_steps < 0:
            raise CodecError(f"min_hold_steps must be an integer >= 0, got {min_hold_steps!r}")
        self.open_threshold = float(open_threshold)
        self.close_threshold = float(close_threshold)
        self.min_hold_steps = min_hold_steps
        self._initial_open = bool(initial_open)
        self._is_open = self._initial_open
        self._hold_left = 0

    @property
    def is_open(self) -> bool:
        """Current state (True = open)."""
        return self._is_open

    def update(self, opening: float) -> float:
        """Feed the latest decoded gripper value; returns the resulting command (1.0 open, 0.0 closed)."""
        g = float(opening)
        if self._hold_left > 0:
            self._hold_left -= 1
        elif math.isfinite(g):
            was_open = self._is_open
            if g >= self.open_threshold:
                self._is_open = True
            elif g <= self.close_threshold:
                self._is_open = False
            if self._is_open != was_open:
                self._hold_left = self.min_hold_steps
        return 1.0 if self._is_open else 0.0

    @property
    def holding(self) -> bool:
        """True while a dwell (``min_hold_steps``) keeps the state whatever the updates say."""
        return self._hold_left > 0

    def release(self) -> None:
        """End a dwell now; the state stays (the next update may change it)."""
        self._hold_left = 0

    def reset(self, initial_open: bool | None = None) -> None:
        """Return to the initial state (or to ``initial_open`` when given)."""
        self._is_open = self._initial_open if initial_open is None else bool(initial_open)
        self._hold_left = 0
