"""Trace-of-Mark answers scored against the simulator's exact motion, not a point tracker's.

``magma-ros dataset label-traces`` labels recorded demonstrations with a point tracker
(Lucas-Kanade by default), so offline evaluation (:mod:`magma_ros.training.offline_eval`)
scores a model against labels that carry the tracker's own errors. Here the scripted expert
runs in a workcell that renders what the policy sees (the third-person camera at the
sim_arm_node's ``image_width`` x ``image_height``, 320 x 240, with the arm drawn at its
``render_detail``, low; config/sim_arm.yaml says the same), its frames are resized to 256 x 256
as the dataset builder stores them, and each window's grid of query points is followed exactly
(:mod:`magma_ros.sim.point_tracks`). Those tracks go through the
labelling recipe unchanged (:func:`~magma_ros.training.trace_labels.label_window` with the
window, stride and seed of the recipe's ``label`` stage), so marks, question and answer are
what ``label-traces`` would write with a perfect tracker::

    labels = label_sim_episodes(["reach", "pick"], range(6000, 6010))
    summary = evaluate_traces_against_sim(backend, labels.samples)
    summary["endpoint_error_grid"]["median"], summary["standing_still"]["endpoint_error_grid"]["median"]

Errors are distances between trace endpoints on Magma's 256 grid, i.e. pixels of the frame
scaled to 256 x 256. ``standing_still`` scores the answer "nothing moves" (each mark's
endpoint is where the mark is now) on the same marks: a model that does not beat it has
learnt nothing about the motion. Seeds >= 5000 are never recorded for training
(training/recipes/default_model.sh). ROS-free.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from magma_ros.backends import PolicyBackend, PolicyOutput
from magma_ros.codecs import ImageSize, parse_traces
from magma_ros.contract import SimArmParameters
from magma_ros.image_codec import resize_frame
from magma_ros.sim import THIRD_PERSON_CAMERA, Workcell, WorkcellConfig, policy_cameras
from magma_ros.sim.config import CameraConfig
from magma_ros.sim.expert import ExpertConfig
from magma_ros.sim.point_tracks import GroundTruthTracks, SimRecording, record_expert_episode
from magma_ros.sim.render_detail import arm_urdf_for
from magma_ros.sim.session import choose_task
from magma_ros.training.offline_eval import (
    error_distribution,
    evaluate_trace_answers,
    trace_endpoint_errors_by_mark,
)
from magma_ros.training.records import TraceSample
from magma_ros.training.trace_labels import (
    TraceLabelConfig,
    WindowLabel,
    label_window,
    window_queries,
    window_starts,
)
from magma_ros.training.tracking import PointTracks

__all__ = [
    "POLICY_CAMERA",
    "POLICY_RENDER_DETAIL",
    "POLICY_WRIST_INSET",
    "RECIPE_LABEL_CONFIG",
    "TRUTH_TRACKER",
    "SimEpisodeLabels",
    "SimTraceSet",
    "TruthWindow",
    "evaluate_traces_against_sim",
    "label_recording",
    "label_sim_episodes",
    "standing_still_errors",
    "truth_point_tracks",
]

RECIPE_LABEL_CONFIG = TraceLabelConfig(window=9, stride=8, seed=0, marks="grid", mark_radius=0.0)
"""The recipe's ``label`` stage (the first frame plus the 8 future steps the policy node asks for, about
the policy node's grid of marks), each mark followed exactly (its own point: ``mark_radius`` 0)."""
DATASET_FRAME_SIZE = 256
"""The frame size the dataset builder stores (config/datasets/sim_panda.yaml ``image.size``)."""

def _sim_defaults() -> SimArmParameters:
    """sim_arm_node's parameters in the sim bringup (config/sim_arm.yaml: what `magma-ros evaluate`
    runs); the contract's defaults where the package's config files are not at hand."""
    from magma_ros.bringup import SIM_BRINGUP, BringupError, node_parameters

    try:
        return node_parameters(SIM_BRINGUP, "sim_arm_node", SimArmParameters)
    except BringupError:
        return SimArmParameters()


_SIM_DEFAULTS = _sim_defaults()
POLICY_CAMERA = dataclasses.replace(THIRD_PERSON_CAMERA, width=_SIM_DEFAULTS.image_width,
                                    height=_SIM_DEFAULTS.image_height)
"""The third-person camera at the size the policy sees it (sim_arm_node's image_width x image_height)."""
POLICY_RENDER_DETAIL = _SIM_DEFAULTS.render_detail
"""How the arm is drawn in the frames the policy sees (sim_arm_node's render_detail)."""
POLICY_WRIST_INSET = _SIM_DEFAULTS.wrist_inset
"""Whether the frames the policy sees carry the wrist inset (sim_arm_node's wrist_inset in the sim bringup)."""


