"""Point tracking: the grid, the Lucas-Kanade tracker on exact synthetic motion, occlusion, input checks,
plug-in selection, and accuracy against the simulated workcell's ground truth."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from magma_ros.sim import TaskFamily, Workcell, WorkcellConfig, task_for_seed
from magma_ros.sim.point_tracks import GROUND_TRUTH_CAMERA, SimRecording, record_expert_episode, track_errors
from magma_ros.training.tracking import (
    LucasKanadeConfig,
    LucasKanadeTracker,
    PointTracker,
    PointTracks,
    TrackerConfig,
    TrackingError,
    build_tracker,
    grid_queries,
)

FLOOR_PX = 3.0  # issue 8: median error at 256x256 over 16-frame windows, points visible throughout
MOVING_GUARD_PX = 8.0


def texture(size: int = 256, seed: int = 0) -> np.ndarray:
    """A smooth random RGB texture (blurred noise): trackable everywhere."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 2.0)


def shifted(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``image`` translated by (dx, dy) pixels (content moves right/down), reflected at the borders."""
    m = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
    return cv2.warpAffine(image, m, (image.shape[1], image.shape[0]), flags=cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REFLECT)


BODY_IDS: dict[str, int] = {}   # the recording workcell's segmentation ids (magma_ros.sim.Workcell)


@pytest.fixture(scope="module")
def recording() -> Iterator[SimRecording]:
    """A short scripted-expert pick episode (40 frames, 4 s, at 256 x 256) with exact point tracks."""
    with Workcell(WorkcellConfig(cameras=(GROUND_TRUTH_CAMERA,))) as cell:
        BODY_IDS.update(cell.segmentation_ids())   # for the tests below
        yield record_expert_episode(cell, task_for_seed(TaskFamily.PICK.value, 0), 0, 40)


# --- grid and inputs ---------------------------------------------------------------------


def test_grid_queries_cover_the_image_row_major():
    q = grid_queries((256, 256), 15)
    assert q.shape == (225, 2)
    assert q[0].tolist() == [8.0, 8.0]  # floor((0 + 0.5) * 256 / 15)
    assert q[14].tolist() == [247.0, 8.0] and q[15].tolist() == [8.0, 25.0]
    assert np.all(q == np.round(q))  # whole pixels: exact anchors for the ground truth
    wide = grid_queries((320, 240), 4)
    assert wide[:, 0].max() < 320 and wide[:, 1].max() < 240
    with pytest.raises(TrackingError, match="grid size"):
        grid_queries((256, 256), 0)
    with pytest.raises(TrackingError, match="does not fit"):
        grid_queries((8, 8), 9)


@pytest.mark.parametrize(("frames", "message"), [
    (np.zeros((3, 64, 64, 3), np.float32), "uint8"),
    (np.zeros((3, 64, 64), np.uint8), r"\(T, H, W, 3\)"),
    (np.zeros((0, 64, 64, 3), np.uint8), "T >= 1"),
    (np.zeros((2, 4, 4, 3), np.uint8), "too small"),
])
def test_bad_frames_are_refused_with_a_clear_message(frames, message):
    with pytest.raises(TrackingError, match=message):
        LucasKanadeTracker().track(frames, [[1.0, 1.0]])


def test_queries_outside_the_image_are_refused():
    frames = np.stack([texture(64)] * 2)
    with pytest.raises(TrackingError, match="not a finite pixel inside the 64x64 image"):
        LucasKanadeTracker().track(frames, [[10.0, 10.0], [70.0, 5.0]])
    with pytest.raises(TrackingError, match=r"shape \(N, 2\)"):
        LucasKanadeTracker().track(frames, [1.0, 2.0, 3.0])


def test_lk_config_is_validated():
    with pytest.raises(TrackingError, match="window_size"):
        LucasKanadeConfig(window_size=20)
    with pytest.raises(TrackingError, match="fb_threshold_px"):
        LucasKanadeConfig(fb_threshold_px=0.0)
    with pytest.raises(TrackingError, match="follow_radius_px"):
        LucasKanadeConfig(follow_radius_px=-1.0)
    with pytest.raises(TrackingError, match="unknown tracker 'cotracker'"):
        TrackerConfig(name="cotracker")


def test_point_tracks_check_shapes():
    with pytest.raises(TrackingError, match=r"\(T, N, 2\)"):
        PointTracks(np.zeros((3, 4)), np.zeros((3, 4), bool))
    with pytest.raises(TrackingError, match="visibility shape"):
        PointTracks(np.zeros((3, 4, 2)), np.zeros((3, 5), bool))
    with pytest.raises(TrackingError, match="finite"):
        PointTracks(np.full((1, 1, 2), np.nan), np.ones((1, 1), bool))


# --- Lucas-Kanade on exact motion --------------------------------------------------------


def test_lk_follows_an_exact_translation_to_a_tenth_of_a_pixel():
    base = texture()
    velocity = np.array([2.5, -1.5])  # px per frame, sub-pixel
    frames = np.stack([shifted(base, *(velocity * t)) for t in range(16)])
    queries = grid_queries((256, 256), 15)
    path = queries[None] + velocity[None, None] * np.arange(16)[:, None, None]
    interior = np.all((path > 30) & (path < 226), axis=(0, 2))  # clear of the reflected borders throughout
    tracks = LucasKanadeTracker().track(frames, queries[interior])
    expected = path[:, interior]
    assert interior.sum() > 80
    assert tracks.points.shape == (16, int(interior.sum()), 2)
    assert tracks.visible.all()
    assert np.max(np.linalg.norm(tracks.points - expected, axis=-1)) < 0.1


def test_lk_loses_points_whose_content_is_replaced_and_keeps_the_rest():
    """Forward-backward check: a patch replaced by other texture (an occluder) loses its points."""
    base = texture(seed=1)
    occluded = base.copy()
    occluded[96:160, 96:160] = texture(seed=2)[96:160, 96:160]
    frames = np.stack([base, base, occluded, occluded])
    queries = np.array([[128.0, 128.0], [112.0, 120.0], [40.0, 40.0], [200.0, 60.0]])
    tracks = LucasKanadeTracker().track(frames, queries)
    assert tracks.visible[:2].all()
    assert not tracks.visible[2:, :2].any()  # inside the replaced patch: lost from frame 2 on
    assert tracks.visible[:, 2:].all()
    np.testing.assert_allclose(tracks.points[:, 2:], np.repeat(queries[None, 2:], 4, axis=0), atol=0.05)


def test_a_flat_region_that_does_not_change_is_held_visible():
    """A uniform area (no texture for LK) stays put and visible; OpenCV alone would report it lost."""
    image = texture(seed=3)
    image[:, :128] = (180, 140, 90)
    frames = np.stack([image] * 5)
    queries = np.array([[40.0, 128.0], [200.0, 128.0]])
    held = LucasKanadeTracker().track(frames, queries)
    assert held.visible.all()
    np.testing.assert_allclose(held.points, np.repeat(queries[None], 5, axis=0), atol=1e-6)
    plain = LucasKanadeTracker(LucasKanadeConfig(hold_flat_points=False)).track(frames, queries)
    assert not plain.visible[1:, 0].any() and plain.visible[:, 1].all()


# --- selection ---------------------------------------------------------------------------


def make_shift_tracker(config: TrackerConfig) -> PointTracker:
    """A plug-in factory (``tests.training.test_tracking:make_shift_tracker``): LK with a 15 px window."""
    tracker = LucasKanadeTracker(LucasKanadeConfig(window_size=15))
    tracker.name = "plug-in lk"
    return tracker


def test_default_and_plug_in_trackers_are_built_by_name():
    assert build_tracker().name == "lk"
    assert isinstance(build_tracker(), LucasKanadeTracker)
    plug = build_tracker(TrackerConfig(name="tests.training.test_tracking:make_shift_tracker"))
    assert plug.name == "plug-in lk" and plug.config.window_size == 15


# --- accuracy against the simulator's ground truth ----------------------------------------


@pytest.mark.slow
def test_lk_meets_the_accuracy_floor_against_simulated_ground_truth(recording):
    """16-frame windows of a real expert episode: median error over points visible throughout <= 3 px."""
    queries = grid_queries((256, 256), 15)
    tracker = LucasKanadeTracker()
    every, moving, kept, counted = [], [], 0, 0
    for start in (0, 8, 16, 24):
        truth = recording.ground_truth(start, 16, queries)
        tracks = tracker.track(recording.rgb[start:start + 16], queries)
        errors = track_errors(tracks.points, tracks.visible, truth)
        every.append(errors.all)
        moving.append(errors.moving)
        kept += errors.kept
        counted += errors.counted
    every, moving = np.concatenate(every), np.concatenate(moving)
    assert every.size > 4 * 100 * 15 and moving.size >= 40 * 15  # the arm really moves in these windows
    assert np.median(every) <= FLOOR_PX
    # The moving points alone are harder: the arm's white links carry little texture and the
    # expert's first steps sweep them ~100 px in 16 frames (measured: median ~5 px in the first
    # windows, ~2 px over whole episodes in bench/tracker_bench.py). A regression guard, not the floor:
    assert np.median(moving) <= MOVING_GUARD_PX
    assert kept / counted > 0.7


@pytest.mark.slow
def test_ground_truth_is_exact_where_the_scene_is_static(recording):
    """Sanity of the reference: table points never move, and a point on the moving arm does."""
    queries = grid_queries((256, 256), 15)
    truth = recording.ground_truth(0, 16, queries)
    seg = recording.segmentation[0, queries[:, 1].astype(int), queries[:, 0].astype(int)]
    ids = BODY_IDS
    table = seg == ids["table"]   # a static box: its base link (link -1 -> no link bits)
    assert table.sum() > 40
    np.testing.assert_allclose(truth.points[:, table], np.repeat(queries[None, table], 16, axis=0), atol=1e-6)
    assert truth.moving[(seg & 0xFFFFFF) == ids["arm"]].any()
