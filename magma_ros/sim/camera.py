"""Pinhole camera model and pybullet rendering (RGB, metric depth, segmentation).

Intrinsics follow ROS CameraInfo / OpenCV: pixel (u, v) has its centre at integer
coordinates, u to the right, v down; a point (X, Y, Z) in the optical frame (z forward,
x right, y down) lands at ``u = fx X / Z + cx``, ``v = fy Y / Z + cy``. The OpenGL
projection handed to pybullet is built from the same numbers, so ``K`` is exact for the
rendered images. Depth is the optical-frame Z (not the ray length), float32 metres, as in
REP 118 depth images; pixels at the far plane read ``+inf``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pybullet as pb
from numpy.typing import ArrayLike, NDArray

from magma_ros.sim.config import CameraConfig
from magma_ros.sim.transforms import Pose

# Optical frame (x right, y down, z forward) -> OpenGL camera frame (x right, y up, z back).
_OPTICAL_TO_GL = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics, with the matrices a ``sensor_msgs/CameraInfo`` carries."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def from_config(cls, config: CameraConfig) -> CameraIntrinsics:
        """Square pixels and a centred principal point from the vertical field of view."""
        focal = (config.height / 2.0) / math.tan(math.radians(config.fov_y_deg) / 2.0)
        return cls(config.width, config.height, focal, focal, (config.width - 1) / 2.0, (config.height - 1) / 2.0)

    @property
    def k(self) -> NDArray[np.float64]:
        """3x3 camera matrix K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def p(self) -> NDArray[np.float64]:
        """3x4 projection matrix P = [K | 0] (monocular, no rectification)."""
        return np.hstack([self.k, np.zeros((3, 1))])

    def project(self, points_optical: ArrayLike) -> NDArray[np.float64]:
        """Pixel coordinates (N x 2, or 2) of points given in the optical frame."""
        points = np.asarray(points_optical, dtype=np.float64)
        z = points[..., 2]
        return np.stack([self.fx * points[..., 0] / z + self.cx, self.fy * points[..., 1] / z + self.cy], axis=-1)

    def back_project(self, u: ArrayLike, v: ArrayLike, depth: ArrayLike) -> NDArray[np.float64]:
        """Optical-frame points of pixels ``(u, v)`` seen at optical depth ``depth`` (metres)."""
        u, v, z = (np.asarray(a, dtype=np.float64) for a in (u, v, depth))
        return np.stack([(u - self.cx) * z / self.fx, (v - self.cy) * z / self.fy, z], axis=-1)


def gl_projection(intrinsics: CameraIntrinsics, near: float, far: float) -> list[float]:
    """OpenGL projection matrix (column-major, 16 floats) that renders exactly ``K``."""
    w, h = intrinsics.width, intrinsics.height
    m = np.zeros((4, 4))
    m[0, 0] = 2.0 * intrinsics.fx / w
    # Pixel centres: TinyRenderer puts column u at window x = u and row v at y = v + 1
    # (measured against ray casts of rendered depth; see tests/sim/test_camera.py), so
    # these offsets make the rendered image obey K to a small fraction of a pixel.
    m[0, 2] = 1.0 - 2.0 * intrinsics.cx / w
    m[1, 1] = 2.0 * intrinsics.fy / h
    m[1, 2] = 2.0 * (intrinsics.cy + 1.0) / h - 1.0
    m[2, 2] = -(far + near) / (far - near)
    m[2, 3] = -2.0 * far * near / (far - near)
    m[3, 2] = -1.0
    return m.T.reshape(-1).tolist()


def gl_view(optical_pose_world: Pose) -> list[float]:
    """OpenGL view matrix (column-major, 16 floats) of a camera at ``optical_pose_world``."""
    camera_to_world = np.eye(4)
    camera_to_world[:3, :3] = optical_pose_world.rotation() @ _OPTICAL_TO_GL
    camera_to_world[:3, 3] = optical_pose_world.position
    return np.linalg.inv(camera_to_world).T.reshape(-1).tolist()


