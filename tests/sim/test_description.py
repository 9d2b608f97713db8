import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pybullet_data
import pytest

from magma_ros.sim import DescriptionError, WorkcellDescription
from magma_ros.sim.description import default_description_path

REPO_URDF = Path(__file__).resolve().parents[2] / "urdf" / "workcell.urdf"


@pytest.fixture(scope="module")
def description() -> WorkcellDescription:
    return WorkcellDescription.load()


def test_default_path_is_the_repo_file():
    assert default_description_path() == REPO_URDF


def test_frames_and_anchors(description):
    assert set(description.external_links) == {"panda_link0", "panda_hand"}
    assert description.resolve("panda_link0")[0] == "world"
    assert description.resolve("third_person_camera_optical_frame")[0] == "world"
    assert description.resolve("wrist_camera_optical_frame")[0] == "panda_hand"
    assert description.boxes["table"].size == (1.2, 1.2, 0.75)
    _, table = description.resolve("table")
    assert table.position[2] + 0.75 / 2 == pytest.approx(0.0)  # table top is z = 0


@pytest.mark.parametrize("camera", ["third_person_camera", "wrist_camera"])
def test_optical_frames_follow_rep_103(description, camera):
    _, link = description.resolve(f"{camera}_link")
    _, optical = description.resolve(f"{camera}_optical_frame")
    link_axes, optical_axes = link.rotation(), optical.rotation()
    np.testing.assert_allclose(optical_axes[:, 2], link_axes[:, 0], atol=1e-9)  # z forward
    np.testing.assert_allclose(optical_axes[:, 0], -link_axes[:, 1], atol=1e-9)  # x right
    np.testing.assert_allclose(optical_axes[:, 1], -link_axes[:, 2], atol=1e-9)  # y down


def test_third_person_camera_looks_at_the_workspace(description):
    _, optical = description.resolve("third_person_camera_optical_frame")
    forward = optical.rotation()[:, 2]
    to_workspace = np.array([0.5, 0.0, 0.1]) - optical.position
    cosine = forward @ to_workspace / np.linalg.norm(to_workspace)
    assert cosine > np.cos(np.radians(20))


def test_merged_description_is_one_tree(description):
    arm = Path(pybullet_data.getDataPath()) / "franka_panda" / "panda.urdf"
    root = ET.fromstring(description.merged_with(arm))
    links = {link.get("name") for link in root.findall("link")}
    children = {joint.find("child").get("link") for joint in root.findall("joint")}
    parents = {joint.find("parent").get("link") for joint in root.findall("joint")}
    assert (children | parents) <= links
    assert links - children == {"world"}
    meshes = [m.get("filename") for m in root.iter("mesh")]
    assert meshes and all(m.startswith("file://") for m in meshes)
    assert Path(meshes[0][len("file://") :]).is_file()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("<robot", "well-formed"),
        ("<model/>", "expected <robot>"),
        ('<robot><joint name="j" type="revolute"><parent link="a"/><child link="b"/></joint></robot>', "only fixed"),
        ('<robot><joint name="j" type="fixed"><child link="b"/></joint></robot>', "parent"),
        (
            '<robot><joint name="j" type="fixed"><parent link="a"/><child link="b"/>'
            '<origin xyz="1 2"/></joint></robot>',
            "xyz",
        ),
        (
            '<robot><joint name="j" type="fixed"><parent link="a"/><child link="b"/></joint>'
            '<joint name="k" type="fixed"><parent link="b"/><child link="a"/></joint></robot>',
            "cycle",
        ),
    ],
)
def test_malformed_descriptions_are_rejected(text, match):
    with pytest.raises(DescriptionError, match=match):
        WorkcellDescription.parse(text)


def test_unknown_frame_and_missing_file(description, tmp_path):
    with pytest.raises(DescriptionError, match="no frame"):
        description.resolve("nowhere")
    with pytest.raises(DescriptionError, match="cannot read"):
        WorkcellDescription.load(tmp_path / "missing.urdf")
