"""One recorded episode (a rosbag2 + its metadata) -> training steps at the spec's control rate.

How a bag becomes steps (``DatasetSpec`` names the topics):

1. **Step times.** Camera frames are resampled to the control rate: a frame becomes a step
   when it is at least 0.9 step periods after the previous step (so a 30 Hz camera and a 10 Hz
   spec keep every third frame, and stamp jitter never skips one). The step's time is the
   frame's stamp (header stamp, or the bag's recording time with ``alignment.stamps: recorded``).
2. **Alignment.** Every other input at a step time ``t`` is its nearest earlier sample, at most
   ``alignment.max_skew_s`` old. A step whose state at ``t`` or at ``t + T`` (``T``: step period)
   is missing or too old is dropped and counted (``no_state``), as is one whose frame does not
   decode (``bad_image``). State samples with a non-finite pose are dropped on reading
   (``bad_pose``) and so never become steps.
3. **Labels.** ``action[:6]`` = the EE motion from ``t`` to ``t + T`` in the base frame
   (:func:`magma_ros.conventions.pose_deltas`: translation difference and the relative rotation
   in the spec's ``rotation_convention``); ``action[6]`` = the gripper opening commanded during
   the step (the latest command stamped before ``t + T``; for a finger joint source, the
   opening reached at ``t + T`` with hysteresis). ``state`` = the pose at ``t`` (xyz, extrinsic
   rpy) and the gripper opening at ``t``.

Bags are read through :mod:`magma_ros.bags`: a bag that cannot be read completely (truncated,
corrupt, a damaged chunk) raises :class:`EpisodeError` with one line saying why, so the
builder skips it rather than train on a silently shortened episode. ROS-free.
"""

from __future__ import annotations

import bisect
import functools
import math
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.serde import SerdeError

from magma_ros.bags import BagConnection, BagError, BagMessage, BagReader, typestore_for
from magma_ros.conventions import EpisodeMetadata, gripper_command, pose_deltas, quat_to_rpy
from magma_ros.training.records import DatasetError
from magma_ros.training.spec import DatasetSpec

__all__ = ["Episode", "EpisodeError", "MessageLog", "episode_from_messages", "episode_id_for", "find_bags",
           "read_episode"]

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
_STANDARD_TYPES = frozenset({
    *IMAGE_TYPES, "geometry_msgs/msg/PoseStamped", "tf2_msgs/msg/TFMessage", "sensor_msgs/msg/JointState",
    "trajectory_msgs/msg/JointTrajectory", "std_msgs/msg/String", "std_msgs/msg/Bool", "std_msgs/msg/Float32",
    "std_msgs/msg/Float64"})
"""Types whose definition is the same in every supported distro: decoded with one process-wide typestore,
so their deserializers are generated once per process, not once per bag."""
_STEP_FRACTION = 0.9
_STORAGE_SUFFIXES = (".mcap", ".db3", ".zstd")


class EpisodeError(DatasetError):
    """A recording cannot become an episode (unreadable, incomplete, lacks a topic...); one line why."""


@dataclass
class Episode:
    """The steps of one episode, ready for :class:`~magma_ros.training.dataset.DatasetWriter`.

    ``images`` are (H, W, 3) uint8 RGB, already resized to the spec's size. ``dropped`` counts
    steps (and samples) left out, by reason.
    """

    episode_id: str
    source: str
    stamps_ns: np.ndarray
    images: list[np.ndarray]
    actions: np.ndarray
    states: np.ndarray
    instructions: list[str]
    metadata: EpisodeMetadata
    dropped: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.stamps_ns)


# ------------------------------------------------------------------------------- discovery
def _is_bag(path: Path) -> bool:
    if path.is_file():
        return path.suffix in _STORAGE_SUFFIXES
    return path.is_dir() and ((path / "metadata.yaml").is_file()
                              or any(p.suffix in _STORAGE_SUFFIXES for p in path.iterdir() if p.is_file()))


