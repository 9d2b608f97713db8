"""PyTorch backend: MagmaPolicy (model core) + action/trace codecs.

The one place a frame becomes a decoded action or parsed traces with PyTorch: the
policy node and ``magma-ros predict`` both go through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from magma_ros.backends.base import BackendError, PolicyBackend, PolicyOutput, StageTimings, trace_query
from magma_ros.codecs import (
    ActionCodec,
    ImageSize,
    Mark,
    parse_traces,
    resolve_statistics,
)

MARK_GRID = (3, 4)          # rows x cols of candidate marks for Trace-of-Mark queries
TRACE_MAX_NEW_TOKENS = 384
NO_TIMINGS = StageTimings()


class TorchBackend(PolicyBackend):
    """Runs a Magma checkpoint with PyTorch (CPU or CUDA).

    ``statistics`` names the q01/q99 set; ``""`` takes the checkpoint's only
    dataset_statistics.json entry, else ``bridge_orig``.
    """

    def __init__(self, checkpoint: str | Path, dtype: str | None = "float32", device: str = "cpu",
                 statistics: str = "bridge_orig", temperature: float = 0.0, model_id: str = "",
                 seed: int | None = None, mark_grid: tuple[int, int] = MARK_GRID,
                 trace_max_new_tokens: int = TRACE_MAX_NEW_TOKENS) -> None:
        from magma_ros.codecs import CodecError
        from magma_ros.model import GREEDY, MagmaModelError, MagmaPolicy, Sampling
        from magma_ros.model.loading import STATISTICS_FILE

        directory = Path(checkpoint)
        stats_file = directory / STATISTICS_FILE
        stats_path = stats_file if stats_file.is_file() else None
        try:
            self.statistics = resolve_statistics(statistics or (None if stats_path else "bridge_orig"), stats_path)
        except CodecError as err:
            raise BackendError(str(err)) from err
        try:
            self.policy = MagmaPolicy.from_pretrained(directory, dtype=dtype, device=device)
        except MagmaModelError as err:
            raise BackendError(f"cannot load checkpoint {directory}: {err}") from err
        self.codec = ActionCodec(self.policy.tokenizer.base_vocab_size)
        self.sampling = GREEDY if temperature <= 0 else Sampling(temperature=temperature, seed=seed)
        self.model_id = model_id or str(directory)
        self.mark_grid = mark_grid
        self.trace_max_new_tokens = trace_max_new_tokens

    def act(self, rgb: np.ndarray, instruction: str) -> PolicyOutput:
        from magma_ros.model import MagmaModelError

        try:
            step = self.policy.predict_action(rgb, instruction, self.sampling)
        except MagmaModelError as err:
            return PolicyOutput.failure(f"model: {err}")
        return self.output_from_tokens(step.token_ids, step.text, _timings(step.timings))

    def output_from_tokens(self, token_ids: tuple[int, ...], raw_text: str = "",
                           timings: StageTimings = NO_TIMINGS) -> PolicyOutput:
        """Decode 7 generated action token ids (Magma's conventions, see ``codecs.actions``)
        into the :class:`PolicyOutput` :meth:`act` returns; invalid ids give a failure."""
        decoded = self.codec.decode(token_ids, self.statistics)
        if not decoded.valid:
            return PolicyOutput.failure(f"undecodable action: {decoded.error}", timings, raw_text)
        return PolicyOutput(valid=True, raw_text=raw_text, token_ids=tuple(token_ids),
                            normalized=np.asarray(decoded.normalized, np.float32),
                            action=np.asarray(decoded.action, np.float32),
                            statistics=self.statistics.name, timings=timings)

    def trace(self, rgb: np.ndarray, instruction: str, n_steps: int) -> PolicyOutput:
        """Label the frame with numbered marks, ask the Trace-of-Mark question, parse the answer.

        ``valid`` stays False (a trace is not an action); ``error`` lists parse problems.
        """
        query = trace_query(rgb, instruction, n_steps, self.mark_grid, self.policy.action_frame_size)
        return self.answer_traces(query.image, query.question, query.marks, ImageSize.of(rgb))

    def answer_traces(self, marked_rgb: np.ndarray, question: str, marks: Sequence[Mark] = (),
                      size: ImageSize | None = None) -> PolicyOutput:
        """Ask a Trace-of-Mark ``question`` about a frame that already carries its marks and parse
        the answer (what :meth:`trace` does after drawing its marks; offline evaluation asks the
        labels' own questions); trace pixels are on a frame of ``size`` (default: the marked one's).
        ``valid`` stays False; ``error`` lists parse problems."""
        from magma_ros.model import MagmaModelError

        size = size if size is not None else ImageSize.of(marked_rgb)
        try:
            result = self.policy.generate_text(marked_rgb, question, self.trace_max_new_tokens, self.sampling)
        except MagmaModelError as err:
            return PolicyOutput.failure(f"model: {err}")
        parsed = parse_traces(result.text, size)
        errors = list(parsed.errors)
        if not result.finished:
            errors.append(f"answer cut at {self.trace_max_new_tokens} tokens")
        if not parsed.traces and not errors:
            errors.append("no trace in the answer")
        return PolicyOutput(valid=False, error="; ".join(errors), raw_text=result.text,
                            token_ids=tuple(result.token_ids), timings=_timings(result.timings),
                            marks=tuple(marks), traces=tuple(sorted(parsed.traces.items())))

    def close(self) -> None:
        self.policy = None  # type: ignore[assignment]


def _timings(t: object) -> StageTimings:
    return StageTimings(preprocess_ms=t.preprocess_ms, vision_ms=t.vision_ms,  # type: ignore[attr-defined]
                        prefill_ms=t.prefill_ms, decode_ms=t.decode_ms)  # type: ignore[attr-defined]
