"""Bags written with rosbags in rosbag2's layouts, with the properties of rosbag2's own test bags.

ros2 bag / rosbag2_py cannot be installed here, so each property that broke a reader
on rosbag2-written bags is reproduced on a bag written with the rosbags library:

- :func:`write_split_bag`: several storage files in one bag (``name_0.mcap``, ``name_1.mcap``,
  metadata.yaml listing them with per-file counts), as ``ros2 bag record --max-bag-size``;
- :func:`set_starting_time`: metadata.yaml's ``starting_time`` later than the first stored
  message (rosbag2_py's split bag, a reindexed message-compressed bag);
- :func:`write_qos_bag`: metadata.yaml and storage QoS that differ only in deadline/lifespan
  (rosbag2_py's 'talker' bags);
- :func:`write_records` with ``compression="file"`` / ``"message"`` / ``"chunks"``: zstd file
  compression (``*.mcap.zstd``), per-message compression, zstd-compressed mcap chunks;
- :func:`write_service_event_bag`: Jazzy service-event topics (``.../srv/X_Event``) whose stored
  definition is the .srv text, which no msg parser accepts;
- :func:`add_chunk_crcs`, :func:`mcap_chunks`, :func:`flip`, :func:`cut`: mcap chunk checksums as
  rosbag2's mcap writer sets them, and byte damage at chosen places.

Shared by tests/test_bags.py, tests/test_bag_compat.py, tests/ros/test_replay.py and the
dataset tests.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from backports import zstd
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode
from ruamel.yaml import YAML

from magma_ros import contract
from magma_ros.bags import STORAGES as STORAGE_PLUGINS
from magma_ros.bags import typestore_for

T0 = 1_700_000_000 * 10**9          # recording start (ns since the epoch)
STORAGES = ("mcap", "sqlite3")
SUFFIX = {"mcap": ".mcap", "sqlite3": ".db3"}
UNKNOWN_TOPIC, UNKNOWN_TYPE = "/acme/widget", "acme_msgs/msg/Widget"
SERVICE_EVENT_TOPIC = "/add_two_ints/_service_event"
SERVICE_EVENT_TYPE = "example_interfaces/srv/AddTwoInts_Event"
# What Jazzy's rosbag2 stores as the "message definition" of a service event type: the .srv file.
SERVICE_EVENT_DEFINITION = "int64 a\nint64 b\n---\nint64 sum\n"

Record = tuple[str, str, int, Any]


# ------------------------------------------------------------------------------ records
def image_bytes(index: int, width: int, height: int) -> bytes:
    """A frame whose every byte depends on the frame index (content checks)."""
    return ((np.arange(width * height * 3, dtype=np.uint32) + index * 7) % 251).astype(np.uint8).tobytes()


def sample_records(n_images: int = 20, image_hz: float = 20.0, width: int = 64, height: int = 48,
                   joint_hz: float = 50.0, unknown_type: bool = False, typestore: Any = None,
                   ) -> list[Record]:
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
    records: list[Record] = [(contract.INSTRUCTION.name, contract.INSTRUCTION.type, T0, instruction)]
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


def talker_records(n: int = 20, hz: float = 10.0, topic: str = "/chatter") -> list[Record]:
    """rosbag2's 'talker' bags: std_msgs/String 'Hello World: k' at 10 Hz."""
    string = typestore_for("kilted").types["std_msgs/msg/String"]
    return [(topic, "std_msgs/msg/String", T0 + int(k / hz * 1e9), string(data=f"Hello World: {k + 1}"))
            for k in range(n)]


def custom_typestore() -> Any:
    """The Kilted typestore plus a type no ROS install here has (to exercise 'skipped' paths)."""
    from rosbags.typesys import get_types_from_msg

    ts = typestore_for("kilted")
    ts.register(get_types_from_msg("uint32 size", UNKNOWN_TYPE))
    return ts


def recorded(records: Sequence[Record]) -> list[tuple[str, int]]:
    return [(topic, stamp) for topic, _, stamp, _ in records]


# ------------------------------------------------------------------------------ writing
ZERO_TIME = QosTime(0, 0)


def qos_profile(deadline: QosTime = ZERO_TIME, lifespan: QosTime = ZERO_TIME, reliable: bool = True) -> Qos:
    return Qos(QosHistory.KEEP_LAST, 10, QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               QosDurability.VOLATILE, deadline, lifespan, QosLiveliness.AUTOMATIC, QosTime(0, 0), False)


class Definition(NamedTuple):
    """A connection written with an explicit stored definition (msgdef text, RIHS01 hash)."""

    msgdef: str
    rihs01: str


