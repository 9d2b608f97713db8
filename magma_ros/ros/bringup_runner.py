"""Start the nodes of a bringup description in this process (``magma-ros up``)."""

from __future__ import annotations

import functools
import importlib

from rclpy.node import Node

from magma_ros.bringup import Bringup
from magma_ros.executables import NODES
from magma_ros.ros.runtime import spin_nodes


def node_class(executable: str) -> type[Node]:
    """The Node class behind an executable (its module's ``NODE``)."""
    module_name = NODES[executable].split(":")[0]
    return importlib.import_module(module_name).NODE


def create_nodes(bringup: Bringup) -> list[Node]:
    """Construct every node with the same ROS arguments a launch file would give it."""
    return [node_class(n.executable)(cli_args=n.ros_args()) for n in bringup.nodes]


def run_bringup(bringup: Bringup, duration_s: float = 0.0, threads: int = 4) -> int:
    """Run until Ctrl-C (or for ``duration_s`` seconds when > 0), closing every node on the way out."""
    factories = [functools.partial(node_class(n.executable), cli_args=n.ros_args()) for n in bringup.nodes]
    return spin_nodes(factories, args=[], threads=threads, duration_s=duration_s)
