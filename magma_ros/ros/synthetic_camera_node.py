"""synthetic_camera_node: a moving test pattern on a camera topic.

Stands in for a camera driver when none is attached (demos, tests, benchmarks):
three coloured squares circle over a checkerboard, stamped with the node clock.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from rclpy.node import Node
from std_msgs.msg import Header

from magma_ros import contract
from magma_ros.contract import SyntheticCameraParameters
from magma_ros.image_codec import numpy_to_image
from magma_ros.ros.runtime import declare_parameters, message_type, qos, run_node


def test_pattern(width: int, height: int, t: float) -> np.ndarray:
    """An (H, W, 3) uint8 RGB frame: checkerboard plus three squares moving with ``t``."""
    yy, xx = np.mgrid[0:height, 0:width]
    board = (((xx // 32) + (yy // 32)) % 2).astype(np.uint8) * 40 + 80
    frame = np.repeat(board[:, :, None], 3, axis=2)
    side = max(4, min(width, height) // 8)
    for k, colour in enumerate(((220, 40, 40), (40, 200, 60), (50, 80, 230))):
        angle = t * 0.8 + k * 2.0 * math.pi / 3
        cx = int(width / 2 + 0.3 * width * math.cos(angle))
        cy = int(height / 2 + 0.3 * height * math.sin(angle))
        frame[max(0, cy - side // 2):cy + side // 2, max(0, cx - side // 2):cx + side // 2] = colour
    return frame


class SyntheticCameraNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(SyntheticCameraParameters.NODE_NAME, **kwargs)
        self.params = declare_parameters(self, SyntheticCameraParameters)
        p = self.params
        self._pub = self.create_publisher(message_type(contract.CAMERA_IMAGE), p.image_topic,
                                          qos(contract.CAMERA_IMAGE))
        self._count = 0
        self._timer = self.create_timer(1.0 / p.rate_hz, self._tick)

    def _tick(self) -> None:
        p = self.params
        if p.max_frames and self._count >= p.max_frames:
            self._timer.cancel()
            return
        rgb = test_pattern(p.width, p.height, self._count / p.rate_hz)
        array = {"rgb8": rgb, "bgr8": rgb[:, :, ::-1],
                 "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
                 "bgra8": np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 255, np.uint8)]),
                 "mono8": rgb.mean(axis=2).astype(np.uint8)}[p.encoding]
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=p.frame_id)
        self._pub.publish(numpy_to_image(array, p.encoding, header=header))
        self._count += 1


NODE = SyntheticCameraNode


def main(args: list[str] | None = None) -> int:
    return run_node(SyntheticCameraNode, args)