def linear_depth(buffer: ArrayLike, near: float, far: float) -> NDArray[np.float32]:
    """Metric optical depth (float32 metres) from an OpenGL depth buffer in [0, 1]."""
    d = np.asarray(buffer, dtype=np.float64)
    depth = far * near / (far - (far - near) * d)
    depth[d >= 1.0 - 1e-7] = np.inf
    return depth.astype(np.float32)


@dataclass(frozen=True, eq=False)
class CameraFrame:
    """One rendered view.

    Attributes:
        rgb: H x W x 3 uint8.
        depth: H x W float32, optical Z in metres (+inf where nothing was hit).
        segmentation: H x W int32 pybullet body ids (-1 background), if requested.
        intrinsics: the camera's K.
        frame_id: the optical frame the images are expressed in.
        stamp: sim time of the render, seconds.
        pose: the optical frame's pose in the base frame at ``stamp``.
    """

    rgb: NDArray[np.uint8]
    depth: NDArray[np.float32]
    segmentation: NDArray[np.int32] | None
    intrinsics: CameraIntrinsics
    frame_id: str
    stamp: float
    pose: Pose


def render(
    client: int, config: CameraConfig, optical_pose_world: Pose, with_segmentation: bool
) -> tuple[NDArray[np.uint8], NDArray[np.float32], NDArray[np.int32] | None]:
    """Render RGB, depth and (optionally) segmentation with the CPU TinyRenderer."""
    intrinsics = CameraIntrinsics.from_config(config)
    flags = 0 if with_segmentation else pb.ER_NO_SEGMENTATION_MASK
    _, _, rgba, depth_buffer, segmentation = pb.getCameraImage(
        config.width,
        config.height,
        viewMatrix=gl_view(optical_pose_world),
        projectionMatrix=gl_projection(intrinsics, config.near, config.far),
        renderer=pb.ER_TINY_RENDERER,
        flags=flags,
        physicsClientId=client,
    )
    shape = (config.height, config.width)
    rgb = np.asarray(rgba, dtype=np.uint8).reshape(*shape, 4)[..., :3].copy()
    depth = linear_depth(np.asarray(depth_buffer, dtype=np.float64).reshape(shape), config.near, config.far)
    seg = np.asarray(segmentation, dtype=np.int32).reshape(shape) if with_segmentation else None
    return rgb, depth, seg


def with_inset(main: CameraFrame, inset: CameraFrame) -> CameraFrame:
    """``main`` with ``inset``'s RGB pasted into its top-right corner (the policy's two-view image;
    see :func:`magma_ros.sim.config.wrist_inset_camera`). Depth there reads NaN, REP 118's "no
    measurement": those pixels show another camera, so nothing may be lifted to 3D from them. The
    intrinsics, frame and pose stay ``main``'s; the segmentation, if any, reads -1 under the inset."""
    rgb, depth = main.rgb.copy(), main.depth.copy()
    segmentation = None if main.segmentation is None else main.segmentation.copy()
    paste_inset(rgb, depth, segmentation, inset.rgb)
    return CameraFrame(rgb, depth, segmentation, main.intrinsics, main.frame_id, main.stamp, main.pose)


def paste_inset(rgb: NDArray[np.uint8], depth: NDArray[np.floating], segmentation: NDArray[np.integer] | None,
                inset_rgb: NDArray[np.uint8]) -> None:
    """In place: ``inset_rgb`` into ``rgb``'s top-right corner, NaN depth and -1 segmentation under it."""
    height, width = inset_rgb.shape[:2]
    if height > rgb.shape[0] or width > rgb.shape[1]:
        raise ValueError(f"inset {width}x{height} does not fit in {rgb.shape[1]}x{rgb.shape[0]}")
    rgb[:height, -width:] = inset_rgb
    depth[:height, -width:] = np.nan
    if segmentation is not None:
        segmentation[:height, -width:] = -1
