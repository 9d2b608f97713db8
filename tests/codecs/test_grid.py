"""The 256 text grid: int(256 * x / W) and its stable inverse."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magma_ros.codecs import (
    CodecError,
    ImageSize,
    grid_point_to_pixel,
    grid_to_pixel,
    pixel_point_to_grid,
    pixel_to_grid,
)
from magma_ros.codecs.grid import as_image_size


@settings(deadline=None, max_examples=300)
@given(extent=st.integers(1, 5000), fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_pixel_grid_pixel_is_stable(extent: int, fraction: float) -> None:
    x = fraction * extent
    cell = pixel_to_grid(x, extent)
    assert cell == min(int(256 * x / extent), 255)
    back = grid_to_pixel(cell, extent)
    assert pixel_to_grid(back, extent) == cell
    assert abs(back - x) <= extent / 256  # within one cell


@pytest.mark.parametrize("extent", [1, 7, 100, 255, 256, 257, 480, 640, 1280, 4096])
def test_every_cell_maps_back_to_itself(extent: int) -> None:
    assert [pixel_to_grid(grid_to_pixel(c, extent), extent) for c in range(256)] == list(range(256))


def test_integer_pixels_match_the_reference_formula() -> None:
    for width in (256, 640, 100):
        assert [pixel_to_grid(x, width) for x in range(width)] == [int(256 * x / width) for x in range(width)]


def test_points_clip_and_sizes_validate() -> None:
    assert pixel_point_to_grid(-5, 700, (640, 480)) == (0, 255)
    assert grid_point_to_pixel(0, 255, ImageSize(512, 256)) == (1.0, 255.5)
    assert ImageSize.of(np.zeros((480, 640, 3), np.uint8)) == (640, 480)
    with pytest.raises(CodecError, match="finite"):
        pixel_to_grid(float("nan"), 10)
    for bad in [(0, 10), (10, -1), (10.5, 3), "ab", (1, 2, 3), (True, 4)]:
        with pytest.raises(CodecError):
            as_image_size(bad)  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        ImageSize.of(np.zeros((0, 5, 3)))
