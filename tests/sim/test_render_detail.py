"""render_detail low: the arm drawn with its collision meshes; same scene, same poses, a coarser arm."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from magma_ros.sim import THIRD_PERSON_CAMERA, ConfigError, Workcell, WorkcellConfig
from magma_ros.sim.render_detail import arm_urdf_for, low_detail_urdf


def test_low_detail_urdf_draws_collision_meshes_with_absolute_paths(tmp_path: Path) -> None:
    path = low_detail_urdf(cache_dir=tmp_path)
    assert low_detail_urdf(cache_dir=tmp_path) == path  # cached by content
    root = ET.parse(path).getroot()
    visuals = [m.get("filename") for m in root.iter("link") for m in m.findall("visual/geometry/mesh")]
    assert visuals and all(Path(f).is_absolute() and Path(f).is_file() for f in visuals)
    assert all("/collision/" in f for f in visuals), visuals
    assert arm_urdf_for("full") == "franka_panda/panda.urdf"
    with pytest.raises(ConfigError):
        arm_urdf_for("medium")


def test_low_detail_renders_the_same_scene() -> None:
    camera = dataclasses.replace(THIRD_PERSON_CAMERA, width=160, height=120)
    frames = {}
    for detail in ("full", "low"):
        with Workcell(WorkcellConfig(seed=2, cameras=(camera,), arm_urdf=arm_urdf_for(detail))) as cell:
            frames[detail] = cell.render(camera.name)
            poses = cell.ee_pose().position
            frames[detail + "_ee"] = np.asarray(poses)
    np.testing.assert_allclose(frames["full_ee"], frames["low_ee"])  # same kinematics
    full, low = frames["full"].rgb.astype(int), frames["low"].rgb.astype(int)
    differs = np.abs(full - low).max(axis=2) > 40
    assert 0.0 < differs.mean() < 0.05, differs.mean()  # only the arm's surface changes, a few % of the pixels
    depth_full, depth_low = frames["full"].depth, frames["low"].depth
    same_depth = np.isclose(depth_full, depth_low, atol=0.02) | (np.isinf(depth_full) & np.isinf(depth_low))
    assert same_depth.mean() > 0.95
