"""The codecs stay ROS-free: no rclpy or message packages, directly or through imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import magma_ros.codecs

CODECS_DIR = Path(magma_ros.codecs.__file__).parent
FORBIDDEN = ("rclpy", "rosidl", "rosbag2", "std_msgs", "sensor_msgs", "geometry_msgs", "builtin_interfaces",
             "magma_ros.ros", "magma_ros.msg", "magma_ros.srv")


def test_no_ros_imports_in_source() -> None:
    for path in CODECS_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(FORBIDDEN), f"{path.name} imports {name}"


def test_importing_codecs_loads_no_ros_module() -> None:
    code = ("import sys, magma_ros.codecs; "
            f"bad = [m for m in sys.modules if m.startswith({FORBIDDEN!r})]; print(bad); sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
