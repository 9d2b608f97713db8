"""Header stamps from the wire, checked before anything computes with them.

``rclpy.time.Time.from_msg`` raises on a negative ``sec`` (any publisher may send one), and
nothing stops ``nanosec`` from exceeding one second. Every node converts stamps here, so a bad
stamp is one named error at the point of entry, never an exception deep in a callback.
ROS-free: a stamp is anything with integer ``sec`` and ``nanosec`` (builtin_interfaces/Time).
"""

from __future__ import annotations

from typing import Any

NS_PER_S = 1_000_000_000


class StampError(ValueError):
    """A header stamp that is not a time: unset, negative or malformed."""


def stamp_to_ns(stamp: Any) -> int:
    """Nanoseconds since the clock's epoch; StampError for an unset (0.0), negative or malformed stamp."""
    sec, nanosec = getattr(stamp, "sec", None), getattr(stamp, "nanosec", None)
    if not isinstance(sec, int) or not isinstance(nanosec, int) or isinstance(sec, bool) or isinstance(nanosec, bool):
        raise StampError(f"stamp is not a time (sec={sec!r}, nanosec={nanosec!r})")
    if sec < 0:
        raise StampError(f"stamp is negative (sec={sec})")
    if not 0 <= nanosec < NS_PER_S:
        raise StampError(f"stamp nanosec {nanosec} is outside [0, 1e9)")
    if sec == 0 and nanosec == 0:
        raise StampError("stamp is unset (0.0)")
    return sec * NS_PER_S + nanosec


def stamp_age_s(stamp: Any, now_ns: int) -> float:
    """How long before ``now_ns`` the stamp is (negative: in the future); StampError as :func:`stamp_to_ns`."""
    return (now_ns - stamp_to_ns(stamp)) / NS_PER_S


def split_ns(nanoseconds: int) -> tuple[int, int]:
    """(sec, nanosec) of a non-negative time in nanoseconds, for a builtin_interfaces/Time."""
    if nanoseconds < 0:
        raise StampError(f"cannot stamp a negative time ({nanoseconds} ns)")
    sec, nanosec = divmod(int(nanoseconds), NS_PER_S)
    return sec, nanosec
