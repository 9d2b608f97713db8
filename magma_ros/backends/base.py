"""The backend seam: what the policy node needs from a model, whatever runs it.

A backend turns one RGB frame and an instruction into a :class:`PolicyOutput`.
PyTorch, ONNX Runtime and TensorRT backends implement the same interface; the ROS
node only ever sees this module's types. ROS-free.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

from magma_ros.codecs import GRIPPER_DIM, GripperHysteresis, Mark, TracePoints

ACTION_DIMS = 7


class BackendError(RuntimeError):
    """A backend cannot be created or used (missing library, GPU, checkpoint...)."""


@dataclass(frozen=True)
class StageTimings:
    """Wall-clock milliseconds per inference stage."""

    preprocess_ms: float = 0.0
    vision_ms: float = 0.0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0

    @property
    def model_ms(self) -> float:
        return self.preprocess_ms + self.vision_ms + self.prefill_ms + self.decode_ms


@dataclass(frozen=True)
class PolicyOutput:
    """Everything a backend inferred from one frame.

    ``valid`` is False when no usable action came out (``error`` says why); then
    ``action`` must not be commanded. ``action`` holds metres / radians for dims
    0..5 and the decoded gripper value in dim 6 (0 closed .. 1 open, Magma's bin centre:
    ~0.0 for a closed token, 0.996 for an open one; turn it into a command with
    :func:`output_gripper_command`).
    """

    valid: bool
    error: str = ""
    raw_text: str = ""
    token_ids: tuple[int, ...] = ()
    normalized: np.ndarray = field(default_factory=lambda: np.zeros(ACTION_DIMS, np.float32))
    action: np.ndarray = field(default_factory=lambda: np.zeros(ACTION_DIMS, np.float32))
    statistics: str = ""
    timings: StageTimings = StageTimings()
    marks: tuple[Mark, ...] = ()
    traces: tuple[tuple[int, TracePoints], ...] = ()   # (mark id, trace), by mark id

    @classmethod
    def failure(cls, error: str, timings: StageTimings = StageTimings(), raw_text: str = "") -> PolicyOutput:
        return cls(valid=False, error=error, timings=timings, raw_text=raw_text)


@dataclass(frozen=True)
class TraceQuery:
    """A Trace-of-Mark question about one frame, ready for the model.

    ``image``: the frame the model sees, resized to the policy's robot-frame size (as its
    training frames were) with the marks drawn; ``marks``: the same marks placed on the
    original frame (grid cells are fractions of the frame, so they are the same cells);
    ``question``: the user turn.
    """

    image: np.ndarray
    question: str
    marks: tuple[Mark, ...]


def trace_query(rgb: np.ndarray, instruction: str, n_steps: int, mark_grid: tuple[int, int],
                frame_size: int | None) -> TraceQuery:
    """Marks on a ``mark_grid`` (rows, cols) with ids in reading order, drawn on ``rgb`` resized to
    ``frame_size`` squared (no resize for ``None``), and the question about the next ``n_steps``."""
    from magma_ros.codecs import ImageSize, build_tom_query, draw_marks, place_marks_on_grid
    from magma_ros.image_codec import resize_frame

    size = ImageSize.of(rgb)
    frame = resize_frame(rgb, frame_size) if frame_size is not None else rgb
    shown = place_marks_on_grid(ImageSize.of(frame), *mark_grid, shuffle_ids=False)
    marks = tuple(Mark.at_grid(m.id, m.grid_x, m.grid_y, size) for m in shown) if frame is not rgb else tuple(shown)
    question = build_tom_query(instruction, n_steps, mark_ids=[m.id for m in shown])
    return TraceQuery(draw_marks(frame, shown), question, marks)


def output_gripper_command(hysteresis: GripperHysteresis, output: PolicyOutput) -> float:
    """The gripper command (1.0 open, 0.0 closed) the policy node sends for one output.

    A valid output feeds its decoded gripper value (dim 6) to ``hysteresis``; an invalid one
    holds the current state.
    """
    return hysteresis.update(float(output.action[GRIPPER_DIM])) if output.valid else float(hysteresis.is_open)


class PolicyBackend(abc.ABC):
    """Runs a Magma policy. Implementations must be safe to call from one worker thread."""

    #: checkpoint name or path, reported in every Prediction
    model_id: str = ""

    @abc.abstractmethod
    def act(self, rgb: np.ndarray, instruction: str) -> PolicyOutput:
        """Infer one 7-DoF action from an (H, W, 3) uint8 RGB frame."""

    def trace(self, rgb: np.ndarray, instruction: str, n_steps: int) -> PolicyOutput:
        """Run a Trace-of-Mark query; backends without one report that."""
        return PolicyOutput.failure(f"backend {type(self).__name__} has no Trace-of-Mark query")

    def close(self) -> None:  # noqa: B027  (optional hook: most backends hold nothing to release)
        """Release the model (GPU memory, sessions). Idempotent."""


class NullBackend(PolicyBackend):
    """No model: every frame yields an invalid action saying so (backend 'none').

    For bringing up cameras and the graph before a checkpoint is available; the
    node publishes Predictions (with the source header) but never an action.
    """

    model_id = "none"

    def act(self, rgb: np.ndarray, instruction: str) -> PolicyOutput:
        return PolicyOutput.failure("no model loaded (backend 'none')")
