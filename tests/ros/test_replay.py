"""`magma-ros replay` and the bag player over real DDS: order, content, /clock, rate, errors."""

from __future__ import annotations

import itertools
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from geometry_msgs.msg import PoseStamped
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from magma_ros import contract
from magma_ros.bags import BagReader, write_bag
from magma_ros.ros.bag_player import BagPlayer, ReplayOptions, restamp_cdr
from tests.bag_fixtures import (
    SERVICE_EVENT_TOPIC,
    T0,
    UNKNOWN_TOPIC,
    add_chunk_crcs,
    copy,
    custom_typestore,
    cut,
    flip,
    image_bytes,
    mcap_chunks,
    sample_records,
    storage_file,
    talker_records,
    write_qos_bag,
    write_records,
    write_service_event_bag,
    write_split_bag,
)
from tests.ros.harness import VENV_BIN, RosGraph, wait_for

REMAPPED_IMAGE = "/replayed/image"


def ns(stamp: Any) -> int:
    return stamp.sec * 10**9 + stamp.nanosec


def timed_collect(graph: RosGraph, node: Any, msg_type: type, topic: str, qos_name: str) -> list[tuple[float, Any]]:
    """Subscribe; returns the list (monotonic receive time, message) pairs are appended to."""
    from magma_ros.ros.runtime import qos

    received: list[tuple[float, Any]] = []
    lock = threading.Lock()

    def callback(msg: Any) -> None:
        with lock:
            received.append((time.monotonic(), msg))

    node.create_subscription(msg_type, topic, callback, qos(qos_name))
    return received


def deep_collect(node: Any, msg_type: type, topic: str, reliable: bool = True) -> list[Any]:
    """Subscribe with a deep reader queue: a Python test process on a busy 2-core machine can stall
    for longer than the contract's 5-10 message queues last; the player must not be blamed for that."""
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    received: list[Any] = []
    profile = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=500,
                         reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
    node.create_subscription(msg_type, topic, received.append, profile)
    return received


def start_player(graph: RosGraph, bag_path: Path, node_name: str = "bag_player",
                 **options: Any) -> tuple[BagPlayer, BagReader, list[str]]:
    lines: list[str] = []
    bag = BagReader(bag_path).open()
    player = BagPlayer(bag, ReplayOptions(**options), report=lines.append, node_name=node_name,
                       context=graph.context)
    graph.add(player)
    player.start()
    return player, bag, lines


