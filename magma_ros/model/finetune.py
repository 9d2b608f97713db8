"""Teacher-forced supervised fine-tuning on (image, user turn, answer) examples.

The loss is the mean cross-entropy of the answer tokens (answer text + end-of-turn)
given the image and the chat prompt, exactly the sequence :class:`MagmaPolicy` builds
at inference, so what is trained is what is served. :func:`fit` is a small
single-process loop (AdamW, progress callback, one example per step) for tests and fixtures;
real fine-tuning (mini-batches through :meth:`MagmaForCausalLM.forward_batch`, LoRA, DDP/FSDP,
evaluation, export) is :mod:`magma_ros.training` / ``magma-ros train``, which encodes its
examples with :func:`encode_example`. A loaded checkpoint is trainable with
``load_checkpoint(..., trainable=True)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from magma_ros.model.errors import GenerationError
from magma_ros.model.policy import MagmaPolicy
from magma_ros.model.tokenizer import EOS_TOKEN, IMAGE_TOKEN


@dataclass(frozen=True)
class SupervisedExample:
    """One training example. ``answer_ids`` (e.g. 7 action tokens) wins over ``answer`` text.
    ``regions``: boxes of the (resized) image given as images of their own, after it, as
    :meth:`MagmaPolicy.prepare_inputs` does for ``action_regions``."""

    image: np.ndarray | None
    user_content: str
    answer: str = ""
    answer_ids: tuple[int, ...] = ()
    frame_size: int | None = None
    regions: tuple[tuple[float, float, float, float], ...] = ()


@dataclass(frozen=True)
class EncodedExample:
    input_ids: torch.Tensor          # prompt + answer + end-of-turn, (L,)
    pixel_values: torch.Tensor | None   # the crops of every image, in order
    image_sizes: tuple[tuple[int, int], ...]   # (rows, cols) per image; () without one
    target_ids: torch.Tensor         # answer + end-of-turn, (n,)


def encode_example(policy: MagmaPolicy, example: SupervisedExample) -> EncodedExample:
    """Tokenize and preprocess one example the way inference does."""
    content = example.user_content
    if example.image is not None and IMAGE_TOKEN not in content:
        content = f"{IMAGE_TOKEN}\n" * (1 + len(example.regions)) + content
    prompt = policy.prompt_builder.encode(content)
    tokenizer = policy.tokenizer
    answer = list(example.answer_ids) or tokenizer.encode(example.answer, add_special_tokens=False)
    if not answer:
        raise GenerationError("a supervised example needs a non-empty answer")
    end = tokenizer.token_id(EOS_TOKEN) if tokenizer.has_token(EOS_TOKEN) else tokenizer.eos_id
    targets = [*answer, end]
    pixel_values, image_sizes = None, ()
    if example.image is not None:
        processed = policy.image_processor.with_regions(example.image, example.frame_size, example.regions)
        pixel_values = torch.cat([p.pixel_values for p in processed])
        image_sizes = tuple(p.image_size for p in processed)
    return EncodedExample(torch.tensor(prompt + targets, dtype=torch.long), pixel_values, image_sizes,
                          torch.tensor(targets, dtype=torch.long))


def supervised_loss(policy: MagmaPolicy, example: SupervisedExample | EncodedExample) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens (differentiable)."""
    encoded = example if isinstance(example, EncodedExample) else encode_example(policy, example)
    device = policy.model.device
    pixel_values = encoded.pixel_values.to(device) if encoded.pixel_values is not None else None
    logits = policy.model(encoded.input_ids.to(device), pixel_values, encoded.image_sizes)   # (1, L', vocab)
    n = len(encoded.target_ids)
    predicted = logits[0, -n - 1:-1]   # the logits at position t predict token t + 1
    return torch.nn.functional.cross_entropy(predicted.float(), encoded.target_ids.to(device))


def fit(policy: MagmaPolicy, examples: Sequence[SupervisedExample], steps: int, lr: float = 3e-3,
        weight_decay: float = 0.0, seed: int = 0,
        progress: Callable[[int, float, float], None] | None = None) -> list[float]:
    """Train all parameters for ``steps`` single-example steps (examples cycled in a seeded order).

    ``progress(step, loss, seconds)`` is called every step. Returns the loss per step.
    The model is left in eval mode.
    """
    if not examples:
        raise GenerationError("fit needs at least one example")
    if not any(p.requires_grad for p in policy.model.parameters()):
        raise GenerationError("the model has no trainable parameter: load it with "
                              "load_checkpoint(..., trainable=True)")
    encoded = [encode_example(policy, e) for e in examples]
    model = policy.model
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=weight_decay)
    order = np.random.default_rng(seed)
    losses: list[float] = []
    start = time.perf_counter()
    try:
        for step in range(steps):
            example = encoded[int(order.integers(len(encoded)))]
            loss = supervised_loss(policy, example)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step, losses[-1], time.perf_counter() - start)
    finally:
        model.eval()
    return losses