def write_records(path: Path, records: Sequence[Record], storage: str = "mcap", typestore: Any = None,
                  compression: str = "", qos: dict[str, list[Qos]] | None = None,
                  definitions: dict[str, Definition] | None = None) -> Path:
    """A bag directory in rosbag2's layout (rosbags' Writer), with the rosbag2 options given.

    ``compression``: '' none, 'file' (zstd, ``*.mcap.zstd``), 'message' (zstd per message),
    'chunks' (mcap chunks zstd-compressed, as rosbag2's mcap storage presets do).
    ``qos``: offered QoS profiles per topic. ``definitions``: stored definitions per type
    instead of the typestore's.
    """
    ts = typestore or typestore_for("kilted")
    writer = Writer(path, version=9, storage_plugin=STORAGE_PLUGINS[storage])
    modes = {"file": CompressionMode.FILE, "message": CompressionMode.MESSAGE, "chunks": CompressionMode.STORAGE}
    if compression:
        writer.set_compression(modes[compression], CompressionFormat.ZSTD)
    connections: dict[tuple[str, str], Any] = {}
    with writer:
        for topic, msgtype, stamp, message in records:
            key = (topic, msgtype)
            if key not in connections:
                extra = definitions.get(msgtype) if definitions else None
                kwargs: dict[str, Any] = {"msgdef": extra.msgdef, "rihs01": extra.rihs01} if extra else \
                    {"typestore": ts}
                connections[key] = writer.add_connection(topic, msgtype, offered_qos_profiles=(qos or {}).get(
                    topic, ()), **kwargs)
            data = message if isinstance(message, (bytes, bytearray)) else ts.serialize_cdr(message, msgtype)
            writer.write(connections[key], stamp, bytes(data))
    return path


def load_metadata(bag: Path) -> dict[str, Any]:
    return YAML(typ="safe").load((bag / "metadata.yaml").read_text())


def save_metadata(bag: Path, doc: dict[str, Any]) -> None:
    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    with (bag / "metadata.yaml").open("w") as f:
        yaml.dump(doc, f)


