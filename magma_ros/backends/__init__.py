"""Policy backends behind one interface (see :mod:`magma_ros.backends.base`). ROS-free."""

from magma_ros.backends.base import (
    ACTION_DIMS,
    BackendError,
    MarkPoint,
    NullBackend,
    PolicyBackend,
    PolicyOutput,
    StageTimings,
    TracePoints,
)
from magma_ros.backends.factory import create_backend

__all__ = [
    "ACTION_DIMS",
    "BackendError",
    "MarkPoint",
    "NullBackend",
    "PolicyBackend",
    "PolicyOutput",
    "StageTimings",
    "TracePoints",
    "create_backend",
]
