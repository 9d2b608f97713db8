"""demo_recorder: subscribes to a teleop recording's topics and writes one rosbag2 (mcap) per episode.

What ``ros2 bag record`` would capture from a real cell: the camera (image, aligned depth,
CameraInfo, optionally the wrist camera), /joint_states, the EE pose, the gripper command,
Servo's twist commands and the instruction, plus the simulator's episode status. Messages go
through :class:`magma_ros.bags.BagWriter` as the CDR bytes that came over the wire, cut to
the message's exact length (rclpy's serializer pads some types, JointTrajectory among them,
with trailing bytes that ``rosbags`` refuses to read). Each is stamped with its header stamp
(the sim clock); those without a stamp of their own (the instruction, a bridge's unstamped
gripper trajectory) get the latest stamp of the episode, so every topic's stamps are monotonic.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile
from rclpy.serialization import serialize_message

from magma_ros import contract
from magma_ros.bags import BagWriter
from magma_ros.conventions import RECORDED_TOPICS, EpisodeMetadata
from magma_ros.ros.runtime import message_type, qos

NODE_NAME = "demo_recorder"


def _recording_qos(topic: contract.Topic) -> QoSProfile:
    """The contract's QoS with a deep queue, so a burst is never dropped on our side."""
    profile = qos(topic)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=max(profile.depth, 100),
                      reliability=profile.reliability, durability=profile.durability)


class DemoRecorder(Node):
    """Records while :meth:`start` .. :meth:`stop`; thread-safe."""

    def __init__(self, topics: tuple[contract.Topic, ...] = RECORDED_TOPICS, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.topics = topics
        self._lock = threading.Lock()
        self._writer: BagWriter | None = None
        self._last_ns = 0
        self._pending: list[tuple[contract.Topic, bytes]] = []
        self.counts: dict[str, int] = {}
        self._inputs = [self.create_subscription(message_type(t), t.name, self._callback(t), _recording_qos(t))
                        for t in topics]

    def start(self, path: str | Path) -> None:
        """Open a new bag at ``path`` (a directory that must not exist yet) and record into it."""
        with self._lock:
            if self._writer is not None:
                raise RuntimeError("already recording")
            self._writer = BagWriter(path, storage="mcap").open()
            self._last_ns = 0
            self._pending: list[tuple[contract.Topic, bytes]] = []
            self.counts = {t.name: 0 for t in self.topics}

    def stop(self, metadata: dict[str, Any] | None = None) -> dict[str, int]:
        """Close the bag; ``metadata`` goes next to it, into ``episode.json`` inside the bag directory
        (:class:`magma_ros.conventions.EpisodeMetadata`, which the dataset builder reads)."""
        with self._lock:
            writer, self._writer = self._writer, None
            if writer is not None:
                for waiting, data in self._pending:
                    writer.write(waiting.name, waiting.type, self._last_ns, data)
            self._pending = []
            counts = dict(self.counts)
        if writer is not None:
            writer.close()
            if metadata is not None:
                EpisodeMetadata.from_dict({**metadata, "messages": counts}).write(writer.path)
        return counts

    def _callback(self, topic: contract.Topic) -> Any:
        def record(msg: Any) -> None:
            with self._lock:
                if self._writer is None:
                    return
                self.counts[topic.name] = self.counts.get(topic.name, 0) + 1
                stamp_ns = self._stamp_of(topic, msg)
                if stamp_ns is None:  # no time of its own: the episode's latest stamp, once one is known
                    if not self._last_ns:
                        self._pending.append((topic, self._serialize(topic, msg)))
                        return
                    stamp_ns = self._last_ns
                self._last_ns = max(self._last_ns, stamp_ns)
                for waiting, data in self._pending:
                    self._writer.write(waiting.name, waiting.type, self._last_ns, data)
                self._pending = []
                self._writer.write(topic.name, topic.type, stamp_ns, self._serialize(topic, msg))

        return record

    def _serialize(self, topic: contract.Topic, msg: Any) -> bytes:
        """CDR bytes of ``msg``, exactly as long as the message (see the module docstring)."""
        data = serialize_message(msg)
        if self._writer is None:
            return data
        msgdef = self._writer.typestore.get_msgdef(topic.type)
        decode = msgdef.deserialize_cdr_le if data[1] else msgdef.deserialize_cdr_be
        _, end = decode(memoryview(data)[4:], 0, msgdef.cls, self._writer.typestore)
        return data[: 4 + end]

    @staticmethod
    def _stamp_of(topic: contract.Topic, msg: Any) -> int | None:
        header = getattr(msg, "header", None)
        if header is not None:
            stamp_ns = int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
            return stamp_ns or None
        if topic is contract.SIM_EPISODE:
            return round(json.loads(msg.data).get("time", 0.0) * 1e9) or None
        return None