def find_bags(paths: list[str | Path]) -> list[Path]:
    """Bags named on the command line: a bag directory or storage file, or a folder of bag directories."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise EpisodeError(f"no such bag or directory: {path}")
        if _is_bag(path):
            found.append(path)
            continue
        inner = sorted(p for p in path.rglob("*") if p.is_dir() and _is_bag(p))
        if not inner:
            raise EpisodeError(f"{path} holds no rosbag2 recording")
        found.extend(inner)
    unique: list[Path] = []
    for p in found:
        if p.resolve() not in {u.resolve() for u in unique}:
            unique.append(p)
    return unique


def episode_id_for(bag: Path) -> str:
    """A file-name-safe id from the bag's name (``episode_0003``, ``run7.mcap`` -> ``run7``)."""
    name = bag.name
    for suffix in (".zstd", ".mcap", ".db3"):
        name = name.removesuffix(suffix)
    safe = "".join(c if c.isalnum() or c in "_.-" else "_" for c in name).lstrip("._-")
    return safe or "episode"


# ----------------------------------------------------------------------------------- reading
class _Series:
    """Samples of one input, sorted by time: nearest-earlier lookups."""

    def __init__(self) -> None:
        self.stamps: list[int] = []
        self.values: list[Any] = []

    def add(self, stamp: int, value: Any) -> None:
        self.stamps.append(stamp)
        self.values.append(value)

    def sort(self) -> None:
        if any(b < a for a, b in zip(self.stamps, self.stamps[1:], strict=False)):
            order = sorted(range(len(self.stamps)), key=self.stamps.__getitem__)
            self.stamps = [self.stamps[i] for i in order]
            self.values = [self.values[i] for i in order]

    def at(self, t: int, max_age: int | None) -> Any:
        """Latest value stamped at or before ``t`` (no older than ``max_age`` ns when given); None if none."""
        i = bisect.bisect_right(self.stamps, t) - 1
        if i < 0 or (max_age is not None and t - self.stamps[i] > max_age):
            return None
        return self.values[i]

    def before(self, t: int) -> Any:
        """Latest value stamped strictly before ``t``; None if none."""
        i = bisect.bisect_left(self.stamps, t) - 1
        return self.values[i] if i >= 0 else None

    def __len__(self) -> int:
        return len(self.stamps)


@functools.lru_cache(maxsize=1)
def _standard_store() -> Any:
    return typestore_for("kilted")


def _decode(bag: BagReader, message: Any) -> Any:
    """A bag message decoded; standard types through the shared typestore (the bag's own on failure)."""
    if message.msgtype in _STANDARD_TYPES:
        try:
            return _standard_store().deserialize_cdr(message.data, message.msgtype)
        except (SerdeError, struct.error, ValueError, IndexError, KeyError):
            pass  # let the bag's typestore decode it, or say why it cannot
    return bag.deserialize(message)


def _ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _header_stamp(data: bytes) -> int:
    """Header stamp of a raw CDR message whose first field is a std_msgs/Header (offset 4)."""
    sec, nanosec = struct.unpack_from("<iI" if data[1] == 1 else ">iI", data, 4)
    return sec * 1_000_000_000 + nanosec


class _TfTree:
    """/tf and /tf_static edges, composed parent -> child on request (nearest earlier, within skew)."""

    def __init__(self) -> None:
        self.dynamic: dict[str, tuple[str, _Series]] = {}
        self.static: dict[str, tuple[str, np.ndarray, np.ndarray]] = {}

    def add(self, msg: Any, static: bool) -> None:
        for tf in msg.transforms:
            t, r = tf.transform.translation, tf.transform.rotation
            p, q = np.array([t.x, t.y, t.z]), np.array([r.x, r.y, r.z, r.w])
            child, parent = tf.child_frame_id.lstrip("/"), tf.header.frame_id.lstrip("/")
            if static:
                self.static[child] = (parent, p, q)
            else:
                entry = self.dynamic.setdefault(child, (parent, _Series()))
                entry[1].add(_ns(tf.header.stamp), (p, q))

    def sort(self) -> None:
        for _, series in self.dynamic.values():
            series.sort()

    def lookup(self, base: str, ee: str, t: int, max_age: int) -> tuple[np.ndarray, np.ndarray] | None:
        """base -> ee at ``t`` (ee pose in the base frame), None when a link is missing or too old."""
        from magma_ros.conventions import quat_multiply

        p, q = np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0])
        frame, hops = ee.lstrip("/"), 0
        base = base.lstrip("/")
        while frame != base:
            hops += 1
            if hops > 64:
                return None
            if frame in self.static:
                parent, pe, qe = self.static[frame]
            elif frame in self.dynamic:
                parent, series = self.dynamic[frame]
                sample = series.at(t, max_age)
                if sample is None:
                    return None
                pe, qe = sample
            else:
                return None
            # pose of the ee in parent = edge (parent <- frame) composed with the pose so far
            p = pe + _rotate(qe, p)
            q = quat_multiply(qe, q)
            frame = parent
        return p, q


def _rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    x, y, z, w = q
    u = np.array([x, y, z])
    return v + 2.0 * np.cross(u, np.cross(u, v) + w * v)


class _ForwardKinematics:
    """EE pose in the base link from joint positions, through the robot's URDF (pybullet, no GUI)."""

    def __init__(self, urdf: str, base_link: str, ee_link: str) -> None:
        import pybullet as pb

        self._pb = pb
        self._client = pb.connect(pb.DIRECT)
        try:
            self._body = pb.loadURDF(str(Path(urdf).expanduser()), useFixedBase=True, physicsClientId=self._client)
        except pb.error as err:
            self.close()
            raise EpisodeError(f"cannot load URDF {urdf}: {err}") from err
        root = pb.getBodyInfo(self._body, physicsClientId=self._client)[0].decode()
        links, self.joints, parents = {root: -1}, {}, {}
        for j in range(pb.getNumJoints(self._body, physicsClientId=self._client)):
            info = pb.getJointInfo(self._body, j, physicsClientId=self._client)
            links[info[12].decode()] = j
            parents[j] = info[16]
            if info[2] != pb.JOINT_FIXED:
                self.joints[info[1].decode()] = j
        for name in (base_link, ee_link):
            if name not in links:
                self.close()
                raise EpisodeError(f"URDF {urdf} has no link {name!r} (links: {', '.join(sorted(links))})")
        self._base, self._ee = links[base_link], links[ee_link]
        chain, link = set(), self._ee  # the joints that move the EE relative to the root
        while link != -1:
            chain.add(link)
            link = parents[link]
        self.chain_joints = [n for n, j in self.joints.items() if j in chain]

    def pose(self, positions: dict[str, float]) -> tuple[np.ndarray, np.ndarray] | None:
        pb = self._pb
        missing = [n for n in self.chain_joints if n not in positions]
        if missing:
            return None
        for name, index in self.joints.items():
            if name in positions:
                pb.resetJointState(self._body, index, positions[name], physicsClientId=self._client)
        ee_p, ee_q = self._world(self._ee)
        base_p, base_q = self._world(self._base)
        from magma_ros.conventions import quat_multiply

        inv_q = base_q * np.array([-1.0, -1.0, -1.0, 1.0])
        return _rotate(inv_q, ee_p - base_p), quat_multiply(inv_q, ee_q)

    def _world(self, link: int) -> tuple[np.ndarray, np.ndarray]:
        pb = self._pb
        if link == -1:  # pybullet reports the base's centre of mass: back to the URDF link frame
            from magma_ros.conventions import quat_multiply

            p, q = pb.getBasePositionAndOrientation(self._body, physicsClientId=self._client)
            info = pb.getDynamicsInfo(self._body, -1, physicsClientId=self._client)
            inertial_p, inertial_q = np.asarray(info[3], dtype=np.float64), np.asarray(info[4], dtype=np.float64)
            q_link = quat_multiply(np.asarray(q, dtype=np.float64), inertial_q * np.array([-1.0, -1.0, -1.0, 1.0]))
            return np.asarray(p, dtype=np.float64) - _rotate(q_link, inertial_p), q_link
        else:
            state = pb.getLinkState(self._body, link, computeForwardKinematics=True, physicsClientId=self._client)
            p, q = state[4], state[5]
        return np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)

    def close(self) -> None:
        if self._client >= 0:
            self._pb.disconnect(self._client)
            self._client = -1

    def __del__(self) -> None:  # an episode that fails part-way still frees its pybullet client
        self.close()


