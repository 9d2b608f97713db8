"""Turn ROS-free policy results into magma_ros messages."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from magma_ros.backends import PolicyOutput
from magma_ros.codecs import TracePoints, trace_color
from magma_ros.msg import EndEffectorDelta, Mark, Prediction, Trace


def prediction_message(header: Header, output: PolicyOutput, instruction: str, model_id: str,
                       gripper: float, total_ms: float, traces: PolicyOutput | None = None) -> Prediction:
    """A Prediction for one frame; ``traces`` is the latest Trace-of-Mark result, if any."""
    msg = Prediction()
    msg.header = header
    msg.model_id = model_id
    msg.instruction = instruction
    msg.raw_text = output.raw_text
    msg.action_valid = bool(output.valid)
    msg.action_token_ids = [int(t) for t in output.token_ids]
    msg.action_normalized = np.asarray(output.normalized, dtype=np.float32)
    msg.action = np.asarray(output.action, dtype=np.float32)
    msg.statistics = output.statistics
    msg.gripper = float(gripper)
    timings = output.timings
    msg.preprocess_ms = float(timings.preprocess_ms)
    msg.vision_ms = float(timings.vision_ms)
    msg.prefill_ms = float(timings.prefill_ms)
    msg.decode_ms = float(timings.decode_ms)
    msg.total_ms = float(total_ms)
    msg.error = output.error
    source = traces if traces is not None else output
    msg.marks = [Mark(id=m.id, u=float(m.u), v=float(m.v), grid_x=int(m.grid_x), grid_y=int(m.grid_y))
                 for m in source.marks]
    msg.traces = [trace_message(mark_id, np.asarray(t.pixels), np.asarray(t.grid)) for mark_id, t in source.traces]
    return msg


def trace_message(mark_id: int, pixels: np.ndarray, grid: np.ndarray, frame_id: str = "",
                  points_3d: np.ndarray | None = None) -> Trace:
    msg = Trace()
    msg.mark_id = int(mark_id)
    pixels = np.asarray(pixels, dtype=np.float32).reshape(-1, 2)
    grid = np.asarray(grid).reshape(-1, 2)
    msg.u = pixels[:, 0].copy()
    msg.v = pixels[:, 1].copy()
    msg.grid_x = [int(x) for x in grid[:, 0]]
    msg.grid_y = [int(y) for y in grid[:, 1]]
    if points_3d is not None:
        msg.points_frame_id = frame_id
        msg.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in np.asarray(points_3d)]
    return msg


def ee_delta_message(header: Header, action: np.ndarray, gripper: float, step_period_s: float) -> EndEffectorDelta:
    """An EndEffectorDelta from a metric 7-vector; refuses non-finite values."""
    values = [float(v) for v in np.asarray(action, dtype=np.float64)[:6]]
    if not all(math.isfinite(v) for v in [*values, gripper, step_period_s]) or step_period_s <= 0:
        raise ValueError(f"refusing a non-finite end-effector delta: {values}, gripper {gripper}")
    msg = EndEffectorDelta()
    msg.header = header
    msg.dx, msg.dy, msg.dz, msg.droll, msg.dpitch, msg.dyaw = values
    msg.gripper = float(gripper)
    msg.step_period = float(step_period_s)
    return msg


TRACE_NAMESPACE = "magma_traces"
TRACE_LINE_WIDTH_M = 0.008


def trace_markers(header: Header, traces: Sequence[tuple[int, TracePoints]],
                  points_3d: dict[int, np.ndarray]) -> MarkerArray:
    """A MarkerArray replacing all previous trace markers: DELETEALL, then one LINE_STRIP per trace.

    Markers are in the camera frame of ``header``; per-point colours fade from pale
    (now) to the mark's colour (the last future step).
    """
    array = MarkerArray()
    clear = Marker(header=header, ns=TRACE_NAMESPACE, action=Marker.DELETEALL)
    array.markers.append(clear)
    for mark_id, _trace in traces:
        points = points_3d.get(mark_id)
        if points is None or len(points) < 2:
            continue
        r, g, b = (c / 255.0 for c in trace_color(mark_id))
        marker = Marker(header=header, ns=TRACE_NAMESPACE, id=int(mark_id), type=Marker.LINE_STRIP,
                        action=Marker.ADD)
        marker.pose.orientation.w = 1.0
        marker.scale.x = TRACE_LINE_WIDTH_M
        marker.color = ColorRGBA(r=r, g=g, b=b, a=1.0)
        n = len(points)
        for i, (x, y, z) in enumerate(np.asarray(points, dtype=float)):
            marker.points.append(Point(x=x, y=y, z=z))
            fade = 0.35 + 0.65 * i / max(1, n - 1)
            marker.colors.append(ColorRGBA(r=1 - fade * (1 - r), g=1 - fade * (1 - g), b=1 - fade * (1 - b), a=1.0))
        array.markers.append(marker)
    return array
