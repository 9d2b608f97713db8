"""The Trace-of-Mark question a backend asks at serving time (backends.base.trace_query)."""

from __future__ import annotations

import numpy as np

from magma_ros.backends.base import trace_query
from magma_ros.codecs import ImageSize, build_tom_query, draw_marks, place_marks_on_grid
from magma_ros.image_codec import resize_frame


def test_the_question_shows_the_frame_at_the_policys_size_and_marks_map_back_to_the_original():
    rgb = np.random.default_rng(3).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    query = trace_query(rgb, "pick up the red cube", 8, (3, 4), 256)
    shown = place_marks_on_grid(ImageSize(256, 256), 3, 4, shuffle_ids=False)
    np.testing.assert_array_equal(query.image, draw_marks(resize_frame(rgb, 256), shown))
    assert query.question == build_tom_query("pick up the red cube", 8, mark_ids=list(range(1, 13)))
    # the same 256-grid cells, placed on the 320 x 240 frame the overlay and RViz markers use
    assert [(m.id, m.grid) for m in query.marks] == [(m.id, m.grid) for m in shown]
    for mark in query.marks:
        assert 0 <= mark.u < 320 and 0 <= mark.v < 240
        assert abs(mark.u / 320 - (mark.grid_x + 0.5) / 256) < 1e-9
        assert abs(mark.v / 240 - (mark.grid_y + 0.5) / 256) < 1e-9
    unscaled = trace_query(rgb, "pick up the red cube", 8, (3, 4), None)
    assert unscaled.image.shape == rgb.shape and unscaled.marks == place_marks_on_grid(ImageSize(320, 240), 3, 4,
                                                                                         shuffle_ids=False)
