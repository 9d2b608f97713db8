"""Drive simulated episodes over ROS: the client side of sim_arm_node and of lifecycle nodes.

Used by ``magma-ros record-demos``, ``evaluate`` and ``demo`` (and the tests). Everything
goes through the nodes' public interfaces: parameters (``set_parameters``), ``~/reset``,
``~/pause``, the episode status topic and the lifecycle ``change_state`` services, so the
same code could drive a sim_arm_node in another process. Calls block the calling thread
while a :class:`RunningGraph` spins the nodes in the background.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, TextIO

import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import SetParameters
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger

from magma_ros import contract
from magma_ros.ros.runtime import make_executor, qos
from magma_ros.sim.session import EpisodeStatus

Progress = Callable[[EpisodeStatus], None]


class EpisodeClientError(RuntimeError):
    """A service did not answer, refused, or an episode did not finish in time."""


def call(node: Node, srv_type: Any, name: str, request: Any, timeout: float = 10.0) -> Any:
    """Call a service from a thread other than the executor's; the response, or EpisodeClientError."""
    client = node.create_client(srv_type, name)
    try:
        if not client.wait_for_service(timeout_sec=timeout):
            raise EpisodeClientError(f"service {name} is not available")
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise EpisodeClientError(f"service {name} did not answer within {timeout} s")
        result = future.result()
        if result is None:
            raise EpisodeClientError(f"service {name} failed: {future.exception()!r}")
        return result
    finally:
        node.destroy_client(client)


def foreign_publishers(node: Node, topics: Sequence[contract.Topic], expected: int = 1) -> list[str]:
    """Topics with more publishers than this process started: another stack shares the ROS domain.

    Its messages would mix into ours (a second /ee_pose, someone else's twists), so callers warn.
    """
    return [f"{t.name} ({node.count_publishers(t.name)} publishers)" for t in topics
            if node.count_publishers(t.name) > expected]


def domain_warning(crowded: list[str]) -> str:
    return (f"WARNING: other nodes in ROS domain {os.environ.get('ROS_DOMAIN_ID', '0')} publish on "
            f"{', '.join(crowded)}; their messages will mix into this run. Set ROS_DOMAIN_ID to a free domain.")


def synchronous_loop_overrides(checkpoint: str = "") -> dict[str, dict[str, Any]]:
    """Parameter overrides (by executable) that make a sim bringup a synchronous closed loop driven by
    :class:`ClosedLoop`: the sim waits paused for episodes, steps on each answer's twist, and the
    bridge answers each step at once (see :mod:`magma_ros.sim.lockstep`); '' keeps the parameter
    file's checkpoint. Joint states and the EE pose go out once per control step (10 Hz, not 60):
    the trajectory is the same, with a fifth of the messages every node has to take per step."""
    return {
        "sim_arm_node": {"mode": "synchronous", "autostart_episode": False, "start_paused": True,
                         "continuous": False, "sync_answer_end": "first_twist", "state_rate_hz": 10.0},
        "magma_policy_node": {**({"checkpoint": checkpoint} if checkpoint else {}), "autostart": True,
                              "use_sim_time": True, "action_thread": False},
        "servo_bridge_node": {"autostart": True, "use_sim_time": True, "synchronous_stream": True},
    }