def edit_metadata(bag: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """Apply ``change`` to metadata.yaml's rosbag2_bagfile_information."""
    doc = load_metadata(bag)
    change(doc["rosbag2_bagfile_information"])
    save_metadata(bag, doc)
    return bag


def set_starting_time(bag: Path, stamp_ns: int) -> Path:
    """metadata.yaml announces the recording starting at ``stamp_ns`` (its end unchanged)."""
    def change(info: dict[str, Any]) -> None:
        end = info["starting_time"]["nanoseconds_since_epoch"] + info["duration"]["nanoseconds"]
        info["starting_time"]["nanoseconds_since_epoch"] = stamp_ns
        info["duration"]["nanoseconds"] = max(0, end - stamp_ns)
    return edit_metadata(bag, change)


def write_split_bag(path: Path, records: Sequence[Record], storage: str = "mcap", parts: int = 3,
                    start_from_last_file: bool = True, **options: Any) -> Path:
    """A bag of ``parts`` storage files (``<name>_<i>.<ext>``) in time order, as a size-split recording.

    With ``start_from_last_file`` metadata.yaml's starting_time is the last file's (the
    property of rosbag2_py's split test bag); per-file entries keep each file's own.
    """
    records = list(records)
    bounds = [round(i * len(records) / parts) for i in range(parts + 1)]
    path.mkdir()
    info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(parts):
            part = write_records(Path(tmp) / f"part{i}", records[bounds[i]:bounds[i + 1]], storage, **options)
            meta = load_metadata(part)["rosbag2_bagfile_information"]
            (stored,) = meta["relative_file_paths"]
            name = f"{path.name}_{i}{stored[stored.index('.'):]}"
            shutil.move(part / stored, path / name)
            meta["files"][0]["path"] = name
            if not info:
                info = meta
                info["relative_file_paths"], info["files"] = [name], meta["files"]
                continue
            info["relative_file_paths"].append(name)
            info["files"] += meta["files"]
            info["message_count"] += meta["message_count"]
            counts = {(t["topic_metadata"]["name"], t["topic_metadata"]["type"]): t for t in
                      info["topics_with_message_count"]}
            for entry in meta["topics_with_message_count"]:
                key = (entry["topic_metadata"]["name"], entry["topic_metadata"]["type"])
                if key in counts:
                    counts[key]["message_count"] += entry["message_count"]
                else:
                    info["topics_with_message_count"].append(entry)
    first = info["files"][0]["starting_time"]["nanoseconds_since_epoch"]
    last = info["files"][-1]
    end = last["starting_time"]["nanoseconds_since_epoch"] + last["duration"]["nanoseconds"]
    start = last["starting_time"]["nanoseconds_since_epoch"] if start_from_last_file else first
    info["starting_time"] = {"nanoseconds_since_epoch": start}
    info["duration"] = {"nanoseconds": end - start}
    save_metadata(path, {"rosbag2_bagfile_information": info})
    return path


def write_qos_bag(path: Path, records: Sequence[Record], storage: str = "mcap") -> Path:
    """Storage and metadata.yaml QoS that differ only in deadline and lifespan ('talker' bags).

    rosbag2 records the publisher's offered QoS in the storage file and writes
    metadata.yaml from its own copy; the two disagree on deadline/lifespan.
    """
    topics = {topic for topic, _, _, _ in records}
    stored = {t: [qos_profile()] for t in topics}
    write_records(path, records, storage, qos=stored)
    infinite = {"sec": 9223372036, "nsec": 854775807}

    def change(info: dict[str, Any]) -> None:
        for entry in info["topics_with_message_count"]:
            profiles = entry["topic_metadata"]["offered_qos_profiles"]
            if isinstance(profiles, str):  # version 8 writes a YAML string
                profiles = YAML(typ="safe").load(profiles)
            for profile in profiles:
                profile["deadline"], profile["lifespan"] = dict(infinite), dict(infinite)
            entry["topic_metadata"]["offered_qos_profiles"] = profiles
    return edit_metadata(path, change)


def write_service_event_bag(path: Path, records: Sequence[Record], storage: str = "mcap",
                            events: int = 4) -> Path:
    """A Jazzy-era bag: ``records`` plus ``events`` service-event messages whose stored definition is
    the .srv text (rosbag2 stores that for ``.../srv/X_Event`` types; no msg parser accepts it)."""
    event_records = [(SERVICE_EVENT_TOPIC, SERVICE_EVENT_TYPE, T0 + 7000 + k * 1_000_000,
                      b"\x00\x01\x00\x00" + struct.pack("<qq", k, 2 * k)) for k in range(events)]
    definitions = {SERVICE_EVENT_TYPE: Definition(SERVICE_EVENT_DEFINITION, "RIHS01_" + "ab" * 32)}
    return write_records(path, sorted([*records, *event_records], key=lambda r: r[2]), storage,
                         definitions=definitions)


# ------------------------------------------------------------------------------ damage
class Chunk(NamedTuple):
    """One chunk record of an mcap file: where it is, its compression, where its payload is."""

    offset: int            # the record's opcode byte
    length: int            # the record body's length
    compression: str
    data_offset: int       # first byte of the (compressed) records
    data_size: int
    uncompressed_size: int


def storage_file(bag: Path) -> Path:
    (storage,) = [p for p in bag.iterdir() if p.name != "metadata.yaml"]
    return storage


def mcap_chunks(path: Path) -> list[Chunk]:
    """The chunk records of an mcap file, walking its data section."""
    data = path.read_bytes()
    chunks, pos = [], 8
    while pos + 9 <= len(data):
        opcode, length = data[pos], int.from_bytes(data[pos + 1:pos + 9], "little")
        if opcode == 0x0F:  # DataEnd
            break
        if opcode == 0x06:
            body = pos + 9
            _, _, usize, _, clen = struct.unpack_from("<QQQII", data, body)
            compression = data[body + 32:body + 32 + clen].decode()
            (csize,) = struct.unpack_from("<Q", data, body + 32 + clen)
            chunks.append(Chunk(pos, length, compression, body + 40 + clen, csize, usize))
        pos += 9 + length
    return chunks


def add_chunk_crcs(path: Path) -> Path:
    """Set every chunk's CRC32 of its uncompressed records, as rosbag2's mcap writer does."""
    data = path.read_bytes()
    with path.open("r+b") as f:
        for chunk in mcap_chunks(path):
            payload = data[chunk.data_offset:chunk.data_offset + chunk.data_size]
            raw = zstd.decompress(payload) if chunk.compression == "zstd" else payload
            f.seek(chunk.offset + 9 + 24)
            f.write(struct.pack("<I", crc32(raw)))
    return path


def flip(path: Path, offset: int, mask: int = 0xFF) -> Path:
    """XOR one byte of a file in place."""
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ mask]))
    return path


def cut(source: Path, target: Path, fraction: float | None = None, keep: int | None = None) -> Path:
    """Copy a bag directory with its storage file truncated (to a fraction or a byte count)."""
    shutil.copytree(source, target)
    storage = storage_file(target)
    data = storage.read_bytes()
    storage.write_bytes(data[: keep if keep is not None else int(len(data) * (fraction or 0))])
    return target


def copy(source: Path, target: Path) -> Path:
    return Path(shutil.copytree(source, target))


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def chunk_counts(path: Path) -> list[tuple[int, int]]:
    """(chunk offset, messages in it) of an intact mcap file, from its chunk index (rosbags' reader)."""
    from rosbags.rosbag2.storage_mcap import McapReader

    reader = McapReader(path)
    reader.open()
    try:
        return [(c.chunk_start_offset, sum(c.channel_count.values())) for c in reader.chunks]
    finally:
        reader.close()
