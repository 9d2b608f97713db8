"""Helpers shared by the mark and trace parsers (private).

Every helper returns ``(value, error)`` with exactly one of them set, so the public
parsers can collect errors without ever raising.
"""

from __future__ import annotations

import re

from .grid import GRID_SIZE, GridPoint

MAX_DIGITS = 9
"""Longest digit string converted with ``int`` (Python refuses > 4300 digits; we stop far earlier)."""

MARK_WORD = re.compile(r"\bmark\b", re.IGNORECASE | re.ASCII)
"""The word ``Mark`` (to find mark text that did not parse)."""

_INT = re.compile(r"[+-]?([0-9]+)", re.ASCII)


def short(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters for error messages."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_int(token: str, what: str) -> tuple[int | None, str]:
    """Parse an ASCII integer of at most ``MAX_DIGITS`` digits."""
    stripped = token.strip()
    match = _INT.fullmatch(stripped)
    if match is None:
        return None, f"{what} {short(stripped)!r} is not an integer"
    if len(match.group(1)) > MAX_DIGITS:
        return None, f"{what} {short(stripped)!r} is too large"
    return int(stripped), ""


def parse_mark_id(token: str) -> tuple[int | None, str]:
    """Parse a mark id: a non-negative integer."""
    value, error = parse_int(token, "mark id")
    if value is None:
        return None, error
    if value < 0:
        return None, f"mark id {value} is negative"
    return value, ""


def parse_grid_point(body: str) -> tuple[GridPoint | None, str]:
    """Parse the inside of ``[x,y]`` into a grid point with both coordinates in ``0 .. 255``."""
    parts = body.split(",")
    if len(parts) != 2:
        return None, f"point [{short(body)}] does not have two coordinates"
    coords: list[int] = []
    for axis, part in zip("xy", parts, strict=True):
        value, error = parse_int(part, f"{axis} coordinate")
        if value is None:
            return None, f"point [{short(body)}]: {error}"
        if not 0 <= value < GRID_SIZE:
            return None, f"point [{short(body)}]: {axis} coordinate {value} is outside 0..{GRID_SIZE - 1}"
        coords.append(value)
    return (coords[0], coords[1]), ""


def format_grid_point(point: GridPoint) -> str:
    """``[x,y]`` as in Magma's answers (no space)."""
    return f"[{point[0]},{point[1]}]"