def _gripper_value(spec: DatasetSpec, msg: Any) -> float | None:
    """The opening (0..1) one gripper message says, or None when it does not name our joints."""
    g = spec.gripper
    if g.source == "command":
        if not msg.points:
            return None
        positions = list(msg.points[0].positions)
        names = list(msg.joint_names)
        if g.joints:
            picked = [positions[names.index(j)] for j in g.joints if j in names and names.index(j) < len(positions)]
            if not picked:
                return None
        else:
            picked = positions[:1]
        if not picked:
            return None
        value = sum(picked) if g.sum_joints else picked[0]
        return float(g.mapping.opening(value))
    if g.source == "joint_position":
        positions = dict(zip(msg.name, msg.position, strict=False))
        picked = [positions[j] for j in g.joints if j in positions]
        if len(picked) != len(g.joints):
            return None
        value = sum(picked) if g.sum_joints else picked[0]
        return float(g.mapping.opening(value))
    if g.source == "bool":
        return 1.0 if bool(msg.data) == g.open_value else 0.0
    return float(g.mapping.opening(float(msg.data)))


def read_episode(bag_path: str | Path, spec: DatasetSpec, episode_id: str | None = None,
                 keep_damaged: bool = False) -> Episode:
    """Read one bag into an :class:`Episode`; raises :class:`EpisodeError` (one line) when it can't."""
    bag_path = Path(bag_path).expanduser()
    episode_id = episode_id or episode_id_for(bag_path)
    metadata = EpisodeMetadata.read(bag_path if bag_path.is_dir() else bag_path.parent) or EpisodeMetadata()
    if spec.only_successful and metadata.success is False:
        raise EpisodeError(f"{bag_path}: unsuccessful episode (only_successful is set)")
    try:
        with BagReader(bag_path) as bag:
            # Streams skipped as a whole (e.g. service events) matter only when a topic we need is one;
            # any other degradation (a truncated mcap, a lost split file) means a short read: not used.
            skipped = [f"{u.topic}: {u.reason}" for u in bag.skipped if u.topic in _needed_topics(spec)]
            degraded = [w for w in bag.warnings if "cannot be decoded and are skipped" not in w]
            if (skipped or degraded) and not keep_damaged:
                warning = " ".join((skipped or degraded)[0].split())
                raise EpisodeError(warning if warning.startswith(str(bag_path)) else f"{bag_path}: {warning}")
            return _read(bag, bag_path, episode_id, spec, metadata, keep_damaged)
    except BagError as err:
        raise EpisodeError(f"{bag_path}: {' '.join(str(err).split())}") from err


class MessageLog:
    """Messages seen live (by a ROS subscriber, say), read into steps exactly as a bag is.

    ``add(topic, msgtype, timestamp_ns, cdr_bytes)`` for each message received (timestamp: the
    receive time, used only for messages without a header stamp or with ``alignment.stamps:
    recorded``); :func:`episode_from_messages` then builds the episode with the same code path as
    :func:`read_episode`, so a live stream and its recording give the same steps and labels.
    """

    def __init__(self, name: str = "live") -> None:
        self.path = Path(name)
        self.warnings: list[str] = []
        self._records: list[BagMessage] = []

    def add(self, topic: str, msgtype: str, timestamp_ns: int, data: bytes) -> None:
        self._records.append(BagMessage(topic, msgtype, int(timestamp_ns), bytes(data)))

    @property
    def connections(self) -> tuple[BagConnection, ...]:
        counts = Counter((m.topic, m.msgtype) for m in self._records)
        return tuple(BagConnection(topic, msgtype, n, None, None) for (topic, msgtype), n in counts.items())

    def messages(self, connections: Any = None) -> Any:
        keys = None if connections is None else {(c.topic, c.msgtype) for c in connections}
        ordered = sorted(self._records, key=lambda m: m.timestamp)  # stable: arrival order within a stamp
        return iter([m for m in ordered if keys is None or (m.topic, m.msgtype) in keys])

    def deserialize(self, message: BagMessage) -> Any:
        try:
            return _standard_store().deserialize_cdr(message.data, message.msgtype)
        except (SerdeError, struct.error, ValueError, IndexError, KeyError) as err:
            raise BagError(f"cannot decode {message.msgtype} on {message.topic}: {err}") from err

    def starts_with_header(self, msgtype: str) -> bool:
        fields = _standard_store().fielddefs.get(msgtype)
        return bool(fields and fields[1]) and fields[1][0][1][1] == "std_msgs/msg/Header"


