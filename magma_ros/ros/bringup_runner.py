"""Start the nodes of a bringup description in this process (``magma-ros up``)."""

from __future__ import annotations

import importlib

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.task import Future

from magma_ros.bringup import Bringup
from magma_ros.executables import NODES


def node_class(executable: str) -> type[Node]:
    """The Node class behind an executable (its module's ``NODE``)."""
    module_name = NODES[executable].split(":")[0]
    return importlib.import_module(module_name).NODE


def create_nodes(bringup: Bringup) -> list[Node]:
    """Construct every node with the same ROS arguments a launch file would give it."""
    return [node_class(n.executable)(cli_args=n.ros_args()) for n in bringup.nodes]


def run_bringup(bringup: Bringup, duration_s: float = 0.0, threads: int = 4) -> int:
    """Run until Ctrl-C (or for ``duration_s`` seconds when > 0)."""
    rclpy.init()
    nodes: list[Node] = []
    try:
        nodes = create_nodes(bringup)
        executor = MultiThreadedExecutor(num_threads=threads)
        for node in nodes:
            executor.add_node(node)
        if duration_s > 0:
            executor.spin_until_future_complete(Future(), timeout_sec=duration_s)
        else:
            executor.spin()
        executor.shutdown(timeout_sec=2.0)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for node in nodes:
            close = getattr(node, "close", None)
            if callable(close):
                close()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
