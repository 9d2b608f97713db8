"""Set-of-Mark (SoM): choose, draw and parse numbered marks on an image.

Marks are filled red circles with a white number centred in them; the number's height is
about 3% of the image width (at least 6 pixels) and the circle encloses the widest label of the set, so two
marks whose centres are at least :attr:`MarkStyle.min_spacing` apart never overlap.
Ids are 1-based; by default a seeded random permutation (as in Magma's training data),
optionally sequential. In text a mark is ``Mark 4 at [x,y]`` with ``x, y`` on the
256 grid of :mod:`magma_ros.codecs.grid`; a SoM answer is ``Mark 1 at [x,y]. Mark 4 at [x,y]``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from . import _text
from .errors import CodecError
from .grid import (
    GridPoint,
    ImageSize,
    PixelPoint,
    as_image_size,
    check_rgb_image,
    grid_point_to_pixel,
    pixel_point_to_grid,
    validate_grid_point,
)

__all__ = [
    "MARK_COLOR_RGB",
    "MARK_TEXT_COLOR_RGB",
    "TEXT_HEIGHT_FRACTION",
    "Mark",
    "MarkParse",
    "MarkPlacement",
    "MarkStyle",
    "assign_mark_ids",
    "draw_marks",
    "format_marks",
    "mark_style",
    "parse_marks",
    "place_marks_at_points",
    "place_marks_on_grid",
    "select_spaced_points",
]

TEXT_HEIGHT_FRACTION = 0.03
"""Height of a mark's number as a fraction of the image width."""

