"""Trace-of-Mark labels from the simulator's exact motion, and answers scored against them
(magma_ros.training.tom_truth, training/recipes/tom_sim_truth.py). ROS-free."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import cv2
import numpy as np
import pytest

from magma_ros.backends import create_backend
from magma_ros.codecs import ImageSize, draw_marks, pixel_point_to_grid
from magma_ros.image_codec import resize_frame
from magma_ros.model import MagmaPolicy, PreprocessorConfig, build_tiny_model, save_checkpoint
from magma_ros.model.finetune import SupervisedExample, fit
from magma_ros.sim import Workcell, WorkcellConfig, task_for_seed
from magma_ros.sim.point_tracks import record_expert_episode
from magma_ros.sim.render_detail import arm_urdf_for
from magma_ros.training.tom_truth import (
    DATASET_FRAME_SIZE,
    POLICY_CAMERA,
    POLICY_RENDER_DETAIL,
    RECIPE_LABEL_CONFIG,
    SimTraceSet,
    TruthWindow,
    evaluate_traces_against_sim,
    label_sim_episodes,
)
from magma_ros.training.trace_labels import window_queries, window_starts

REPO = Path(__file__).resolve().parents[1]
SEED = 6000
STEPS = 17  # windows at steps 0 and 8 (9 frames each)


@pytest.fixture(scope="module")
def sim_labels() -> SimTraceSet:
    return label_sim_episodes(["reach", "pick"], [SEED], STEPS, wrist_inset=False)   # the inset: its own test


@pytest.fixture(scope="module")
def first_reach(sim_labels: SimTraceSet) -> TruthWindow:
    """The reach episode's first window (the arm sets off: it always has moving marks)."""
    window = sim_labels.episodes[0].windows[0]
    assert (window.sample.episode_id, window.sample.step) == (f"reach-{SEED}", 0)
    return window


def test_every_labelled_trace_is_the_simulated_motion_of_its_mark(sim_labels: SimTraceSet) -> None:
    camera = ImageSize(POLICY_CAMERA.width, POLICY_CAMERA.height)
    size = ImageSize(DATASET_FRAME_SIZE, DATASET_FRAME_SIZE)   # the frames as the dataset builder stores them
    scale = np.array([camera.width / size.width, camera.height / size.height])
    queries = window_queries(size, RECIPE_LABEL_CONFIG)
    checked = 0
    for episode in sim_labels.episodes:
        assert len(episode.windows) + sum(episode.skipped.values()) == len(window_starts(STEPS, RECIPE_LABEL_CONFIG))
        config = WorkcellConfig(cameras=(POLICY_CAMERA,), arm_urdf=arm_urdf_for(POLICY_RENDER_DETAIL))
        with Workcell(config) as cell:  # an independent run of the same episode
            recording = record_expert_episode(cell, task_for_seed(episode.family, episode.seed), episode.seed, STEPS,
                                              camera=POLICY_CAMERA.name)
        assert recording.rgb.shape[1:] == (camera.height, camera.width, 3)
        for window in episode.windows:
            label, sample = window.label, window.sample
            start = sample.step
            frames = recording.rgb[start:start + RECIPE_LABEL_CONFIG.window]
            truth = recording.ground_truth(start, len(frames), queries * scale)   # followed at the camera's size
            points = truth.points / scale
            np.testing.assert_array_equal(sample.image, draw_marks(resize_frame(frames[0], DATASET_FRAME_SIZE),
                                                                   label.marks))
            assert not label.camera_motion
            marks = {m.id: m for m in label.marks}
            assert sample.traces and set(sample.traces) == set(label.moving_ids)
            for mark_id, trace in sample.traces.items():
                query = label.sources[mark_id]
                assert truth.moving[query]
                assert marks[mark_id].grid == pixel_point_to_grid(*queries[query], size)
                last = int(np.flatnonzero(truth.visible[:, query])[-1])
                assert tuple(trace[-1]) == pixel_point_to_grid(*points[last, query], size)
                assert [tuple(p) for p in trace] == [pixel_point_to_grid(u, v, size)
                                                     for u, v in points[1:last + 1, query]]
                checked += 1
    assert checked >= 4, checked


