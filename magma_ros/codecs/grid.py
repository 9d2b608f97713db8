"""The 256 x 256 coordinate grid that Magma uses for positions in text.

A pixel position ``x`` in an image ``W`` pixels wide is written in text as the integer
``int(256 * x / W)`` (the same for ``y`` with the height ``H``), so the text carries a
grid cell, not a pixel. Reading text back maps a cell to its centre,
``(g + 0.5) * W / 256``, which lies inside the cell for every image size. Hence
``pixel -> grid -> pixel -> grid`` returns the same cell, and a pixel is recovered to
within half a cell (``W / 512`` pixels).

Image sizes are ``ImageSize(width, height)``: x runs along the width (columns), y along
the height (rows). Note that numpy arrays have shape ``(height, width, channels)``;
use :meth:`ImageSize.of` to get the size of an array.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .errors import CodecError

__all__ = [
    "GRID_SIZE",
    "GridPoint",
    "ImageSize",
    "PixelPoint",
    "as_image_size",
    "check_rgb_image",
    "grid_point_to_pixel",
    "grid_to_pixel",
    "pixel_point_to_grid",
    "pixel_to_grid",
    "validate_grid_point",
]

GRID_SIZE = 256
"""Number of grid cells along each image axis in Magma's text coordinates."""

GridPoint = tuple[int, int]
"""``(x, y)`` grid cell, each in ``0 .. GRID_SIZE - 1``."""

PixelPoint = tuple[float, float]
"""``(u, v)`` pixel position: u along the width, v along the height."""


class ImageSize(NamedTuple):
    """Image size in pixels, width first (like OpenCV sizes, unlike numpy shapes)."""

    width: int
    height: int

    @classmethod
    def of(cls, image: np.ndarray) -> ImageSize:
        """Size of an ``(H, W)`` or ``(H, W, C)`` image array."""
        shape = getattr(image, "shape", None)
        if shape is None or len(shape) < 2:
            raise CodecError(f"expected an image array of shape (H, W[, C]), got shape {shape}")
        return as_image_size((int(shape[1]), int(shape[0])))


def as_image_size(size: tuple[int, int] | ImageSize) -> ImageSize:
    """Validate a ``(width, height)`` pair of positive integers and return it as ``ImageSize``.

    Raises ``CodecError`` naming the bad value.
    """
    try:
        width, height = size
    except (TypeError, ValueError) as err:
        raise CodecError(f"image size must be a (width, height) pair, got {size!r}") from err
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise CodecError(f"image {name} must be a positive integer, got {value!r}")
    return ImageSize(int(width), int(height))


def pixel_to_grid(x: float, extent: int) -> int:
    """Grid cell ``int(256 * x / extent)`` of a pixel coordinate, clipped to ``0 .. 255``.

    ``extent`` is the image width (for x) or height (for y). Coordinates outside the
    image clip to the border cells. Raises ``CodecError`` for a non-finite coordinate.
    """
    value = float(x)
    if not math.isfinite(value):
        raise CodecError(f"pixel coordinate must be finite, got {x!r}")
    cell = math.floor(GRID_SIZE * value / extent)
    return min(max(cell, 0), GRID_SIZE - 1)


def grid_to_pixel(cell: int, extent: int) -> float:
    """Pixel coordinate of the centre of grid cell ``cell``: ``(cell + 0.5) * extent / 256``.

    ``pixel_to_grid(grid_to_pixel(c, e), e) == c`` for every cell ``c`` in ``0 .. 255``
    and every extent. Cells outside ``0 .. 255`` are not clipped (callers validate).
    """
    return (cell + 0.5) * extent / GRID_SIZE


def pixel_point_to_grid(u: float, v: float, size: tuple[int, int] | ImageSize) -> GridPoint:
    """Grid cell ``(x, y)`` of pixel ``(u, v)`` in an image of ``size = (width, height)``."""
    width, height = as_image_size(size)
    return pixel_to_grid(u, width), pixel_to_grid(v, height)


def grid_point_to_pixel(gx: int, gy: int, size: tuple[int, int] | ImageSize) -> PixelPoint:
    """Pixel centre ``(u, v)`` of grid cell ``(gx, gy)`` in an image of ``size = (width, height)``."""
    width, height = as_image_size(size)
    return grid_to_pixel(gx, width), grid_to_pixel(gy, height)


def check_rgb_image(image: np.ndarray) -> ImageSize:
    """Check that ``image`` is an ``(H, W, 3)`` uint8 array and return its size.

    Raises ``CodecError`` describing what is wrong otherwise.
    """
    if not isinstance(image, np.ndarray):
        raise CodecError(f"expected an RGB image as a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise CodecError(f"expected an RGB image of shape (H, W, 3), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise CodecError(f"expected a uint8 RGB image, got dtype {image.dtype}")
    return ImageSize.of(image)


def validate_grid_point(point: object) -> GridPoint:
    """Return ``point`` as a ``(x, y)`` tuple of ints in ``0 .. 255``; raise ``CodecError`` otherwise."""
    try:
        x, y = point  # type: ignore[misc]
    except (TypeError, ValueError) as err:
        raise CodecError(f"grid point must be an (x, y) pair, got {point!r}") from err
    for axis, value in (("x", x), ("y", y)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise CodecError(f"grid {axis} coordinate must be an integer, got {value!r}")
        if not 0 <= value < GRID_SIZE:
            raise CodecError(f"grid {axis} coordinate {value} is outside 0..{GRID_SIZE - 1}")
    return int(x), int(y)