def episode_from_messages(log: MessageLog, spec: DatasetSpec, metadata: EpisodeMetadata | None = None,
                          episode_id: str = "live") -> Episode:
    """The episode a :class:`MessageLog` of live messages makes (the same steps its recording makes)."""
    try:
        return _read(log, log.path, episode_id, spec, metadata or EpisodeMetadata())  # type: ignore[arg-type]
    except BagError as err:
        raise EpisodeError(f"{log.path}: {' '.join(str(err).split())}") from err


def _connection(bag: BagReader, topic: str, types: tuple[str, ...], what: str) -> Any:
    for conn in bag.connections:
        if conn.topic == topic and conn.msgtype in types:
            return conn
    present = [c for c in bag.connections if c.topic == topic]
    if present:
        raise EpisodeError(f"{bag.path}: {what} topic {topic} is a {present[0].msgtype}, expected "
                           f"{' or '.join(types)}")
    raise EpisodeError(f"{bag.path}: no {what} topic {topic} in the bag (has: "
                       f"{', '.join(sorted(c.topic for c in bag.connections))})")


_GRIPPER_TYPES = {"command": ("trajectory_msgs/msg/JointTrajectory",),
                  "joint_position": ("sensor_msgs/msg/JointState",),
                  "bool": ("std_msgs/msg/Bool",),
                  "float": ("std_msgs/msg/Float64", "std_msgs/msg/Float32")}


def _needed_topics(spec: DatasetSpec) -> set[str]:
    """Every bag topic the spec reads."""
    topics = {spec.image.topic, spec.gripper.topic}
    if spec.state.source == "pose":
        topics.add(spec.state.topic)
    elif spec.state.source == "joint_states":
        topics.add(spec.state.joint_states_topic)
    else:
        topics.update(spec.state.tf_topics)
    if spec.instruction.source == "topic":
        topics.add(spec.instruction.topic)
    return topics


def _check_pass(bag: BagReader | MessageLog, bag_path: Path, keep_damaged: bool) -> None:
    """After a read pass: a bag that delivered less than it holds for our topics is not used."""
    if keep_damaged or not isinstance(bag, BagReader):
        return
    result = bag.result()
    if not result.complete:
        raise EpisodeError(" ".join(result.line().split()))


