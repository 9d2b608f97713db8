"""Trace-of-Mark (ToM): the query, parsing and formatting of answers, and drawing traces.

Answer form (Magma's training labels)::

    Mark 3 at [x,y], Mark 7 at [x,y] should be moved, and their future positions are:

    <trace_start>"Mark 3": "[[x,y],[x,y],...]"

    "Mark 7": "[[x,y],...]"

    <trace_end>

with ``<trace_start>`` / ``<trace_end>`` optional. The header gives the marks' current
cells; each trace lists the FUTURE cells only (the current one is not repeated).
Coordinates are on the 256 grid of :mod:`magma_ros.codecs.grid`; pixels are cell centres.
"""

from __future__ import annotations

import colorsys
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from . import _text
from .errors import CodecError
from .grid import (
    GRID_SIZE,
    GridPoint,
    ImageSize,
    PixelPoint,
    as_image_size,
    check_rgb_image,
    grid_point_to_pixel,
    validate_grid_point,
)
from .marks import Mark, find_marks

__all__ = [
    "DEFAULT_TOM_STEPS",
    "TRACE_END",
    "TRACE_START",
    "TraceParse",
    "TracePoints",
    "build_tom_query",
    "draw_traces",
    "format_traces",
    "parse_traces",
    "trace_color",
]

TRACE_START = "<trace_start>"
TRACE_END = "<trace_end>"
DEFAULT_TOM_STEPS = 8
"""Steps asked for in Magma's robot demo."""

_MOVED = "should be moved"


