"""overlay_recorder: one episode's camera frames, the policy's predictions and TCP poses, for an animation.

Frames, Predictions and poses are matched by stamp (the policy copies the frame's stamp;
in synchronous mode the sim publishes the pose of the same instant). The drawing itself is
ROS-free (:mod:`magma_ros.evaluation`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from magma_ros import contract
from magma_ros.evaluation import OverlayFrame, camera_pose_in_base, write_overlay_gif
from magma_ros.image_codec import message_to_rgb8
from magma_ros.msg import Prediction
from magma_ros.ros.runtime import qos
from magma_ros.sim import THIRD_PERSON_CAMERA
from magma_ros.sim.session import EpisodeStatus

NODE_NAME = "overlay_recorder"
BASE_FRAME = "panda_link0"


def _nanoseconds(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


class OverlayRecorder(Node):
    """Records between :meth:`start` and :meth:`stop`; :meth:`write_gif` draws the animation."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._lock = threading.Lock()
        self._recording = False
        self._images: dict[int, Image] = {}
        self._predictions: dict[int, Prediction] = {}
        self._poses: dict[int, PoseStamped] = {}
        self._camera_info: CameraInfo | None = None
        self.frames: list[OverlayFrame] = []
        self.k: np.ndarray | None = None
        self.model_id = ""  # from the policy's Predictions
        # A deep best-effort queue: no frame of a burst is dropped on our side.
        frames_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200, reliability=ReliabilityPolicy.BEST_EFFORT)
        self._inputs = [
            self.create_subscription(Image, contract.CAMERA_IMAGE.name, self._store(self._images), frames_qos),
            self.create_subscription(Prediction, contract.PREDICTION.name, self._on_prediction,
                                     qos(contract.PREDICTION)),
            self.create_subscription(PoseStamped, contract.EE_POSE.name, self._store(self._poses),
                                     qos(contract.EE_POSE)),
            self.create_subscription(CameraInfo, contract.CAMERA_INFO.name, self._on_info, qos(contract.CAMERA_INFO)),
        ]

    def _store(self, into: dict[int, Any]) -> Callable[[Any], None]:
        def callback(msg: Any) -> None:
            with self._lock:
                if self._recording:
                    into[_nanoseconds(msg)] = msg

        return callback

    def _on_prediction(self, msg: Prediction) -> None:
        self.model_id = msg.model_id
        self._store(self._predictions)(msg)

    def _on_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def start(self) -> None:
        with self._lock:
            for store in (self._images, self._predictions, self._poses):
                store.clear()  # in place: the callbacks hold these dicts
            self._recording = True

    def stop(self, final: EpisodeStatus) -> list[OverlayFrame]:
        """Stop recording and turn what came in into overlay frames (one per camera frame)."""
        with self._lock:
            self._recording = False
            images, predictions, poses = dict(self._images), dict(self._predictions), dict(self._poses)
        stamps = [s for s in sorted(images) if s in poses]
        self.frames = []
        for i, stamp in enumerate(stamps):
            prediction = predictions.get(stamp)
            valid = prediction is not None and prediction.action_valid
            step = np.asarray(prediction.action[:3], dtype=np.float64) if valid else None
            traces = [np.stack([np.asarray(t.u), np.asarray(t.v)], axis=1) for t in prediction.traces] \
                if prediction is not None else []
            position = poses[stamp].pose.position
            outcome = ("SUCCESS" if final.success else "FAILURE") if i == len(stamps) - 1 else ""
            text = f"{final.instruction}\nstep {min(i, final.step)}/{final.max_steps} {outcome}".rstrip()
            self.frames.append(OverlayFrame(message_to_rgb8(images[stamp]).copy(),
                                            np.array([position.x, position.y, position.z]), step, traces, text))
        if self._camera_info is not None:
            self.k = np.asarray(self._camera_info.k, dtype=np.float64).reshape(3, 3)
        return self.frames

    def write_gif(self, path: str | Path) -> Path | None:
        """The animation of the last recorded episode, or None when nothing was recorded."""
        if not self.frames or self.k is None:
            return None
        camera = camera_pose_in_base(THIRD_PERSON_CAMERA.optical_frame, BASE_FRAME)
        return write_overlay_gif(self.frames, self.k, camera, path)
