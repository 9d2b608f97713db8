"""Grounding labels for frames of the simulated workcell (ROS-free): where the cubes and the TCP are.

Used by the default model's vision stage (``training/recipes/pretrain_vision.py``), which teaches
the vision tower where things are before it learns actions. Everything comes from what a
``sim_panda`` dataset stores, nothing privileged:

- a cube's pixel centroid from its colour: the workcell's cubes are pure red, green and blue on a
  brown table and a grey arm, so the pixels where the cube's channel dominates the other two are
  the cube (:func:`colour_centroid`);
- the TCP's pixel position: the recorded end-effector state (base frame) projected through the
  third-person camera, intrinsics from its configuration and pose from ``urdf/workcell.urdf``,
  scaled to the stored square frame (:class:`CameraProjector`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from magma_ros.evaluation import camera_pose_in_base, project
from magma_ros.sim import THIRD_PERSON_CAMERA
from magma_ros.sim.camera import CameraIntrinsics
from magma_ros.sim.config import CameraConfig
from magma_ros.sim.description import WorkcellDescription

CUBE_COLOURS = ("red", "green", "blue")
OBJECTS = (*CUBE_COLOURS, "tcp")
MIN_PIXELS = 8
"""Fewer visible pixels of a cube's colour: that cube is not labelled in the frame (occluded, or
out of view)."""


def colour_mask(frame: NDArray[np.uint8], colour: str) -> NDArray[np.bool_]:
    """Pixels of an (H, W, 3) RGB frame where ``colour``'s channel dominates the other two."""
    rgb = np.asarray(frame).astype(np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if colour == "red":
        return (r > 90) & (r > 2 * g) & (r > 2 * b)
    if colour == "green":
        return (g > 60) & (g > 1.6 * r) & (g > 1.6 * b)
    if colour == "blue":
        return (b > 90) & (b > 2 * r) & (b > 1.6 * g)
    raise ValueError(f"unknown cube colour {colour!r}; known: {CUBE_COLOURS}")


def colour_centroid(frame: NDArray[np.uint8], colour: str) -> tuple[float, float] | None:
    """(x, y) pixel centroid of ``colour``'s cube in the frame, None when under :data:`MIN_PIXELS` show."""
    ys, xs = np.nonzero(colour_mask(frame, colour))
    if len(xs) < MIN_PIXELS:
        return None
    return float(xs.mean()), float(ys.mean())


class CameraProjector:
    """Base-frame points -> pixel (x, y) in a ``size`` x ``size`` resize of a workcell camera's image."""

    def __init__(self, size: int, camera: CameraConfig = THIRD_PERSON_CAMERA, base_frame: str = "panda_link0",
                 description: WorkcellDescription | None = None) -> None:
        self.camera_in_base = camera_pose_in_base(camera.optical_frame, base_frame, description)
        self.intrinsics = CameraIntrinsics.from_config(camera)
        self.scale = np.array([size / self.intrinsics.width, size / self.intrinsics.height])
        self.size = size

    def __call__(self, xyz: ArrayLike) -> tuple[float, float] | None:
        """The pixel of a base-frame point, None if it is behind the camera or outside the frame."""
        uv = project(np.asarray(xyz, dtype=np.float64), self.intrinsics.k, self.camera_in_base)[0]
        # pixel centres: camera pixel u covers [u - 0.5, u + 0.5]; resizing scales those edges
        x, y = (uv + 0.5) * self.scale - 0.5
        if not (0 <= x < self.size and 0 <= y < self.size):   # also False for NaN (behind the camera)
            return None
        return float(x), float(y)


def frame_labels(frame: NDArray[np.uint8], tcp_xyz: ArrayLike,
                 projector: CameraProjector) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Pixel positions (4, 2) of :data:`OBJECTS` in a stored frame and which of them are known."""
    points, known = [], []
    for colour in CUBE_COLOURS:
        c = colour_centroid(frame, colour)
        points.append(c or (0.0, 0.0))
        known.append(c is not None)
    tcp = projector(tcp_xyz)
    points.append(tcp or (0.0, 0.0))
    known.append(tcp is not None)
    return np.asarray(points, np.float32), np.asarray(known, bool)