class SimEpisodeClient:
    """Episodes of a sim_arm_node: configure, reset, run, wait for the end."""

    def __init__(self, node: Node, sim_node: str = contract.SimArmParameters.NODE_NAME) -> None:
        self.node = node
        self.sim_node = "/" + sim_node.strip("/")
        self._cond = threading.Condition()
        self._status: EpisodeStatus | None = None
        self._sub = node.create_subscription(String, contract.SIM_EPISODE.name, self._on_status,
                                             qos(contract.SIM_EPISODE))

    def _on_status(self, msg: String) -> None:
        with self._cond:
            self._status = EpisodeStatus.from_json(msg.data)
            self._cond.notify_all()

    @property
    def status(self) -> EpisodeStatus | None:
        with self._cond:
            return self._status

    def configure(self, seed: int, task: str, color: str = "", max_steps: int = 0) -> None:
        """Set the next episode's parameters (they take effect at :meth:`reset`)."""
        values = {"seed": seed, "task": task, "color": color, "max_steps": max_steps}
        request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                    for k, v in values.items()])
        response = call(self.node, SetParameters, f"{self.sim_node}/set_parameters", request)
        refused = [r.reason for r in response.results if not r.successful]
        if refused:
            raise EpisodeClientError(f"{self.sim_node} refused {values}: {'; '.join(refused)}")

    def reset(self) -> EpisodeStatus:
        response = call(self.node, Trigger, f"{self.sim_node}/{contract.SIM_RESET_SERVICE[2:]}", Trigger.Request())
        if not response.success:
            raise EpisodeClientError(f"{self.sim_node} reset failed: {response.message}")
        return EpisodeStatus.from_json(response.message)

    def pause(self, paused: bool) -> None:
        response = call(self.node, SetBool, f"{self.sim_node}/{contract.SIM_PAUSE_SERVICE[2:]}",
                        SetBool.Request(data=paused))
        if not response.success:
            raise EpisodeClientError(f"{self.sim_node} pause({paused}) failed: {response.message}")

    def wait_done(self, episode: int, timeout: float, progress: Progress | None = None) -> EpisodeStatus:
        """Block until episode ``episode`` is over; ``progress`` sees every new status."""
        deadline = time.monotonic() + timeout
        seen = -1
        with self._cond:
            while True:
                status = self._status
                if status is not None and status.episode == episode:
                    if progress is not None and status.step != seen:
                        seen = status.step
                        progress(status)
                    if status.done:
                        return status
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EpisodeClientError(f"episode {episode} not over after {timeout:.0f} s (last: {status})")
                self._cond.wait(min(left, 0.5))


class LifecycleClient:
    """Transitions of a lifecycle node by name (configure, activate, deactivate, cleanup)."""

    TRANSITIONS: ClassVar[dict[str, int]] = {
        "configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
        "deactivate": Transition.TRANSITION_DEACTIVATE, "cleanup": Transition.TRANSITION_CLEANUP}

    def __init__(self, node: Node, target: str) -> None:
        self.node = node
        self.target = "/" + target.strip("/")

    def state(self) -> str:
        return call(self.node, GetState, f"{self.target}/get_state", GetState.Request()).current_state.label

    def transition(self, name: str) -> None:
        request = ChangeState.Request(transition=Transition(id=self.TRANSITIONS[name]))
        if not call(self.node, ChangeState, f"{self.target}/change_state", request, timeout=60.0).success:
            raise EpisodeClientError(f"{self.target}: {name} failed (state {self.state()})")

    def ensure(self, wanted: str) -> None:
        """Bring the node to 'inactive' or 'active' from wherever it is."""
        state = self.state()
        if state == wanted:
            return
        if state == "unconfigured":
            self.transition("configure")
            state = "inactive"
        if wanted == "active" and state == "inactive":
            self.transition("activate")
        elif wanted == "inactive" and state == "active":
            self.transition("deactivate")


