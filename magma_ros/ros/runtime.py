"""Shared ROS plumbing: message types and QoS from the contract, parameters, spinning.

Every node declares its parameters from its contract dataclass with
:func:`declare_parameters` and runs through :func:`run_node`, so parameter
handling and shutdown behave the same everywhere.
"""

from __future__ import annotations

import dataclasses
import importlib
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.task import Future

from magma_ros.contract import ContractError, NodeParameters, QosName, Topic

P = TypeVar("P", bound=NodeParameters)

_QOS: dict[str, QoSProfile] = {
    "sensor_data": qos_profile_sensor_data,
    "reliable": QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE),
    "latched": QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL),
}


def qos(name: QosName | Topic) -> QoSProfile:
    """The QoS profile for a contract QoS name or topic."""
    return _QOS[name.qos if isinstance(name, Topic) else name]


def message_type(type_name: str | Topic) -> type:
    """Resolve 'pkg/msg/Name' (or a contract Topic) to the message class."""
    name = type_name.type if isinstance(type_name, Topic) else type_name
    package, kind, cls = name.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), cls)


def declare_parameters(node: Node, parameters_cls: type[P]) -> P:
    """Declare every field of a contract dataclass as a ROS parameter and read them back.

    Bad values are logged with the contract's message and raised as ContractError.
    """
    values: dict[str, Any] = {}
    defaults = parameters_cls()
    for f in dataclasses.fields(parameters_cls):  # type: ignore[arg-type]
        default = getattr(defaults, f.name)
        descriptor = ParameterDescriptor(description=f.metadata.get("description", ""))
        values[f.name] = node.declare_parameter(f.name, default, descriptor).value
    try:
        return parameters_cls(**values)
    except (ContractError, TypeError) as err:
        node.get_logger().error(f"invalid parameters: {err}")
        raise


def init_rclpy(args: Sequence[str] | None = None) -> None:
    """rclpy.init with our signal handling: SIGINT/SIGTERM raise KeyboardInterrupt.

    rclpy's own handler shuts the context down before the nodes' ``close()`` runs; with
    ours, ``close()`` can still publish (the bridge's final zero twists).
    """
    init_args = list(args) if args is not None else sys.argv
    try:
        from rclpy.signals import SignalHandlerOptions

        rclpy.init(args=init_args, signal_handler_options=SignalHandlerOptions.NO)
    except ImportError:  # distros without signal handler options
        rclpy.init(args=init_args)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def spin_nodes(factories: Sequence[Callable[[], Node]], args: Sequence[str] | None = None, threads: int = 2,
               duration_s: float = 0.0) -> int:
    """Init rclpy, build the nodes, spin them on one multi-threaded executor, shut down cleanly.

    Runs until Ctrl-C, SIGTERM or external shutdown (exit code 0), or for ``duration_s``
    seconds when > 0. A node that fails to construct (bad parameters) ends it with 1.
    Every node's ``close()`` (if it has one) runs before the context shuts down.
    """
    init_rclpy(args)
    nodes: list[Node] = []
    executor = MultiThreadedExecutor(num_threads=threads)
    try:
        for factory in factories:
            nodes.append(factory())
            executor.add_node(nodes[-1])
        if duration_s > 0:
            executor.spin_until_future_complete(Future(), timeout_sec=duration_s)
        else:
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ContractError:
        return 1
    finally:
        for node in nodes:
            close = getattr(node, "close", None)
            if callable(close):
                close()
        executor.shutdown(timeout_sec=2.0)
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def run_node(factory: Callable[..., Node], args: Sequence[str] | None = None, threads: int = 2) -> int:
    """The ``main()`` of every node executable: :func:`spin_nodes` with one node."""
    return spin_nodes([factory], args, threads)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
