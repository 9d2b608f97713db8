"""Ground-truth point tracks: where every pixel of a simulated frame goes in later frames.

The workcell knows the pose of every arm link and cube, so a pixel that shows a body in one
frame can be followed exactly: back-project it with the rendered depth, pin the 3D point to
the link (or cube, or static box) that the segmentation says it lies on, move it with that
link's pose, and project it again with the camera's ``K``. A point is visible in a frame when
it lies inside the image and nothing is rendered in front of it (depth test).

This is what point trackers (:mod:`magma_ros.training.tracking`) are measured against::

    recording = record_expert_episode(cell, task, seed, steps=48)
    truth = recording.ground_truth(start=0, length=16, queries=queries)
    error = np.linalg.norm(tracks.points - truth.points, axis=-1)[:, truth.visible.all(axis=0)]

ROS-free; uses pybullet directly for link-level segmentation (the workcell's own render
only labels bodies).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pybullet as pb
from numpy.typing import ArrayLike, NDArray

from magma_ros.sim import camera as camera_model
from magma_ros.sim.camera import CameraIntrinsics
from magma_ros.sim.config import THIRD_PERSON_CAMERA, CameraConfig
from magma_ros.sim.errors import SimError
from magma_ros.sim.expert import ExpertConfig, ScriptedExpert
from magma_ros.sim.tasks import Task
from magma_ros.sim.transforms import Pose
from magma_ros.sim.workcell import WORLD_FRAME, Workcell

__all__ = [
    "DEPTH_TOLERANCE_M",
    "GROUND_TRUTH_CAMERA",
    "GroundTruthTracks",
    "SimRecording",
    "TrackErrors",
    "record_expert_episode",
    "render_frame",
    "track_errors",
]

DEPTH_TOLERANCE_M = 0.01
"""A point is occluded when something is rendered more than this much in front of it."""

GROUND_TRUTH_CAMERA = CameraConfig(THIRD_PERSON_CAMERA.name, THIRD_PERSON_CAMERA.optical_frame, width=256, height=256,
                                   fov_y_deg=THIRD_PERSON_CAMERA.fov_y_deg)
"""The workcell's third-person camera rendered at 256 x 256, the size Magma sees robot frames at."""

_LINK_SHIFT = 24  # pybullet packs object-and-link segmentation as body + ((link + 1) << 24)