def check_clock(clocks: list[Any], first_ns: int, last_ns: int) -> None:
    stamps = [ns(c.clock) for c in clocks]
    assert stamps, "no /clock received"
    assert all(a < b for a, b in itertools.pairwise(stamps)), "/clock went backwards"
    assert first_ns <= stamps[0] and stamps[-1] <= last_ns
    assert stamps[-1] >= last_ns - 25_000_000, (stamps[-1], last_ns)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_cli_replays_every_message_in_order_with_clock(graph: RosGraph, spawn, tmp_path: Path, storage: str) -> None:
    records = sample_records(n_images=20, image_hz=20.0, joint_hz=40.0, unknown_type=True,
                             typestore=custom_typestore())
    bag = write_bag(tmp_path / "episode", records, storage=storage, typestore=custom_typestore())
    probe = graph.node("probe")
    images = deep_collect(probe, Image, contract.CAMERA_IMAGE.name, reliable=False)
    instructions = graph.collect(probe, String, contract.INSTRUCTION.name, "latched")
    joints = deep_collect(probe, JointState, contract.JOINT_STATES.name)
    poses = deep_collect(probe, PoseStamped, contract.EE_POSE.name)
    clocks = deep_collect(probe, Clock, contract.CLOCK.name)
    replay = spawn("magma-ros", "replay", str(bag), "--rate", "2", "--wait-for-subscribers", "10",
                   "--delay", "0.5", "--progress", "0.2")
    assert wait_for(lambda: not replay.alive(), 60), replay.output()
    assert replay.proc.returncode == 0, replay.output()
    assert wait_for(lambda: len(joints) == 40 and len(poses) == 20 and len(images) == 20, 5) or (
        len(joints) == 40 and len(poses) == 20 and len(images) >= 16), (len(images), len(joints), len(poses),
                                                                         replay.output())

    expected = {topic: [stamp for t, _, stamp, _ in records if t == topic]
                for topic in (contract.CAMERA_IMAGE.name, contract.JOINT_STATES.name, contract.EE_POSE.name)}
    # Camera frames go best-effort (sensor-data QoS, as from a driver): a loaded machine may lose a
    # few on the subscriber's side; what arrives must be recorded frames, in order, intact.
    image_stamps = [ns(m.header.stamp) for m in images]
    assert image_stamps == sorted(image_stamps) and set(image_stamps) <= set(expected[contract.CAMERA_IMAGE.name])
    assert [ns(m.header.stamp) for m in joints] == expected[contract.JOINT_STATES.name]
    assert [ns(m.header.stamp) for m in poses] == expected[contract.EE_POSE.name]
    index = {stamp: i for i, stamp in enumerate(expected[contract.CAMERA_IMAGE.name])}
    assert [bytes(m.data) for m in images] == [image_bytes(index[ns(m.header.stamp)], 64, 48) for m in images]
    assert images[0].encoding == "rgb8" and images[0].header.frame_id == "camera_color_optical_frame"
    assert [m.pose.position.x for m in poses] == [float(i) for i in range(20)]
    assert [list(m.position) for m in joints[:2]] == [[0.0, -0.0], [0.01, -0.01]]
    assert [m.data for m in instructions] == ["pick up the red cube"]
    wait_for(lambda: bool(clocks) and ns(clocks[-1].clock) >= records[-1][2] - 25_000_000, 5)
    check_clock(clocks, records[0][2], records[-1][2])
    output = replay.output()
    assert UNKNOWN_TOPIC in output and "not importable" in output
    assert "%" in output and "msg/s" in output and "replay: done" in output


def test_topic_filter_and_remap_in_process(graph: RosGraph, tmp_path: Path) -> None:
    records = sample_records(n_images=10, image_hz=20.0)
    bag_path = write_bag(tmp_path / "episode", records, storage="sqlite3")
    probe = graph.node("probe")
    remapped = deep_collect(probe, Image, REMAPPED_IMAGE, reliable=False)
    original = graph.collect(probe, Image, contract.CAMERA_IMAGE.name, "sensor_data")
    joints = graph.collect(probe, JointState, contract.JOINT_STATES.name)
    clocks = graph.collect(probe, Clock, contract.CLOCK.name)
    player, bag, lines = start_player(graph, bag_path, rate=4.0, wait_for_subscribers_s=10.0,
                                      topics=(contract.CAMERA_IMAGE.name,),
                                      remap={contract.CAMERA_IMAGE.name: REMAPPED_IMAGE})
    with bag:
        assert wait_for(player.finished.is_set, 30), lines
        assert player.failure is None
        assert wait_for(lambda: len(remapped) == 10, 5), len(remapped)
    assert [bytes(m.data) for m in remapped] == [image_bytes(i, 64, 48) for i in range(10)]
    assert original == [] and joints == []
    assert player.stats.per_topic == {REMAPPED_IMAGE: 10}
    image_stamps = [s for t, _, s, _ in records if t == contract.CAMERA_IMAGE.name]
    check_clock(clocks, records[0][2], image_stamps[-1])


def playback_seconds(graph: RosGraph, bag_path: Path, rate: float, name: str) -> float:
    probe = graph.node(f"probe_{name}")
    received = timed_collect(graph, probe, JointState, contract.JOINT_STATES.name, "reliable")
    player, bag, lines = start_player(graph, bag_path, rate=rate, wait_for_subscribers_s=10.0,
                                      topics=(contract.JOINT_STATES.name,), node_name=f"player_{name}")
    with bag:
        assert wait_for(player.finished.is_set, 30), lines
    assert wait_for(lambda: len(received) == 30, 5), len(received)
    return received[-1][0] - received[0][0]


