"""Bag -> episode steps (magma_ros.training.episodes) on bags written with rosbags: alignment, labels,
sources, dropped samples, and the storages and layouts rosbag2 writes (sqlite3, split, zstd)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from magma_ros.bags import typestore_for, write_bag
from magma_ros.conventions import EpisodeMetadata, integrate_steps, quat_from_rotvec, quat_from_rpy, quat_multiply
from magma_ros.image_codec import resize_frame
from magma_ros.training.episodes import EpisodeError, find_bags, read_episode
from magma_ros.training.spec import DatasetSpec
from tests.bag_fixtures import (
    add_chunk_crcs,
    flip,
    mcap_chunks,
    storage_file,
    write_records,
    write_service_event_bag,
    write_split_bag,
)

TS = typestore_for("kilted")
T = TS.types
T0 = 1_700_000_000 * 10**9
S = 10**9
W, H = 40, 30


def header(stamp: int, frame: str = "") -> Any:
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=stamp // S, nanosec=stamp % S),
                                    frame_id=frame)


def frame_pixels(i: int) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([(x * 5 + i) % 256, (y * 7) % 256, np.full_like(x, i % 256)], -1).astype(np.uint8)


def image(stamp: int, i: int) -> Any:
    return T["sensor_msgs/msg/Image"](header=header(stamp, "cam"), height=H, width=W, encoding="rgb8",
                                      is_bigendian=0, step=W * 3, data=frame_pixels(i).reshape(-1))


def pose_msg(stamp: int, p: np.ndarray, q: np.ndarray, frame: str = "base") -> Any:
    return T["geometry_msgs/msg/PoseStamped"](header=header(stamp, frame), pose=T["geometry_msgs/msg/Pose"](
        position=T["geometry_msgs/msg/Point"](x=p[0], y=p[1], z=p[2]),
        orientation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3])))


def gripper_msg(stamp: int, position: float) -> Any:
    point = T["trajectory_msgs/msg/JointTrajectoryPoint"](
        positions=np.array([position]), velocities=np.zeros(0), accelerations=np.zeros(0), effort=np.zeros(0),
        time_from_start=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=0))
    return T["trajectory_msgs/msg/JointTrajectory"](header=header(stamp), joint_names=["finger"], points=[point])


def path(t: float) -> tuple[np.ndarray, np.ndarray]:
    """A smooth EE path: a drifting position and a rotation growing about a tilted axis."""
    p = np.array([0.4 + 0.1 * t, -0.05 * t ** 2, 0.3 + 0.02 * np.sin(3 * t)])
    q = quat_multiply(quat_from_rotvec(np.array([0.1, -0.2, 0.5]) * t), np.array([1.0, 0.0, 0.0, 0.0]))
    return p, q


def records(seconds: float = 2.0, camera_hz: float = 30.0, pose_hz: float = 100.0, close_at: float = 1.0,
            nan_pose_at: float | None = None, pose_gap: tuple[float, float] | None = None) -> list:
    out = []
    for i in range(int(seconds * camera_hz) + 1):
        stamp = T0 + round(i / camera_hz * S)
        out.append(("/cam", "sensor_msgs/msg/Image", stamp + 2_000_000, image(stamp, i)))  # recorded 2 ms late
    for k in range(int(seconds * pose_hz) + 1):
        t = k / pose_hz
        if pose_gap and pose_gap[0] <= t < pose_gap[1]:
            continue
        p, q = path(t)
        if nan_pose_at is not None and abs(t - nan_pose_at) < 1e-9:
            p = np.array([np.nan, 0.0, 0.0])
        out.append(("/pose", "geometry_msgs/msg/PoseStamped", T0 + round(t * S), pose_msg(T0 + round(t * S), p, q)))
    out.append(("/grip", "trajectory_msgs/msg/JointTrajectory", T0 + 1000, gripper_msg(T0 + 1000, 0.04)))
    stamp = T0 + round(close_at * S)
    out.append(("/grip", "trajectory_msgs/msg/JointTrajectory", stamp, gripper_msg(stamp, 0.0)))
    out.append(("/text", "std_msgs/msg/String", T0, T["std_msgs/msg/String"](data="stack the blocks")))
    return sorted(out, key=lambda r: r[2])


def spec(**changes: Any) -> DatasetSpec:
    data: dict[str, Any] = {
        "name": "toy", "control_rate_hz": 10.0, "base_frame": "base",
        "image": {"topic": "/cam", "size": 0}, "state": {"source": "pose", "topic": "/pose"},
        "gripper": {"source": "command", "topic": "/grip", "joints": ["finger"], "open_position": 0.04,
                    "closed_position": 0.0},
        "instruction": {"source": "topic", "topic": "/text"}, "alignment": {"max_skew_s": 0.02}}
    for key, value in changes.items():
        if isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    return DatasetSpec.from_mapping(data, "test spec")


def test_steps_resample_the_camera_and_labels_reproduce_the_path(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "ep", records())
    episode = read_episode(bag, spec())
    # 30 Hz camera, 10 Hz steps: every third frame; the last step needs a pose 0.1 s later
    assert len(episode) == 20
    assert np.all(np.diff(episode.stamps_ns) == S // 10)
    np.testing.assert_array_equal(episode.images[3], frame_pixels(9))
    for k, stamp in enumerate(episode.stamps_ns):
        p, q = path((stamp - T0) / S)
        np.testing.assert_allclose(episode.states[k, :3], p, atol=1e-12)
        assert abs(abs(float(np.dot(quat_from_rpy(episode.states[k, 3:6]), q))) - 1) < 1e-12
    positions, quats = integrate_steps(*path(0.0), episode.actions[:, :6])
    for k in range(len(episode) + 1):
        p, q = path(k / 10)
        assert np.linalg.norm(positions[k] - p) < 1e-9
        assert abs(abs(float(np.dot(quats[k], q))) - 1) < 1e-12
    # the gripper label is the command in force during the step: the close sent at t = 1.0 (in answer to
    # that frame) is the label of the step at 1.0; the state shows it from then on too
    np.testing.assert_array_equal(episode.actions[:, 6], [1.0] * 10 + [0.0] * 10)
    np.testing.assert_array_equal(episode.states[:, 6], [1.0] * 10 + [0.0] * 10)
    assert episode.instructions == ["stack the blocks"] * 20
    assert episode.dropped == {"no_state": 1}


def test_missing_or_stale_inputs_drop_steps_and_bad_samples_are_counted(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "ep", records(nan_pose_at=0.5, pose_gap=(1.02, 1.35), pose_hz=10.0))
    episode = read_episode(bag, spec())
    assert episode.dropped["bad_pose"] == 1
    # no pose at 0.5 (NaN), 1.1, 1.2, 1.3 (gap): steps at 0.4, 0.5, 1.0, 1.1, 1.2, 1.3 lose a pose; and the last
    kept = sorted(round((s - T0) / S, 1) for s in episode.stamps_ns)
    assert kept == [round(0.1 * k, 1) for k in range(20) if round(0.1 * k, 1) not in (0.4, 0.5, 1.0, 1.1, 1.2, 1.3)]
    assert episode.dropped["no_state"] == 7
    assert np.all(np.isfinite(episode.actions)) and np.all(np.isfinite(episode.states))


def test_undecodable_frames_are_dropped_and_counted(tmp_path: Path) -> None:
    recs = records()
    broken = []
    for topic, msgtype, stamp, msg in recs:
        if topic == "/cam" and stamp == T0 + round(9 / 30 * S) + 2_000_000:  # the frame of step 3
            msg = T["sensor_msgs/msg/Image"](header=msg.header, height=H, width=W, encoding="weird8", is_bigendian=0,
                                             step=W * 3, data=msg.data)
        broken.append((topic, msgtype, stamp, msg))
    episode = read_episode(write_bag(tmp_path / "ep", broken), spec())
    assert episode.dropped == {"no_state": 1, "bad_image": 1} and len(episode) == 19
    assert any("weird8" in w for w in episode.warnings)


def test_compressed_images_tf_state_and_other_sources(tmp_path: Path) -> None:
    import cv2

    recs = []
    for topic, msgtype, stamp, msg in records():
        if topic == "/cam":
            _, png = cv2.imencode(".png", np.ascontiguousarray(
                np.frombuffer(msg.data, np.uint8).reshape(H, W, 3)[:, :, ::-1]))
            msg = T["sensor_msgs/msg/CompressedImage"](header=msg.header, format="png", data=png.reshape(-1))
            recs.append(("/cam/compressed", "sensor_msgs/msg/CompressedImage", stamp, msg))
        elif topic == "/pose":  # the same path as /tf: world->base static, base->flange dynamic, flange->tcp static
            p, q = msg.pose.position, msg.pose.orientation
            flange_to_tcp = np.array([0.0, 0.0, 0.1])
            qv = np.array([q.x, q.y, q.z, q.w])
            rot = quat_multiply(quat_multiply(qv, np.array([*flange_to_tcp, 0.0])), qv * [-1, -1, -1, 1])[:3]
            flange = np.array([p.x, p.y, p.z]) - rot
            recs.append(("/tf", "tf2_msgs/msg/TFMessage", stamp, tf_message(stamp, "base", "flange", flange, qv)))
        else:
            recs.append((topic, msgtype, stamp, msg))
    recs.append(("/tf_static", "tf2_msgs/msg/TFMessage", T0, tf_message(T0, "flange", "tcp", np.array([0, 0, 0.1]),
                                                                        np.array([0.0, 0.0, 0.0, 1.0]))))
    recs.append(("/tf_static", "tf2_msgs/msg/TFMessage", T0, tf_message(T0, "world", "base", np.ones(3),
                                                                        np.array([0.0, 0.0, 0.0, 1.0]))))
    bag = write_bag(tmp_path / "ep", sorted(recs, key=lambda r: r[2]))
    (bag / "episode.json").write_text('{"instruction": "from the metadata", "success": true}')
    chosen = spec(image={"topic": "/cam/compressed", "size": 16}, state={"source": "tf", "ee_frame": "tcp"},
                  instruction={"source": "metadata"})
    episode = read_episode(bag, chosen)
    reference = read_episode(write_bag(tmp_path / "ref", records()), spec())
    assert len(episode) == len(reference) == 20
    np.testing.assert_allclose(episode.actions, reference.actions, atol=1e-12)
    np.testing.assert_allclose(episode.states, reference.states, atol=1e-12)
    assert episode.images[3].shape == (16, 16, 3)
    np.testing.assert_array_equal(episode.images[3], resize_frame(frame_pixels(9), 16))
    assert episode.instructions[0] == "from the metadata" and episode.metadata.success is True
    fixed = read_episode(bag, spec(image={"topic": "/cam/compressed"}, state={"source": "tf", "ee_frame": "tcp"},
                                   instruction={"source": "fixed", "text": "do it"}))
    assert fixed.instructions == ["do it"] * 20


def tf_message(stamp: int, parent: str, child: str, p: np.ndarray, q: np.ndarray) -> Any:
    tf = T["geometry_msgs/msg/TransformStamped"](header=header(stamp, parent), child_frame_id=child,
                                                 transform=T["geometry_msgs/msg/Transform"](
        translation=T["geometry_msgs/msg/Vector3"](x=p[0], y=p[1], z=p[2]),
        rotation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3])))
    return T["tf2_msgs/msg/TFMessage"](transforms=[tf])


def test_finger_joint_gripper_with_hysteresis(tmp_path: Path) -> None:
    recs = [r for r in records() if r[0] != "/grip"]
    openings = [1.0, 1.0, 0.5, 0.3, 0.5, 0.55, 0.7, 0.7, 0.2, 0.2, 0.2, 0.45, 0.65] + [0.9] * 10
    for k, g in enumerate(openings):
        stamp = T0 + k * S // 10
        recs.append(("/joints", "sensor_msgs/msg/JointState", stamp, T["sensor_msgs/msg/JointState"](
            header=header(stamp), name=["arm", "finger"], position=np.array([0.3, 0.04 * g]),
            velocity=np.zeros(0), effort=np.zeros(0))))
    bag = write_bag(tmp_path / "ep", sorted(recs, key=lambda r: r[2]))
    episode = read_episode(bag, spec(gripper={"source": "joint_position", "topic": "/joints"}))
    # label = opening at the end of the step through hysteresis (open >= 0.6, closed <= 0.4)
    expected, state = [], True
    for g in openings[1:21]:
        state = True if g >= 0.6 else False if g <= 0.4 else state
        expected.append(1.0 if state else 0.0)
    np.testing.assert_array_equal(episode.actions[:, 6], expected)
    np.testing.assert_allclose(episode.states[:, 6], openings[:20])


def test_unusable_bags_raise_one_line_errors(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "ep", records())
    with pytest.raises(EpisodeError, match="no image topic /other in the bag"):
        read_episode(bag, spec(image={"topic": "/other"}))
    with pytest.raises(EpisodeError, match="no instruction in its episode metadata"):
        read_episode(bag, spec(instruction={"source": "metadata"}))
    with pytest.raises(EpisodeError, match="every EE pose on /pose is in another frame"):
        read_episode(bag, spec(base_frame="world"))
    EpisodeMetadata(instruction="x", success=False).write(bag)
    with pytest.raises(EpisodeError, match="unsuccessful"):
        read_episode(bag, spec(only_successful=True))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EpisodeError, match="holds no rosbag2 recording"):
        find_bags([tmp_path / "empty"])


@pytest.mark.parametrize("layout", ["sqlite3", "split", "zstd-file", "zstd-chunks"])
def test_storages_and_layouts_rosbag2_writes(tmp_path: Path, layout: str) -> None:
    recs = records()
    reference = read_episode(write_bag(tmp_path / "ref", recs), spec())
    target = tmp_path / "bag"
    if layout == "sqlite3":
        write_records(target, recs, storage="sqlite3")
    elif layout == "split":
        write_split_bag(target, recs, parts=3)
    else:
        write_records(target, recs, compression="file" if layout == "zstd-file" else "chunks")
    episode = read_episode(target, spec())
    np.testing.assert_array_equal(episode.stamps_ns, reference.stamps_ns)
    np.testing.assert_array_equal(episode.actions, reference.actions)
    np.testing.assert_array_equal(np.stack(episode.images), np.stack(reference.images))


def test_bool_and_float_gripper_topics(tmp_path: Path) -> None:
    base = [r for r in records() if r[0] != "/grip"]
    bools = [("/grip_bool", "std_msgs/msg/Bool", T0 + k * S // 2, T["std_msgs/msg/Bool"](data=k % 2 == 1))
             for k in range(5)]  # closed (false) at 0.0, 1.0, 2.0; open (true) at 0.5, 1.5
    bag = write_bag(tmp_path / "b", sorted(base + bools, key=lambda r: r[2]))
    episode = read_episode(bag, spec(gripper={"source": "bool", "topic": "/grip_bool", "open_value": True}))
    np.testing.assert_array_equal(episode.actions[:, 6], [0.0] * 5 + [1.0] * 5 + [0.0] * 5 + [1.0] * 5)
    floats = [("/grip_f", "std_msgs/msg/Float64", T0 + k * S // 2, T["std_msgs/msg/Float64"](data=0.8 * (k % 2)))
              for k in range(5)]  # a knuckle: 0.8 = closed
    bag = write_bag(tmp_path / "f", sorted(base + floats, key=lambda r: r[2]))
    episode = read_episode(bag, spec(gripper={"source": "float", "topic": "/grip_f", "open_position": 0.0,
                                              "closed_position": 0.8}))
    np.testing.assert_array_equal(episode.actions[:, 6], [1.0] * 5 + [0.0] * 5 + [1.0] * 5 + [0.0] * 5)


def test_undecodable_streams_we_do_not_need_are_skipped_but_damage_refuses_the_episode(tmp_path: Path) -> None:
    recs = records()
    reference = read_episode(write_bag(tmp_path / "ref", recs), spec())
    # Service events (a Jazzy-era bag) are skipped by the reader; the episode is built all the same.
    events = read_episode(write_service_event_bag(tmp_path / "events", recs), spec())
    np.testing.assert_array_equal(events.actions, reference.actions)
    # A chunk whose checksum fails is found only while reading: a short read is never used.
    damaged = write_records(tmp_path / "damaged", recs)
    add_chunk_crcs(storage_file(damaged))
    (chunk, *_) = mcap_chunks(storage_file(damaged))
    flip(storage_file(damaged), chunk.data_offset + chunk.data_size // 2, 0x40)
    with pytest.raises(EpisodeError, match=r"unreadable: .*damaged \(Chunk checksum mismatch\.\)"):
        read_episode(damaged, spec())