MARK_COLOR_RGB = (255, 0, 0)
MARK_TEXT_COLOR_RGB = (255, 255, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class Mark:
    """A numbered mark: ``id``, pixel centre ``(u, v)`` and its 256-grid cell ``(grid_x, grid_y)``.

    Build with :meth:`at_pixel` or :meth:`at_grid` so pixel and grid agree. Raises
    ``CodecError`` for a negative id, non-finite pixel or grid cell outside ``0 .. 255``.
    """

    id: int
    u: float
    v: float
    grid_x: int
    grid_y: int

    def __post_init__(self) -> None:
        if isinstance(self.id, bool) or not isinstance(self.id, (int, np.integer)) or self.id < 0:
            raise CodecError(f"mark id must be a non-negative integer, got {self.id!r}")
        if not (math.isfinite(self.u) and math.isfinite(self.v)):
            raise CodecError(f"mark {self.id}: pixel position must be finite, got ({self.u}, {self.v})")
        validate_grid_point((self.grid_x, self.grid_y))

    @classmethod
    def at_pixel(cls, mark_id: int, u: float, v: float, image_size: tuple[int, int] | ImageSize) -> Mark:
        """Mark at pixel ``(u, v)``; the grid cell is ``int(256 * u / W), int(256 * v / H)`` (clipped)."""
        gx, gy = pixel_point_to_grid(u, v, image_size)
        return cls(int(mark_id), float(u), float(v), gx, gy)

    @classmethod
    def at_grid(cls, mark_id: int, gx: int, gy: int, image_size: tuple[int, int] | ImageSize) -> Mark:
        """Mark at grid cell ``(gx, gy)``; the pixel is the cell centre."""
        gx, gy = validate_grid_point((gx, gy))
        u, v = grid_point_to_pixel(gx, gy, image_size)
        return cls(int(mark_id), u, v, gx, gy)

    @property
    def grid(self) -> GridPoint:
        """``(grid_x, grid_y)``."""
        return self.grid_x, self.grid_y

    @property
    def pixel(self) -> PixelPoint:
        """``(u, v)``."""
        return self.u, self.v


# --- style ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MarkStyle:
    """How marks are drawn on an image of a given width, for ids of up to ``max_digits`` digits.

    ``radius`` (pixels) encloses the widest such label, so disks at least ``min_spacing``
    apart never touch (one pixel spare for anti-aliasing on each side).
    """

    font_scale: float
    thickness: int
    radius: int
    max_digits: int

    @property
    def min_spacing(self) -> float:
        """Smallest centre distance at which two marks' drawings are disjoint."""
        return 2.0 * self.radius + 3.0


MIN_TEXT_HEIGHT_PX = 6.0
"""Numbers are never drawn smaller than this (3% of a 64-pixel-wide image would be illegible)."""


@functools.lru_cache(maxsize=1024)
def _ink_box(label: str, font_scale: float, thickness: int) -> tuple[int, int, int, int]:
    """Inked pixels of ``label`` drawn at origin (0, 0): ``(x0, y0, x1, y1)`` inclusive.

    Measured by drawing, because ``cv2.getTextSize`` includes the font's ascender above
    the digits and so does not give the height of a number.
    """
    pad = 4 + 4 * thickness
    (w, h), baseline = cv2.getTextSize(label, _FONT, font_scale, thickness)
    canvas = np.zeros((h + baseline + 2 * pad, w + 2 * pad), np.uint8)
    origin = (pad, pad + h)
    cv2.putText(canvas, label, origin, _FONT, font_scale, 255, thickness, cv2.LINE_AA)
    ys, xs = np.nonzero(canvas)
    if xs.size == 0:
        return 0, 0, 0, 0
    return (int(xs.min()) - origin[0], int(ys.min()) - origin[1], int(xs.max()) - origin[0],
            int(ys.max()) - origin[1])


@functools.lru_cache(maxsize=256)
def _style(width: int, max_digits: int) -> MarkStyle:
    _, top, _, bottom = _ink_box("0123456789", 1.0, 1)
    text_height = max(TEXT_HEIGHT_FRACTION * width, MIN_TEXT_HEIGHT_PX)
    font_scale = text_height / (bottom - top + 1)
    thickness = max(1, round(font_scale * 1.5))
    widest, tallest = 0, 0
    for digit in "0123456789":
        x0, y0, x1, y1 = _ink_box(digit * max_digits, font_scale, thickness)
        widest, tallest = max(widest, x1 - x0 + 1), max(tallest, y1 - y0 + 1)
    radius = math.ceil(0.5 * math.hypot(widest, tallest)) + 1
    return MarkStyle(font_scale=font_scale, thickness=thickness, radius=radius, max_digits=max_digits)


def mark_style(image_size: tuple[int, int] | ImageSize, max_id: int = 99) -> MarkStyle:
    """Drawing style for marks with ids up to ``max_id`` on an image of ``image_size``."""
    size = as_image_size(image_size)
    return _style(size.width, len(str(max(int(max_id), 0))))


# --- ids and placement ------------------------------------------------------------------


def assign_mark_ids(count: int, *, shuffle: bool = True, seed: int | None = 0) -> list[int]:
    """Ids ``1 .. count``: a permutation drawn with ``numpy.random.default_rng(seed)``, or in order."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise CodecError(f"mark count must be a non-negative integer, got {count!r}")
    if not shuffle:
        return list(range(1, count + 1))
    return [int(i) + 1 for i in np.random.default_rng(seed).permutation(count)]


class MarkPlacement(NamedTuple):
    """Marks chosen from candidate points; ``marks[i]`` sits at ``points[source_indices[i]]``."""

    marks: tuple[Mark, ...]
    source_indices: tuple[int, ...]


def place_marks_on_grid(
    image_size: tuple[int, int] | ImageSize, rows: int, cols: int, *, shuffle_ids: bool = True,
    seed: int | None = 0,
) -> tuple[Mark, ...]:
    """``rows x cols`` marks at the centres of equal image cells, in row-major order.

    Raises ``CodecError`` when the cells are smaller than the label spacing
    (:attr:`MarkStyle.min_spacing`); the message says how many rows and columns fit.
    """
    size = as_image_size(image_size)
    for name, value in (("rows", rows), ("cols", cols)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise CodecError(f"{name} must be a positive integer, got {value!r}")
    style = mark_style(size, rows * cols)
    cell_w, cell_h = size.width / cols, size.height / rows
    if min(cell_w, cell_h) < style.min_spacing:
        raise CodecError(
            f"a {rows}x{cols} mark grid on a {size.width}x{size.height} image leaves "
            f"{min(cell_w, cell_h):.1f} px per mark but labels need {style.min_spacing:.1f} px; at most "
            f"{int(size.height // style.min_spacing)} rows x {int(size.width // style.min_spacing)} cols fit"
        )
    ids = assign_mark_ids(rows * cols, shuffle=shuffle_ids, seed=seed)
    marks = []
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        marks.append(Mark.at_pixel(ids[k], (c + 0.5) * cell_w, (r + 0.5) * cell_h, size))
    return tuple(marks)


def select_spaced_points(points: Iterable[Sequence[float]] | np.ndarray, min_spacing: float) -> list[int]:
    """Indices of a greedy subset of ``points`` (in input order) at least ``min_spacing`` apart.

    Earlier points win, so pass the most important (e.g. moving) points first. Points with
    a non-finite coordinate are skipped. Raises ``CodecError`` for a malformed array.
    """
    try:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError) as err:
        raise CodecError(f"points must be an (N, 2) array of numbers: {err}") from err
    if not math.isfinite(min_spacing) or min_spacing < 0:
        raise CodecError(f"min_spacing must be a finite non-negative distance, got {min_spacing!r}")
    kept: list[int] = []
    chosen = np.empty((0, 2))
    for i, p in enumerate(pts):
        if not np.all(np.isfinite(p)):
            continue
        if chosen.shape[0] and np.min(np.hypot(*(chosen - p).T)) < min_spacing:
            continue
        kept.append(i)
        chosen = np.vstack([chosen, p])
    return kept


def place_marks_at_points(
    points: Iterable[Sequence[float]] | np.ndarray, image_size: tuple[int, int] | ImageSize, *,
    min_spacing: float | None = None, max_marks: int | None = None, shuffle_ids: bool = True,
    seed: int | None = 0,
) -> MarkPlacement:
    """Marks at a subset of pixel ``points`` whose labels don't overlap.

    Points outside the image or non-finite are skipped; the rest are taken greedily in
    order, keeping a centre distance of at least ``max(min_spacing, style.min_spacing)``
    (the label size is never compromised), up to ``max_marks``. Ids: see :func:`assign_mark_ids`.
    """
    size = as_image_size(image_size)
    try:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError) as err:
        raise CodecError(f"points must be an (N, 2) array of numbers: {err}") from err
    if max_marks is not None and (isinstance(max_marks, bool) or not isinstance(max_marks, (int, np.integer))
                                  or max_marks < 0):
        raise CodecError(f"max_marks must be a non-negative integer or None, got {max_marks!r}")
    limit = pts.shape[0] if max_marks is None else min(int(max_marks), pts.shape[0])
    style = mark_style(size, limit)
    if min_spacing is not None and not (math.isfinite(min_spacing) and min_spacing >= 0):
        raise CodecError(f"min_spacing must be a finite non-negative distance, got {min_spacing!r}")
    spacing = max(style.min_spacing, float(min_spacing or 0.0))
    # Comparisons with NaN are False, so this also drops non-finite points.
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < size.width) & (pts[:, 1] >= 0) & (pts[:, 1] < size.height)
    candidates = np.flatnonzero(inside)
    chosen = [int(candidates[i]) for i in select_spaced_points(pts[candidates], spacing)][:limit]
    ids = assign_mark_ids(len(chosen), shuffle=shuffle_ids, seed=seed)
    marks = tuple(Mark.at_pixel(ids[k], pts[i, 0], pts[i, 1], size) for k, i in enumerate(chosen))
    return MarkPlacement(marks, tuple(chosen))


# --- drawing ----------------------------------------------------------------------------


def draw_marks(image_rgb: np.ndarray, marks: Iterable[Mark], *, style: MarkStyle | None = None) -> np.ndarray:
    """A copy of ``image_rgb`` (H, W, 3 uint8) with each mark drawn as a red disk and white number.

    The default style fits the largest id among ``marks``. The input is not modified.
    Raises ``CodecError`` for a non-RGB-uint8 image.
    """
    size = check_rgb_image(image_rgb)
    mark_list = list(marks)
    out = np.ascontiguousarray(image_rgb).copy()
    if not mark_list:
        return out
    if style is None:
        style = mark_style(size, max(m.id for m in mark_list))
    shift = 4
    for mark in mark_list:
        centre = (round(mark.u * (1 << shift)), round(mark.v * (1 << shift)))
        cv2.circle(out, centre, style.radius << shift, MARK_COLOR_RGB, -1, cv2.LINE_AA, shift)
        label = str(mark.id)
        x0, y0, x1, y1 = _ink_box(label, style.font_scale, style.thickness)
        origin = (round(mark.u - 0.5 * (x0 + x1)), round(mark.v - 0.5 * (y0 + y1)))
        cv2.putText(out, label, origin, _FONT, style.font_scale, MARK_TEXT_COLOR_RGB, style.thickness,
                    cv2.LINE_AA)
    return out


# --- text -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MarkParse:
    """Result of :func:`parse_marks`: the marks that parsed (in text order) and error descriptions."""

    marks: tuple[Mark, ...]
    errors: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when the whole answer parsed without any problem."""
        return not self.errors

    def by_id(self) -> dict[int, Mark]:
        """The marks keyed by id."""
        return {m.id: m for m in self.marks}


MARK_AT = re.compile(r"\bmark\s*([^\s\[\]:\"]{1,16}?)\s*at\s*\[([^\[\]]{0,64})\]", re.IGNORECASE | re.ASCII)
"""``Mark <id> at [<x>,<y>]`` (loose: the id and point are validated separately)."""

_MAX_FRAGMENT_ERRORS = 5


def find_marks(text: str, image_size: ImageSize, errors: list[str]) -> list[Mark]:
    """Marks of every ``Mark N at [x,y]`` in ``text``; problems are appended to ``errors``.

    Also reports ``Mark`` words that are not part of a complete mark (truncated answers).
    Shared by the SoM and ToM parsers; never raises.
    """
    marks: list[Mark] = []
    seen: set[int] = set()
    spans: list[tuple[int, int]] = []
    for match in MARK_AT.finditer(text):
        spans.append(match.span())
        mark_id, error = _text.parse_mark_id(match.group(1))
        point: GridPoint | None = None
        if mark_id is not None:
            point, error = _text.parse_grid_point(match.group(2))
        if mark_id is None or point is None:
            errors.append(f"{_text.short(match.group(0))!r}: {error}")
            continue
        if mark_id in seen:
            errors.append(f"mark {mark_id} appears more than once; kept the first")
            continue
        seen.add(mark_id)
        marks.append(Mark.at_grid(mark_id, point[0], point[1], image_size))
    starts = {start for start, _ in spans}  # a match begins at its word "Mark"
    fragments = [m.start() for m in _text.MARK_WORD.finditer(text) if m.start() not in starts]
    for start in fragments[:_MAX_FRAGMENT_ERRORS]:
        errors.append(f"incomplete mark at character {start}: {_text.short(text[start:start + 30])!r}")
    if len(fragments) > _MAX_FRAGMENT_ERRORS:
        errors.append(f"{len(fragments) - _MAX_FRAGMENT_ERRORS} more incomplete marks")
    return marks


def parse_marks(text: str, image_size: tuple[int, int] | ImageSize) -> MarkParse:
    """Parse a Set-of-Mark answer such as ``Mark 1 at [12,40]. Mark 4 at [200,31]``.

    Never raises on the text: returns every well-formed mark (grid cell as written, pixel
    at the cell centre in an image of ``image_size = (width, height)``) plus one error
    string per problem (no marks, truncated or incomplete marks, bad or out-of-grid
    coordinates, duplicate ids: the first occurrence wins). ``image_size`` itself must be
    valid (``CodecError`` otherwise).
    """
    size = as_image_size(image_size)
    if not isinstance(text, str):
        return MarkParse((), (f"expected answer text, got {type(text).__name__}",))
    errors: list[str] = []
    marks = find_marks(text, size, errors)
    if not marks and not errors:
        errors.append("no 'Mark N at [x,y]' found" if text.strip() else "empty answer")
    return MarkParse(tuple(marks), tuple(errors))


def format_marks(marks: Iterable[Mark]) -> str:
    """SoM answer text ``Mark 1 at [x,y]. Mark 4 at [x,y]`` from marks (their grid cells)."""
    return ". ".join(f"Mark {m.id} at {_text.format_grid_point(m.grid)}" for m in marks)