def build_tom_query(task: str, n_steps: int = DEFAULT_TOM_STEPS, *, mark_ids: Sequence[int] | None = None,
                    speed: int | None = None) -> str:
    """The Trace-of-Mark question for ``task`` (without the ``<image>`` placeholder).

    Default: ``The robot is doing: {task}. To finish the task, how to move the numerical
    marks in the image for the next {n_steps} steps?``. The task is stripped of
    surrounding whitespace and trailing periods. ``speed`` inserts ``with speed {speed}``
    before ``for the next``, as in Magma's demo. With ``mark_ids`` the result is the full
    user text of Magma's training data: the line ``The image is split into 256x256 grids,
    and labeled with numeric marks: [1, 2, 3].`` then the question, each line ending in
    ``\\n``. The caller prepends ``<image>\\n`` like for the action query.
    Raises ``CodecError`` for an empty task or a non-positive ``n_steps``.
    """
    if not isinstance(task, str) or not task.strip().rstrip(".").strip():
        raise CodecError(f"task must be a non-empty string, got {task!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise CodecError(f"n_steps must be a positive integer, got {n_steps!r}")
    speed_text = "" if speed is None else f" with speed {int(speed)}"
    question = (
        f"The robot is doing: {task.strip().rstrip('.').strip()}. To finish the task, how to move the "
        f"numerical marks in the image{speed_text} for the next {int(n_steps)} steps?"
    )
    if mark_ids is None:
        return question
    ids = [int(i) for i in mark_ids]
    return (f"The image is split into {GRID_SIZE}x{GRID_SIZE} grids, and labeled with numeric marks: {ids}.\n"
            f"{question}\n")


@dataclass(frozen=True)
class TracePoints:
    """One mark's future positions: grid cells as written and their pixel centres (same length)."""

    grid: tuple[GridPoint, ...]
    pixels: tuple[PixelPoint, ...]

    @classmethod
    def from_grid(cls, points: Iterable[GridPoint], image_size: tuple[int, int] | ImageSize) -> TracePoints:
        """Trace from grid cells; pixels are the cell centres in an image of ``image_size``."""
        size = as_image_size(image_size)
        grid = tuple(validate_grid_point(p) for p in points)
        return cls(grid, tuple(grid_point_to_pixel(x, y, size) for x, y in grid))

    def __len__(self) -> int:
        return len(self.grid)

    def pixel_array(self) -> np.ndarray:
        """Pixels as a float64 array of shape (N, 2), columns u, v."""
        return np.array(self.pixels, dtype=np.float64).reshape(-1, 2)


@dataclass(frozen=True)
class TraceParse:
    """Result of :func:`parse_traces`.

    ``traces``: mark id -> future positions (text order). ``moved_marks``: the header's
    marks with their current cells, ``moved_mark_ids`` their ids. ``errors``: one string
    per problem; empty when the answer was complete and well-formed.
    """

    traces: dict[int, TracePoints]
    moved_mark_ids: tuple[int, ...]
    moved_marks: tuple[Mark, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the whole answer parsed without any problem."""
        return not self.errors


_TRACE_KEY = re.compile(r'\bmark\s*([^\s\[\]:"\\]{1,16})\s*\\?"?\s*:', re.IGNORECASE | re.ASCII)
_LIST_OPEN = re.compile(r'\s*\\?"?\s*\[')
_POINT_OR_CLOSE = re.compile(r"\s*,?\s*(?:\[([^\[\]]{0,64})\]|(\]))")


def _parse_trace_value(mark_id: int, value: str, errors: list[str]) -> list[GridPoint]:
    """Points of ``"[[x,y],...]"``; keeps the valid prefix and records why it stopped early."""
    opening = _LIST_OPEN.match(value)
    if opening is None:
        errors.append(f"trace for mark {mark_id} has no point list: {_text.short(value.strip())!r}")
        return []
    points: list[GridPoint] = []
    pos = opening.end()
    while True:
        item = _POINT_OR_CLOSE.match(value, pos)
        if item is None:
            rest = value[pos:].strip()
            reason = "is truncated" if "]" not in rest else f"stops at {_text.short(rest)!r}"
            errors.append(f"trace for mark {mark_id} {reason}; kept {len(points)} point(s)")
            return points
        if item.group(2) is not None:
            return points
        point, error = _text.parse_grid_point(item.group(1))
        if point is None:
            errors.append(f"trace for mark {mark_id}: {error}; kept {len(points)} point(s) before it")
            return points
        points.append(point)
        pos = item.end()


def parse_traces(text: str, image_size: tuple[int, int] | ImageSize) -> TraceParse:
    """Parse a Trace-of-Mark answer into per-mark traces in grid and pixel coordinates.

    Never raises on the text: returns what parsed plus error descriptions (missing header,
    truncated or malformed traces, coordinates outside ``0 .. 255``, negative or huge
    numbers, duplicate marks: first wins, header/trace mismatch, unclosed ``<trace_start>``).
    A trace that stops at a bad point keeps its valid prefix; an empty trace is dropped.
    ``image_size = (width, height)`` must be valid (``CodecError`` otherwise).
    """
    size = as_image_size(image_size)
    if not isinstance(text, str):
        return TraceParse({}, (), (), (f"expected answer text, got {type(text).__name__}",))
    errors: list[str] = []
    keys = list(_TRACE_KEY.finditer(text))
    header_end = keys[0].start() if keys else len(text)
    header = text[:header_end].split(TRACE_START, 1)[0]

    has_header = _MOVED in header.lower()
    moved = find_marks(header, size, errors)
    if not has_header:
        errors.append(f"missing the 'Mark N at [x,y], ... {_MOVED}' header")

    traces: dict[int, TracePoints] = {}
    for i, key in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(text)
        value = text[key.end():end].split(TRACE_END, 1)[0]
        mark_id, error = _text.parse_mark_id(key.group(1))
        if mark_id is None:
            errors.append(f"trace key {_text.short(key.group(0))!r}: {error}")
            continue
        if mark_id in traces:
            errors.append(f"mark {mark_id} has more than one trace; kept the first")
            continue
        points = _parse_trace_value(mark_id, value, errors)
        if not points:
            errors.append(f"trace for mark {mark_id} has no points")
            continue
        traces[mark_id] = TracePoints.from_grid(points, size)

    key_starts = {key.start() for key in keys}
    stray = [m.start() for m in _text.MARK_WORD.finditer(text, header_end) if m.start() not in key_starts]
    for start in stray[:3]:
        errors.append(f"incomplete trace key at character {start}: {_text.short(text[start:start + 30])!r}")
    if len(stray) > 3:
        errors.append(f"{len(stray) - 3} more incomplete trace keys")
    if not keys:
        errors.append("no '\"Mark N\": \"[[x,y],...]\"' traces found" if text.strip() else "empty answer")
    moved_ids = tuple(m.id for m in moved)
    if has_header:
        for mark_id in moved_ids:
            if mark_id not in traces:
                errors.append(f"mark {mark_id} is listed as moved but has no trace")
        for mark_id in traces:
            if mark_id not in moved_ids:
                errors.append(f"mark {mark_id} has a trace but is not listed as moved")
    if TRACE_START in text and TRACE_END not in text:
        errors.append(f"{TRACE_START} without {TRACE_END} (truncated answer?)")
    return TraceParse(traces, moved_ids, tuple(moved), tuple(errors))


def format_traces(current: Mapping[int, GridPoint], future: Mapping[int, Sequence[GridPoint]], *,
                  trace_tokens: bool = False) -> str:
    """Well-formed ToM answer text (the inverse of :func:`parse_traces`).

    ``current``: mark id -> current grid cell (header order = mapping order; Magma's
    labels sort by id). ``future``: mark id -> one or more future grid cells; same ids.
    ``trace_tokens`` wraps the traces in ``<trace_start>`` ... ``<trace_end>``.
    Raises ``CodecError`` for mismatched ids, empty traces or cells outside ``0 .. 255``.
    """
    if not current:
        raise CodecError("a ToM answer needs at least one moved mark")
    if set(current) != set(future):
        raise CodecError(f"current and future mark ids differ: {sorted(current)} vs {sorted(future)}")
    header = []
    body = []
    for mark_id, point in current.items():
        if isinstance(mark_id, bool) or not isinstance(mark_id, (int, np.integer)) or mark_id < 0:
            raise CodecError(f"mark id must be a non-negative integer, got {mark_id!r}")
        header.append(f"Mark {mark_id} at {_text.format_grid_point(validate_grid_point(point))}")
        steps = [validate_grid_point(p) for p in future[mark_id]]
        if not steps:
            raise CodecError(f"mark {mark_id} has an empty future trace")
        body.append(f'"Mark {mark_id}": "[{",".join(_text.format_grid_point(p) for p in steps)}]"\n\n')
    traces = "".join(body)
    if trace_tokens:
        traces = f"{TRACE_START}{traces}{TRACE_END}"
    return f"{', '.join(header)} {_MOVED}, and their future positions are:\n\n{traces}"


# --- drawing ----------------------------------------------------------------------------


def trace_color(mark_id: int) -> tuple[int, int, int]:
    """A saturated RGB colour per mark id (golden-ratio hue steps, clear of the marks' red)."""
    hue = 0.08 + 0.84 * ((0.15 + 0.618034 * int(mark_id)) % 1.0)
    r, g, b = colorsys.hsv_to_rgb(hue, 0.9, 1.0)
    return round(255 * r), round(255 * g), round(255 * b)


def _fixed(point: PixelPoint, shift: int) -> tuple[int, int]:
    return round(point[0] * (1 << shift)), round(point[1] * (1 << shift))


def draw_traces(image_rgb: np.ndarray, traces: TraceParse | Mapping[int, TracePoints], *,
                start_points: Mapping[int, PixelPoint] | None = None, thickness: int | None = None) -> np.ndarray:
    """A copy of ``image_rgb`` (H, W, 3 uint8) with each trace drawn as a polyline with an arrowhead.

    Each mark gets its own colour (:func:`trace_color`); a trace starts at its mark's
    current pixel (``start_points``, or the header marks of a :class:`TraceParse`) and
    fades from pale to full colour towards the future. The input is not modified.
    Raises ``CodecError`` for a non-RGB-uint8 image.
    """
    size = check_rgb_image(image_rgb)
    out = np.ascontiguousarray(image_rgb).copy()
    if isinstance(traces, TraceParse):
        starts = {m.id: m.pixel for m in traces.moved_marks}
        trace_map: Mapping[int, TracePoints] = traces.traces
    else:
        starts, trace_map = {}, traces
    if start_points:
        starts.update(start_points)
    width = max(1, thickness if thickness is not None else round(size.width / 128))
    shift = 4
    for mark_id, trace in trace_map.items():
        color = np.array(trace_color(mark_id), dtype=np.float64)
        path = ([starts[mark_id]] if mark_id in starts else []) + list(trace.pixels)
        path = [p for p in path if math.isfinite(p[0]) and math.isfinite(p[1])]
        if len(path) == 1:
            cv2.circle(out, _fixed(path[0], shift), (width + 2) << shift, tuple(color.tolist()), -1,
                       cv2.LINE_AA, shift)
            continue
        n_segments = len(path) - 1
        for k in range(n_segments):
            fade = 0.35 + 0.65 * (k + 1) / n_segments
            seg_color = tuple((255.0 - fade * (255.0 - color)).tolist())
            a, b = _fixed(path[k], shift), _fixed(path[k + 1], shift)
            if k == n_segments - 1:
                length = math.hypot(path[k + 1][0] - path[k][0], path[k + 1][1] - path[k][1])
                tip = min(0.5, (4.0 * width + 4.0) / length) if length > 0 else 0.5
                cv2.arrowedLine(out, a, b, seg_color, width, cv2.LINE_AA, shift, tip)
            else:
                cv2.line(out, a, b, seg_color, width, cv2.LINE_AA, shift)
    return out
