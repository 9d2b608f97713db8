"""Rendering: image types, metric depth against ray casts, and K against the rendered pixels."""

from __future__ import annotations

import numpy as np
import pytest

from magma_ros.sim import CameraIntrinsics, FrameError, Workcell, WorkcellConfig
from magma_ros.sim import camera as camera_model
from magma_ros.sim.transforms import Pose, quat_from_rpy


def plane_depth(intrinsics: CameraIntrinsics, pose: Pose, u, v, height: float) -> np.ndarray:
    """Optical depth at pixels (u, v) of the horizontal plane z = height (base frame), by ray casting."""
    rays = intrinsics.back_project(u, v, np.ones_like(u, dtype=float)) @ pose.rotation().T
    return (height - pose.position[2]) / rays[:, 2]


def interior(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` whose four neighbours are in it too (no silhouette edges)."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner


@pytest.mark.parametrize("name", ["third_person", "wrist"])
def test_render_types_and_shapes(cell, name):
    frame = cell.render(name)
    config = cell.camera_config(name)
    assert frame.rgb.dtype == np.uint8 and frame.rgb.shape == (config.height, config.width, 3)
    assert frame.depth.dtype == np.float32 and frame.depth.shape == (config.height, config.width)
    assert frame.segmentation is None
    assert frame.frame_id == config.optical_frame and frame.stamp == cell.sim_time
    finite = frame.depth[np.isfinite(frame.depth)]
    assert finite.size > 0.5 * frame.depth.size
    assert finite.min() >= config.near and finite.max() <= config.far
    assert frame.rgb.std() > 10  # not a blank image


def test_intrinsics_matrices(cell):
    k = cell.camera_intrinsics("third_person")
    assert (k.width, k.height) == (320, 240)
    assert k.fx == pytest.approx(120 / np.tan(np.radians(25)))
    np.testing.assert_allclose(k.k, [[k.fx, 0, 159.5], [0, k.fy, 119.5], [0, 0, 1]])
    np.testing.assert_allclose(k.p[:, :3], k.k)
    np.testing.assert_allclose(k.p[:, 3], 0.0)
    point = np.array([0.1, -0.05, 0.8])
    np.testing.assert_allclose(k.back_project(*k.project(point), 0.8), point)


@pytest.mark.parametrize("roll", [0.0, np.pi / 2])
def test_table_depth_matches_ray_casts(cell, roll):
    """Rendered depth of the table top equals exact ray-plane depth: checks K, pose and depth scale.

    The camera is also rolled a quarter turn so both image axes are checked (an offset along
    an axis shows only where depth changes along it).
    """
    config = cell.camera_config("third_person")
    pose = cell.frame_pose(config.optical_frame).compose(Pose([0, 0, 0], quat_from_rpy(0, 0, roll)))
    _, depth, seg = camera_model.render(cell._client, config, pose, True)
    v, u = np.nonzero(interior(seg == cell.segmentation_ids()["table"]))
    assert u.size > 5000
    error = depth[v, u] - plane_depth(CameraIntrinsics.from_config(config), pose, u, v, 0.0)
    assert np.median(np.abs(error)) < 2e-4
    assert np.quantile(np.abs(error), 0.99) < 2e-3  # half a pixel off would be ~4 mm here


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cube_centres_project_onto_their_pixels_at_the_right_depth(cell, seed):
    cell.reset(seed)
    frame = cell.render("third_person", segmentation=True)
    optical_from_base = frame.pose.inverse()
    half = cell.config.scene.cube_size / 2
    for color, pose in cell.cube_poses().items():
        u, v = frame.intrinsics.project(optical_from_base.transform_points(pose.position))
        ui, vi = round(u), round(v)
        assert frame.segmentation[vi, ui] == cell.segmentation_ids()[color], color
        # The top face's centre: its pixel must read the true camera-to-face depth.
        top = optical_from_base.transform_points(pose.position + np.array([0.0, 0.0, half]))
        ut, vt = (round(c) for c in frame.intrinsics.project(top))
        exact = plane_depth(frame.intrinsics, frame.pose, np.array([ut]), np.array([vt]), 2 * half)[0]
        assert frame.depth[vt, ut] == pytest.approx(exact, abs=0.002), color
        assert frame.depth[vt, ut] == pytest.approx(top[2], abs=0.006), color


def test_wrist_camera_follows_the_hand(cell):
    before = cell.render("wrist").pose
    for _ in range(5):
        cell.command_twist([0.0, 0.1, 0.0], [0, 0, 0], stamp=cell.sim_time, frame_id=cell.base_frame)
        cell.step(0.1)
    after = cell.render("wrist").pose
    assert after.position[1] - before.position[1] == pytest.approx(0.05, abs=0.01)


def test_unknown_camera_is_rejected(cell):
    with pytest.raises(FrameError, match="no camera 'top'"):
        cell.render("top")


def test_default_workcell_has_only_the_third_person_camera():
    with Workcell() as plain:
        assert plain.camera_names == ("third_person",)
        with pytest.raises(FrameError):
            plain.render("wrist")


def test_boxes_drawn_after_the_arm_give_the_same_pixels_as_drawn_first(cell):
    """The workcell draws the table and floor from visual-only bodies made after the arm (cheaper for the
    TinyRenderer); their invisible collision bodies, made before it, drawn instead must give the same frame."""
    import pybullet as pb

    client = cell._client
    segmentation = cell.render("third_person", segmentation=True).segmentation
    ids = cell.segmentation_ids()
    assert {"table", "floor"} <= set(ids) and ids["table"] > ids["arm"] and ids["floor"] > ids["table"]
    assert np.isin([ids["table"], ids["floor"]], segmentation).all()
    collision_bodies = [b for b in range(pb.getNumBodies(physicsClientId=client))
                        if b < ids["arm"] and pb.getCollisionShapeData(b, -1, physicsClientId=client)]
    assert len(collision_bodies) == 2 and not np.isin(collision_bodies, segmentation).any()   # invisible

    for name in ("third_person", "wrist"):
        fast = cell.render(name)
        for body in collision_bodies:   # the boxes' looks back on the bodies made first ...
            size = pb.getVisualShapeData(body, physicsClientId=client)[0][3]
            look = next(v for v in (pb.getVisualShapeData(ids[n], physicsClientId=client)[0]
                                    for n in ("table", "floor")) if v[3] == size)
            pb.changeVisualShape(body, -1, rgbaColor=look[7], physicsClientId=client)
        for n in ("table", "floor"):    # ... and off the ones made after the arm
            pb.changeVisualShape(ids[n], -1, rgbaColor=(1, 1, 1, 0), physicsClientId=client)
        slow = cell.render(name)
        assert np.array_equal(fast.rgb, slow.rgb)
        np.testing.assert_array_equal(fast.depth, slow.depth)
        for body in collision_bodies:
            pb.changeVisualShape(body, -1, rgbaColor=(1, 1, 1, 0), physicsClientId=client)
        for n in ("table", "floor"):
            rgba = next(b.rgba for link, b in cell.description.boxes.items() if link == n)
            pb.changeVisualShape(ids[n], -1, rgbaColor=rgba, physicsClientId=client)


def test_wrist_inset_is_the_wrist_view_in_the_top_right_corner():
    """The policy's two-view image: outside the inset every pixel (RGB and depth) is the third-person
    camera's; inside, the RGB is the wrist camera rendered at the inset's size with its own optics, and
    depth reads NaN (nothing may be lifted to 3D from another camera's pixels)."""
    from magma_ros.sim import policy_cameras, wrist_inset_camera
    from magma_ros.sim.config import INSET_FRACTION, THIRD_PERSON_CAMERA, WRIST_CAMERA

    inset_config = wrist_inset_camera(THIRD_PERSON_CAMERA)
    assert (inset_config.width, inset_config.height) == (round(320 * INSET_FRACTION), 84)
    assert inset_config.optical_frame == WRIST_CAMERA.optical_frame
    assert inset_config.fov_y_deg == WRIST_CAMERA.fov_y_deg
    cameras = policy_cameras(THIRD_PERSON_CAMERA, wrist_inset=True)
    assert [c.name for c in cameras] == ["third_person", "wrist_inset"]
    assert policy_cameras(THIRD_PERSON_CAMERA, wrist_inset=False) == (THIRD_PERSON_CAMERA,)
    with Workcell(WorkcellConfig(seed=3, cameras=cameras)) as cell:
        for _ in range(2):   # at home and after a move: the inset follows the hand
            plain, wrist = cell.render("third_person"), cell.render("wrist_inset")
            view = cell.render_view("third_person", "wrist_inset")
            h, w = wrist.rgb.shape[:2]
            assert view.rgb.shape == plain.rgb.shape and view.intrinsics == plain.intrinsics
            assert np.array_equal(view.rgb[:h, -w:], wrist.rgb)
            assert np.isnan(view.depth[:h, -w:]).all()
            outside = np.ones(plain.depth.shape, bool)
            outside[:h, -w:] = False
            assert np.array_equal(view.rgb[outside], plain.rgb[outside])
            np.testing.assert_array_equal(view.depth[outside], plain.depth[outside])
            assert not np.array_equal(view.rgb[:h, -w:], plain.rgb[:h, -w:])
            for _ in range(5):
                cell.command_twist([0.0, 0.0, -0.1], [0, 0, 0], stamp=cell.sim_time, frame_id=cell.base_frame)
                cell.step(0.1)
        assert np.array_equal(cell.render_view("third_person").rgb, cell.render("third_person").rgb)
