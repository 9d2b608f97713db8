"""The host side shared by the compiled backends (ONNX Runtime, TensorRT).

A :class:`GraphRunner` runs the exported graphs (see :mod:`magma_ros.export.layout`);
:class:`ExportedPolicy` does everything around them with numpy: the anyres preprocessing
and prompt (the same code the PyTorch path uses), the token-embedding lookup from the
memory-mapped ``embed_tokens.npy``, crop tiling with row separators, and the decoding
loop (7 action tokens from the 256-row action head; free text through the full head).
:class:`CompiledBackend` turns its token ids into actions with the same codec calls as
:class:`~magma_ros.backends.torch_backend.TorchBackend`.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from magma_ros.backends.base import BackendError, PolicyBackend, PolicyOutput, StageTimings
from magma_ros.export.layout import EMBED_FILE, SEPARATOR_FILE, Manifest

ACTION_DIMS = 7


class GraphRunner(abc.ABC):
    """Runs the exported graphs on one runtime. Arrays in, numpy arrays out."""

    @abc.abstractmethod
    def vision(self, pixel_values: np.ndarray) -> np.ndarray:
        """(crops, 3, S, S) -> (crops, g, g, H)."""

    @abc.abstractmethod
    def prefill(self, inputs_embeds: np.ndarray) -> tuple[np.ndarray, np.ndarray, object]:
        """(1, L, H) -> (action_logits (1, 256), hidden (1, H), cache)."""

    @abc.abstractmethod
    def decode(self, inputs_embeds: np.ndarray, cache: object) -> tuple[np.ndarray, np.ndarray, object]:
        """(1, 1, H), cache of length P -> (action_logits, hidden, cache of length P + 1)."""

    def head(self, hidden: np.ndarray) -> np.ndarray:
        """(N, H) -> full-vocabulary logits (N, vocab)."""
        raise BackendError(f"{type(self).__name__} has no full-vocabulary head (free-text answers)")

    def close(self) -> None:  # noqa: B027  (optional)
        """Release sessions / engines."""


@dataclass(frozen=True)
class CompiledStep:
    """7 action ids, the float32 action logits of every step (7, 256), stage timings."""

    token_ids: tuple[int, ...]
    logits: np.ndarray
    timings: StageTimings
    image_size: tuple[int, int]


class ExportedPolicy:
    """An export directory's host side around a :class:`GraphRunner`."""

    def __init__(self, export_dir: str | Path, runner: GraphRunner, manifest: Manifest | None = None) -> None:
        from magma_ros.model.config import PreprocessorConfig, read_json
        from magma_ros.model.loading import PREPROCESSOR_FILE
        from magma_ros.model.processor import MagmaImageProcessor, PromptBuilder
        from magma_ros.model.tokenizer import EOS_TOKEN, MagmaTokenizer

        self.directory = Path(export_dir)
        self.manifest = manifest or Manifest.read(self.directory)
        dims = self.manifest.dims
        self.dims = dims
        self.runner = runner
        self.tokenizer = MagmaTokenizer.from_dir(self.directory)
        rng = self.tokenizer.action_token_range
        if (rng.lo, rng.hi) != (dims.action_lo, dims.action_hi):
            raise BackendError(f"{self.directory}: the tokenizer's action range [{rng.lo}, {rng.hi}] differs from "
                               f"the exported head's [{dims.action_lo}, {dims.action_hi}]; re-export")
        pre_path = self.directory / PREPROCESSOR_FILE
        pre = (PreprocessorConfig.from_dict(read_json(pre_path, PREPROCESSOR_FILE), default_size=dims.crop_size)
               if pre_path.is_file() else PreprocessorConfig(base_img_size=dims.crop_size))
        self.image_processor = MagmaImageProcessor(pre)
        self.prompt_builder = PromptBuilder(self.tokenizer, use_im_start_end=dims.use_im_start_end)
        self.embed = np.load(self.directory / EMBED_FILE, mmap_mode="r")
        self.row_separator = np.load(self.directory / SEPARATOR_FILE)
        self.act_dtype = self.embed.dtype
        stops = {self.tokenizer.eos_id, *dims.eos_token_ids}
        if self.tokenizer.has_token(EOS_TOKEN):
            stops.add(self.tokenizer.token_id(EOS_TOKEN))
        self.stop_ids = frozenset(i for i in stops if i is not None)

    @property
    def action_lo(self) -> int:
        return self.dims.action_lo

    # -- inputs -----------------------------------------------------------------------
    def _embeds(self, ids: list[int], features: list[np.ndarray]) -> np.ndarray:
        ids_arr = np.asarray(ids, dtype=np.int64)
        is_image = ids_arr == self.dims.image_token_index
        positions = np.flatnonzero(is_image)
        if len(positions) != len(features):
            raise BackendError(f"the prompt holds {len(positions)} <image> token(s); {len(features)} image(s) "
                               "were given")
        text = np.asarray(self.embed[np.where(is_image, 0, ids_arr)])
        pieces, start = [], 0
        for pos, feats in zip(positions, features, strict=True):
            pieces += [text[start:pos], feats.astype(text.dtype)]
            start = int(pos) + 1
        pieces.append(text[start:])
        return np.concatenate(pieces)[None]

    def _image_features(self, crops: np.ndarray, rows: int, cols: int) -> np.ndarray:
        g, h = crops.shape[1], crops.shape[-1]
        tiled = crops.reshape(rows, cols, g, g, h).transpose(0, 2, 1, 3, 4).reshape(rows * g, cols * g, h)
        if self.dims.row_separator:
            sep = np.broadcast_to(self.row_separator.astype(tiled.dtype), (rows * g, 1, h))
            tiled = np.concatenate((tiled, sep), axis=1)
        return tiled.reshape(-1, h)

    def prepare(self, image: object | None, user_content: str, frame_size: int | None,
                regions: tuple[tuple[float, float, float, float], ...] = (),
                ) -> tuple[np.ndarray, tuple[int, int], float, float]:
        """(inputs_embeds, (rows, cols) of the image, preprocess ms, vision ms); ``regions`` of the
        (resized) image are images of their own after it, as :meth:`MagmaPolicy.prepare_inputs` does."""
        t0 = time.perf_counter()
        ids = self.prompt_builder.encode(user_content)
        processed = [] if image is None else self.image_processor.with_regions(image, frame_size, regions)
        t1 = time.perf_counter()
        features = []
        for one in processed:   # one vision call per image: the engine's crop profile is one image's
            pixels = one.pixel_values.numpy().astype(self.act_dtype, copy=False)
            features.append(self._image_features(self.runner.vision(pixels), *one.image_size))
        embeds = self._embeds(ids, features)
        t2 = time.perf_counter()
        return embeds, (processed[0].image_size if processed else (0, 0)), (t1 - t0) * 1e3, (t2 - t1) * 1e3

    @property
    def action_regions(self) -> tuple[tuple[float, float, float, float], ...]:
        return self.image_processor.config.action_regions

    # -- decoding ---------------------------------------------------------------------
    def _choose(self, logits: np.ndarray, temperature: float, rng: np.random.Generator | None) -> int:
        if temperature <= 0 or rng is None:
            return int(np.argmax(logits))
        scores = logits.astype(np.float64) / temperature
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        return int(rng.choice(len(probs), p=probs))

    def predict_action(self, image_rgb: np.ndarray, instruction: str, temperature: float = 0.0,
                       rng: np.random.Generator | None = None, frame_size: int | None = 256) -> CompiledStep:
        from magma_ros.model.processor import robot_action_query

        if not isinstance(instruction, str) or not instruction.strip():
            raise BackendError(f"instruction must be a non-empty string, got {instruction!r}")
        query = robot_action_query(instruction.strip(), 1 + len(self.action_regions))
        embeds, size, pre_ms, vis_ms = self.prepare(image_rgb, query, frame_size, self.action_regions)
        t0 = time.perf_counter()
        logits, _, cache = self.runner.prefill(embeds)
        all_logits = [logits[0]]
        ids = [self.action_lo + self._choose(logits[0], temperature, rng)]
        t1 = time.perf_counter()
        for _ in range(ACTION_DIMS - 1):
            step_embed = np.asarray(self.embed[ids[-1]])[None, None]
            logits, _, cache = self.runner.decode(step_embed, cache)
            all_logits.append(logits[0])
            ids.append(self.action_lo + self._choose(logits[0], temperature, rng))
        t2 = time.perf_counter()
        timings = StageTimings(preprocess_ms=pre_ms, vision_ms=vis_ms, prefill_ms=(t1 - t0) * 1e3,
                               decode_ms=(t2 - t1) * 1e3)
        return CompiledStep(tuple(ids), np.stack(all_logits).astype(np.float32), timings, size)

    def generate_text(self, image: object | None, prompt_text: str, max_new_tokens: int = 256,
                      temperature: float = 0.0, rng: np.random.Generator | None = None,
                      ) -> tuple[tuple[int, ...], bool, StageTimings]:
        """Free text until a stop id (full-vocabulary head graph)."""
        from magma_ros.model.tokenizer import IMAGE_TOKEN

        if image is not None and IMAGE_TOKEN not in prompt_text:
            prompt_text = f"{IMAGE_TOKEN}\n{prompt_text}"
        embeds, _, pre_ms, vis_ms = self.prepare(image, prompt_text, None)
        t0 = time.perf_counter()
        _, hidden, cache = self.runner.prefill(embeds)
        ids = [self._choose(self.runner.head(hidden)[0], temperature, rng)]
        t1 = time.perf_counter()
        while ids[-1] not in self.stop_ids and len(ids) < max_new_tokens:
            _, hidden, cache = self.runner.decode(np.asarray(self.embed[ids[-1]])[None, None], cache)
            ids.append(self._choose(self.runner.head(hidden)[0], temperature, rng))
        t2 = time.perf_counter()
        return tuple(ids), ids[-1] in self.stop_ids, StageTimings(pre_ms, vis_ms, (t1 - t0) * 1e3, (t2 - t1) * 1e3)


