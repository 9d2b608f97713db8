"""Trace-of-Mark labels: Magma's text (parsed back by the codecs), marks drawn, camera-motion removal on a
homography-warped sequence, the visibility filter, absent optional trackers, accuracy against the
simulator's ground truth, and `magma-ros dataset label-traces` on a dataset built from recorded bags."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from magma_ros.codecs import (
    TRACE_END,
    TRACE_START,
    ImageSize,
    build_tom_query,
    draw_marks,
    format_traces,
    grid_point_to_pixel,
    mark_style,
    parse_traces,
    pixel_point_to_grid,
)
from magma_ros.sim import TaskFamily, Workcell, WorkcellConfig, task_for_seed
from magma_ros.sim.point_tracks import GROUND_TRUTH_CAMERA, SimRecording, record_expert_episode
from magma_ros.training.records import TRACES_DIR, TraceSample
from magma_ros.training.trace_labels import (
    TraceLabelConfig,
    TraceLabelError,
    WindowLabel,
    grid_marks,
    kmeans_representatives,
    label_dataset,
    label_window,
    load_trace_samples,
    mean_steps,
    remove_camera_motion,
    window_queries,
)
from magma_ros.training.tracking import (
    LucasKanadeTracker,
    PointTracks,
    TrackerConfig,
    TrackerUnavailableError,
    build_tracker,
    grid_queries,
)

REPO = Path(__file__).resolve().parents[2]
FLOOR_PX = 3.0


def texture(size: int = 256, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (0, 0), 2.0)


@pytest.fixture(scope="module")
def recording() -> Iterator[SimRecording]:
    """A scripted-expert pick episode, 40 frames at 256 x 256, with exact point tracks."""
    with Workcell(WorkcellConfig(cameras=(GROUND_TRUTH_CAMERA,))) as cell:
        yield record_expert_episode(cell, task_for_seed(TaskFamily.PICK.value, 0), 0, 40)


@pytest.fixture(scope="module")
def labelled(recording: SimRecording) -> WindowLabel:
    label = label_window(recording.rgb[16:32], recording.instruction, LucasKanadeTracker(), episode_id="sim",
                         step=16)
    assert isinstance(label, WindowLabel), label
    return label


# --- text --------------------------------------------------------------------------------


@pytest.mark.slow
def test_answer_is_magmas_text_and_round_trips_through_the_codecs(labelled: WindowLabel):
    sample = labelled.sample
    parsed = parse_traces(sample.answer, (256, 256))
    assert parsed.ok, parsed.errors
    assert parsed.moved_mark_ids == tuple(sorted(sample.traces)) == labelled.moving_ids
    for mark_id, trace in sample.traces.items():
        assert list(parsed.traces[mark_id].grid) == [tuple(p) for p in trace.tolist()]
    marks = {m.id: m for m in labelled.marks}
    current = {i: marks[i].grid for i in parsed.moved_mark_ids}
    assert format_traces(current, {i: parsed.traces[i].grid for i in current}) == sample.answer
    assert sample.answer.startswith(f"Mark {parsed.moved_mark_ids[0]} at [")
    assert " should be moved, and their future positions are:\n\n\"Mark " in sample.answer
    steps = max(len(t) for t in sample.traces.values())
    assert steps <= 15
    assert sample.question == build_tom_query(labelled.instruction, steps, mark_ids=sorted(marks))
    assert sample.question.startswith("The image is split into 256x256 grids, and labeled with numeric marks: [1, ")
    assert "The robot is doing: pick up the red cube. To finish the task, how to move the numerical marks" \
           in sample.question
    # ids: a permutation of 1..n over moving and static marks
    assert sorted(marks) == list(range(1, len(marks) + 1))
    assert 1 <= len(sample.traces) <= 5 and len(marks) > len(sample.traces)


@pytest.mark.slow
def test_trace_tokens_wrap_the_traces(recording: SimRecording):
    label = label_window(recording.rgb[16:32], recording.instruction, LucasKanadeTracker(),
                         TraceLabelConfig(trace_tokens=True), episode_id="sim", step=16)
    assert isinstance(label, WindowLabel)
    answer = label.sample.answer
    assert TRACE_START in answer and answer.endswith(TRACE_END)
    assert parse_traces(answer, (256, 256)).ok


@pytest.mark.slow
def test_labels_are_deterministic_per_seed(recording: SimRecording, labelled: WindowLabel):
    again = label_window(recording.rgb[16:32], recording.instruction, LucasKanadeTracker(), episode_id="sim", step=16)
    assert isinstance(again, WindowLabel)
    assert again.sample.answer == labelled.sample.answer and again.sample.question == labelled.sample.question
    other = label_window(recording.rgb[16:32], recording.instruction, LucasKanadeTracker(),
                         TraceLabelConfig(seed=7), episode_id="sim", step=16)
    assert isinstance(other, WindowLabel)
    assert other.sample.question != labelled.sample.question or other.sample.answer != labelled.sample.answer


# --- marks -------------------------------------------------------------------------------


@pytest.mark.slow
def test_marks_are_drawn_on_the_first_frame_and_nowhere_else(labelled: WindowLabel):
    frame = labelled.frames[0]
    image = labelled.sample.image
    np.testing.assert_array_equal(image, draw_marks(frame, labelled.marks))
    style = mark_style((256, 256), max(m.id for m in labelled.marks))
    vv, uu = np.mgrid[0:256, 0:256]
    near = np.zeros((256, 256), bool)
    for mark in labelled.marks:
        disk = (uu - mark.u) ** 2 + (vv - mark.v) ** 2 <= (style.radius - 1) ** 2
        # red disk, white number, and their anti-aliased blend (red channel high, green = blue)
        ink = (image[..., 0] > 200) & (np.abs(image[..., 1].astype(int) - image[..., 2]) < 25)
        assert np.count_nonzero(disk & ink) > 0.95 * np.count_nonzero(disk), mark
        near |= (uu - mark.u) ** 2 + (vv - mark.v) ** 2 <= (style.radius + 2) ** 2
    np.testing.assert_array_equal(image[~near], frame[~near])
    # marks sit where their text says, and no two overlap
    centres = np.array([m.pixel for m in labelled.marks])
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(len(centres)) * 1e9
    assert gaps.min() >= style.min_spacing


# --- accuracy ----------------------------------------------------------------------------


@pytest.mark.slow
def test_label_traces_meet_the_floor_against_simulated_ground_truth(recording: SimRecording):
    """Every labelled window of a short simulated recording: the answer's traces (grid cells, read
    back as pixels) against the exact tracks of the points the marks were placed on."""
    queries = grid_queries((256, 256), 15)
    tracker = LucasKanadeTracker()
    errors, on_moving = [], []
    for start in range(0, len(recording) - 16 + 1, 4):
        label = label_window(recording.rgb[start:start + 16], recording.instruction, tracker, episode_id="sim",
                             step=start)
        if isinstance(label, str):
            continue
        truth = recording.ground_truth(start, 16, queries)
        for mark_id, trace in label.sample.traces.items():
            source = label.sources[mark_id]
            pixels = np.array([grid_point_to_pixel(x, y, (256, 256)) for x, y in trace])
            seen = truth.visible[1:1 + len(pixels), source]
            errors.append(np.linalg.norm(pixels - truth.points[1:1 + len(pixels), source], axis=1)[seen])
            on_moving.append(truth.moving[source])
    error = np.concatenate(errors)
    assert len(errors) >= 10 and error.size >= 100
    assert np.median(error) <= FLOOR_PX
    # most marks in the answer are on things that move; some sit just beside the arm and get dragged along
    # (with the slow-lifting expert, pick seeds 0..4 measured 0.65-0.75 of marks on moving points)
    assert np.mean(on_moving) >= 0.6


# --- the recipe's steps ------------------------------------------------------------------


def test_camera_motion_removal_restores_points_warped_by_known_homographies():
    rng = np.random.default_rng(0)
    first = rng.uniform(20, 236, (200, 2))
    points, visible = [first], np.ones((6, 200), bool)
    for t in range(1, 6):
        h = np.array([[1 + 0.01 * t, 0.02 * t, 6.0 * t], [-0.015 * t, 1 - 0.005 * t, -4.0 * t],
                      [1e-5 * t, -2e-5 * t, 1.0]])
        points.append(cv2.perspectiveTransform(first[None], h)[0])
    points = np.stack(points)
    points[:, :5] += np.arange(6)[:, None, None] * np.array([9.0, 3.0])  # 5 points move on their own
    visible[3, 150:] = False  # and some are missing in one frame
    corrected, vis = remove_camera_motion(points, visible, 4.0)
    assert vis.all() == visible.all() and vis[3, 150:].sum() == 0
    np.testing.assert_allclose(corrected[:, 5:150], np.repeat(first[None, 5:150], 6, axis=0), atol=1e-3)
    steps = mean_steps(corrected, vis)
    assert np.all(steps[:5] > 2.0) and np.all(steps[5:] < 0.01)
    np.testing.assert_array_equal(points[0], first + 0)  # input untouched
    _, few_vis = remove_camera_motion(points[:, :3], np.ones((6, 3), bool))
    assert not few_vis[1:].any()  # fewer than 4 points: frames dropped, not guessed


def test_camera_motion_is_removed_from_a_warped_video_and_only_the_object_moves():
    """A textured scene seen by a panning camera (a homography per frame) with one object moving
    across it: the labeller detects the camera motion and the moving marks are on the object."""
    scene = texture(320, seed=4)
    patch = texture(40, seed=5)
    frames, object_at = [], []
    for t in range(12):
        world = scene.copy()
        x, y = 140 + 5 * t, 150 - 3 * t
        world[y:y + 40, x:x + 40] = patch
        object_at.append((x + 20, y + 20))
        h = np.array([[1.0 + 0.004 * t, 0.003 * t, -30 - 3.0 * t], [-0.002 * t, 1.0, -30 + 2.0 * t],
                      [0.0, 0.0, 1.0]])
        frames.append(cv2.warpPerspective(world, h, (256, 256), flags=cv2.INTER_LINEAR))
    frames = np.stack(frames)
    label = label_window(frames, "move the square", LucasKanadeTracker(), episode_id="synthetic", step=0)
    assert isinstance(label, WindowLabel), label
    assert label.camera_motion
    h0 = np.array([[1.0, 0.0, -30.0], [0.0, 1.0, -30.0], [0.0, 0.0, 1.0]])
    centre = cv2.perspectiveTransform(np.array([[object_at[0]]], float), h0)[0, 0]
    marks = {m.id: m for m in label.marks}
    steps = []
    for mark_id in label.moving_ids:  # every moving mark is on the object (or its edge), in the first frame
        assert np.max(np.abs(np.array(marks[mark_id].pixel) - centre)) <= 22, (mark_id, marks[mark_id], centre)
        steps.append(np.diff(label.pixel_traces[mark_id], axis=0).mean(axis=0))
    # the object's own motion, camera removed (a mark on the object's edge may lag behind)
    assert min(np.max(np.abs(step - [5.0, -3.0])) for step in steps) < 0.5, steps


def test_visibility_filter_keeps_only_points_seen_in_more_than_half_the_frames():
    frames = np.stack([texture(seed=6)] * 8)
    queries = grid_queries((256, 256), 15)
    points = np.repeat(queries[None], 8, axis=0)
    visible = np.ones((8, 225), bool)
    movers = np.arange(0, 225, 7)
    points[:, movers] += np.arange(8)[:, None, None] * np.array([4.0, 0.0])
    half = movers[::2]
    visible[4:, half] = False  # visible in exactly half the frames: dropped
    label = label_window(frames, "push", LucasKanadeTracker(), episode_id="e", step=0,
                         tracks=PointTracks(points, visible))
    assert isinstance(label, WindowLabel)
    fraction = visible.mean(axis=0)
    assert all(fraction[label.sources[i]] > 0.5 for i in label.sources)
    assert set(label.sources[i] for i in label.moving_ids) <= set(movers) - set(half)
    visible[4:, movers] = False
    nothing = label_window(frames, "push", LucasKanadeTracker(), episode_id="e", step=0,
                           tracks=PointTracks(points, visible))
    assert nothing == "nothing moves"
    assert label_window(frames, "  ", LucasKanadeTracker(), tracks=PointTracks(points, visible)) == "no instruction"


def test_grid_marks_move_with_the_tracked_points_around_them():
    """``marks: grid``: the policy node's 3x4 marks (ids in reading order) are all drawn and asked
    about; a mark is in the answer when most tracked points within ``mark_radius`` move, and its
    trace is their median motion; far movers, a moving minority and static points do not count."""
    config = TraceLabelConfig(window=9, marks="grid")
    frames = np.stack([texture(seed=7)] * 9)
    queries = window_queries(ImageSize(256, 256), config)
    np.testing.assert_array_equal(queries, grid_queries((256, 256), 15))
    marks = grid_marks(ImageSize(256, 256), config)
    assert [m.id for m in marks] == list(range(1, 13))
    points = np.repeat(queries[None], 9, axis=0)
    visible = np.ones((9, len(queries)), bool)
    near = lambda mark, radius: np.flatnonzero(np.hypot(*(queries - [mark.u, mark.v]).T) <= radius)  # noqa: E731
    steps = np.arange(9)[:, None, None]
    a, b, c = marks[5], marks[6], marks[10]
    points[:, near(a, 20)] += steps * np.array([3.0, -2.0])              # every point around mark 6 moves
    minority = near(b, 20)[: len(near(b, 20)) // 2 - 1]                  # fewer than half around mark 7
    points[:, minority] += steps * np.array([0.0, 5.0])
    far = np.setdiff1d(near(c, 40), near(c, 20))                         # only points beyond the radius of mark 11
    points[:, far] += steps * np.array([-4.0, 0.0])
    label = label_window(frames, "push the cube", LucasKanadeTracker(), config, episode_id="e", step=0,
                         tracks=PointTracks(points, visible))
    assert isinstance(label, WindowLabel)
    assert label.marks == marks and label.moving_ids == (a.id,)
    assert label.sample.question.endswith(build_tom_query("push the cube", 8, mark_ids=list(range(1, 13))))
    expected = [pixel_point_to_grid(a.u + 3.0 * t, a.v - 2.0 * t, (256, 256)) for t in range(1, 9)]
    assert [tuple(p) for p in label.sample.traces[a.id]] == expected
    np.testing.assert_array_equal(label.sample.image, draw_marks(frames[0], marks))

    # mark_radius 0: the marks' own points are tracked
    own = TraceLabelConfig(window=9, marks="grid", mark_radius=0.0)
    centres = window_queries(ImageSize(256, 256), own)
    np.testing.assert_array_equal(centres, [[m.u, m.v] for m in marks])
    moved = np.repeat(centres[None], 9, axis=0)
    moved[:, 2] += steps[:, 0] * np.array([0.0, 2.0])
    label = label_window(frames, "push the cube", LucasKanadeTracker(), own, episode_id="e", step=0,
                         tracks=PointTracks(moved, np.ones((9, 12), bool)))
    assert isinstance(label, WindowLabel) and label.moving_ids == (marks[2].id,)
    still = label_window(frames, "push the cube", LucasKanadeTracker(), own, episode_id="e", step=0,
                         tracks=PointTracks(np.repeat(centres[None], 9, axis=0), np.ones((9, 12), bool)))
    assert still == "nothing moves"
    for bad in ({"marks": "spiral"}, {"mark_grid": (0, 4)}, {"mark_radius": -1.0}, {"mark_radius": 256.0}):
        with pytest.raises(TraceLabelError):
            TraceLabelConfig(**bad)


def test_ignored_regions_never_give_a_mark_in_the_answer():
    """``ignore_regions`` (e.g. the sim's wrist inset, another camera's motion pasted into the frame):
    a grid mark inside one stays drawn but never moves in the answer, tracked points inside one do not
    count towards a mark beside it (with ``mark_radius``), and k-means marks are never placed there."""
    inset = (0.65, 0.0, 1.0, 0.35)
    size = ImageSize(256, 256)
    frames = np.stack([texture(seed=11)] * 9)
    steps = np.arange(9)[:, None, None]
    for radius in (0.0, 20.0):
        plain = TraceLabelConfig(window=9, marks="grid", mark_radius=radius)
        ignoring = TraceLabelConfig(window=9, marks="grid", mark_radius=radius, ignore_regions=(inset,))
        queries = window_queries(size, plain)
        marks = grid_marks(size, plain)
        inside = [m.id for m in marks if m.u >= 0.65 * 256 and m.v <= 0.35 * 256]
        assert inside == [4]
        points = np.repeat(queries[None], 9, axis=0)
        in_box = (queries[:, 0] >= 0.65 * 256) & (queries[:, 1] <= 0.35 * 256)
        points[:, in_box] += steps * np.array([2.0, 3.0])        # the inset's own view moves
        points[:, ~in_box & (queries[:, 1] > 170)] += steps * np.array([-3.0, 0.0])   # and the bottom row
        tracks = PointTracks(points, np.ones(points.shape[:2], bool))
        before = label_window(frames, "reach the cube", None, plain, tracks=tracks)
        after = label_window(frames, "reach the cube", None, ignoring, tracks=tracks)
        assert isinstance(before, WindowLabel) and isinstance(after, WindowLabel)
        assert 4 in before.moving_ids and 4 not in after.moving_ids
        assert set(after.moving_ids) == set(before.moving_ids) - {4, 3} and {9, 10, 11, 12} <= set(after.moving_ids)
        assert after.marks == before.marks   # still drawn: the policy node draws every grid mark
        np.testing.assert_array_equal(after.sample.image, before.sample.image)
        only_inset = PointTracks(np.where(in_box[None, :, None], points, queries[None]), tracks.visible)
        assert label_window(frames, "reach the cube", None, ignoring, tracks=only_inset) == "nothing moves"
    kmeans = TraceLabelConfig(window=9, ignore_regions=(inset,))
    queries = grid_queries(size, 15)
    in_box = (queries[:, 0] >= 0.65 * 256) & (queries[:, 1] <= 0.35 * 256)
    moving = in_box | (queries[:, 1] > 200)
    points = np.repeat(queries[None], 9, axis=0) + np.where(moving[None, :, None], steps * np.array([2.0, 1.0]), 0)
    label = label_window(frames, "reach the cube", None, kmeans, episode_id="k", step=0,
                         tracks=PointTracks(points, np.ones(points.shape[:2], bool)))
    assert isinstance(label, WindowLabel)
    assert not any(in_box[label.sources[m.id]] for m in label.marks)
    for bad in ((0.5, 0.0, 0.4, 1.0), (0.0, 0.0, 1.5, 1.0), (0.1, 0.2), ("a", 0, 1, 1)):
        with pytest.raises(TraceLabelError, match="ignore"):
            TraceLabelConfig(ignore_regions=(bad,))
    assert TraceLabelConfig(ignore_regions=[[0.65, 0, 1, 0.35]]).ignore_regions == (inset,)
    # the command line's spelling: fractions, or the sim's inset by name
    from magma_ros.cli.label_traces import parse_region
    from magma_ros.sim.config import INSET_REGION

    assert parse_region("wrist-inset") == INSET_REGION == inset
    assert parse_region("0.1,0.2,0.3,0.4") == (0.1, 0.2, 0.3, 0.4)
    for bad in ("0.1,0.2,0.3", "a,b,c,d", ""):
        with pytest.raises(ValueError):
            parse_region(bad)


def test_kmeans_picks_one_member_per_cluster():
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0]])
    x = np.concatenate([c + rng.normal(0, 1, (20, 2)) for c in centres])
    picks = kmeans_representatives(x, 3, np.random.default_rng(0))
    assert sorted(p // 20 for p in picks) == [0, 1, 2]
    assert kmeans_representatives(x[:2], 5, np.random.default_rng(0)) in ([0, 1], [1, 0])
    assert kmeans_representatives(np.zeros((4, 2)), 3, np.random.default_rng(0)) == [0]


def test_config_is_validated():
    with pytest.raises(TraceLabelError, match="window"):
        TraceLabelConfig(window=1)
    with pytest.raises(TraceLabelError, match="min_window 8 is longer than window 6"):
        TraceLabelConfig(window=6, min_window=8)
    with pytest.raises(TraceLabelError, match="moving_clusters"):
        TraceLabelConfig(moving_clusters=(5, 2))
    with pytest.raises(TraceLabelError, match="visible_fraction"):
        TraceLabelConfig(visible_fraction=1.5)


# --- optional trackers -------------------------------------------------------------------


@pytest.mark.parametrize(("name", "package"), [("cotracker3", "cotracker"), ("bootstapir", "tapnet")])
def test_an_absent_optional_tracker_fails_with_a_clear_message(name, package):
    with pytest.raises(TrackerUnavailableError) as info:
        build_tracker(TrackerConfig(name=name, weights=Path("/nonexistent/weights.pt")))
    message = str(info.value)
    assert f"tracker {name!r} is not installed" in message and package in message
    assert "'lk'" in message and "\n" not in message
    if name == "cotracker3":
        assert "non-commercial" in message


def test_an_absent_plug_in_tracker_fails_with_a_clear_message():
    with pytest.raises(TrackerUnavailableError, match="not installed"):
        build_tracker(TrackerConfig(name="no_such_tracker_package.module:make"))
    with pytest.raises(TrackerUnavailableError, match="has no callable 'nope'"):
        build_tracker(TrackerConfig(name="magma_ros.training.tracking:nope"))


# --- a dataset built from recorded bags ------------------------------------------------------


@pytest.mark.slow
def test_label_traces_on_a_built_dataset_writes_loadable_samples_and_previews(sim_dataset: Path, tmp_path: Path):
    data = tmp_path / "data"
    shutil.copytree(sim_dataset, data)
    assert load_trace_samples(data) == []  # no labels yet
    summary = label_dataset(data, TraceLabelConfig(stride=8), preview=2, progress=False)
    index = json.loads((data / "dataset.json").read_text())
    episodes = [e["id"] for e in index["episodes"]]
    assert summary.labelled == episodes and not summary.failed
    assert all((data / TRACES_DIR / f"{e}.parquet").is_file() for e in episodes)
    samples = load_trace_samples(data)
    assert len(samples) == summary.samples > 0
    assert summary.windows == summary.samples + sum(summary.skipped_windows.values())
    for sample in samples:
        assert isinstance(sample, TraceSample) and sample.episode_id in episodes
        assert sample.image.dtype == np.uint8 and sample.image.ndim == 3
        parsed = parse_traces(sample.answer, (sample.image.shape[1], sample.image.shape[0]))
        assert parsed.ok and set(parsed.traces) == set(sample.traces)
        assert "pick up the" in sample.question
    assert len(summary.previews) == 2
    preview = cv2.imread(str(summary.previews[0]))
    assert preview is not None and preview.shape[1] > 2 * sample.image.shape[1]
    again = label_dataset(data, TraceLabelConfig(stride=8), progress=False)
    assert again.labelled == [] and again.already_done == episodes  # a re-run is a no-op


@pytest.mark.slow
def test_cli_label_traces(sim_dataset: Path, tmp_path: Path):
    data = tmp_path / "data"
    shutil.copytree(sim_dataset, data)
    magma_ros = str(REPO / ".venv" / "bin" / "magma-ros")
    absent = subprocess.run([magma_ros, "dataset", "label-traces", str(data), "--tracker", "cotracker3"],
                            capture_output=True, text=True, timeout=120)
    assert absent.returncode == 2
    assert absent.stderr.strip().count("\n") == 0 and "cotracker3" in absent.stderr
    assert not (data / TRACES_DIR).exists()
    result = subprocess.run([magma_ros, "dataset", "label-traces", str(data), "--stride", "8", "--preview", "1",
                             "--no-progress"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "episode(s) labelled" in result.stdout and "preview image(s)" in result.stdout
    assert len(list((data / TRACES_DIR / "preview").glob("*.png"))) == 1
    assert len(load_trace_samples(data)) > 0
    not_a_dataset = subprocess.run([magma_ros, "dataset", "label-traces", str(tmp_path)], capture_output=True,
                                   text=True, timeout=120)
    assert not_a_dataset.returncode == 2 and "not a magma_ros dataset" in not_a_dataset.stderr