def truth_point_tracks(truth: GroundTruthTracks) -> PointTracks:
    """The simulator's exact tracks as :class:`PointTracks`; a point with a non-finite position
    (projected from behind the camera) keeps its first position and is invisible in that frame."""
    finite = np.isfinite(truth.points).all(axis=-1)
    points = np.where(finite[..., None], truth.points, truth.points[:1])
    return PointTracks(points, truth.visible & finite)


TRUTH_TRACKER = "sim-truth"
"""The tracker name recorded with these labels: the simulator's exact motion, no tracker."""


@dataclass(frozen=True, eq=False)
class TruthWindow:
    """One window of a simulated episode labelled from the simulator's exact motion.

    ``label``: what :func:`~magma_ros.training.trace_labels.label_window` made of it (its
    ``frames`` hold only the window's first and last frames, enough for
    :func:`~magma_ros.training.trace_labels.render_preview`); ``truth``: the exact tracks of
    the window's queries (:func:`~magma_ros.training.trace_labels.window_queries`, pixels of the
    labelled frames), which ``label.sources`` index.
    """

    label: WindowLabel
    truth: GroundTruthTracks

    @property
    def sample(self) -> TraceSample:
        return self.label.sample


@dataclass
class SimEpisodeLabels:
    """The labelled windows of one simulated episode and why the others have no label."""

    episode_id: str
    family: str
    seed: int
    instruction: str
    windows: list[TruthWindow] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def line(self) -> str:
        """One line for a progress report."""
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
        total = len(self.windows) + sum(self.skipped.values())
        return (f"{self.episode_id} {self.instruction!r}: {len(self.windows)}/{total} window(s) labelled"
                + (f" ({reasons})" if reasons else "") + f", {self.seconds:.1f} s")


@dataclass
class SimTraceSet:
    """Every labelled window of a set of simulated episodes."""

    episodes: list[SimEpisodeLabels] = field(default_factory=list)

    @property
    def windows(self) -> list[TruthWindow]:
        return [w for e in self.episodes for w in e.windows]

    @property
    def samples(self) -> list[TraceSample]:
        return [w.sample for w in self.windows]

    @property
    def skipped(self) -> Counter[str]:
        """Windows without a label, by reason, over all episodes."""
        total: Counter[str] = Counter()
        for episode in self.episodes:
            total.update(episode.skipped)
        return total


def label_recording(recording: SimRecording, config: TraceLabelConfig = RECIPE_LABEL_CONFIG, *,
                    episode_id: str = "episode",
                    frame_size: int | None = DATASET_FRAME_SIZE) -> tuple[list[TruthWindow], Counter[str]]:
    """Label every window of ``recording`` (:func:`~magma_ros.training.trace_labels.window_starts`)
    from its exact tracks; returns the labelled windows and a count of the others by reason.

    ``frame_size``: the frames are first resized to ``frame_size`` squared as the dataset builder
    stores them (:func:`~magma_ros.image_codec.resize_frame`; ``sim_panda``: 256), so the marked
    images are what a model trained on ``label-traces`` output saw; ``None`` keeps the camera's size.
    The exact tracks are computed at the camera's size and scaled with the frames.
    """
    frames = recording.rgb
    camera_size = ImageSize(int(frames.shape[2]), int(frames.shape[1]))
    if frame_size is not None:
        frames = np.stack([resize_frame(frame, frame_size) for frame in frames])
    size = ImageSize(int(frames.shape[2]), int(frames.shape[1]))
    to_camera = np.array([camera_size.width / size.width, camera_size.height / size.height])
    queries = window_queries(size, config)
    windows: list[TruthWindow] = []
    skipped: Counter[str] = Counter()
    for start in window_starts(len(recording), config):
        window = frames[start:start + config.window]
        exact = recording.ground_truth(start, len(window), queries * to_camera)
        truth = GroundTruthTracks(exact.points / to_camera, exact.visible, exact.moving)
        result = label_window(window, recording.instruction, None, config, episode_id=episode_id, step=start,
                              tracks=truth_point_tracks(truth))
        if isinstance(result, str):
            skipped[result] += 1
            continue
        kept = dataclasses.replace(result, frames=np.stack([window[0], window[-1]]))
        windows.append(TruthWindow(kept, truth))
    return windows, skipped