class CompiledBackend(PolicyBackend):
    """A :class:`PolicyBackend` over an :class:`ExportedPolicy` (ONNX Runtime or TensorRT)."""

    def __init__(self, policy: ExportedPolicy, statistics: str = "bridge_orig", temperature: float = 0.0,
                 seed: int | None = None, model_id: str = "", trace_max_new_tokens: int = 384,
                 mark_grid: tuple[int, int] = (3, 4)) -> None:
        from magma_ros.codecs import ActionCodec, CodecError, resolve_statistics
        from magma_ros.model.loading import STATISTICS_FILE

        self.policy = policy
        stats_file = policy.directory / STATISTICS_FILE
        stats_path = stats_file if stats_file.is_file() else None
        try:
            self.statistics = resolve_statistics(statistics or (None if stats_path else "bridge_orig"), stats_path)
        except CodecError as err:
            raise BackendError(str(err)) from err
        self.codec = ActionCodec(policy.tokenizer.base_vocab_size)
        self.temperature = float(temperature)
        self.rng = np.random.default_rng(seed) if temperature > 0 else None
        self.model_id = model_id or str(policy.directory)
        self.trace_max_new_tokens = trace_max_new_tokens
        self.mark_grid = mark_grid

    def act(self, rgb: np.ndarray, instruction: str) -> PolicyOutput:
        from magma_ros.model import MagmaModelError

        try:
            step = self.policy.predict_action(rgb, instruction, self.temperature, self.rng)
        except (MagmaModelError, RuntimeError, ValueError) as err:  # runtime errors: one failed frame, not a dead node
            return PolicyOutput.failure(f"model: {err}")
        text = self.policy.tokenizer.decode(step.token_ids)
        decoded = self.codec.decode(step.token_ids, self.statistics)
        if not decoded.valid:
            return PolicyOutput.failure(f"undecodable action: {decoded.error}", step.timings, text)
        return PolicyOutput(valid=True, raw_text=text, token_ids=step.token_ids,
                            normalized=np.asarray(decoded.normalized, np.float32),
                            action=np.asarray(decoded.action, np.float32),
                            statistics=self.statistics.name, timings=step.timings)

    def trace(self, rgb: np.ndarray, instruction: str, n_steps: int) -> PolicyOutput:
        from magma_ros.backends.base import trace_query
        from magma_ros.codecs import ImageSize, parse_traces
        from magma_ros.model import MagmaModelError
        from magma_ros.model.policy import DEFAULT_ACTION_FRAME_SIZE

        size = ImageSize.of(rgb)
        query = trace_query(rgb, instruction, n_steps, self.mark_grid, DEFAULT_ACTION_FRAME_SIZE)
        marks = query.marks
        try:
            ids, finished, timings = self.policy.generate_text(query.image, query.question,
                                                               self.trace_max_new_tokens, self.temperature, self.rng)
        except (MagmaModelError, RuntimeError, ValueError) as err:  # runtime errors: one failed frame, not a dead node
            return PolicyOutput.failure(f"model: {err}")
        text = self.policy.tokenizer.decode(ids[:-1] if finished else ids)
        parsed = parse_traces(text, size)
        errors = list(parsed.errors)
        if not finished:
            errors.append(f"answer cut at {self.trace_max_new_tokens} tokens")
        if not parsed.traces and not errors:
            errors.append("no trace in the answer")
        return PolicyOutput(valid=False, error="; ".join(errors), raw_text=text, token_ids=ids, timings=timings,
                            marks=tuple(marks), traces=tuple(sorted(parsed.traces.items())))

    def close(self) -> None:
        if self.policy is not None:
            self.policy.runner.close()
        self.policy = None  # type: ignore[assignment]