def test_rate_two_takes_about_half_the_time(graph: RosGraph, tmp_path: Path) -> None:
    # 30 joint states 50 ms apart: 1.45 s of recording.
    bag_path = write_bag(tmp_path / "joints", sample_records(n_images=30, image_hz=20.0, joint_hz=20.0))
    at_1 = playback_seconds(graph, bag_path, 1.0, "x1")
    at_2 = playback_seconds(graph, bag_path, 2.0, "x2")
    assert 1.3 <= at_1 <= 2.5, at_1  # loose: a shared 2-core machine
    assert 0.35 <= at_2 / at_1 <= 0.7, (at_1, at_2)


def test_loop_from_start_offset_restarts_messages_and_clock(graph: RosGraph, tmp_path: Path) -> None:
    bag_path = write_bag(tmp_path / "joints", sample_records(n_images=10, image_hz=10.0, joint_hz=10.0))
    probe = graph.node("probe")
    joints = graph.collect(probe, JointState, contract.JOINT_STATES.name)
    clocks = graph.collect(probe, Clock, contract.CLOCK.name)
    player, bag, lines = start_player(graph, bag_path, rate=4.0, loop=True, start_offset_s=0.5,
                                      wait_for_subscribers_s=10.0, topics=(contract.JOINT_STATES.name,))
    with bag:
        assert wait_for(lambda: len(joints) >= 12, 20), (len(joints), lines)
        player.stop()
    ks = [round(m.position[0] / 0.01) for m in joints[:12]]
    assert ks == [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6]
    stamps = [ns(c.clock) for c in clocks]
    assert min(stamps) >= T0 + 500_000_000
    assert any(b < a for a, b in itertools.pairwise(stamps)), "clock did not jump back on loop"
    assert player.stats.passes >= 2


def test_restamp_sets_header_stamps_to_now_and_keeps_content(graph: RosGraph, tmp_path: Path) -> None:
    records = sample_records(n_images=10)
    bag_path = write_bag(tmp_path / "episode", records)
    probe = graph.node("probe")
    poses = deep_collect(probe, PoseStamped, contract.EE_POSE.name)
    instructions = graph.collect(probe, String, contract.INSTRUCTION.name, "latched")
    before = time.time_ns()
    player, bag, lines = start_player(graph, bag_path, rate=0.0, restamp=True, clock=False,
                                      wait_for_subscribers_s=10.0,
                                      topics=(contract.EE_POSE.name, contract.INSTRUCTION.name))
    with bag:
        assert wait_for(player.finished.is_set, 30), lines
        assert wait_for(lambda: len(poses) == 10 and len(instructions) == 1, 5), len(poses)
    after = time.time_ns()
    assert all(before <= ns(m.header.stamp) <= after for m in poses)
    assert [m.pose.position.x for m in poses] == [float(i) for i in range(10)]
    assert poses[0].header.frame_id == "base_link"
    assert instructions[0].data == "pick up the red cube"


def test_restamp_cdr_patches_only_the_stamp() -> None:
    from rclpy.serialization import deserialize_message, serialize_message
    from std_msgs.msg import Header

    raw = serialize_message(Header(frame_id="cam"))
    msg = deserialize_message(restamp_cdr(raw, 1_234_567_890_123_456_789), Header)
    assert (msg.stamp.sec, msg.stamp.nanosec, msg.frame_id) == (1_234_567_890, 123_456_789, "cam")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "magma-ros"), "replay", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bags")
    records = sample_records(n_images=12, width=320, height=240)
    full = {s: write_bag(root / s, records, storage=s) for s in ("mcap", "sqlite3")}
    garbage = root / "garbage.mcap"
    garbage.write_bytes(b"not a bag" * 100)
    return {
        "good": full["mcap"],
        "missing": root / "no_such_bag",
        "garbage": garbage,
        "mcap_cut_in_first_chunk": cut(full["mcap"], root / "mcap_cut", keep=2000),
        "sqlite_cut": cut(full["sqlite3"], root / "sqlite_cut", fraction=0.5),
        "sqlite_cut_tail": cut(full["sqlite3"], root / "sqlite_cut_tail", fraction=0.999),
        "mcap_cut_repairable": cut(full["mcap"], root / "mcap_cut_late", fraction=0.6),
    }


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines()
            if line.startswith("magma-ros replay:") and not line.startswith("magma-ros replay: warning:")]