@dataclass(frozen=True, eq=False)
class GroundTruthTracks:
    """Exact tracks of query points over a window.

    ``points``: (T, N, 2) pixel (u, v), frame 0 = the queries. ``visible``: (T, N) bool
    (False for every frame when the query shows no body, e.g. the empty background).
    ``moving``: (N,) bool, the point moves more than 1 px at some frame of the window.
    """

    points: NDArray[np.float64]
    visible: NDArray[np.bool_]
    moving: NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class SimRecording:
    """Frames of one simulated episode with everything needed to follow any pixel.

    ``rgb``: (T, H, W, 3) uint8; ``depth``: (T, H, W) float32 optical depth (m);
    ``segmentation``: (T, H, W) int64 body + ((link + 1) << 24), -1 for nothing;
    ``link_poses``: per frame, {(body, link): 4x4 world pose} (link -1 = the body's base);
    ``camera_in_world``: (T, 4, 4) optical frame poses; ``intrinsics``: the camera's K.
    """

    rgb: NDArray[np.uint8]
    depth: NDArray[np.float32]
    segmentation: NDArray[np.int64]
    link_poses: tuple[dict[tuple[int, int], NDArray[np.float64]], ...]
    camera_in_world: NDArray[np.float64]
    intrinsics: CameraIntrinsics
    instruction: str

    def __len__(self) -> int:
        return int(self.rgb.shape[0])

    def ground_truth(self, start: int, length: int, queries: ArrayLike) -> GroundTruthTracks:
        """Exact tracks of pixel ``queries`` (N, 2) of frame ``start`` over ``length`` frames.

        Queries are looked up at their nearest pixel; pass integer pixel positions for an
        exact anchor. Raises :class:`SimError` for a window outside the recording.
        """
        if not (start >= 0 and length >= 1 and start + length <= len(self)):
            raise SimError(f"window [{start}, {start + length}) is outside the recording of {len(self)} frames")
        q = np.asarray(queries, dtype=np.float64).reshape(-1, 2)
        height, width = self.depth.shape[1:]
        ui = np.clip(np.rint(q[:, 0]).astype(int), 0, width - 1)
        vi = np.clip(np.rint(q[:, 1]).astype(int), 0, height - 1)
        depth0 = self.depth[start, vi, ui].astype(np.float64)
        seg0 = self.segmentation[start, vi, ui]
        on_body = (seg0 >= 0) & np.isfinite(depth0)
        optical = self.intrinsics.back_project(q[:, 0], q[:, 1], np.where(on_body, depth0, 1.0))
        world = _transform(self.camera_in_world[start], optical)
        bodies = seg0 & ((1 << _LINK_SHIFT) - 1)
        links = (seg0 >> _LINK_SHIFT) - 1
        # Each point in its link's frame at the window's first frame.
        local = np.zeros_like(world)
        keys = [(int(b), int(link)) for b, link in zip(bodies, links, strict=True)]
        for i, key in enumerate(keys):
            if on_body[i]:
                local[i] = _transform(np.linalg.inv(self.link_poses[start][key]), world[i])
        points = np.zeros((length, q.shape[0], 2))
        visible = np.zeros((length, q.shape[0]), dtype=bool)
        for k in range(length):
            t = start + k
            moved = np.array([
                _transform(self.link_poses[t][key], local[i]) if on_body[i] else world[i]
                for i, key in enumerate(keys)
            ]).reshape(-1, 3)
            in_camera = _transform(np.linalg.inv(self.camera_in_world[t]), moved)
            uv = self.intrinsics.project(in_camera)
            points[k] = uv
            pu, pv = np.rint(uv[:, 0]).astype(int), np.rint(uv[:, 1]).astype(int)
            inside = (pu >= 0) & (pu < width) & (pv >= 0) & (pv < height) & (in_camera[:, 2] > 0)
            rendered = np.full(q.shape[0], -np.inf)
            rendered[inside] = self.depth[t, pv[inside], pu[inside]]
            visible[k] = on_body & inside & (rendered > in_camera[:, 2] - DEPTH_TOLERANCE_M)
        points[0] = q
        visible[0] = on_body
        moving = np.max(np.linalg.norm(points - points[:1], axis=-1), axis=0) > 1.0
        return GroundTruthTracks(points, visible, moving & on_body)


def _transform(matrix: NDArray[np.float64], points: ArrayLike) -> NDArray[np.float64]:
    p = np.asarray(points, dtype=np.float64)
    return p @ matrix[:3, :3].T + matrix[:3, 3]


def _world_poses(client: int) -> dict[tuple[int, int], NDArray[np.float64]]:
    """World pose of every body's base and every link, keyed (body, link)."""
    poses: dict[tuple[int, int], NDArray[np.float64]] = {}
    for index in range(pb.getNumBodies(physicsClientId=client)):
        body = pb.getBodyUniqueId(index, physicsClientId=client)
        position, orientation = pb.getBasePositionAndOrientation(body, physicsClientId=client)
        poses[(body, -1)] = Pose(position, orientation).matrix()
        for link in range(pb.getNumJoints(body, physicsClientId=client)):
            state = pb.getLinkState(body, link, computeForwardKinematics=True, physicsClientId=client)
            poses[(body, link)] = Pose(state[4], state[5]).matrix()
    return poses


