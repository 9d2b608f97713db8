"""`magma-ros dataset build` on real record-demos bags, and the dataset reader."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from magma_ros import contract
from magma_ros.bags import BagReader
from magma_ros.codecs import LLAMA3_BASE_VOCAB_SIZE, ActionCodec
from magma_ros.conventions import integrate_steps, quat_from_rpy
from magma_ros.image_codec import message_to_rgb8, resize_frame
from magma_ros.training.dataset import DatasetWriter, TrajectoryDataset, decode_image, encode_image
from magma_ros.training.records import DATASET_FILE, STATISTICS_FILE, DatasetError, StepRecord
from tests.training.conftest import DEMO_STEPS, REPO, SIM_SPEC, VENV_BIN

STEP_NS = 100_000_000  # the sim spec's 10 Hz


def _recorded(bag: Path) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], dict[int, np.ndarray]]:
    """EE poses (x y z qx qy qz qw) and camera frames of a bag by header stamp, read straight from the bag."""
    poses, frames, raw = {}, {}, {}
    with BagReader(bag) as reader:
        for message in reader.messages([c for c in reader.connections
                                        if c.topic in (contract.EE_POSE.name, contract.CAMERA_IMAGE.name)]):
            msg = reader.deserialize(message)
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            if message.topic == contract.EE_POSE.name:
                p, o = msg.pose.position, msg.pose.orientation
                poses[stamp] = np.array([p.x, p.y, p.z, o.x, o.y, o.z, o.w])
            else:
                raw[stamp] = message_to_rgb8(msg).copy()
                frames[stamp] = resize_frame(raw[stamp], 256)
    return poses, frames, raw


@pytest.mark.slow  # records the demos (once per session)
def test_labels_integrate_to_the_recorded_ee_path(sim_dataset: Path, recorded_demos: Path) -> None:
    data = TrajectoryDataset(sim_dataset)
    assert data.name == "sim_panda" and data.episode_ids == ("episode_0000", "episode_0001")
    for episode_id in data.episode_ids:
        steps = data.episode(episode_id)
        poses, frames, _ = _recorded(recorded_demos / episode_id)
        meta = json.loads((recorded_demos / episode_id / "episode.json").read_text())
        # 41 observations: every one but the last (no state one step later) is a step
        assert len(steps) == DEMO_STEPS == meta["steps"]
        stamps = [s.stamp_ns for s in steps]
        assert np.all(np.diff(stamps) == STEP_NS)
        actions = np.stack([s.action for s in steps])
        start = poses[stamps[0]]
        positions, quats = integrate_steps(start[:3], start[3:], actions[:, :6])
        for k, stamp in enumerate([*stamps, stamps[-1] + STEP_NS]):
            recorded = poses[stamp]
            assert np.linalg.norm(positions[k] - recorded[:3]) < 1e-3, (episode_id, k)
            angle = 2 * np.arccos(min(1.0, abs(float(np.dot(quats[k], recorded[3:])))))
            assert angle < 1e-3, (episode_id, k, angle)
        assert sum(np.linalg.norm(a[:3]) for a in actions) > 0.1  # the arm really moved
        for step in steps:  # states are the recorded pose at the step, frames the recorded frame
            recorded = poses[step.stamp_ns]
            np.testing.assert_allclose(step.state[:3], recorded[:3], atol=1e-9)
            assert abs(abs(float(np.dot(quat_from_rpy(step.state[3:6]), recorded[3:]))) - 1) < 1e-9
            np.testing.assert_array_equal(step.image, frames[step.stamp_ns])  # PNG: lossless
            assert step.instruction == meta["instruction"]
        grippers = actions[:, 6]
        assert set(np.unique(grippers)) <= {0.0, 1.0} and grippers[0] == 1.0  # starts open
        assert data.episode_metadata(episode_id)["seed"] == meta["seed"]


@pytest.mark.slow
def test_truncated_bag_is_reported_and_skipped_and_a_rerun_is_a_no_op(recorded_demos: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "bags"
    inputs.mkdir()
    for name in ("episode_0000", "episode_0001"):
        (inputs / name).symlink_to(recorded_demos / name, target_is_directory=True)
    shutil.copytree(recorded_demos / "episode_0000", inputs / "episode_0002")
    storage = inputs / "episode_0002" / "episode_0000.mcap"  # a recorder killed half-way through
    storage.write_bytes(storage.read_bytes()[: storage.stat().st_size // 2])
    out = tmp_path / "data"
    command = [str(VENV_BIN / "magma-ros"), "dataset", "build", str(inputs), "--spec", str(SIM_SPEC),
               "--out", str(out), "--no-progress"]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.returncode == 1, first.stdout + first.stderr  # 1: something was skipped
    reported = [line for line in first.stderr.splitlines() if "episode_0002" in line]
    assert len(reported) == 1 and reported[0].startswith("magma-ros dataset: skipped:"), first.stderr
    assert "2 episode(s) written" in first.stdout and "1 skipped" in first.stdout
    assert "skipped " + str(inputs / "episode_0002") in first.stdout
    data = TrajectoryDataset(out)
    assert data.episode_ids == ("episode_0000", "episode_0001") and len(data) == 2 * DEMO_STEPS
    build = json.loads((out / DATASET_FILE).read_text())["builds"][-1]
    assert [s["bag"] for s in build["skipped"]] == [str((inputs / "episode_0002").resolve())]

    files = sorted(out.rglob("*"))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files if p.is_file()}
    good_only = [*command[:3], str(inputs / "episode_0000"), str(inputs / "episode_0001"), *command[4:]]
    again = subprocess.run(good_only, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 episode(s) written" in again.stdout and "2 already in the dataset" in again.stdout
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before  # nothing rewritten


def test_the_codec_round_trips_the_labels(sim_dataset: Path) -> None:
    data = TrajectoryDataset(sim_dataset)
    codec = ActionCodec(LLAMA3_BASE_VOCAB_SIZE)
    actions = data.actions()
    ids = codec.encode(actions, data.statistics)
    assert ids.shape == actions.shape
    for row, label in zip(ids, actions, strict=True):
        decoded = codec.decode(row.tolist(), data.statistics).require_valid()
        again = codec.decode(codec.encode(decoded.action, data.statistics).tolist(), data.statistics)
        np.testing.assert_allclose(again.action, decoded.action, rtol=0, atol=1e-12)  # a fixed point
        span = data.statistics.q99_array - data.statistics.q01_array
        inside = (label >= data.statistics.q01_array) & (label <= data.statistics.q99_array)
        error = np.abs(decoded.action - label)[:6]
        assert np.all(error[inside[:6]] <= (span[:6] / 255 + 1e-12)[inside[:6]])  # within one bin
        assert (decoded.gripper > 0.5) == (label[6] > 0.5)


def test_reader_api(sim_dataset: Path) -> None:
    data = TrajectoryDataset(sim_dataset)
    assert len(data) == 2 * DEMO_STEPS
    first, last = data[0], data[-1]
    assert isinstance(first, StepRecord) and first.episode_id == "episode_0000" and first.step == 0
    assert last.episode_id == "episode_0001" and last.step == DEMO_STEPS - 1
    assert first.image.shape == (256, 256, 3) and first.image.dtype == np.uint8
    assert first.action.shape == (7,) and first.state.shape == (7,)
    assert data[DEMO_STEPS].episode_id == "episode_0001" and data[DEMO_STEPS].step == 0
    with pytest.raises(IndexError):
        data[len(data)]
    np.testing.assert_array_equal(np.stack([s.action for s in data]), data.actions())
    clone = pickle.loads(pickle.dumps(data))
    np.testing.assert_array_equal(clone[5].image, data[5].image)
    # the files are plain Parquet a kept library reads directly
    table = pq.read_table(sim_dataset / "episodes" / "episode_0001.parquet")
    assert table.column_names == ["step", "stamp_ns", "image", "action", "state", "instruction"]
    meta = json.loads(table.schema.metadata[b"magma_ros.episode"])
    assert meta["episode_id"] == "episode_0001" and meta["dropped"] == {"no_state": 1}
    with pytest.raises(DatasetError, match="no episode"):
        data.episode("nope")


def test_reader_refuses_what_is_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        TrajectoryDataset(tmp_path / "missing")
    with pytest.raises(DatasetError, match="not a magma_ros dataset"):
        TrajectoryDataset(tmp_path)
    writer = DatasetWriter(tmp_path / "d", "toy")
    with pytest.raises(DatasetError, match="holds no episodes yet"):
        TrajectoryDataset(tmp_path / "d")
    rgb = np.zeros((8, 8, 3), np.uint8)
    writer.write_episode("e0", stamps_ns=[0, 1], images=[rgb, rgb], actions=np.zeros((2, 7)), states=np.zeros((2, 7)),
                         instructions="x")
    with pytest.raises(DatasetError, match=r"dataset_statistics\.json is missing"):
        TrajectoryDataset(tmp_path / "d")
    writer.write_statistics()
    assert len(TrajectoryDataset(tmp_path / "d")) == 2
    with pytest.raises(DatasetError, match="non-finite"):
        writer.write_episode("e1", stamps_ns=[0], images=[rgb], actions=np.full((1, 7), np.nan),
                             states=np.zeros((1, 7)), instructions="x")
    assert not (tmp_path / "d" / "episodes" / "e1.parquet").exists()
    with pytest.raises(DatasetError, match="holds dataset 'toy'"):
        DatasetWriter(tmp_path / "d", "other")
    (tmp_path / "d" / STATISTICS_FILE).write_text('{"other": {"action": {"q01": [0,0,0,0,0,0,0], '
                                                  '"q99": [1,1,1,1,1,1,1]}}}')
    with pytest.raises(DatasetError, match="no entry 'toy'"):
        TrajectoryDataset(tmp_path / "d")


@pytest.mark.parametrize("image_format", ["png", "jpeg"])
def test_image_encoding_round_trip(image_format: str) -> None:
    y, x = np.mgrid[0:64, 0:96]
    rgb = np.stack([x * 2, y * 3, np.full_like(x, 40)], axis=-1).astype(np.uint8)  # R, G, B kept apart
    back = decode_image(encode_image(rgb, image_format))
    assert back.shape == rgb.shape and back.dtype == np.uint8
    if image_format == "png":
        np.testing.assert_array_equal(back, rgb)
    else:
        assert np.abs(back.astype(int) - rgb).mean(axis=(0, 1)).max() < 3  # channel order kept
    with pytest.raises(DatasetError, match="does not decode"):
        decode_image(b"not an image")


@pytest.mark.slow
def test_joint_states_through_the_urdf_give_the_labels_of_the_recorded_ee_pose(recorded_demos: Path) -> None:
    import pybullet_data

    from magma_ros.training.episodes import read_episode
    from magma_ros.training.spec import DatasetSpec, load_spec

    spec = load_spec(SIM_SPEC)
    data = spec.as_dict()
    data["state"] = {"source": "joint_states", "joint_states_topic": contract.JOINT_STATES.name,
                     "ee_frame": "panda_grasptarget",  # the sim's TCP, in pybullet_data's Panda
                     "urdf": str(Path(pybullet_data.getDataPath()) / "franka_panda" / "panda.urdf")}
    kinematic = read_episode(recorded_demos / "episode_0001", DatasetSpec.from_mapping(data, "fk spec"))
    recorded = read_episode(recorded_demos / "episode_0001", spec)
    np.testing.assert_array_equal(kinematic.stamps_ns, recorded.stamps_ns)
    np.testing.assert_allclose(kinematic.actions, recorded.actions, atol=1e-9)
    np.testing.assert_allclose(kinematic.states, recorded.states, atol=1e-9)
    data["state"]["ee_frame"] = "no_such_link"
    with pytest.raises(DatasetError, match="has no link 'no_such_link'"):
        read_episode(recorded_demos / "episode_0001", DatasetSpec.from_mapping(data, "fk spec"))


def test_builder_on_written_bags_ids_workers_spec_changes(tmp_path: Path) -> None:
    from magma_ros.bags import write_bag
    from magma_ros.training.builder import build_dataset
    from tests.training.test_episodes import records, spec

    for folder in ("a", "b"):
        write_bag(tmp_path / folder / "ep", records())
    write_bag(tmp_path / "a" / "no_camera", [r for r in records() if r[0] != "/cam"])
    chosen = spec()
    one = build_dataset([tmp_path / "a", tmp_path / "b"], chosen, tmp_path / "one", progress=False,
                        report=lambda _: None)
    # the second 'ep' gets its folder's name in front; the bag without the camera topic is skipped
    assert one.written == ["ep", "b_ep"]
    assert [bag for bag, _ in one.skipped] == [str((tmp_path / "a" / "no_camera").resolve())]
    assert "no image topic /cam" in one.skipped[0][1]
    two = build_dataset([tmp_path / "a", tmp_path / "b"], chosen, tmp_path / "two", workers=2, progress=False,
                        report=lambda _: None)
    assert two.written == one.written
    first, second = TrajectoryDataset(tmp_path / "one"), TrajectoryDataset(tmp_path / "two")
    assert first.episode_ids == second.episode_ids
    np.testing.assert_array_equal(first.actions(), second.actions())
    again = build_dataset([tmp_path / "a", tmp_path / "b"], chosen, tmp_path / "one", progress=False,
                          report=lambda _: None)
    assert again.written == [] and sorted(again.already_done) == sorted(one.written)
    with pytest.raises(DatasetError, match=r"built with a different spec \(differs in: control_rate_hz\)"):
        build_dataset([tmp_path / "a"], spec(control_rate_hz=5.0, alignment={"max_skew_s": 0.02}),
                      tmp_path / "one", progress=False, report=lambda _: None)


def test_builder_workers_start_safely_after_ros_or_onnxruntime(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """In a process that runs DDS or ONNX Runtime (their threads hold locks across a fork), workers start
    from a fork server, never by forking this process; the dataset is the one a single process builds."""
    import types

    from magma_ros.bags import write_bag
    from magma_ros.training import builder
    from tests.training.test_episodes import records, spec

    for name in builder.FORK_UNSAFE_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert builder._pool_context().get_start_method() == "fork"
    monkeypatch.setitem(sys.modules, "onnxruntime", types.ModuleType("onnxruntime"))
    assert builder._pool_context().get_start_method() == "forkserver"
    for folder in ("a", "b"):
        write_bag(tmp_path / folder / "ep", records())
    two = builder.build_dataset([tmp_path / "a", tmp_path / "b"], spec(), tmp_path / "two", workers=2,
                                progress=False, report=lambda _: None)
    one = builder.build_dataset([tmp_path / "a", tmp_path / "b"], spec(), tmp_path / "one", progress=False,
                                report=lambda _: None)
    assert two.written == one.written == ["ep", "b_ep"]
    np.testing.assert_array_equal(TrajectoryDataset(tmp_path / "one").actions(),
                                  TrajectoryDataset(tmp_path / "two").actions())


def test_dataset_info_and_cli_errors(sim_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from magma_ros.cli import main

    assert main(["dataset", "info", str(sim_dataset), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "sim_panda" and info["episodes"] == 2 and info["steps"] == 2 * DEMO_STEPS
    assert main(["dataset", "info", str(tmp_path)]) == 2
    assert "not a magma_ros dataset" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("name: x\ncontrol_rate_hz: 10\nbase_frame: b\nimage: {sise: 1}\n")
    assert main(["dataset", "build", str(tmp_path), "--spec", str(tmp_path / "bad.yaml"), "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown field(s) image.sise" in err[0]