class RunningGraph:
    """Nodes spinning on one executor (:func:`magma_ros.ros.runtime.make_executor`) in a background thread."""

    def __init__(self, nodes: Sequence[Node], threads: int = 1) -> None:
        self.nodes = list(nodes)
        self.executor = make_executor(threads)
        for node in self.nodes:
            self.executor.add_node(node)
        self._thread = threading.Thread(target=self._spin, name="magma-graph", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # the context is shut down under us at exit
            if rclpy.ok():
                raise

    def add(self, node: Node) -> Node:
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def close(self) -> None:
        """Stop spinning, then let each node release its resources, then destroy them."""
        self.executor.shutdown(timeout_sec=5.0)
        self._thread.join(timeout=5.0)
        for node in self.nodes:
            close = getattr(node, "close", None)
            if callable(close):
                try:
                    close()
                except Exception as err:  # keep closing the others
                    node.get_logger().warning(f"close failed: {err!r}")
        for node in self.nodes:
            node.destroy_node()


@contextmanager
def ros_session() -> Iterator[None]:
    """rclpy initialised for the block (Ctrl-C safe)."""
    rclpy.init()
    try:
        yield
    finally:
        rclpy.try_shutdown()


class ProgressLine:
    """One progress line per episode: rewritten in place on a terminal, printed once when done otherwise."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty()

    def update(self, text: str) -> None:
        if self.tty:
            self.stream.write(f"\r\033[K{text}")
            self.stream.flush()

    def finish(self, text: str) -> None:
        self.stream.write(f"\r\033[K{text}\n" if self.tty else f"{text}\n")
        self.stream.flush()


class ClosedLoop:
    """Policy episodes in the simulated workcell: sim_arm_node + magma_policy_node + servo_bridge_node.

    Between episodes sim time is held and the policy and the bridge are deactivated (nothing
    moves, the gripper hysteresis starts afresh), the sim is reset to the seed and the policy
    is told the instruction over its service; then both are activated and time runs. With the
    sim in synchronous mode and greedy decoding an episode is deterministic for its seed.
    """

    def __init__(self, control: Node, sim_node: str, policy_node: str, bridge_node: str) -> None:
        self.control = control
        self.sim = SimEpisodeClient(control, sim_node)
        self.policy = LifecycleClient(control, policy_node)
        self.bridge = LifecycleClient(control, bridge_node)
        self.policy_node = "/" + policy_node.strip("/")

    LOOP_TOPICS = (contract.CAMERA_IMAGE, contract.EE_POSE, contract.JOINT_STATES, contract.EE_DELTA,
                   contract.SERVO_TWIST, contract.GRIPPER_TRAJECTORY)

    def wait_for_discovery(self, timeout: float = 15.0) -> bool:
        """Until camera, steps and twists have publishers and subscribers (DDS matching is asynchronous)."""
        deadline = time.monotonic() + timeout
        topics = (contract.CAMERA_IMAGE, contract.EE_DELTA, contract.SERVO_TWIST, contract.EE_POSE)
        while time.monotonic() < deadline:
            if all(self.control.count_publishers(t.name) and self.control.count_subscribers(t.name) for t in topics):
                time.sleep(0.3)
                return True
            time.sleep(0.05)
        return False

    def foreign_publishers(self) -> list[str]:
        """The loop's topics that someone outside it also publishes on (see :func:`foreign_publishers`)."""
        return foreign_publishers(self.control, self.LOOP_TOPICS)

    def set_instruction(self, instruction: str) -> None:
        from magma_ros.srv import SetInstruction

        name = f"{self.policy_node}/{contract.SET_INSTRUCTION_SERVICE[2:]}"
        response = call(self.control, SetInstruction, name, SetInstruction.Request(instruction=instruction))
        if not response.success:
            raise EpisodeClientError(f"{name} refused {instruction!r}: {response.message}")

    def prepare(self, seed: int, task: str, max_steps: int = 0) -> EpisodeStatus:
        """Hold everything and reset the sim to a new episode (time not yet running)."""
        self.sim.pause(True)
        self.policy.ensure("inactive")
        self.bridge.ensure("inactive")
        self.sim.configure(seed, task, "", max_steps)
        status = self.sim.reset()
        self.set_instruction(status.instruction)
        return status

    def run(self, status: EpisodeStatus, timeout: float, progress: Progress | None = None) -> EpisodeStatus:
        """Run the prepared episode to its end; time is held again afterwards."""
        self.bridge.ensure("active")
        self.policy.ensure("active")
        self.sim.pause(False)
        try:
            return self.sim.wait_done(status.episode, timeout, progress)
        finally:
            self.sim.pause(True)

    def stop(self) -> None:
        self.sim.pause(True)
        self.policy.ensure("inactive")
        self.bridge.ensure("inactive")
