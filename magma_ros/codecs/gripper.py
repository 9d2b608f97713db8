"""Gripper command conventions: normalized bin value -> 0..1 opening, binarization, hysteresis.

Magma's 7th action token is not un-normalized with the dataset statistics: its bin
centre ``n`` in ``[-1, 1]`` maps to ``g = (n + 1) / 2`` in ``[0, 1]`` with
**1 = open, 0 = closed**. Robots usually want a binary command (``g > 0.5``); a
:class:`GripperHysteresis` avoids chattering when the model hovers around the threshold.
"""

from __future__ import annotations

import math

from .errors import CodecError

__all__ = ["GripperHysteresis", "gripper_from_normalized", "gripper_to_normalized"]


def gripper_from_normalized(normalized: float, *, binarize: bool = False, threshold: float = 0.5) -> float:
    """Gripper opening in ``[0, 1]`` (1 = open) from a normalized value in ``[-1, 1]``.

    ``(n + 1) / 2`` clipped to ``[0, 1]``; with ``binarize`` returns 1.0 when that value
    is ``> threshold`` and 0.0 otherwise. Raises ``CodecError`` for a non-finite value.
    """
    n = float(normalized)
    if not math.isfinite(n):
        raise CodecError(f"normalized gripper value must be finite, got {normalized!r}")
    opening = min(max(0.5 * (n + 1.0), 0.0), 1.0)
    if binarize:
        return 1.0 if opening > threshold else 0.0
    return opening


def gripper_to_normalized(opening: float) -> float:
    """Normalized value ``2 * g - 1`` of a gripper opening ``g`` in ``[0, 1]`` (clipped first).

    Inverse of :func:`gripper_from_normalized` (without binarization); used to build
    training labels. Raises ``CodecError`` for a non-finite value.
    """
    g = float(opening)
    if not math.isfinite(g):
        raise CodecError(f"gripper opening must be finite, got {opening!r}")
    return 2.0 * min(max(g, 0.0), 1.0) - 1.0


class GripperHysteresis:
    """Binary gripper state with two thresholds, so values near one threshold don't chatter.

    ``update(g)`` with the gripper opening ``g`` in ``[0, 1]``: the gripper opens when
    ``g >= open_threshold`` and closes when ``g <= close_threshold``; in between it keeps
    its state. A non-finite ``g`` also keeps the state (hold the last command). Returns
    1.0 (open) or 0.0 (closed). Stateful: one instance per robot, ``reset()`` per episode.
    """

    def __init__(self, open_threshold: float = 0.6, close_threshold: float = 0.4, *,
                 initial_open: bool = True) -> None:
        if not (math.isfinite(open_threshold) and math.isfinite(close_threshold)):
            raise CodecError(f"hysteresis thresholds must be finite, got open={open_threshold!r}, "
                             f"close={close_threshold!r}")
        if not close_threshold < open_threshold:
            raise CodecError(f"close_threshold ({close_threshold}) must be below open_threshold "
                             f"({open_threshold})")
        self.open_threshold = float(open_threshold)
        self.close_threshold = float(close_threshold)
        self._initial_open = bool(initial_open)
        self._is_open = self._initial_open

    @property
    def is_open(self) -> bool:
        """Current state (True = open)."""
        return self._is_open

    def update(self, opening: float) -> float:
        """Feed the latest gripper opening; returns the resulting command (1.0 open, 0.0 closed)."""
        g = float(opening)
        if math.isfinite(g):
            if g >= self.open_threshold:
                self._is_open = True
            elif g <= self.close_threshold:
                self._is_open = False
        return 1.0 if self._is_open else 0.0

    def reset(self, initial_open: bool | None = None) -> None:
        """Return to the initial state (or to ``initial_open`` when given)."""
        self._is_open = self._initial_open if initial_open is None else bool(initial_open)
