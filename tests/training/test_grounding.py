"""Grounding labels (magma_ros.training.grounding) against the simulator's own ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from magma_ros.image_codec import resize_frame
from magma_ros.sim import Workcell, WorkcellConfig
from magma_ros.training.grounding import CUBE_COLOURS, CameraProjector, colour_centroid, frame_labels

SIZE = 256   # the sim_panda dataset's stored frame size


@pytest.fixture(scope="module")
def cell():
    with Workcell(WorkcellConfig()) as workcell:
        yield workcell


@pytest.mark.parametrize("seed", [0, 7, 42, 1234])
def test_labels_match_the_simulators_ground_truth(cell, seed):
    cell.reset(seed)
    frame = cell.render("third_person", segmentation=True)
    stored = resize_frame(frame.rgb, SIZE)
    project = CameraProjector(SIZE)
    for colour in CUBE_COLOURS:
        centre = cell.cube_pose(colour).position
        truth = project(centre)
        found = colour_centroid(stored, colour)
        assert truth is not None and found is not None, colour
        # the visible faces' centroid sits within a few pixels of the projected centre (~15 px cubes)
        assert np.hypot(found[0] - truth[0], found[1] - truth[1]) < 5.0, (colour, found, truth)
    # the projector agrees with the rendered camera's own pose and intrinsics to a fraction of a pixel
    tcp = cell.ee_pose().position
    own = frame.intrinsics.project(frame.pose.inverse().transform_points(tcp[None])[0])
    scaled = (own + 0.5) * np.array([SIZE / frame.rgb.shape[1], SIZE / frame.rgb.shape[0]]) - 0.5
    assert np.allclose(project(tcp), scaled, atol=0.05)
    # and the TCP's pixel lies on the arm (the fingertips' midpoint: arm pixels within a few pixels)
    arm = frame.segmentation == cell.segmentation_ids()["arm"]
    u, v = (np.asarray(project(tcp)) / SIZE * np.array([frame.rgb.shape[1], frame.rgb.shape[0]])).round().astype(int)
    assert arm[max(v - 6, 0):v + 7, max(u - 6, 0):u + 7].any()
    points, known = frame_labels(stored, tcp, project)
    assert known.all() and points.shape == (4, 2)


def test_missing_or_unknown_colours(cell):
    grey = np.full((SIZE, SIZE, 3), 120, np.uint8)
    assert colour_centroid(grey, "red") is None
    with pytest.raises(ValueError, match="unknown cube colour 'purple'"):
        colour_centroid(grey, "purple")
    project = CameraProjector(SIZE)
    assert project([5.0, 0.0, 0.0]) is None            # behind the camera
    assert project([0.4, 3.0, 0.0]) is None            # far outside the view
    _, known = frame_labels(grey, [0.4, 0.0, 0.3], project)
    assert known.tolist() == [False, False, False, True]