def test_with_the_wrist_inset_no_mark_under_the_inset_is_scored() -> None:
    """wrist_inset: the frames show the wrist view in their top-right corner (as sim_arm_node publishes them);
    the simulator sees no point there, so no labelled trace starts under the inset, while the frames are
    otherwise the plain ones."""
    from magma_ros.sim import wrist_inset_camera

    inset = wrist_inset_camera(POLICY_CAMERA)
    size = ImageSize(DATASET_FRAME_SIZE, DATASET_FRAME_SIZE)
    corner = (DATASET_FRAME_SIZE * (1 - inset.width / POLICY_CAMERA.width),
              DATASET_FRAME_SIZE * inset.height / POLICY_CAMERA.height)   # (left edge, bottom edge) at 256
    labels = label_sim_episodes(["reach"], [SEED], STEPS, wrist_inset=True)
    windows = labels.episodes[0].windows
    assert windows
    for window in windows:
        for mark_id in window.sample.traces:
            mark = next(m for m in window.label.marks if m.id == mark_id)
            assert not (mark.u >= corner[0] and mark.v <= corner[1]), (mark, corner)
    plain = label_sim_episodes(["reach"], [SEED], STEPS, wrist_inset=False).episodes[0].windows[0].sample.image
    framed = windows[0].sample.image
    assert framed.shape == plain.shape == (size.height, size.width, 3)
    assert not np.array_equal(framed[:int(corner[1]) - 2, int(corner[0]) + 2:],
                              plain[:int(corner[1]) - 2, int(corner[0]) + 2:])


def test_an_untrained_model_answers_nothing_and_standing_still_is_scored(tmp_path: Path,
                                                                          first_reach: TruthWindow) -> None:
    model, tokenizer = build_tiny_model("magma-tiny-sim256", seed=0)
    backend = create_backend("torch", checkpoint=str(save_checkpoint(model, tokenizer, tmp_path / "untrained")))
    try:
        summary = evaluate_traces_against_sim(backend, [first_reach.sample])
    finally:
        backend.close()
    assert summary["samples"] == 1
    assert summary["labelled_marks"] == len(first_reach.sample.traces) >= 1
    assert summary["answers_parsed"] == 0.0
    assert summary["marks_traced"] == 0.0
    assert summary["endpoint_error_grid"]["median"] is None
    still = summary["standing_still"]["endpoint_error_grid"]
    for key in ("mean", "median", "p90", "max"):
        assert np.isfinite(still[key]) and still[key] > 0, still
    assert summary["standing_still"]["endpoint_error_grid_on_traced_marks"]["median"] is None
    # over every moved mark, an untraced one counts as "nothing moves": nothing answered = standing still
    assert summary["endpoint_error_grid_all_marks"] == still


def test_a_model_fitted_to_the_label_answers_it_and_beats_standing_still(tmp_path: Path,
                                                                        first_reach: TruthWindow) -> None:
    sample = first_reach.sample
    model, tokenizer = build_tiny_model("magma-tiny", seed=0)
    policy = MagmaPolicy(model, tokenizer, PreprocessorConfig(base_img_size=model.config.vision.img_size))
    losses = fit(policy, [SupervisedExample(sample.image, sample.question, sample.answer)], steps=60, lr=3e-3)
    assert losses[-1] < 0.1, losses[-5:]
    checkpoint = save_checkpoint(model, tokenizer, tmp_path / "fitted")
    backend = create_backend("torch", checkpoint=str(checkpoint))
    try:
        summary = evaluate_traces_against_sim(backend, [sample])
    finally:
        backend.close()
    assert summary["answers_parsed"] == 1.0 and summary["marks_traced"] == 1.0, summary
    still = summary["standing_still"]["endpoint_error_grid_on_traced_marks"]
    assert summary["endpoint_error_grid"]["max"] < still["median"]
    assert summary["endpoint_error_grid_all_marks"] == summary["endpoint_error_grid"]   # every mark traced

    # the recipe script end to end on the same episode: one window, the one the model learnt
    out = tmp_path / "run"
    main = runpy.run_path(str(REPO / "training" / "recipes" / "tom_sim_truth.py"))["main"]
    assert main([str(checkpoint), "--task", "reach", "--episodes", "1", "--seed", str(SEED), "--steps", "9",
                 "--no-wrist-inset", "--out", str(out)]) == 0   # the plain frame the model learnt
    written = json.loads((out / "summary.json").read_text())
    assert written["samples"] == 1 and written["answers_parsed"] == 1.0
    assert written["endpoint_error_grid"] == summary["endpoint_error_grid"]
    assert written["standing_still"] == summary["standing_still"]
    assert written["endpoint_error_grid_all_marks"] == summary["endpoint_error_grid_all_marks"]
    figure = cv2.imread(str(out / "traces.png"))
    assert figure is not None and figure.shape[1] == 2 * 2 * DATASET_FRAME_SIZE
