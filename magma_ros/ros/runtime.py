"""Shared ROS plumbing: message types and QoS from the contract, parameters, spinning.

Every node declares its parameters from its contract dataclass with
:func:`declare_parameters`, takes run-time changes through :func:`accept_parameter_changes`
(the contract says which parameters are live) and runs through :func:`run_node`, so
parameter handling and shutdown behave the same everywhere.
"""

from __future__ import annotations

import array
import dataclasses
import importlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import rclpy
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.executors import Executor, ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
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

# Every node executable (ros2 run / ros2 launch / magma-ros up) imports this before torch: OpenMP
# worker threads sleep instead of spinning, so a model next to a renderer or another node on a few
# cores does not lose most of its time to spinning threads (see magma_ros/cli/__init__.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

P = TypeVar("P", bound=NodeParameters)
LIVE = "settable at run time: validated, then applied by the running node"
READ_ONLY = "read-only at run time: a change is refused (restart the node with the new value)"

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


def declare_parameters(node: Node, parameters_cls: type[P],
                       apply: Callable[[P, set[str]], None] | None = None) -> P:
    """Declare every field of a contract dataclass as a ROS parameter and read them back.

    Bad values are logged with the contract's message and raised as ContractError. Run-time
    changes go through :func:`accept_parameter_changes`: ``apply`` takes the contract's live
    parameters; a node that passes none refuses every change, with the reason.
    """
    values: dict[str, Any] = {}
    defaults = parameters_cls()
    for f in dataclasses.fields(parameters_cls):  # type: ignore[arg-type]
        default = getattr(defaults, f.name)
        descriptor = ParameterDescriptor(description=f.metadata.get("description", ""),
                                         additional_constraints=LIVE if f.metadata.get("live") else READ_ONLY)
        values[f.name] = _plain(node.declare_parameter(f.name, default, descriptor).value)
    try:
        params = parameters_cls(**values)
    except (ContractError, TypeError) as err:
        node.get_logger().error(f"invalid parameters: {err}")
        raise
    accept_parameter_changes(node, params, apply)
    return params


def _plain(value: Any) -> Any:
    """A parameter value as the contract dataclasses hold it (arrays as lists)."""
    return list(value) if isinstance(value, (array.array, tuple, list)) else value


def accept_parameter_changes(node: Node, initial: P, apply: Callable[[P, set[str]], None] | None) -> None:
    """Take ``ros2 param set`` (SetParameters) changes the contract allows, refuse the rest with a reason.

    A change to a parameter the contract does not mark ``live`` (or to any, without ``apply``)
    is refused as read-only. The live ones are merged into the values in force (``initial``,
    then each accepted set), the whole set is validated by the contract class and handed to
    ``apply(new, changed_names)``, which may refuse by raising ContractError (or ValueError).
    Never raises: an exception here would end the node's executor.
    """
    parameters_cls = type(initial)
    live = parameters_cls.live_parameters() if apply is not None else ()
    state = {"current": initial}

    def on_set(parameters: list[Any]) -> SetParametersResult:
        try:
            values = state["current"].as_dict()
            changed: set[str] = set()
            for parameter in parameters:
                if parameter.name not in values:  # use_sim_time and other rclpy-owned parameters
                    continue
                value = _plain(parameter.value)
                if value == _plain(values[parameter.name]):
                    continue
                if parameter.name not in live:
                    allowed = f"; settable: {', '.join(live)}" if live else ""
                    return SetParametersResult(successful=False, reason=(
                        f"{parameter.name} is read-only: it cannot change at run time (restart the node with the "
                        f"new value){allowed}"))
                values[parameter.name] = value
                changed.add(parameter.name)
            if changed and apply is not None:
                new = parameters_cls(**values)
                apply(new, changed)
                state["current"] = new
        except (ContractError, TypeError, ValueError) as err:
            return SetParametersResult(successful=False, reason=f"refused: {err}")
        except Exception as err:  # never let a parameter request end the node
            node.get_logger().error(f"parameter change failed: {err!r}")
            return SetParametersResult(successful=False, reason=f"refused (internal error): {err!r}")
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(on_set)


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


def make_executor(threads: int = 1, context: rclpy.Context | None = None) -> Executor:
    """The executor our nodes spin on: single-threaded unless ``threads`` > 1.

    Every callback of our nodes is short (model inference, rendering and the bridge's stream run on
    threads of their own), so one thread serves them all. rclpy's multi-threaded executor loops in
    Python while a ready callback waits for a pool thread; on 2 cores that delayed callbacks by
    30-160 ms and kept other threads of the process from the GIL for up to 0.5 s
    (``bench/executor_bench.py`` measures both side by side).
    """
    if threads <= 1:
        return SingleThreadedExecutor(context=context)
    return MultiThreadedExecutor(num_threads=threads, context=context)


def spin_nodes(factories: Sequence[Callable[[], Node]], args: Sequence[str] | None = None, threads: int = 1,
               duration_s: float = 0.0) -> int:
    """Init rclpy, build the nodes, spin them on one executor (:func:`make_executor`), shut down cleanly.

    Runs until Ctrl-C, SIGTERM or external shutdown (exit code 0), or for ``duration_s``
    seconds when > 0. A node that fails to construct (bad parameters) ends it with 1.
    Every node's ``close()`` (if it has one) runs before the context shuts down.
    """
    init_rclpy(args)
    nodes: list[Node] = []
    executor = make_executor(threads)
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


def run_node(factory: Callable[..., Node], args: Sequence[str] | None = None, threads: int = 1) -> int:
    """The ``main()`` of every node executable: :func:`spin_nodes` with one node."""
    return spin_nodes([factory], args, threads)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