def render_frame(cell: Workcell, camera: str = "third_person") -> tuple[
        NDArray[np.uint8], NDArray[np.float32], NDArray[np.int64], NDArray[np.float64]]:
    """RGB, depth, link-level segmentation and the optical frame's world pose (4x4) of ``camera``."""
    config = cell.camera_config(camera)
    intrinsics = CameraIntrinsics.from_config(config)
    world_in_base = cell.frame_pose(WORLD_FRAME)
    camera_world = world_in_base.inverse().compose(cell.frame_pose(config.optical_frame))
    client = cell._client  # link-level segmentation needs the raw client
    _, _, rgba, depth_buffer, segmentation = pb.getCameraImage(
        config.width,
        config.height,
        viewMatrix=camera_model.gl_view(camera_world),
        projectionMatrix=camera_model.gl_projection(intrinsics, config.near, config.far),
        renderer=pb.ER_TINY_RENDERER,
        flags=pb.ER_SEGMENTATION_MASK_OBJECT_AND_LINKINDEX,
        physicsClientId=client,
    )
    shape = (config.height, config.width)
    rgb = np.asarray(rgba, dtype=np.uint8).reshape(*shape, 4)[..., :3].copy()
    depth = camera_model.linear_depth(np.asarray(depth_buffer, dtype=np.float64).reshape(shape), config.near,
                                      config.far)
    seg = np.asarray(segmentation, dtype=np.int64).reshape(shape)
    return rgb, depth, seg, camera_world.matrix()


def record_expert_episode(cell: Workcell, task: Task, seed: int, steps: int, *,
                          camera: str = "third_person", inset: str | None = None,
                          expert: ExpertConfig | None = None) -> SimRecording:
    """Run the scripted expert on ``task`` from ``seed`` for ``steps`` control steps (10 Hz).

    One frame is rendered per step, before its action (as the demo recorder sees it). The
    expert keeps acting after success so every recording has ``steps`` frames. With ``inset``
    (a camera of ``cell``), that camera's view is pasted into each frame's top-right corner as
    the sim node does (:func:`magma_ros.sim.camera.with_inset`); no point is visible under it.
    ``expert`` configures the scripted expert (default: its defaults, as ``record-demos``).
    """
    from magma_ros.sim.episode import EpisodeConfig, run_episode

    if steps < 1:
        raise SimError(f"steps must be at least 1, got {steps}")
    rgb, depth, seg, cams, poses = [], [], [], [], []
    client = cell._client

    def observer(observation: object, action: object) -> None:
        frame = render_frame(cell, camera)
        if inset is not None:
            camera_model.paste_inset(frame[0], frame[1], frame[2], cell.render(inset).rgb)
        rgb.append(frame[0])
        depth.append(frame[1])
        seg.append(frame[2])
        cams.append(frame[3])
        poses.append(_world_poses(client))

    run_episode(task, seed, ScriptedExpert(task, expert), steps, config=EpisodeConfig(stop_on_success=False),
                workcell=cell, observer=observer)
    return SimRecording(np.stack(rgb), np.stack(depth), np.stack(seg), tuple(poses), np.stack(cams),
                        cell.camera_intrinsics(camera), task.instruction)


@dataclass(frozen=True, eq=False)
class TrackErrors:
    """Pixel errors of a tracker against :class:`GroundTruthTracks` over one window.

    Only points visible in every frame of the window (ground truth) count, and only frames
    after the first (where the tracker is handed the true position). ``all``: every such
    point's error at every such frame, whatever the tracker says about visibility (a point it
    lost counts at the position it reports); ``moving``: the same for points that move more
    than 1 px; ``kept_moving``: the moving points the tracker reports visible throughout
    (what survives a labeller's visibility filter); ``kept``: how many of the counted points
    the tracker reports visible throughout; ``counted``: how many points were counted.
    """

    all: NDArray[np.float64]
    moving: NDArray[np.float64]
    kept_moving: NDArray[np.float64]
    kept: int
    counted: int


def track_errors(points: ArrayLike, visible: ArrayLike, truth: GroundTruthTracks) -> TrackErrors:
    """Compare tracker output (``points`` (T, N, 2), ``visible`` (T, N)) with the ground truth."""
    p = np.asarray(points, dtype=np.float64)
    v = np.asarray(visible, dtype=bool)
    if p.shape != truth.points.shape or v.shape != truth.visible.shape:
        raise SimError(f"tracks of shape {p.shape} do not match the ground truth's {truth.points.shape}")
    counted = truth.visible.all(axis=0)
    kept = counted & v.all(axis=0)
    error = np.linalg.norm(p[1:] - truth.points[1:], axis=-1)
    return TrackErrors(
        error[:, counted].ravel(),
        error[:, counted & truth.moving].ravel(),
        error[:, kept & truth.moving].ravel(),
        int(np.count_nonzero(kept)),
        int(np.count_nonzero(counted)),
    )
