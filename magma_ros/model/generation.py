"""KV-cached decoding for Magma: free text until eos, and the fast 7-token action path.

Action path: one prefill over image + prompt, then tokens restricted to the action-token
range. Token 1 comes from the prefill's last position; tokens 2..7 each take one
single-token forward step over the KV cache (6 steps; the same work ``generate()`` does
for 7 new tokens). Only the 256 action rows of ``lm_head`` are multiplied, so the
constraint also removes the full-vocabulary head from every step (128k -> 256 rows on
Magma-8B). Argmax over the range equals argmax over fully masked logits, and softmax
over the range equals sampling from masked logits, so results match a masking logits
processor.

Timings: ``prefill_ms`` covers the prefill forward and the first token's selection;
``decode_ms_per_token`` is the mean of the single-token steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch.nn.functional import linear
from transformers import DynamicCache

from magma_ros.model.errors import GenerationError
from magma_ros.model.modeling import MagmaForCausalLM
from magma_ros.model.tokenizer import ActionTokenRange

ACTION_DIMS = 7


@dataclass(frozen=True)
class Sampling:
    """Token choice: ``temperature == 0`` is greedy (argmax); > 0 samples from
    ``softmax(logits / temperature)``, restricted to the ``top_k`` most likely tokens when
    set. ``seed`` makes sampling repeatable."""

    temperature: float = 0.0
    top_k: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise GenerationError(f"Sampling.temperature must be a finite number >= 0, got {t!r}")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise GenerationError(f"Sampling.top_k must be an integer >= 1 or None, got {k!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = Sampling()
# What Magma's SimplerEnv / LIBERO evaluations use: temperature 0.7 through transformers
# generate(), whose default generation config also keeps only the top 50 tokens.
REFERENCE_SAMPLING = Sampling(temperature=0.7, top_k=50)


@dataclass(frozen=True)
class StageTimings:
    """Wall-clock milliseconds per stage of one request."""

    preprocess_ms: float
    vision_ms: float
    prefill_ms: float
    decode_ms_per_token: float
    decode_steps: int

    @property
    def decode_ms(self) -> float:
        return self.decode_ms_per_token * self.decode_steps

    @property
    def total_ms(self) -> float:
        return self.preprocess_ms + self.vision_ms + self.prefill_ms + self.decode_ms


@dataclass(frozen=True)
class DecodeResult:
    """Generated ids (a stop token, if hit, is the last id), whether a stop token ended it,
    and the prefill / per-step timings."""

    token_ids: tuple[int, ...]
    finished: bool
    prefill_ms: float
    decode_ms_per_token: float
    decode_steps: int


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings mean something."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _make_generator(sampling: Sampling, device: torch.device) -> torch.Generator | None:
    if sampling.greedy or sampling.seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(sampling.seed)
    return gen


def choose(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> int:
    """Pick an index from 1-D ``logits`` (greedy or temperature sampling)."""
    if sampling.greedy:
        return int(torch.argmax(logits).item())
    scores = logits.float() / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < scores.shape[-1]:
        kth = torch.topk(scores, sampling.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


class _Stepper:
    """Runs the LLaMA body over a growing KV cache and returns last-position hidden states.

    The prefill goes through ``LlamaModel.forward``. Single-token steps call the same
    stock decoder layers directly: one new token attends to the whole cache, so no mask
    is needed, and skipping the model wrapper's mask construction and output plumbing
    cuts the per-token time (about 20% of a tiny model's decode step on CPU). Equality with a
    no-cache full-forward reference is covered by the tests.
    """

    def __init__(self, model: MagmaForCausalLM) -> None:
        self.lm = model.language_model
        self.body = self.lm.model
        self.layers = list(self.body.layers[: self.lm.config.num_hidden_layers])
        self.cache = DynamicCache(config=self.lm.config)
        self.device = model.device
        self.position = 0

    def prefill(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        out = self.body(inputs_embeds=inputs_embeds, past_key_values=self.cache, use_cache=True)
        self.position = inputs_embeds.shape[1]
        return out.last_hidden_state[0, -1]

    def step(self, token_id: int) -> torch.Tensor:
        ids = torch.tensor([[token_id]], device=self.device)
        positions = torch.tensor([[self.position]], device=self.device)
        hidden = self.body.embed_tokens(ids)
        rotary = self.body.rotary_emb(hidden, positions)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=None, position_embeddings=rotary, position_ids=positions,
                           past_key_values=self.cache, use_cache=True)
            if isinstance(hidden, tuple):  # older transformers return (hidden, ...)
                hidden = hidden[0]
        self.position += 1
        return self.body.norm(hidden)[0, -1]


@torch.inference_mode()
def decode_constrained(model: MagmaForCausalLM, inputs_embeds: torch.Tensor, token_range: ActionTokenRange,
                       num_tokens: int = ACTION_DIMS, sampling: Sampling = GREEDY) -> DecodeResult:
    """Prefill ``inputs_embeds`` (1, L, hidden), then ``num_tokens`` ids in ``token_range``.

    Always returns exactly ``num_tokens`` ids, each inside the range, whatever the weights.
    """
    if num_tokens < 1:
        raise GenerationError(f"num_tokens must be >= 1, got {num_tokens}")
    head = model.language_model.lm_head.weight
    if token_range.hi >= head.shape[0] or token_range.lo < 0:
        raise GenerationError(f"action token range [{token_range.lo}, {token_range.hi}] lies outside "
                              f"the model's {head.shape[0]}-row output embedding")
    rows = head[token_range.lo: token_range.hi + 1]
    device = model.device
    generator = _make_generator(sampling, device)
    stepper = _Stepper(model)

    synchronize(device)
    t0 = time.perf_counter()
    hidden = stepper.prefill(inputs_embeds)
    ids = [token_range.lo + choose(linear(hidden, rows), sampling, generator)]
    synchronize(device)
    t1 = time.perf_counter()
    for _ in range(num_tokens - 1):
        hidden = stepper.step(ids[-1])
        ids.append(token_range.lo + choose(linear(hidden, rows), sampling, generator))
    synchronize(device)
    t2 = time.perf_counter()
    steps = num_tokens - 1
    return DecodeResult(token_ids=tuple(ids), finished=False, prefill_ms=(t1 - t0) * 1e3,
                        decode_ms_per_token=(t2 - t1) * 1e3 / steps if steps else 0.0, decode_steps=steps)


@torch.inference_mode()
def decode_text(model: MagmaForCausalLM, inputs_embeds: torch.Tensor, max_new_tokens: int,
                stop_ids: Collection[int], sampling: Sampling = GREEDY) -> DecodeResult:
    """Prefill, then generate over the full vocabulary until a stop id or ``max_new_tokens``."""
    if max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    head = model.language_model.lm_head
    device = model.device
    generator = _make_generator(sampling, device)
    stepper = _Stepper(model)
    stops = set(stop_ids)

    synchronize(device)
    t0 = time.perf_counter()
    ids = [choose(head(stepper.prefill(inputs_embeds)), sampling, generator)]
    synchronize(device)
    t1 = time.perf_counter()
    while ids[-1] not in stops and len(ids) < max_new_tokens:
        ids.append(choose(head(stepper.step(ids[-1])), sampling, generator))
    synchronize(device)
    t2 = time.perf_counter()
    steps = len(ids) - 1
    return DecodeResult(token_ids=tuple(ids), finished=ids[-1] in stops, prefill_ms=(t1 - t0) * 1e3,
                        decode_ms_per_token=(t2 - t1) * 1e3 / steps if steps else 0.0, decode_steps=steps)
