"""magma_ros.bags without ROS: write mcap and sqlite3 bags, read them back, and damage them."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from magma_ros import contract
from magma_ros.bags import (
    BagError,
    BagNotFoundError,
    BagReader,
    BagWriter,
    CorruptBagError,
    open_bag,
    typestore_for,
    write_bag,
)

T0 = 1_700_000_000 * 10**9          # recording start (ns since the epoch)
STORAGES = ("mcap", "sqlite3")
SUFFIX = {"mcap": ".mcap", "sqlite3": ".db3"}
UNKNOWN_TOPIC, UNKNOWN_TYPE = "/acme/widget", "acme_msgs/msg/Widget"


def image_bytes(index: int, width: int, height: int) -> bytes:
    """A frame whose every byte depends on the frame index (content checks)."""
    return ((np.arange(width * height * 3, dtype=np.uint32) + index * 7) % 251).astype(np.uint8).tobytes()


def sample_records(n_images: int = 20, image_hz: float = 20.0, width: int = 64, height: int = 48,
                   joint_hz: float = 50.0, unknown_type: bool = False, typestore: Any = None,
                   ) -> list[tuple[str, str, int, Any]]:
    """An imitation-learning-like episode: camera, instruction, joint states, EE pose (+ an unknown type).

    Header stamps equal the recording times, so receivers can check order and content.
    """
    ts = typestore or typestore_for("kilted")
    t = ts.types

    def header(stamp: int, frame: str) -> Any:
        sec, nsec = divmod(stamp, 10**9)
        return t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec),
                                        frame_id=frame)

    duration = int(n_images / image_hz * 1e9)
    instruction = t["std_msgs/msg/String"](data="pick up the red cube")
    records: list[tuple[str, str, int, Any]] = [(contract.INSTRUCTION.name, contract.INSTRUCTION.type, T0, instruction)]
    for i in range(n_images):
        stamp = T0 + int(i / image_hz * 1e9) + 1000
        records.append((contract.CAMERA_IMAGE.name, contract.CAMERA_IMAGE.type, stamp, t["sensor_msgs/msg/Image"](
            header=header(stamp, "camera_color_optical_frame"), height=height, width=width, encoding="rgb8",
            is_bigendian=0, step=width * 3, data=np.frombuffer(image_bytes(i, width, height), np.uint8))))
        records.append((contract.EE_POSE.name, contract.EE_POSE.type, stamp + 500, t["geometry_msgs/msg/PoseStamped"](
            header=header(stamp + 500, "base_link"),
            pose=t["geometry_msgs/msg/Pose"](position=t["geometry_msgs/msg/Point"](x=float(i), y=0.0, z=0.5),
                                             orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0,
                                                                                          w=1.0)))))
    for k in range(int(duration / 1e9 * joint_hz)):
        stamp = T0 + int(k / joint_hz * 1e9) + 2000
        records.append((contract.JOINT_STATES.name, contract.JOINT_STATES.type, stamp, t["sensor_msgs/msg/JointState"](
            header=header(stamp, ""), name=["joint1", "joint2"], position=np.array([0.01 * k, -0.01 * k]),
            velocity=np.zeros(0), effort=np.zeros(0))))
    if unknown_type:
        records.append((UNKNOWN_TOPIC, UNKNOWN_TYPE, T0 + 3000, t[UNKNOWN_TYPE](size=3)))
    return sorted(records, key=lambda r: r[2])


def custom_typestore() -> Any:
    """The Kilted typestore plus a type no ROS install here has (to exercise 'skipped' paths)."""
    from rosbags.typesys import get_types_from_msg

    ts = typestore_for("kilted")
    ts.register(get_types_from_msg("uint32 size", UNKNOWN_TYPE))
    return ts


def cut(source: Path, target: Path, fraction: float | None = None, keep: int | None = None) -> Path:
    """Copy a bag directory with its storage file truncated (to a fraction or a byte count)."""
    shutil.copytree(source, target)
    (storage,) = [p for p in target.iterdir() if p.suffix in (".mcap", ".db3")]
    data = storage.read_bytes()
    storage.write_bytes(data[: keep if keep is not None else int(len(data) * (fraction or 0))])
    return target


@pytest.fixture(scope="module", params=STORAGES)
def bag(request, tmp_path_factory) -> tuple[Path, list]:
    records = sample_records(n_images=12, width=320, height=240)  # 230 kB frames: several mcap chunks
    path = write_bag(tmp_path_factory.mktemp("bags") / f"episode_{request.param}", records, storage=request.param)
    return path, records


def recorded(records: list) -> list[tuple[str, int]]:
    return [(topic, stamp) for topic, _, stamp, _ in records]


def test_round_trip_keeps_order_times_types_and_content(bag) -> None:
    path, records = bag
    with BagReader(path) as reader:
        assert reader.warnings == []
        assert reader.storage == ("mcap" if any(path.glob("*.mcap")) else "sqlite3")
        counts = {(c.topic, c.msgtype): c.count for c in reader.connections}
        expected: dict[tuple[str, str], int] = {}
        for topic, msgtype, _, _ in records:
            expected[(topic, msgtype)] = expected.get((topic, msgtype), 0) + 1
        assert counts == expected
        assert reader.message_count == len(records)
        assert reader.start_ns == records[0][2] and reader.end_ns == records[-1][2]
        messages = list(reader.messages())
        assert [(m.topic, m.timestamp) for m in messages] == recorded(records)
        images = [reader.deserialize(m) for m in messages if m.topic == contract.CAMERA_IMAGE.name]
        assert [bytes(img.data) for img in images] == [image_bytes(i, 320, 240) for i in range(12)]
        assert images[3].header.stamp.sec * 10**9 + images[3].header.stamp.nanosec == \
            [m for m in messages if m.topic == contract.CAMERA_IMAGE.name][3].timestamp
        assert reader.starts_with_header(contract.CAMERA_IMAGE.type)
        assert not reader.starts_with_header(contract.INSTRUCTION.type)


def test_storage_file_opens_on_its_own(bag) -> None:
    path, records = bag
    (storage,) = [p for p in path.iterdir() if p.suffix in (".mcap", ".db3")]
    with open_bag(storage) as reader:
        assert [(m.topic, m.timestamp) for m in reader.messages()] == recorded(records)


def test_messages_by_connection_and_time_window(bag) -> None:
    path, records = bag
    with BagReader(path) as reader:
        joints = [c for c in reader.connections if c.topic == contract.JOINT_STATES.name]
        start = records[len(records) // 2][2]
        got = [m.timestamp for m in reader.messages(joints, start_ns=start)]
        assert got == [s for t, _, s, _ in records if t == contract.JOINT_STATES.name and s >= start]
        assert got == sorted(got) and got


def test_directory_without_metadata_is_read_with_a_warning(bag, tmp_path) -> None:
    path, records = bag
    copy = shutil.copytree(path, tmp_path / "unclosed")
    (copy / "metadata.yaml").unlink()
    with BagReader(copy) as reader:
        assert any("metadata.yaml missing" in w for w in reader.warnings)
        assert [(m.topic, m.timestamp) for m in reader.messages()] == recorded(records)


def test_missing_bag_is_named(tmp_path) -> None:
    with pytest.raises(BagNotFoundError, match=r"bag not found: .*nope"):
        open_bag(tmp_path / "nope")


@pytest.mark.parametrize("kind", ["empty_dir", "garbage_mcap", "garbage_db3", "ros1", "txt", "bad_metadata",
                                  "mixed"])
def test_unreadable_bags_raise_corrupt_bag_error(kind, bag, tmp_path) -> None:
    target = tmp_path / "bag"
    target.mkdir()
    if kind == "garbage_mcap":
        target = target / "x.mcap"
        target.write_bytes(b"this is not an mcap file at all" * 10)
    elif kind == "garbage_db3":
        target = target / "x.db3"
        target.write_bytes(b"SQLite format 3\x00" + b"\xff" * 300)
    elif kind == "ros1":
        target = target / "x.bag"
        target.write_bytes(b"#ROSBAG V2.0\n")
    elif kind == "txt":
        target = target / "x.txt"
        target.write_text("hello")
    elif kind == "bad_metadata":
        target = shutil.copytree(bag[0], tmp_path / "copy")
        (target / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: [")
    elif kind == "mixed":
        (target / "a.mcap").write_bytes(b"x")
        (target / "b.db3").write_bytes(b"x")
    with pytest.raises(CorruptBagError) as info, BagReader(target) as reader:
        list(reader.messages())
    assert str(target) in str(info.value) or str(target.parent) in str(info.value)
    assert "\n" not in str(info.value)


def test_truncated_mcap_yields_the_complete_prefix_with_a_warning(tmp_path) -> None:
    records = sample_records(n_images=12, width=320, height=240)
    path = write_bag(tmp_path / "full", records, storage="mcap")
    damaged = cut(path, tmp_path / "cut", fraction=0.6)
    with BagReader(damaged) as reader:
        assert any("truncated" in w for w in reader.warnings)
        got = [(m.topic, m.timestamp) for m in reader.messages()]
    assert 0 < len(got) < len(records)
    assert got == recorded(records)[: len(got)]


def test_truncated_mcap_without_a_complete_message_is_corrupt(tmp_path) -> None:
    path = write_bag(tmp_path / "full", sample_records(n_images=4), storage="mcap")  # one chunk
    with pytest.raises(CorruptBagError, match="truncated"):
        open_bag(cut(path, tmp_path / "cut", fraction=0.5))


def test_truncated_sqlite_is_a_named_error(tmp_path) -> None:
    path = write_bag(tmp_path / "full", sample_records(n_images=12, width=320, height=240), storage="sqlite3")
    with pytest.raises(CorruptBagError, match="cut"), BagReader(cut(path, tmp_path / "cut", fraction=0.5)) as reader:
        list(reader.messages())


@pytest.fixture(scope="module")
def small_bags(tmp_path_factory) -> dict[str, tuple[Path, list]]:
    records = sample_records(n_images=10, width=320, height=240)  # mcap: three chunks
    root = tmp_path_factory.mktemp("small")
    return {s: (write_bag(root / s, records, storage=s), records) for s in STORAGES}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(storage=st.sampled_from(STORAGES), fraction=st.floats(0.0, 1.0))
def test_any_truncation_gives_bag_error_or_recorded_messages(small_bags, tmp_path, storage, fraction) -> None:
    """Never an unnamed exception: a named error, or (some of) the recorded messages in order."""
    path, records = small_bags[storage]
    target = tmp_path / f"cut_{storage}_{fraction}"
    if target.exists():
        return
    damaged = cut(path, target, fraction=fraction)
    got: list[tuple[str, int]] = []
    try:
        with BagReader(damaged) as reader:
            got.extend((m.topic, m.timestamp) for m in reader.messages())
    except BagError:
        pass
    expected = recorded(records)
    if storage == "mcap":
        assert got == expected[: len(got)]
    else:
        assert set(got) <= set(expected) and got == sorted(got, key=lambda x: x[1])


def test_writer_errors_are_named(tmp_path) -> None:
    with pytest.raises(BagError, match="unknown bag storage"):
        BagWriter(tmp_path / "a", storage="rosbag1")
    with pytest.raises(BagError, match="unknown ROS distro"):
        BagWriter(tmp_path / "a", distro="rolling-ridley")
    existing = tmp_path / "exists"
    existing.mkdir()
    with pytest.raises(BagError, match="cannot create bag"):
        write_bag(existing, [])
    with pytest.raises(BagError, match="no_msgs/msg/Nothing"):
        write_bag(tmp_path / "b", [("/x", "no_msgs/msg/Nothing", 0, b"\x00\x01\x00\x00")])


def test_raw_bytes_and_custom_types_are_written(tmp_path) -> None:
    ts = custom_typestore()
    records = sample_records(n_images=2, unknown_type=True, typestore=ts)
    raw = bytes(ts.serialize_cdr(records[0][3], records[0][1]))
    records[0] = (*records[0][:3], raw)
    path = write_bag(tmp_path / "custom", records, storage="sqlite3", typestore=ts)
    with BagReader(path) as reader:  # definitions are embedded: no custom typestore needed to read
        messages = list(reader.messages())
        assert messages[0].data == raw
        (widget,) = [reader.deserialize(m) for m in messages if m.topic == UNKNOWN_TOPIC]
        assert widget.size == 3
