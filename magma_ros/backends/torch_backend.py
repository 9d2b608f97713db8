"""PyTorch backend: MagmaPolicy (model core) + action/trace codecs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from magma_ros.backends.base import (
    BackendError,
    PolicyBackend,
    PolicyOutput,
    StageTimings,
)
from magma_ros.codecs import (
    ActionCodec,
    ImageSize,
    build_tom_query,
    draw_marks,
    parse_traces,
    place_marks_on_grid,
    resolve_statistics,
)

MARK_GRID = (3, 4)          # rows x cols of candidate marks for Trace-of-Mark queries
TRACE_MAX_NEW_TOKENS = 384


class TorchBackend(PolicyBackend):
    """Runs a Magma checkpoint with PyTorch (CPU or CUDA)."""

    def __init__(self, checkpoint: str | Path, dtype: str = "float32", device: str = "cpu",
                 statistics: str = "bridge_orig", temperature: float = 0.0, model_id: str = "") -> None:
        from magma_ros.codecs import CodecError
        from magma_ros.model import GREEDY, MagmaModelError, MagmaPolicy, Sampling

        directory = Path(checkpoint)
        try:
            self.policy = MagmaPolicy.from_pretrained(directory, dtype=dtype, device=device)
        except MagmaModelError as err:
            raise BackendError(f"cannot load checkpoint {directory}: {err}") from err
        stats_file = directory / "dataset_statistics.json"
        try:
            self.statistics = resolve_statistics(statistics, stats_file if stats_file.is_file() else None)
        except CodecError as err:
            raise BackendError(str(err)) from err
        self.codec = ActionCodec(self.policy.tokenizer.base_vocab_size)
        self.sampling = GREEDY if temperature <= 0 else Sampling(temperature=temperature)
        self.model_id = model_id or str(directory)

    def act(self, rgb: np.ndarray, instruction: str) -> PolicyOutput:
        from magma_ros.model import MagmaModelError

        try:
            step = self.policy.predict_action(rgb, instruction, self.sampling)
        except MagmaModelError as err:
            return PolicyOutput.failure(f"model: {err}")
        timings = _timings(step.timings)
        decoded = self.codec.decode(step.token_ids, self.statistics)
        if not decoded.valid:
            return PolicyOutput.failure(f"undecodable action: {decoded.error}", timings, step.text)
        return PolicyOutput(valid=True, raw_text=step.text, token_ids=tuple(step.token_ids),
                            normalized=np.asarray(decoded.normalized, np.float32),
                            action=np.asarray(decoded.action, np.float32),
                            statistics=self.statistics.name, timings=timings)

    def trace(self, rgb: np.ndarray, instruction: str, n_steps: int) -> PolicyOutput:
        from magma_ros.model import MagmaModelError

        size = ImageSize.of(rgb)
        marks = place_marks_on_grid(size, *MARK_GRID, shuffle_ids=False)
        query = build_tom_query(instruction, n_steps, mark_ids=[m.id for m in marks])
        try:
            result = self.policy.generate_text(draw_marks(rgb, marks), query, TRACE_MAX_NEW_TOKENS, self.sampling)
        except MagmaModelError as err:
            return PolicyOutput.failure(f"model: {err}")
        parsed = parse_traces(result.text, size)
        error = "; ".join(parsed.errors)
        if not parsed.traces and not error:
            error = "no trace in the answer"
        return PolicyOutput(
            valid=False, error=error, raw_text=result.text, timings=_timings(result.timings),
            marks=tuple(marks), traces=tuple(sorted(parsed.traces.items())))

    def close(self) -> None:
        self.policy = None  # type: ignore[assignment]


def _timings(t: object) -> StageTimings:
    return StageTimings(preprocess_ms=t.preprocess_ms, vision_ms=t.vision_ms,  # type: ignore[attr-defined]
                        prefill_ms=t.prefill_ms, decode_ms=t.decode_ms)  # type: ignore[attr-defined]