@pytest.mark.parametrize("name, message", [("missing", "bag not found"), ("garbage", "cannot read bag"),
                                           ("mcap_cut_in_first_chunk", "holds no complete message"),
                                           ("sqlite_cut", "malformed"),
                                           ("sqlite_cut_tail", "unreadable: 4 messages: sqlite3.db3 breaks after")])
def test_bad_bags_fail_with_one_line_and_no_traceback(bags: dict[str, Path], name: str, message: str) -> None:
    result = run_cli(str(bags[name]), "--rate", "0", "--clock-hz", "1000")
    assert result.returncode == 1, result.stdout + result.stderr
    errors = error_lines(result)
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_cut_mcap_plays_its_readable_part_then_says_how_many_are_missing(bags: dict[str, Path]) -> None:
    """metadata.yaml announces 55: playing 20 of them is not what was asked for (exit 1, one line)."""
    path = bags["mcap_cut_repairable"]
    result = run_cli(str(path), "--rate", "0")
    assert result.returncode == 1, result.stdout + result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("magma-ros replay: warning:")]
    assert len(warnings) == 1 and "truncated" in warnings[0], result.stderr
    assert error_lines(result) == [
        f"magma-ros replay: bag {path}: read 20 of 55 messages (metadata.yaml announces 55, the storage files hold "
        "20); 35 unreadable: 35 announced but not in the storage files (mcap.mcap is truncated (recording "
        "interrupted?); read up to its last complete record (byte 1156654 of 1666943))"], result.stderr
    assert "replay: failed | 20 msgs" in result.stdout


def test_cut_mcap_without_metadata_plays_what_there_is_with_a_warning(bags: dict[str, Path], tmp_path: Path) -> None:
    """A recorder killed mid-write leaves no metadata.yaml: nothing announced more than the file holds."""
    path = copy(bags["mcap_cut_repairable"], tmp_path / "unclosed")
    (path / "metadata.yaml").unlink()
    result = run_cli(str(path), "--rate", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("magma-ros replay: warning:")]
    assert len(warnings) == 2 and "metadata.yaml missing" in warnings[0] and "truncated" in warnings[1]
    assert "replay: done | 20 msgs" in result.stdout
    assert f"magma-ros replay: bag {path}: read 20 of 20 messages\n" in result.stdout  # all the file holds


