"""The simulated workcell is part of the ROS-free core: no rclpy or message packages."""

import ast
from pathlib import Path

import magma_ros.sim

FORBIDDEN = ("rclpy", "std_msgs", "sensor_msgs", "geometry_msgs", "trajectory_msgs", "builtin_interfaces", "cv_bridge")


def test_sim_imports_no_ros():
    package = Path(magma_ros.sim.__file__).parent
    offenders = []
    for source in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{source.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders
