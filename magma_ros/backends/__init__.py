"""Policy backends behind one interface (see :mod:`magma_ros.backends.base`). ROS-free."""

from magma_ros.backends.base import (
    ACTION_DIMS,
    BackendError,
    NullBackend,
    PolicyBackend,
    PolicyOutput,
    StageTimings,
    output_gripper_command,
)
from magma_ros.backends.factory import create_backend

__all__ = [
    "ACTION_DIMS",
    "BackendError",
    "NullBackend",
    "PolicyBackend",
    "PolicyOutput",
    "StageTimings",
    "create_backend",
    "output_gripper_command",
]