def label_sim_episodes(families: Sequence[str], seeds: Iterable[int], steps: int = 48, *,
                       config: TraceLabelConfig = RECIPE_LABEL_CONFIG, camera: CameraConfig = POLICY_CAMERA,
                       render_detail: str = POLICY_RENDER_DETAIL, frame_size: int | None = DATASET_FRAME_SIZE,
                       on_episode: Callable[[SimEpisodeLabels], None] | None = None,
                       wrist_inset: bool = POLICY_WRIST_INSET, expert: ExpertConfig | None = None) -> SimTraceSet:
    """Run the scripted expert for ``steps`` control steps on each family's task of each seed
    (:func:`~magma_ros.sim.session.choose_task`: colours cycle with the seed) and label every
    window from the exact motion; ``on_episode`` sees each episode when it is labelled. With
    ``wrist_inset`` the frames carry the wrist view in their top-right corner, as the sim node's;
    ``expert`` configures the scripted expert (as ``record-demos``'s expert options do).

    Episode ids are ``<family>-<seed>`` (they seed the labeller's random choices, as episode
    ids do in ``label-traces``). Raises :class:`~magma_ros.sim.SimError` (a ``ValueError`` too)
    for an unknown family, a bad camera, render detail or step count.
    """
    seed_list = [int(s) for s in seeds]
    result = SimTraceSet()
    workcell = WorkcellConfig(seed=seed_list[0] if seed_list else 0, cameras=policy_cameras(camera, wrist_inset),
                              arm_urdf=arm_urdf_for(render_detail))
    with Workcell(workcell) as cell:
        for family in families:
            for seed in seed_list:
                started = time.perf_counter()
                task = choose_task(family, seed, "", 0)
                recording = record_expert_episode(cell, task, seed, steps, camera=camera.name,
                                                  inset=cell.inset_camera, expert=expert)
                episode_id = f"{task.family.value}-{seed}"
                windows, skipped = label_recording(recording, config, episode_id=episode_id, frame_size=frame_size)
                episode = SimEpisodeLabels(episode_id, task.family.value, seed, task.instruction, windows, skipped,
                                           time.perf_counter() - started)
                result.episodes.append(episode)
                if on_episode is not None:
                    on_episode(episode)
    return result


def standing_still_errors(sample: TraceSample) -> dict[int, float]:
    """{mark id: endpoint error (256 grid) of the answer "nothing moves"} for the sample's labelled marks:
    the distance from where the mark is now (its cell in the label's answer) to its labelled endpoint."""
    size = ImageSize.of(sample.image)
    now = {m.id: m.grid for m in parse_traces(sample.answer, size).moved_marks}
    errors: dict[int, float] = {}
    for mark_id, trace in sample.traces.items():
        points = np.asarray(trace, np.float64).reshape(-1, 2)
        if int(mark_id) in now and len(points):
            errors[int(mark_id)] = float(np.hypot(*(points[-1] - np.asarray(now[int(mark_id)], np.float64))))
    return errors


def evaluate_traces_against_sim(backend: PolicyBackend, samples: Sequence[TraceSample], *,
                                on_answer: Callable[[TraceSample, PolicyOutput], None] | None = None
                                ) -> dict[str, Any]:
    """Ask ``backend`` each sample's question (:func:`~magma_ros.training.offline_eval.evaluate_trace_answers`)
    and compare its endpoint errors with the answer "nothing moves".

    Returns the evaluation's summary (``answers_parsed``, ``marks_traced``, ``endpoint_error_grid``
    {mean, median, p90, max} over the marks the backend traced...), ``endpoint_error_grid_all_marks``
    (every labelled mark, one the backend did not trace scored as "nothing moves", so leaving
    hard marks out cannot lower it) plus ``standing_still``: the "nothing moves" endpoint errors over
    every labelled mark (``endpoint_error_grid``) and over the marks the backend traced
    (``endpoint_error_grid_on_traced_marks``, the fair comparison). A backend without a
    Trace-of-Mark question (no ``answer_traces``: the compiled backends) gets only the baseline
    and a ``note``. ``on_answer`` sees every sample with the backend's output.
    """
    still_all: list[float] = []
    still_traced: list[float] = []
    every_mark: list[float] = []
    for sample in samples:
        still_all.extend(standing_still_errors(sample).values())

    def collect(sample: TraceSample, output: PolicyOutput) -> None:
        traced = {int(mark_id) for mark_id, trace in output.traces if len(trace)}
        still = standing_still_errors(sample)
        still_traced.extend(e for mark_id, e in still.items() if mark_id in traced)
        answered = trace_endpoint_errors_by_mark(sample, output)
        every_mark.extend(answered.get(mark_id, error) for mark_id, error in still.items())
        if on_answer is not None:
            on_answer(sample, output)

    if hasattr(backend, "answer_traces"):
        summary = evaluate_trace_answers(backend, samples, on_answer=collect, note="no labelled window")
    else:
        summary = {"samples": len(samples),
                   "note": f"backend {type(backend).__name__} cannot be asked a Trace-of-Mark question "
                           "(no answer_traces); only the standing-still baseline is scored"}
    summary.setdefault("labelled_marks", sum(len(s.traces) for s in samples))
    if hasattr(backend, "answer_traces"):
        summary["endpoint_error_grid_all_marks"] = error_distribution(every_mark)
    summary["standing_still"] = {"endpoint_error_grid": error_distribution(still_all),
                                 "endpoint_error_grid_on_traced_marks": error_distribution(still_traced)}
    summary["unit"] = "cells of Magma's 256 x 256 grid = pixels of the frame scaled to 256 x 256"
    return summary
