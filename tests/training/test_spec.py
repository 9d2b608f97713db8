"""Dataset specs: loading, validation, and serving configurations that disagree with them are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from magma_ros.bringup import BringupError, load_bringup
from magma_ros.contract import PolicyNodeParameters, ServoBridgeParameters
from magma_ros.training.spec import DatasetSpec, SpecError, SpecMismatchError, check_serving, load_spec

REPO = Path(__file__).resolve().parents[2]
SPECS = sorted((REPO / "config" / "datasets").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_every_shipped_spec_loads(path: Path) -> None:
    spec = load_spec(path)
    assert spec.step_period_s == pytest.approx(1 / spec.control_rate_hz)
    assert DatasetSpec.from_mapping(spec.as_dict()) == DatasetSpec.from_mapping(spec.as_dict())


def test_sim_spec_values() -> None:
    spec = load_spec(REPO / "config" / "datasets" / "sim_panda.yaml")
    assert (spec.name, spec.base_frame, spec.step_period_s) == ("sim_panda", "panda_link0", pytest.approx(0.1))
    assert spec.image.topic == "/camera/color/image_raw" and spec.image.size == 256
    assert spec.gripper.mapping.opening(0.04) == 1.0


BASE = {"name": "r", "control_rate_hz": 5.0, "base_frame": "base_link"}


@pytest.mark.parametrize(("changes", "message"), [
    ({"name": "bad name"}, "name must be letters"),
    ({"control_rate_hz": 0}, "control_rate_hz must be a finite number > 0"),
    ({"base_frame": ""}, "base_frame must not be empty"),
    ({"rotation_convention": "euler"}, "rotation_convention must be one of"),
    ({"colour": 1}, "unknown field"),
    ({"image": {"format": "gif"}}, "image.format must be png or jpeg"),
    ({"image": {"sise": 3}}, r"unknown field\(s\) image.sise"),
    ({"state": {"source": "tf"}}, "state.ee_frame is required"),
    ({"state": {"source": "joint_states", "ee_frame": "tool0"}}, "state.urdf is required"),
    ({"state": {"source": "joint_states", "ee_frame": "tool0", "urdf": "/no/such.urdf"}}, "is not a file"),
    ({"gripper": {"source": "joint_position"}}, "gripper.joints must name"),
    ({"gripper": {"open_position": 0.0}}, "both 0.0"),
    ({"gripper": {"open_threshold": 0.3}}, "close_threshold < gripper.open_threshold"),
    ({"instruction": {"source": "fixed"}}, "instruction.text is required"),
    ({"alignment": {"max_skew_s": 0.5}}, "must be below the step period"),
    ({"alignment": {"stamps": "wall"}}, "alignment.stamps must be one of"),
])
def test_bad_specs_name_the_field(changes: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        DatasetSpec.from_mapping({**BASE, **changes}, "spec.yaml")


def test_unreadable_spec_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read dataset spec"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(tmp_path / "list.yaml")


def test_check_serving_lists_every_disagreement() -> None:
    spec = load_spec(REPO / "config" / "datasets" / "sim_panda.yaml")
    policy = PolicyNodeParameters(statistics="sim_panda", step_period_s=0.1, base_frame="panda_link0")
    bridge = ServoBridgeParameters(base_frame="panda_link0", gripper_open_position=0.04,
                                   gripper_joint_names=["panda_finger_joint1", "panda_finger_joint2"])
    check_serving(spec, policy, bridge)  # agrees: no error
    wrong_policy = PolicyNodeParameters(statistics="bridge_orig", step_period_s=0.2, base_frame="base_link",
                                        image_topic="/other/image")
    with pytest.raises(SpecMismatchError) as err:
        check_serving(spec, wrong_policy, ServoBridgeParameters(base_frame="base_link", gripper_open_position=1.0))
    text = str(err.value)
    for expected in ("statistics 'bridge_orig' != dataset name 'sim_panda'", "step_period_s 0.2",
                     "policy base_frame 'base_link'", "camera '/other/image'", "bridge base_frame 'base_link'",
                     "gripper_joint_names", "open/closed position"):
        assert expected in text, text


def _bringup(tmp_path: Path, policy_overrides: dict) -> Path:
    path = tmp_path / "trained_sim.yaml"
    path.write_text(yaml.safe_dump({
        "description": "sim with a model trained on sim_panda",
        "dataset_spec": "config/datasets/sim_panda.yaml",
        "nodes": [
            {"executable": "sim_arm_node", "parameters": ["config/sim_arm.yaml"]},
            {"executable": "magma_policy_node", "parameters": ["config/policy_sim.yaml"],
             "overrides": {"use_sim_time": True, **policy_overrides}},
            {"executable": "servo_bridge_node", "parameters": ["config/servo_bridge_sim.yaml"],
             "overrides": {"use_sim_time": True}},
        ]}))
    return path


def test_a_bringup_that_disagrees_with_its_dataset_spec_is_refused(tmp_path: Path) -> None:
    # the published bridge_orig statistics are not what sim_panda was trained with
    with pytest.raises(BringupError, match=r"disagrees with dataset spec .*sim_panda.yaml: policy statistics "
                                           r"'bridge_orig' != dataset name 'sim_panda'"):
        load_bringup(_bringup(tmp_path, {"statistics": "bridge_orig"}))
    load_bringup(_bringup(tmp_path, {}))   # config/policy_sim.yaml serves sim_panda (the shipped default's)
    with pytest.raises(BringupError, match=r"policy step_period_s 0.2 != the spec's step period 0.1"):
        load_bringup(_bringup(tmp_path, {"statistics": "sim_panda", "step_period_s": 0.2}))
    bringup = load_bringup(_bringup(tmp_path, {"statistics": "sim_panda"}))
    assert [n.executable for n in bringup.nodes] == ["sim_arm_node", "magma_policy_node", "servo_bridge_node"]


def test_the_served_frame_size_is_the_policys() -> None:
    from magma_ros.model.policy import DEFAULT_ACTION_FRAME_SIZE
    from magma_ros.training.spec import SERVED_FRAME_SIZE

    assert SERVED_FRAME_SIZE == DEFAULT_ACTION_FRAME_SIZE
    spec = load_spec(REPO / "config" / "datasets" / "sim_panda.yaml")
    small = DatasetSpec.from_mapping({**spec.as_dict(), "image": {**spec.as_dict()["image"], "size": 128}})
    policy = PolicyNodeParameters(statistics="sim_panda", step_period_s=0.1, base_frame="panda_link0")
    with pytest.raises(SpecMismatchError, match=r"image\.size 128 != 256"):
        check_serving(small, policy)
