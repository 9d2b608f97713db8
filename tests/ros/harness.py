"""Helpers for tests against real rclpy nodes over real DDS."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rclpy
from rclpy.node import Node

from magma_ros.ros.runtime import make_executor, qos

VENV_BIN = Path(sys.executable).parent


class RosGraph:
    """A private rclpy context with an executor spinning in a background thread.

    Single-threaded unless ``threads`` > 1: rclpy's multi-threaded executor loops in Python while
    a callback waits for a pool thread, and on 2 cores that kept the test's own thread from the GIL
    for up to 0.5 s (a 50 ms sleep returned after 517 ms), so a probe published a fraction of the
    messages a test meant to send.
    """

    def __init__(self, threads: int = 1) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.executor = make_executor(threads, self.context)
        self.nodes: list[Node] = []
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # context shut down under us
                if not self.context.ok():
                    return
                raise

    def add(self, node: Node) -> Node:
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def node(self, name: str) -> Node:
        return self.add(Node(name, context=self.context))

    def collect(self, node: Node, msg_type: type, topic: str, qos_name: str = "reliable") -> list[Any]:
        """Subscribe and return the list messages are appended to."""
        received: list[Any] = []
        lock = threading.Lock()

        def callback(msg: Any) -> None:
            with lock:
                received.append(msg)

        node.create_subscription(msg_type, topic, callback, qos(qos_name))  # type: ignore[arg-type]
        return received

    def close(self) -> None:
        for node in self.nodes:
            close = getattr(node, "close", None)
            if callable(close):
                close()
        self.executor.shutdown(timeout_sec=1.0)
        for node in self.nodes:
            node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=2.0)
        # Free the DDS participant now: left to the garbage collector, tearing it down can stall
        # the interpreter for a noticeable time in the middle of a later, timing-sensitive test.
        self.executor = None  # type: ignore[assignment]
        self.nodes.clear()
        self.context.destroy()
        gc.collect()


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def wait_until_quiet(items: Callable[[], list[Any]], quiet_s: float = 0.3, timeout: float = 5.0) -> list[Any]:
    """``items()`` once it has stopped growing for ``quiet_s`` (messages already sent, still being delivered)."""
    deadline = time.monotonic() + timeout
    count, since = len(items()), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
        time.sleep(0.02)
        if len(items()) != count:
            count, since = len(items()), time.monotonic()
    return items()


class Process:
    """A node executable in its own process; output goes to a log file."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log
        self._log = open(log, "w")  # noqa: SIM115  (closed in stop())
        exe = argv[0] if os.path.isabs(argv[0]) else shutil.which(argv[0], path=str(VENV_BIN)) or argv[0]
        self.proc = subprocess.Popen([exe, *argv[1:]], stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env or os.environ.copy(), start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        """Everything the process wrote so far (also after :meth:`stop`, for an assertion's message)."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT to its process group, SIGKILL after ``timeout`` s; its exit code. What happened is
        appended to the log, so a failed ``assert proc.stop() == 0, proc.output()`` says why."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                self._log.write(f"[harness] still running {timeout:g} s after SIGINT: killed (SIGKILL)\n")
        if not self._log.closed:
            self._log.write(f"[harness] exit code {self.proc.returncode}\n")
            self._log.close()
        return self.proc.returncode


def lifecycle_state(probe: Node, node_name: str, timeout: float = 5.0) -> str:
    """The lifecycle state label of ``node_name``, asked over its get_state service."""
    from lifecycle_msgs.srv import GetState

    client = probe.create_client(GetState, f"/{node_name}/get_state")
    if not client.wait_for_service(timeout_sec=timeout):
        raise TimeoutError(f"/{node_name}/get_state not available")
    future = client.call_async(GetState.Request())
    if not wait_for(future.done, timeout):
        raise TimeoutError("get_state did not answer")
    probe.destroy_client(client)
    return future.result().current_state.label


def change_lifecycle_state(probe: Node, node_name: str, transition: str, timeout: float = 10.0) -> bool:
    """Request a transition ('configure', 'activate', ...) over the change_state service."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    ids = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
           "deactivate": Transition.TRANSITION_DEACTIVATE, "cleanup": Transition.TRANSITION_CLEANUP}
    client = probe.create_client(ChangeState, f"/{node_name}/change_state")
    if not client.wait_for_service(timeout_sec=timeout):
        raise TimeoutError(f"/{node_name}/change_state not available")
    future = client.call_async(ChangeState.Request(transition=Transition(id=ids[transition])))
    if not wait_for(future.done, timeout):
        raise TimeoutError(f"{transition} did not answer")
    probe.destroy_client(client)
    return bool(future.result().success)