def test_damaged_chunk_is_played_around_then_reported(tmp_path: Path) -> None:
    records = sample_records(n_images=12, width=320, height=240)
    path = write_records(tmp_path / "zstd", records, compression="chunks")
    add_chunk_crcs(storage_file(path))
    chunk = mcap_chunks(storage_file(path))[1]
    flip(storage_file(path), chunk.data_offset + chunk.data_size // 2, 0xFF)
    result = run_cli(str(path), "--rate", "0")
    assert result.returncode == 1, result.stdout + result.stderr
    assert error_lines(result) == [
        f"magma-ros replay: bag {path}: read 32 of 55 messages announced by metadata.yaml; 23 unreadable: "
        f"23 messages: zstd.mcap chunk at byte {chunk.offset} is damaged (Unable to decompress Zstandard data: "
        "Data corruption detected)"], result.stderr
    assert "replay: failed | 32 msgs" in result.stdout and "Traceback" not in result.stderr


EPISODE_TOPICS = {contract.INSTRUCTION.name: (String, 1), contract.CAMERA_IMAGE.name: (Image, 12),
                  contract.JOINT_STATES.name: (JointState, 30), contract.EE_POSE.name: (PoseStamped, 12)}


def play_all(graph: RosGraph, spawn, path: Path, expect: dict[str, tuple[type, int]], *args: str) -> str:
    """Run `magma-ros replay` on a bag; every expected topic must deliver its count, exit 0.

    Camera frames go best effort (sensor-data QoS): they are subscribed (the player waits for a
    subscriber on every topic) but not counted, as a loaded machine may drop some on our side."""
    probe = graph.node("probe")
    received = {topic: deep_collect(probe, cls, topic, reliable=topic != contract.CAMERA_IMAGE.name)
                for topic, (cls, _) in expect.items()}
    expect = {t: e for t, e in expect.items() if t != contract.CAMERA_IMAGE.name}
    replay = spawn("magma-ros", "replay", str(path), "--rate", "4", "--wait-for-subscribers", "10", "--progress",
                   "0", *args)
    assert wait_for(lambda: not replay.alive(), 60), replay.output()
    assert replay.proc.returncode == 0, replay.output()
    assert wait_for(lambda: all(len(received[t]) == n for t, (_, n) in expect.items()), 5), (
        {t: len(m) for t, m in received.items()}, replay.output())
    return replay.output()


def test_cli_plays_every_message_of_a_split_bag_whose_metadata_starts_late(graph: RosGraph, spawn,
                                                                          tmp_path: Path) -> None:
    records = sample_records(n_images=12)
    path = write_split_bag(tmp_path / "wbag", records, "mcap", parts=3)  # starting_time: the last file's
    output = play_all(graph, spawn, path, EPISODE_TOPICS)
    assert "(mcap, 3 file(s), 55 msgs, metadata.yaml announces 55," in output
    assert "replay: done | 55 msgs" in output
    assert f"magma-ros replay: bag {path}: read 55 of 55 messages announced by metadata.yaml" in output


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_cli_plays_all_20_of_a_talker_bag_whose_qos_differs(graph: RosGraph, spawn, tmp_path: Path,
                                                            storage: str) -> None:
    path = write_qos_bag(tmp_path / "talker", talker_records(20), storage)
    output = play_all(graph, spawn, path, {"/chatter": (String, 20)})
    assert f"magma-ros replay: bag {path}: read 20 of 20 messages announced by metadata.yaml" in output


def test_cli_plays_a_zstd_file_compressed_sqlite_bag(graph: RosGraph, spawn, tmp_path: Path) -> None:
    path = write_records(tmp_path / "compressed", sample_records(n_images=12), "sqlite3", compression="file")
    output = play_all(graph, spawn, path, EPISODE_TOPICS)
    assert f"magma-ros replay: bag {path}: read 55 of 55 messages announced by metadata.yaml" in output


def test_cli_skips_service_events_once_and_refuses_them_by_name(graph: RosGraph, spawn, tmp_path: Path) -> None:
    path = write_service_event_bag(tmp_path / "jazzy", sample_records(n_images=12), "mcap", events=4)
    output = play_all(graph, spawn, path, EPISODE_TOPICS)
    skips = [line for line in output.splitlines() if "cannot be decoded" in line]
    assert len(skips) == 1 and f"{SERVICE_EVENT_TOPIC}: 4 messages skipped" in skips[0], output
    # said once (above); the account covers the topics played: all of theirs
    assert f"magma-ros replay: bag {path}: read 55 of 55 messages announced by metadata.yaml\n" in output
    asked = run_cli(str(path), "--topics", SERVICE_EVENT_TOPIC, contract.JOINT_STATES.name)
    assert asked.returncode == 2 and error_lines(asked) == [
        f"magma-ros replay: cannot play requested topic(s): {SERVICE_EVENT_TOPIC} (skipped, its type's stored "
        "definition is a service (.srv) one, which no message parser reads)"], asked.stderr


@pytest.mark.parametrize("args, message", [(("--rate", "-1"), "rate must be >= 0"),
                                           (("--remap", "nocolon"), "OLD:=NEW"),
                                           (("--topics", "/not/in/bag"), "nothing to play"),
                                           (("--start-offset", "100"), "past the end")])
def test_bad_options_exit_2_with_one_line(bags: dict[str, Path], tmp_path: Path, args: tuple[str, ...],
                                          message: str) -> None:
    result = run_cli(str(bags["good"]), *args)
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("magma-ros replay:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
