"""magma_policy_node: camera frames in, Magma predictions and end-effector steps out.

A lifecycle node: it comes up unconfigured (or configures and activates itself
with ``autostart``), loads the model on configure, and publishes actions only
while active. The executor thread only stores the newest frame; conversion and
inference run on one worker thread, always on the newest frame, so a slow model
drops frames (counted) instead of queueing them. Frames older than
``max_observation_age_s`` are never acted on. Malformed frames are logged
(rate-limited), counted and dropped.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.time import Time
from std_msgs.msg import String

from magma_ros import contract
from magma_ros.backends import BackendError, PolicyBackend, PolicyOutput, create_backend
from magma_ros.contract import PolicyNodeParameters
from magma_ros.image_codec import ImageConversionError, message_to_rgb8
from magma_ros.pipeline import LatestSlot, RollingWindow
from magma_ros.ros.messages import ee_delta_message, prediction_message
from magma_ros.ros.runtime import declare_parameters, message_type, qos, run_node
from magma_ros.srv import SetInstruction

WARN_PERIOD_S = 5.0


class PolicyNode(LifecycleNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(PolicyNodeParameters.NODE_NAME, **kwargs)
        self.params = declare_parameters(self, PolicyNodeParameters)
        self._instruction = self.params.instruction
        self._lock = threading.Lock()
        self._slot: LatestSlot[Any] = LatestSlot()
        self._backend: PolicyBackend | None = None
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._active = False
        self._last_traces: PolicyOutput | None = None
        self._last_trace_time = -math.inf
        self._own_subscriptions: list[Any] = []
        self._own_services: list[Any] = []
        self._own_timers: list[Any] = []
        self._own_publishers: list[Any] = []
        self.counters = {"received": 0, "processed": 0, "dropped_newer_frame": 0, "stale": 0,
                         "rejected": 0, "inactive": 0, "invalid_action": 0, "commanded": 0}
        self._processed = RollingWindow()
        self._latency_ms = RollingWindow()
        self._model_ms = RollingWindow()
        if self.params.autostart:
            self.trigger_configure()
            if self._backend is not None:
                self.trigger_activate()

    # -- lifecycle -------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.params
        try:
            self._backend = create_backend(p.backend, checkpoint=p.checkpoint, dtype=p.dtype, device=p.device,
                                           statistics=p.statistics, temperature=p.sampling_temperature)
        except BackendError as err:
            self.get_logger().error(f"cannot load the model: {err}")
            return TransitionCallbackReturn.FAILURE
        self._prediction_pub = self.create_lifecycle_publisher(
            message_type(contract.PREDICTION), p.prediction_topic, qos(contract.PREDICTION))
        self._delta_pub = self.create_lifecycle_publisher(
            message_type(contract.EE_DELTA), p.ee_delta_topic, qos(contract.EE_DELTA))
        self._diagnostics_pub = self.create_publisher(
            DiagnosticArray, contract.DIAGNOSTICS.name, qos(contract.DIAGNOSTICS))
        self._own_publishers = [self._prediction_pub, self._delta_pub, self._diagnostics_pub]
        if p.image_topic:
            self._own_subscriptions.append(self.create_subscription(
                message_type(contract.CAMERA_IMAGE), p.image_topic, self._on_frame, qos(contract.CAMERA_IMAGE)))
        if p.compressed_image_topic:
            self._own_subscriptions.append(self.create_subscription(
                message_type(contract.CAMERA_IMAGE_COMPRESSED), p.compressed_image_topic, self._on_frame,
                qos(contract.CAMERA_IMAGE_COMPRESSED)))
        self._own_subscriptions.append(self.create_subscription(
            String, p.instruction_topic, self._on_instruction_topic, qos(contract.INSTRUCTION)))
        self._own_services.append(self.create_service(
            SetInstruction, contract.SET_INSTRUCTION_SERVICE, self._on_set_instruction))
        self._own_timers.append(self.create_timer(p.diagnostics_period_s, self._publish_diagnostics))
        self._stop.clear()
        self._worker = threading.Thread(target=self._run_worker, name="magma-inference", daemon=True)
        self._worker.start()
        self.get_logger().info(f"configured: model {self._backend.model_id!r} ({p.backend}), "
                               f"camera {p.image_topic or p.compressed_image_topic}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._slot.clear()
        self._active = True
        self.get_logger().info(f"active: following {self._instruction!r}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._slot.clear()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        self._active = False
        self._stop.set()
        self._slot.close()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
            self._worker = None
        self._slot = LatestSlot()
        for sub in self._own_subscriptions:
            self.destroy_subscription(sub)
        for srv in self._own_services:
            self.destroy_service(srv)
        for timer in self._own_timers:
            self.destroy_timer(timer)
        for pub in self._own_publishers:
            self.destroy_lifecycle_publisher(pub) if hasattr(pub, "on_activate") else self.destroy_publisher(pub)
        self._own_subscriptions, self._own_services, self._own_timers, self._own_publishers = [], [], [], []
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def close(self) -> None:
        self._release()

    # -- inputs (executor thread: cheap) ----------------------------------------------
    def _on_frame(self, msg: Any) -> None:
        self.counters["received"] += 1
        if not self._active:
            self.counters["inactive"] += 1
            return
        self._slot.put(msg)

    def _set_instruction(self, text: str) -> str:
        text = text.strip()
        if not text:
            raise ValueError("instruction must not be empty")
        with self._lock:
            previous, self._instruction = self._instruction, text
            self._last_traces = None
            self._last_trace_time = -math.inf
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

    # -- inference (worker thread) ----------------------------------------------------
    def _run_worker(self) -> None:
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
            try:
                self._process(slotted.item, slotted.received_monotonic)
            except Exception as err:  # the worker must survive anything one frame does
                self.get_logger().error(f"frame dropped, unexpected error: {err!r}",
                                        throttle_duration_sec=WARN_PERIOD_S)
                self.counters["rejected"] += 1

    def _age_s(self, header: Any) -> float:
        stamp = Time.from_msg(header.stamp, clock_type=self.get_clock().clock_type)
        return (self.get_clock().now() - stamp).nanoseconds * 1e-9

    def _process(self, msg: Any, received: float) -> None:
        self.counters["dropped_newer_frame"] = self._slot.replaced
        p = self.params
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
        backend = self._backend
        if backend is None:
            return
        instruction = self.instruction
        output = backend.act(rgb, instruction)
        traces = self._maybe_trace(backend, rgb, instruction)
        self._publish(msg, output, traces, instruction, received, backend.model_id)

    def _maybe_trace(self, backend: PolicyBackend, rgb: np.ndarray, instruction: str) -> PolicyOutput | None:
        period = self.params.trace_period_s
        now = time.monotonic()
        if period > 0 and now - self._last_trace_time >= period:
            self._last_trace_time = now
            result = backend.trace(rgb, instruction, self.params.trace_steps)
            if result.traces or result.marks:
                self._last_traces = result
            elif result.error:
                self.get_logger().warning(f"trace query: {result.error}", throttle_duration_sec=WARN_PERIOD_S)
        return self._last_traces

    def _publish(self, msg: Any, output: PolicyOutput, traces: PolicyOutput | None, instruction: str,
                 received: float, model_id: str) -> None:
        p = self.params
        gripper = float(output.action[6]) if output.valid else float("nan")
        if output.valid and not np.all(np.isfinite(output.action)):
            output = PolicyOutput.failure(f"non-finite action {np.asarray(output.action).tolist()}",
                                          output.timings, output.raw_text)
        age = self._age_s(msg.header)
        if output.valid and age > p.max_observation_age_s:
            output = PolicyOutput.failure(f"observation was {age:.3f} s old when inference finished "
                                          f"(max {p.max_observation_age_s} s)", output.timings, output.raw_text)
        total_ms = (time.monotonic() - received) * 1e3
        prediction = prediction_message(msg.header, output, instruction, model_id,
                                        gripper if output.valid else 0.0, total_ms, traces)
        if not self._active:
            return
        self._prediction_pub.publish(prediction)
        self.counters["processed"] += 1
        self._processed.add(1.0)
        self._latency_ms.add(age * 1e3)
        self._model_ms.add(output.timings.model_ms)
        if not output.valid:
            self.counters["invalid_action"] += 1
            return
        header = type(msg.header)()
        header.stamp = msg.header.stamp
        header.frame_id = p.base_frame
        self._delta_pub.publish(ee_delta_message(header, output.action, gripper, p.step_period_s))
        self.counters["commanded"] += 1

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
                  "instruction": self.instruction}
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        self._diagnostics_pub.publish(array)


NODE = PolicyNode


def main(args: list[str] | None = None) -> int:
    return run_node(PolicyNode, args)
