"""magma_ros.bags without ROS: write mcap and sqlite3 bags, read them back, and damage them."""

from __future__ import annotations

import shutil
from pathlib import Path

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
    IncompleteBagError,
    open_bag,
    write_bag,
)
from tests.bag_fixtures import (
    STORAGES,
    UNKNOWN_TOPIC,
    custom_typestore,
    cut,
    image_bytes,
    recorded,
    sample_records,
)


@pytest.fixture(scope="module", params=STORAGES)
def bag(request, tmp_path_factory) -> tuple[Path, list]:
    records = sample_records(n_images=12, width=320, height=240)  # 230 kB frames: several mcap chunks
    path = write_bag(tmp_path_factory.mktemp("bags") / f"episode_{request.param}", records, storage=request.param)
    return path, records


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


def test_truncated_mcap_yields_the_complete_prefix_and_says_how_many_are_missing(tmp_path) -> None:
    records = sample_records(n_images=12, width=320, height=240)
    path = write_bag(tmp_path / "full", records, storage="mcap")
    damaged = cut(path, tmp_path / "cut", fraction=0.6)
    got: list[tuple[str, int]] = []
    with pytest.raises(IncompleteBagError) as info, BagReader(damaged) as reader:
        assert any("truncated" in w for w in reader.warnings)
        got.extend((m.topic, m.timestamp) for m in reader.messages())
    assert 0 < len(got) < len(records)
    assert got == recorded(records)[: len(got)]
    result = info.value.result
    assert (result.announced, result.stored, result.read) == (len(records), len(got), len(got))
    assert result.lost == len(records) - len(got)
    assert str(info.value) == (
        f"bag {damaged}: read {len(got)} of {len(records)} messages (metadata.yaml announces {len(records)}, the "
        f"storage files hold {len(got)}); {len(records) - len(got)} unreadable: {len(records) - len(got)} announced "
        f"but not in the storage files (full.mcap is truncated (recording interrupted?); read up to its last "
        f"complete record (byte 1156654 of 1666943))")


def test_truncated_mcap_without_metadata_has_nothing_to_compare_with(tmp_path) -> None:
    """A recorder killed mid-write leaves no metadata.yaml: the readable part is all there is (warned)."""
    records = sample_records(n_images=12, width=320, height=240)
    damaged = cut(write_bag(tmp_path / "full", records, storage="mcap"), tmp_path / "cut", fraction=0.6)
    (damaged / "metadata.yaml").unlink()
    with BagReader(damaged) as reader:
        assert any("truncated" in w for w in reader.warnings)
        got = [(m.topic, m.timestamp) for m in reader.messages()]
        result = reader.result()
    assert got == recorded(records)[:20] and result.announced is None and result.complete


def test_truncated_mcap_without_a_complete_message_is_corrupt(tmp_path) -> None:
    path = write_bag(tmp_path / "full", sample_records(n_images=4), storage="mcap")  # one chunk
    with pytest.raises(CorruptBagError, match="truncated"):
        open_bag(cut(path, tmp_path / "cut", fraction=0.5))


def test_truncated_sqlite_is_a_named_error(tmp_path) -> None:
    path = write_bag(tmp_path / "full", sample_records(n_images=12, width=320, height=240), storage="sqlite3")
    with pytest.raises(CorruptBagError, match="cut") as info, \
            BagReader(cut(path, tmp_path / "cut", fraction=0.5)) as reader:
        list(reader.messages())
    assert "\n" not in str(info.value)


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
