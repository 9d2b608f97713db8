"""Evaluation results without ROS: Wilson intervals, summaries, plot, overlay projection, GIF."""

from __future__ import annotations

import json

import numpy as np
import pytest

from magma_ros.evaluation import (
    EpisodeOutcome,
    EvaluationError,
    OverlayFrame,
    camera_pose_in_base,
    draw_overlay,
    format_table,
    plot_summary,
    project,
    summarize,
    summary_document,
    wilson_interval,
    write_json,
    write_overlay_gif,
)
from magma_ros.sim import THIRD_PERSON_CAMERA, Workcell


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (5, 10, 0.2366, 0.7634), (98, 100, 0.9300, 0.9945)])
def test_wilson_interval_matches_reference_values(k, n, low, high):
    assert wilson_interval(k, n) == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_always_holds_the_observed_rate():
    # 0/3 once came out with a lower bound of 1e-17 > 0: the summary plot's error bar went negative
    for n in range(1, 121):
        for k in range(n + 1):
            low, high = wilson_interval(k, n)
            assert 0.0 <= low <= k / n <= high <= 1.0, (k, n, low, high)
    assert wilson_interval(0, 3)[0] == 0.0 and wilson_interval(3, 3)[1] == 1.0


def test_wilson_interval_rejects_impossible_counts():
    for k, n in [(1, 0), (-1, 3), (4, 3)]:
        with pytest.raises(EvaluationError):
            wilson_interval(k, n)


def outcomes() -> list[EpisodeOutcome]:
    return [EpisodeOutcome("reach", 0, "red", "reach the red cube", True, 20, 80, 2.0, 5.0),
            EpisodeOutcome("reach", 1, "green", "reach the green cube", False, 80, 80, 8.0, 9.0),
            EpisodeOutcome("pick", 0, "red", "pick up the red cube", False, 150, 150, 15.0, 20.0)]


def test_summary_per_task(tmp_path):
    summary = summarize(outcomes())
    assert list(summary) == ["reach", "pick"]
    reach = summary["reach"]
    assert (reach.episodes, reach.successes, reach.success_rate) == (2, 1, 0.5)
    assert reach.mean_steps == 50.0 and reach.mean_steps_successful == 20.0 and reach.seeds_failed == [1]
    assert summary["pick"].mean_steps_successful is None
    assert "reach" in format_table(summary)
    path = write_json(tmp_path / "s.json", summary_document(outcomes(), checkpoint="x"))
    document = json.loads(path.read_text())
    assert document["checkpoint"] == "x" and len(document["episodes"]) == 3
    assert document["tasks"]["reach"]["ci95_low"] == pytest.approx(wilson_interval(1, 2)[0])
    png = plot_summary(outcomes(), tmp_path / "s.png", "title")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(EvaluationError):
        summarize([])


def test_projection_lands_on_the_rendered_cube():
    """Cube centres projected with the URDF camera pose and K fall on pixels of the cube's colour."""
    with Workcell() as cell:
        cell.reset(5)
        frame = cell.render(THIRD_PERSON_CAMERA.name)
        camera = camera_pose_in_base(THIRD_PERSON_CAMERA.optical_frame, cell.base_frame)
        np.testing.assert_allclose(camera.position, frame.pose.position, atol=1e-9)
        for color, channel in (("red", 0), ("green", 1), ("blue", 2)):
            u, v = project(cell.cube_pose(color).position, frame.intrinsics.k, camera)[0]
            pixel = frame.rgb[round(v), round(u)].astype(int)
            assert pixel[channel] > pixel.sum() - pixel[channel], (color, pixel)
        assert np.isnan(project(camera.position - 0.1 * camera.rotation()[:, 2], frame.intrinsics.k, camera)).all()


def test_overlay_and_gif(tmp_path):
    with Workcell() as cell:
        frame = cell.render(THIRD_PERSON_CAMERA.name)
        camera = camera_pose_in_base(THIRD_PERSON_CAMERA.optical_frame, cell.base_frame)
        ee = cell.ee_pose().position
    frames = [OverlayFrame(frame.rgb, ee + np.array([0.01 * i, 0.0, 0.0]), np.array([0.01, 0.0, 0.0]),
                           [np.array([[10.0, 10.0], [50.0, 40.0]])], f"step {i}") for i in range(3)]
    image = draw_overlay(frames[1], np.array([f.ee_position for f in frames[:2]]), frame.intrinsics.k, camera)
    assert image.shape == (2 * frame.rgb.shape[0], 2 * frame.rgb.shape[1], 3)
    assert not np.array_equal(image[::2, ::2], frame.rgb)  # something was drawn
    gif = write_overlay_gif(frames, frame.intrinsics.k, camera, tmp_path / "a.gif")
    from PIL import Image

    with Image.open(gif) as animation:
        assert animation.n_frames == 3
    with pytest.raises(EvaluationError):
        write_overlay_gif([], frame.intrinsics.k, camera, tmp_path / "b.gif")
