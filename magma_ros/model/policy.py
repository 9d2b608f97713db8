"""``MagmaPolicy``: one RGB frame + an instruction -> 7 action token ids, with timings.

The policy returns token *ids*; turning them into metric actions (token = base_vocab - 1
- bin, un-normalization with dataset statistics, gripper mapping) is
:mod:`magma_ros.codecs.actions`' job. Trace-of-Mark / Set-of-Mark queries go through
:meth:`MagmaPolicy.generate_text` with a plain prompt string (built by
:mod:`magma_ros.codecs`).

Robot frames are resized to 256 x 256 (PIL bicubic, as Magma's SimplerEnv evaluation
does) before the anyres processor for :meth:`predict_action`; ``action_frame_size=None``
disables that. A checkpoint's ``action_regions`` (preprocessor_config.json) are cropped from that
frame and given to the model as images of their own after it, one ``<image>`` each.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from magma_ros.model.config import PreprocessorConfig
from magma_ros.model.errors import ConfigError, GenerationError
from magma_ros.model.generation import (
    ACTION_DIMS,
    GREEDY,
    Sampling,
    StageTimings,
    decode_constrained,
    decode_text,
    synchronize,
)
from magma_ros.model.loading import LoadReport, load_checkpoint
from magma_ros.model.modeling import MagmaForCausalLM
from magma_ros.model.processor import (
    SYSTEM_MESSAGE,
    MagmaImageProcessor,
    PromptBuilder,
    robot_action_query,
)
from magma_ros.model.tokenizer import EOS_TOKEN, IMAGE_TOKEN, ActionTokenRange, MagmaTokenizer

DEFAULT_ACTION_FRAME_SIZE = 256


@dataclass(frozen=True)
class ActionStep:
    """One predicted action: exactly 7 token ids inside ``action_token_range``, their raw
    decoded text, the crop layout used (rows, cols) and per-stage timings."""

    token_ids: tuple[int, ...]
    text: str
    image_size: tuple[int, int]
    timings: StageTimings


@dataclass(frozen=True)
class TextResult:
    """Free-text answer: generated ids (ending with the eos id when ``finished``), the text
    without the eos token, and per-stage timings."""

    token_ids: tuple[int, ...]
    text: str
    finished: bool
    image_size: tuple[int, int] | None
    timings: StageTimings


@dataclass(frozen=True)
class PreparedInputs:
    """Prompt ids, merged input embeddings (1, L', hidden) and the time each part took."""

    input_ids: torch.Tensor
    inputs_embeds: torch.Tensor
    image_size: tuple[int, int] | None
    preprocess_ms: float
    vision_ms: float


class MagmaPolicy:
    """A loaded Magma model with its tokenizer, processor and prompt builder."""

    def __init__(self, model: MagmaForCausalLM, tokenizer: MagmaTokenizer, preprocessor: PreprocessorConfig,
                 dataset_statistics: Mapping[str, Any] | None = None, load_report: LoadReport | None = None,
                 action_frame_size: int | None = DEFAULT_ACTION_FRAME_SIZE,
                 system_message: str = SYSTEM_MESSAGE) -> None:
        if action_frame_size is not None and action_frame_size < 1:
            raise ConfigError(f"action_frame_size must be >= 1 or None, got {action_frame_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = MagmaImageProcessor(preprocessor)
        self.prompt_builder = PromptBuilder(tokenizer, system_message=system_message,
                                            use_im_start_end=model.config.mm_use_image_start_end)
        self.dataset_statistics = dataset_statistics
        self.load_report = load_report
        self.action_frame_size = action_frame_size
        stops = {tokenizer.eos_id, *model.config.text.eos_token_id}
        if tokenizer.has_token(EOS_TOKEN):  # chat turns end with <|eot_id|> whatever eos is named
            stops.add(tokenizer.token_id(EOS_TOKEN))
        self.stop_ids = frozenset(stops)
        rng = tokenizer.action_token_range
        if rng.hi >= model.language_model.lm_head.weight.shape[0]:
            raise GenerationError(f"tokenizer's action range [{rng.lo}, {rng.hi}] exceeds the model's "
                                  f"{model.language_model.lm_head.weight.shape[0]} output rows")

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: str | torch.dtype | None = None,
                        device: str | torch.device = "cpu", strict: bool = True, **kwargs: Any) -> MagmaPolicy:
        """Load a checkpoint directory. ``dtype`` None = bf16 on CUDA, fp32 elsewhere.
        Extra keyword arguments go to the constructor (``action_frame_size``...)."""
        device = torch.device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        loaded = load_checkpoint(directory, dtype=dtype, device=device, strict=strict)
        return cls(loaded.model, loaded.tokenizer, loaded.preprocessor, loaded.dataset_statistics,
                   loaded.report, **kwargs)

    @property
    def action_token_range(self) -> ActionTokenRange:
        """Ids ``[base_vocab - 256, base_vocab - 1]`` from the tokenizer's base vocabulary."""
        return self.tokenizer.action_token_range

    # -- inputs ---------------------------------------------------------------------------
    def prepare_inputs(self, image: object | None, user_content: str, frame_size: int | None = None,
                       regions: Sequence[Sequence[float]] = ()) -> PreparedInputs:
        """Preprocess ``image`` (optionally resized to ``frame_size`` squared) and the crops of
        ``regions`` of it (images of their own, after it), build and tokenize the chat prompt
        (one ``<image>`` per image), run the vision tower and merge: the model's input."""
        device = self.model.device
        t0 = time.perf_counter()
        ids = torch.tensor(self.prompt_builder.encode(user_content), dtype=torch.long)
        processed = [] if image is None else self.image_processor.with_regions(image, frame_size, regions)
        t1 = time.perf_counter()
        with torch.inference_mode():
            feats = (self.model.image_features(torch.cat([p.pixel_values for p in processed]),
                                               [p.image_size for p in processed]) if processed else [])
            embeds = self.model.embed(ids, feats)
        synchronize(device)
        t2 = time.perf_counter()
        return PreparedInputs(input_ids=ids, inputs_embeds=embeds,
                              image_size=processed[0].image_size if processed else None,
                              preprocess_ms=(t1 - t0) * 1e3, vision_ms=(t2 - t1) * 1e3)

    @property
    def action_regions(self) -> tuple[tuple[float, float, float, float], ...]:
        """The checkpoint's ``action_regions``: crops of the action frame given as images of their own."""
        return self.image_processor.config.action_regions

    def action_query(self, instruction: str) -> str:
        """The robot action user turn for ``instruction``, one ``<image>`` per action image."""
        return robot_action_query(instruction.strip(), 1 + len(self.action_regions))

    # -- actions --------------------------------------------------------------------------
    def predict_action(self, image_rgb: np.ndarray, instruction: str, sampling: Sampling = GREEDY) -> ActionStep:
        """7 action token ids for ``instruction`` given an (H, W, 3) uint8 RGB frame.

        One prefill over image + prompt, then exactly 7 tokens constrained to
        :attr:`action_token_range` (greedy by default; ``REFERENCE_SAMPLING`` = T 0.7).
        """
        if not isinstance(instruction, str) or not instruction.strip():
            raise GenerationError(f"instruction must be a non-empty string, got {instruction!r}")
        prepared = self.prepare_inputs(image_rgb, self.action_query(instruction),
                                       frame_size=self.action_frame_size, regions=self.action_regions)
        out = decode_constrained(self.model, prepared.inputs_embeds, self.action_token_range,
                                 num_tokens=ACTION_DIMS, sampling=sampling)
        timings = StageTimings(prepared.preprocess_ms, prepared.vision_ms, out.prefill_ms,
                               out.decode_ms_per_token, out.decode_steps)
        return ActionStep(token_ids=out.token_ids, text=self.tokenizer.decode(out.token_ids),
                          image_size=prepared.image_size or (0, 0), timings=timings)

    # -- text -----------------------------------------------------------------------------
    def generate_text(self, image: object | None, prompt_text: str, max_new_tokens: int = 256,
                      sampling: Sampling = GREEDY, frame_size: int | None = None) -> TextResult:
        """Answer ``prompt_text`` (a user turn) about ``image``; stops at eos.

        ``<image>\\n`` is prepended when an image is given and the prompt has no ``<image>``
        token. ``frame_size`` optionally resizes the image first (no resize by default).
        """
        if image is not None and IMAGE_TOKEN not in prompt_text:
            prompt_text = f"{IMAGE_TOKEN}\n{prompt_text}"
        if image is None and IMAGE_TOKEN in prompt_text:
            raise GenerationError("prompt_text holds an <image> token but no image was given")
        prepared = self.prepare_inputs(image, prompt_text, frame_size=frame_size)
        out = decode_text(self.model, prepared.inputs_embeds, max_new_tokens, self.stop_ids, sampling)
        body = out.token_ids[:-1] if out.finished else out.token_ids
        timings = StageTimings(prepared.preprocess_ms, prepared.vision_ms, out.prefill_ms,
                               out.decode_ms_per_token, out.decode_steps)
        return TextResult(token_ids=out.token_ids, text=self.tokenizer.decode(body), finished=out.finished,
                          image_size=prepared.image_size, timings=timings)
