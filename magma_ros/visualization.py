"""What the policy intends, drawn: annotated frames and 3-D trace points. ROS-free.

Traces are drawn first and marks on top, so mark numbers stay readable.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from magma_ros.codecs import Mark, TracePoints, draw_marks, draw_traces

DEPTH_WINDOW = 2   # half-size of the window a pixel's depth is taken from (median, NaN ignored)


def annotate_frame(rgb: np.ndarray, marks: Sequence[Mark], traces: Sequence[tuple[int, TracePoints]],
                   action: np.ndarray | None = None, note: str = "") -> np.ndarray:
    """A copy of ``rgb`` with traces, marks and a one-line action summary drawn."""
    out = rgb
    if traces:
        starts = {m.id: (m.u, m.v) for m in marks}
        out = draw_traces(out, dict(traces), start_points={k: v for k, v in starts.items() if k in dict(traces)})
    if marks:
        out = draw_marks(out, marks)
    if out is rgb:
        out = np.ascontiguousarray(rgb).copy()
    text = note
    if action is not None and np.all(np.isfinite(action)):
        a = np.asarray(action, dtype=float)
        text = (f"dxyz {a[0]*100:+.1f} {a[1]*100:+.1f} {a[2]*100:+.1f} cm  "
                f"drpy {np.degrees(a[3]):+.1f} {np.degrees(a[4]):+.1f} {np.degrees(a[5]):+.1f} deg  "
                f"grip {a[6]:.2f}") + (f"  {note}" if note else "")
    if text:
        scale = max(0.35, out.shape[1] / 1400)
        y = int(18 * scale / 0.45)
        cv2.putText(out, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def default_intrinsics(width: int, height: int, hfov_deg: float = 69.0) -> np.ndarray:
    """A pinhole K for a camera without CameraInfo (RealSense-like horizontal FOV)."""
    fx = 0.5 * width / np.tan(np.radians(hfov_deg) / 2)
    return np.array([[fx, 0, (width - 1) / 2], [0, fx, (height - 1) / 2], [0, 0, 1]], dtype=np.float64)


def backproject(pixels: np.ndarray, k: np.ndarray, depth_m: np.ndarray | None = None,
                fallback_depth_m: float = 0.8, depth_scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Pixels (N, 2) (u, v) -> points (N, 3) in the camera optical frame (x right, y down, z forward).

    Depth comes from ``depth_m`` (metres, NaN = unknown) around each pixel when given,
    scaled by ``depth_scale`` = (depth width / image width, depth height / image height)
    if the depth image has another size; pixels without valid depth use ``fallback_depth_m``.
    """
    pixels = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
    z = np.full(len(pixels), float(fallback_depth_m))
    if depth_m is not None and depth_m.size:
        for i, (u, v) in enumerate(pixels):
            du, dv = round(u * depth_scale[0]), round(v * depth_scale[1])
            window = depth_m[max(0, dv - DEPTH_WINDOW):dv + DEPTH_WINDOW + 1,
                             max(0, du - DEPTH_WINDOW):du + DEPTH_WINDOW + 1]
            valid = window[np.isfinite(window) & (window > 0)]
            if valid.size:
                z[i] = float(np.median(valid))
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    x = (pixels[:, 0] - cx) / fx * z
    y = (pixels[:, 1] - cy) / fy * z
    return np.stack([x, y, z], axis=1)