def _read(bag: BagReader, bag_path: Path, episode_id: str, spec: DatasetSpec,
          metadata: EpisodeMetadata, keep_damaged: bool = False) -> Episode:
    dropped: Counter[str] = Counter()
    header_stamps = spec.alignment.stamps == "header"
    image_conn = _connection(bag, spec.image.topic, IMAGE_TYPES, "image")
    if spec.state.source == "pose":
        state_conns = [_connection(bag, spec.state.topic, ("geometry_msgs/msg/PoseStamped",), "state")]
    elif spec.state.source == "joint_states":
        state_conns = [_connection(bag, spec.state.joint_states_topic, ("sensor_msgs/msg/JointState",), "state")]
    else:
        state_conns = [c for c in bag.connections if c.topic in spec.state.tf_topics
                       and c.msgtype == "tf2_msgs/msg/TFMessage"]
        if not state_conns:
            raise EpisodeError(f"{bag_path}: no TF topic ({', '.join(spec.state.tf_topics)}) in the bag")
    gripper_conn = _connection(bag, spec.gripper.topic, _GRIPPER_TYPES[spec.gripper.source], "gripper")
    text_conn = None
    if spec.instruction.source == "topic":
        text_conn = _connection(bag, spec.instruction.topic, ("std_msgs/msg/String",), "instruction")
    elif spec.instruction.source == "metadata" and not metadata.instruction.strip():
        raise EpisodeError(f"{bag_path}: no instruction in its episode metadata (episode.json); set "
                           "instruction.source to topic or fixed in the spec")

    kinematics = _ForwardKinematics(spec.state.urdf, spec.base_frame, spec.state.ee_frame) \
        if spec.state.source == "joint_states" else None
    # pass 1: every input but the image pixels
    image_stamps: list[int] = []
    image_has_header = bag.starts_with_header(image_conn.msgtype)
    poses, grippers, texts, tf, joint_states = _Series(), _Series(), _Series(), _TfTree(), _Series()
    frame_mismatch = 0
    wanted = [image_conn, *state_conns, gripper_conn] + ([text_conn] if text_conn else [])
    for message in bag.messages(wanted):
        topic = message.topic
        if topic == image_conn.topic:
            stamp = _header_stamp(message.data) if header_stamps and image_has_header else 0
            image_stamps.append(stamp or message.timestamp)
            continue
        msg = _decode(bag, message)
        header = getattr(msg, "header", None)
        stamp = (_ns(header.stamp) if header_stamps and header is not None else 0) or message.timestamp
        if spec.state.source == "pose" and topic == spec.state.topic:
            if msg.header.frame_id.lstrip("/") != spec.base_frame.lstrip("/"):
                frame_mismatch += 1
                continue
            p, o = msg.pose.position, msg.pose.orientation
            pose = np.array([p.x, p.y, p.z, o.x, o.y, o.z, o.w], dtype=np.float64)
            if not np.all(np.isfinite(pose)) or np.linalg.norm(pose[3:]) < 1e-6:
                dropped["bad_pose"] += 1
                continue
            poses.add(stamp, (pose[:3], pose[3:] / np.linalg.norm(pose[3:])))
            continue
        if spec.state.source == "joint_states" and topic == spec.state.joint_states_topic:
            positions = dict(zip(msg.name, (float(v) for v in msg.position), strict=False))
            if kinematics is not None and not all(math.isfinite(positions.get(n, 0.0))
                                                  for n in kinematics.chain_joints):
                dropped["bad_pose"] += 1
            else:
                joint_states.add(stamp, positions)
            if topic != spec.gripper.topic:
                continue
        if spec.state.source == "tf" and topic in spec.state.tf_topics:
            tf.add(msg, static=topic.endswith("_static"))
        elif topic == spec.gripper.topic:
            value = _gripper_value(spec, msg)
            if value is not None and math.isfinite(value):
                grippers.add(stamp, value)
        elif text_conn is not None and topic == text_conn.topic:
            texts.add(stamp, str(msg.data))
    _check_pass(bag, bag_path, keep_damaged)
    if frame_mismatch and not len(poses):
        raise EpisodeError(f"{bag_path}: every EE pose on {spec.state.topic} is in another frame than "
                           f"base_frame {spec.base_frame!r}")
    for series in (poses, grippers, texts, joint_states):
        series.sort()
    tf.sort()
    if text_conn is not None and not len(texts):
        raise EpisodeError(f"{bag_path}: no instruction message on {spec.instruction.topic}")

    # step times: camera frames resampled to the control rate
    period = round(spec.step_period_s * 1e9)
    max_age = round(spec.alignment.max_skew_s * 1e9)
    order = sorted(range(len(image_stamps)), key=image_stamps.__getitem__)
    chosen: list[int] = []  # indices into image messages (recording order)
    last = None
    for i in order:
        if last is None or image_stamps[i] - last >= _STEP_FRACTION * period:
            chosen.append(i)
            last = image_stamps[i]

    def state_at(t: int) -> tuple[np.ndarray, np.ndarray] | None:
        if spec.state.source == "pose":
            return poses.at(t, max_age)
        if kinematics is not None:
            positions = joint_states.at(t, max_age)
            return None if positions is None else kinematics.pose(positions)
        return tf.lookup(spec.base_frame, spec.state.ee_frame, t, max_age)

    def gripper_at(t: int, strictly_before: bool) -> float:
        if spec.gripper.source == "joint_position":
            value = grippers.at(t, max_age)
        else:
            value = grippers.before(t) if strictly_before else grippers.at(t, None)
        if value is None:
            return 1.0 if spec.gripper.initial_open else 0.0
        return float(value)

    steps: list[tuple[int, int, tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]] = []
    try:
        for i in chosen:
            t = image_stamps[i]
            now, after = state_at(t), state_at(t + period)
            if now is None or after is None:
                dropped["no_state"] += 1
                continue
            steps.append((i, t, now, after))
    finally:
        if kinematics is not None:
            kinematics.close()
    if not steps:
        raise EpisodeError(f"{bag_path}: no step has all its inputs ({len(image_stamps)} frame(s), "
                           f"{len(poses) if spec.state.source == 'pose' else spec.state.source} pose(s); "
                           f"dropped: {dict(dropped) or 'none'})")

    # pass 2: decode only the frames that became steps
    wanted_frames = {i for i, *_ in steps}
    frames: dict[int, np.ndarray] = {}
    notes: list[str] = []
    index = -1
    for message in bag.messages([image_conn]):
        index += 1
        if index not in wanted_frames:
            continue
        try:
            frames[index] = _frame(bag, message, spec.image.size)
        except (BagError, ValueError) as err:  # ImageConversionError is a ValueError
            dropped["bad_image"] += 1
            if dropped["bad_image"] == 1:
                notes.append(f"first undecodable frame: {' '.join(str(err).split())}")

    _check_pass(bag, bag_path, keep_damaged)
    kept = [s for s in steps if s[0] in frames]
    if not kept:
        raise EpisodeError(f"{bag_path}: no frame decodes ({dropped['bad_image']} tried)")
    # gripper hysteresis over the joint source: the state carries over from step to step
    labels, openings, hysteresis_open = [], [], spec.gripper.initial_open
    for _, t, _, _ in kept:
        if spec.gripper.source == "joint_position":
            g_now = gripper_at(t, False)
            g_next = gripper_at(t + period, False)
            if g_next >= spec.gripper.open_threshold:
                hysteresis_open = True
            elif g_next <= spec.gripper.close_threshold:
                hysteresis_open = False
            labels.append(1.0 if hysteresis_open else 0.0)
            openings.append(g_now)
        else:
            command = gripper_at(t + period, True)
            labels.append(gripper_command(command))
            openings.append(gripper_at(t, False))
    p0 = np.stack([s[2][0] for s in kept])
    q0 = np.stack([s[2][1] for s in kept])
    p1 = np.stack([s[3][0] for s in kept])
    q1 = np.stack([s[3][1] for s in kept])
    motion = pose_deltas(p0, q0, p1, q1, spec.rotation_convention)
    actions = np.concatenate([motion, np.asarray(labels)[:, None]], axis=1)
    states = np.concatenate([p0, quat_to_rpy(q0), np.asarray(openings)[:, None]], axis=1)
    instructions = [_instruction(spec, metadata, texts, t) for _, t, _, _ in kept]
    return Episode(episode_id=episode_id, source=str(bag_path), stamps_ns=np.array([s[1] for s in kept],
                                                                                   dtype=np.int64),
                   images=[frames[s[0]] for s in kept], actions=actions, states=states,
                   instructions=instructions, metadata=metadata, dropped=dropped, warnings=[*bag.warnings, *notes])


def _instruction(spec: DatasetSpec, metadata: EpisodeMetadata, texts: _Series, t: int) -> str:
    if spec.instruction.source == "fixed":
        return spec.instruction.text
    if spec.instruction.source == "metadata":
        return metadata.instruction
    value = texts.at(t, None)
    return value if value is not None else texts.values[0]


def _frame(bag: BagReader, message: Any, size: int) -> np.ndarray:
    from magma_ros.image_codec import message_to_rgb8, resize_frame

    rgb = message_to_rgb8(_decode(bag, message))
    if size:
        rgb = resize_frame(np.ascontiguousarray(rgb), size)
    return np.ascontiguousarray(rgb)
