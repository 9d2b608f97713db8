"""magma_policy_node: camera frames in, Magma predictions and end-effector steps out.

A lifecycle node (:class:`magma_ros.ros.lifecycle_node.ManagedNode`): it comes up
unconfigured (or configures and activates itself with ``autostart``), loads the model on
configure, and publishes only while active. ``instruction`` may be set at run time.

Threads: the executor thread only stores the newest frame (and the latest CameraInfo /
depth); an action thread converts the newest frame and runs the 7-DoF action query;
when ``trace_period_s`` > 0 a trace thread runs the slower Trace-of-Mark query on the
newest converted frame every period, so traces never hold up actions. A slow model
drops frames (counted), it never queues them. Frames older than
``max_observation_age_s`` are never acted on, neither before nor after inference (frames
stamped in the future are, and then rejected by the bridge; under simulated time a frame
may beat its /clock message).
Malformed frames (bad stamps included, checked where they enter) are logged (rate-limited),
counted and dropped.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header, String

from magma_ros import contract
from magma_ros.backends import BackendError, PolicyBackend, PolicyOutput, create_backend, output_gripper_command
from magma_ros.backends.options import backend_options
from magma_ros.codecs import GripperHysteresis
from magma_ros.contract import PolicyNodeParameters
from magma_ros.image_codec import ImageConversionError, depth_to_meters, message_to_rgb8, numpy_to_image
from magma_ros.pipeline import LatestSlot, RollingWindow
from magma_ros.ros.lifecycle_node import ManagedNode, SetupError
from magma_ros.ros.messages import ee_delta_message, prediction_message, trace_markers
from magma_ros.ros.runtime import message_type, qos, run_node
from magma_ros.srv import SetInstruction
from magma_ros.stamps import StampError, stamp_age_s, stamp_to_ns
from magma_ros.visualization import annotate_frame, backproject, default_intrinsics

WARN_PERIOD_S = 5.0


@dataclass(frozen=True)
class Observation:
    """A converted frame the trace thread may reuse."""

    header: Header
    rgb: np.ndarray
    stamp_ns: int


class PolicyNode(ManagedNode[PolicyNodeParameters]):
    PARAMETERS = PolicyNodeParameters

    def initialize(self) -> None:
        self._lock = threading.Lock()
        self._instruction = self.params.instruction
        self._slot: LatestSlot[Any] = LatestSlot()
        self._backend: PolicyBackend | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._observation: Observation | None = None
        self._traces: PolicyOutput | None = None
        self._camera_info: CameraInfo | None = None
        self._depth_msg: Any = None
        self._gripper = GripperHysteresis(self.params.gripper_open_threshold, self.params.gripper_close_threshold,
                                          min_hold_steps=self.params.gripper_min_hold_steps)
        self.counters = {"received": 0, "processed": 0, "dropped_newer_frame": 0, "stale": 0, "rejected": 0,
                         "inactive": 0, "bad_stamp": 0, "invalid_action": 0, "commanded": 0, "trace_queries": 0}
        self._processed = RollingWindow()
        self._latency_ms = RollingWindow()
        self._model_ms = RollingWindow()
        # Where the node's own time goes (ms): waiting for the action thread, converting, publishing.
        self._stage_ms = {name: RollingWindow() for name in ("queue", "convert", "publish")}

    # -- lifecycle -------------------------------------------------------------------
    def setup(self) -> None:
        p = self.params
        try:
            self._backend = create_backend(p.backend, checkpoint=p.checkpoint, dtype=p.dtype, device=p.device,
                                           statistics=p.statistics, temperature=p.sampling_temperature,
                                           options=backend_options(p))
        except BackendError as err:
            raise SetupError(f"cannot load the model: {err}") from err
        self.own("model backend", self._close_backend)

        def lifecycle_pub(topic: contract.Topic, name: str) -> Any:
            return self.own_publisher(message_type(topic), name, qos(topic))

        self._prediction_pub = lifecycle_pub(contract.PREDICTION, p.prediction_topic)
        self._delta_pub = lifecycle_pub(contract.EE_DELTA, p.ee_delta_topic)
        self._annotated_pub = lifecycle_pub(contract.ANNOTATED_IMAGE, p.annotated_image_topic)
        self._markers_pub = lifecycle_pub(contract.TRACE_MARKERS, p.trace_markers_topic)
        self._diagnostics_pub = self.own_publisher(DiagnosticArray, contract.DIAGNOSTICS.name,
                                                   qos(contract.DIAGNOSTICS), lifecycle=False)

        def subscribe(topic: contract.Topic, name: str, callback: Callable[[Any], None]) -> None:
            if name:
                self.own_subscription(message_type(topic), name, callback, qos(topic))

        subscribe(contract.CAMERA_IMAGE, p.image_topic, self._on_frame)
        subscribe(contract.CAMERA_IMAGE_COMPRESSED, p.compressed_image_topic, self._on_frame)
        subscribe(contract.CAMERA_INFO, p.camera_info_topic, self._on_camera_info)
        subscribe(contract.CAMERA_DEPTH, p.depth_topic, self._on_depth)
        subscribe(contract.INSTRUCTION, p.instruction_topic, self._on_instruction_topic)
        self.own_service(SetInstruction, contract.SET_INSTRUCTION_SERVICE, self._on_set_instruction)
        self.own_timer(p.diagnostics_period_s, self._publish_diagnostics)

        self._stop.clear()
        self._threads = [threading.Thread(target=self._run_actions, name="magma-actions", daemon=True)] \
            if p.action_thread else []
        if p.trace_period_s > 0:
            self._threads.append(threading.Thread(target=self._run_traces, name="magma-traces", daemon=True))
        for thread in self._threads:
            thread.start()
        self.own("inference threads", self._stop_threads)
        self.get_logger().info(f"configured: model {self._backend.model_id!r} ({p.backend}), "
                               f"camera {p.image_topic or p.compressed_image_topic}")

    def activate(self) -> None:
        self._slot.clear()
        self._gripper.reset()
        self.get_logger().info(f"active: following {self.instruction!r}")

    def deactivate(self) -> None:
        self._slot.clear()

    def apply_parameters(self, new: PolicyNodeParameters, changed: set[str]) -> None:
        if "instruction" in changed:
            self._set_instruction(new.instruction)  # ValueError (empty): refused

    def _stop_threads(self) -> None:
        self._stop.set()
        self._slot.close()
        for thread in self._threads:
            thread.join(timeout=10.0)
        self._threads = []
        self._slot = LatestSlot()

    def _close_backend(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    # -- inputs (executor thread: cheap) ----------------------------------------------
    def _on_frame(self, msg: Any) -> None:
        self.counters["received"] += 1
        if not self._active:
            self.counters["inactive"] += 1
            return
        try:
            stamp_to_ns(msg.header.stamp)
        except StampError as err:
            self.counters["rejected"] += 1
            self.counters["bad_stamp"] += 1
            self.get_logger().warning(f"camera frame dropped: {err}", throttle_duration_sec=WARN_PERIOD_S)
            return
        if not self.params.action_thread:   # a synchronous simulator waits for this answer: act now
            self._act_guarded(msg, time.monotonic())
            return
        self._slot.put(msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _on_depth(self, msg: Any) -> None:
        self._depth_msg = msg

    def _set_instruction(self, text: str) -> str:
        text = text.strip()
        if not text:
            raise ValueError("instruction must not be empty")
        with self._lock:
            previous, self._instruction = self._instruction, text
            self._traces = None   # traces answered another instruction
            self._gripper.release()   # a new task: a dwell the last one started ends here
        self.get_logger().info(f"instruction: {text!r}")
        return previous

    def _on_instruction_topic(self, msg: String) -> None:
        try:
            self._set_instruction(msg.data)
        except ValueError as err:
            self.get_logger().warning(f"ignored instruction on topic: {err}")

    def _on_set_instruction(self, request: SetInstruction.Request,
                            response: SetInstruction.Response) -> SetInstruction.Response:
        try:
            previous = self._set_instruction(request.instruction)
            response.success, response.message = True, f"previous: {previous}"
        except ValueError as err:
            response.success, response.message = False, str(err)
        return response

    @property
    def instruction(self) -> str:
        with self._lock:
            return self._instruction

    # -- action thread ----------------------------------------------------------------
    def _run_actions(self) -> None:
        min_interval = 1.0 / self.params.control_rate_hz if self.params.control_rate_hz > 0 else 0.0
        last_start = -math.inf
        slot = self._slot
        while not self._stop.is_set():
            wait = last_start + min_interval - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                break
            slotted = slot.take(timeout=0.2)
            if slotted is None:
                continue
            last_start = time.monotonic()
            self._act_guarded(slotted.item, slotted.received_monotonic)

    def _act_guarded(self, msg: Any, received: float) -> None:
        try:
            self._process(msg, received)
        except Exception as err:  # the thread (or the executor) must survive anything one frame does
            self.counters["rejected"] += 1
            self.get_logger().error(f"frame dropped, unexpected error: {err!r}", throttle_duration_sec=WARN_PERIOD_S)

    def _age_s(self, header: Any) -> float:
        """Age of a frame's stamp (validated in _on_frame; StampError otherwise)."""
        return stamp_age_s(header.stamp, self.get_clock().now().nanoseconds)

    def _process(self, msg: Any, received: float) -> None:
        p = self.params
        started = time.monotonic()
        self._stage_ms["queue"].add((started - received) * 1e3)
        self.counters["dropped_newer_frame"] = self._slot.replaced
        if not self._active:
            return
        if self._age_s(msg.header) > p.max_observation_age_s:
            self.counters["stale"] += 1
            self.get_logger().warning(f"frame older than {p.max_observation_age_s} s dropped",
                                      throttle_duration_sec=WARN_PERIOD_S)
            return
        try:
            rgb = message_to_rgb8(msg)
        except ImageConversionError as err:
            self.counters["rejected"] += 1
            self.get_logger().warning(f"malformed camera frame dropped: {err}", throttle_duration_sec=WARN_PERIOD_S)
            return
        self._stage_ms["convert"].add((time.monotonic() - started) * 1e3)
        backend = self._backend
        if backend is None:
            return
        self._observation = Observation(msg.header, rgb, stamp_to_ns(msg.header.stamp))
        instruction = self.instruction
        output = backend.act(rgb, instruction)
        self._publish_step(msg.header, rgb, output, instruction, received, backend.model_id)

    def _publish_step(self, header: Header, rgb: np.ndarray, output: PolicyOutput, instruction: str,
                      received: float, model_id: str) -> None:
        p = self.params
        if output.valid and not np.all(np.isfinite(output.action)):
            output = PolicyOutput.failure(f"non-finite action {np.asarray(output.action).tolist()}",
                                          output.timings, output.raw_text)
        age = self._age_s(header)
        if output.valid and age > p.max_observation_age_s:
            output = PolicyOutput.failure(
                f"observation was {age:.3f} s old when inference finished (max {p.max_observation_age_s} s)",
                output.timings, output.raw_text)
        with self._lock:   # beside _set_instruction, which ends a gripper dwell
            gripper = output_gripper_command(self._gripper, output)
            traces = self._traces
        prediction = prediction_message(header, output, instruction, model_id, gripper,
                                        (time.monotonic() - received) * 1e3, traces)
        if not self._active:
            return
        publish_start = time.monotonic()
        self._prediction_pub.publish(prediction)
        self.counters["processed"] += 1
        self._processed.add(1.0)
        self._latency_ms.add(age * 1e3)
        self._model_ms.add(output.timings.model_ms)
        if output.valid:
            delta_header = Header(stamp=header.stamp, frame_id=p.base_frame)
            self._delta_pub.publish(ee_delta_message(delta_header, output.action, gripper, p.step_period_s))
            self.counters["commanded"] += 1
        else:
            self.counters["invalid_action"] += 1
        if self._annotated_pub.get_subscription_count() > 0:
            marks, trace_list = (traces.marks, traces.traces) if traces is not None else ((), ())
            image = annotate_frame(rgb, marks, trace_list, output.action if output.valid else None,
                                   note="" if output.valid else output.error[:60])
            self._annotated_pub.publish(numpy_to_image(image, "rgb8", header=header))
        self._stage_ms["publish"].add((time.monotonic() - publish_start) * 1e3)

    # -- trace thread -----------------------------------------------------------------
    def _run_traces(self) -> None:
        last_stamp = -1
        while not self._stop.wait(self.params.trace_period_s if last_stamp >= 0 else 0.05):
            observation, backend = self._observation, self._backend
            if observation is None or backend is None or not self._active or observation.stamp_ns == last_stamp:
                continue
            if self._age_s(observation.header) > self.params.max_observation_age_s:
                continue
            last_stamp = observation.stamp_ns
            try:
                self._trace(backend, observation)
            except Exception as err:
                self.get_logger().error(f"trace query failed: {err!r}", throttle_duration_sec=WARN_PERIOD_S)

    def _trace(self, backend: PolicyBackend, observation: Observation) -> None:
        instruction = self.instruction
        result = backend.trace(observation.rgb, instruction, self.params.trace_steps)
        self.counters["trace_queries"] += 1
        if not result.traces:
            self.get_logger().warning(f"trace query gave no trace: {result.error[:200]}",
                                      throttle_duration_sec=WARN_PERIOD_S)
            return
        with self._lock:
            if instruction != self._instruction:
                return
            self._traces = result
        height, width = observation.rgb.shape[:2]
        points = {mark_id: self._trace_points_3d(np.asarray(t.pixels), width, height) for mark_id, t in result.traces}
        if self._active:
            self._markers_pub.publish(trace_markers(observation.header, result.traces, points))

    def _trace_points_3d(self, pixels: np.ndarray, width: int, height: int) -> np.ndarray:
        info = self._camera_info
        if info is not None and info.width and info.height:
            k = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
            k[0] *= width / info.width
            k[1] *= height / info.height
        else:
            k = default_intrinsics(width, height)
        depth = None
        scale = (1.0, 1.0)
        if self._depth_msg is not None:
            try:
                depth = depth_to_meters(self._depth_msg)
                scale = (depth.shape[1] / width, depth.shape[0] / height)
            except ImageConversionError as err:
                self.get_logger().warning(f"depth image unusable: {err}", throttle_duration_sec=WARN_PERIOD_S)
        return backproject(pixels, k, depth, self.params.trace_marker_depth_m, scale)

    # -- diagnostics -----------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        self.counters["dropped_newer_frame"] = self._slot.replaced
        status = DiagnosticStatus()
        status.name = f"{self.get_name()}: policy"
        status.hardware_id = self._backend.model_id if self._backend else ""
        rejected = self.counters["rejected"] + self.counters["stale"]
        status.level = DiagnosticStatus.OK if self._active else DiagnosticStatus.WARN
        status.message = "active" if self._active else "inactive"
        if self._active and rejected:
            status.message += f", {rejected} frame(s) rejected or stale"
        values = {**{k: str(v) for k, v in self.counters.items()},
                  "rate_hz": f"{self._processed.rate_hz():.2f}",
                  "latency_p50_ms": f"{self._latency_ms.percentile(50):.1f}",
                  "latency_p95_ms": f"{self._latency_ms.percentile(95):.1f}",
                  "model_p50_ms": f"{self._model_ms.percentile(50):.1f}",
                  **{f"{name}_p50_ms": f"{w.percentile(50):.2f}" for name, w in self._stage_ms.items()},
                  **{f"{name}_p95_ms": f"{w.percentile(95):.2f}" for name, w in self._stage_ms.items()},
                  "instruction": self.instruction}
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        self._diagnostics_pub.publish(array)


NODE = PolicyNode


def main(args: list[str] | None = None) -> int:
    return run_node(PolicyNode, args)
