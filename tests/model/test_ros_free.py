"""The model core imports no ROS: no rclpy, no message packages, no magma_ros.ros."""

from __future__ import annotations

import ast
from pathlib import Path

import magma_ros.model

FORBIDDEN = ("rclpy", "rosidl", "magma_ros.ros", "magma_ros.msg", "magma_ros.srv")


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_model_core_is_ros_free():
    root = Path(magma_ros.model.__file__).parent
    offenders = [
        f"{path.name}: {name}"
        for path in sorted(root.glob("*.py"))
        for name in _imports(path)
        if name.startswith(FORBIDDEN) or name.endswith("_msgs")
    ]
    assert offenders == []
