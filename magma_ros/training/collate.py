"""From dataset records to padded training batches: the held-out split, the seeded mix of
action and Trace-of-Mark prompts, prompt/answer encoding exactly as inference builds it,
image augmentation, right padding with attention masks, and answer-only labels.

* An action example is a :class:`StepRecord`: Magma's robot action query about the frame
  (resized to ``action_frame_size``, as :class:`MagmaPolicy` does) answered by the 7 action
  tokens :class:`ActionCodec` encodes with the dataset's statistics, then ``<|eot_id|>``.
* A ToM example is a :class:`TraceSample`: its question about the marked frame answered by
  its answer text, then ``<|eot_id|>``.
* Labels are ``IGNORE_INDEX`` everywhere except the answer tokens (answer + end of turn).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from magma_ros.codecs import ActionCodec, ActionStatistics
from magma_ros.model.finetune import EncodedExample, SupervisedExample, encode_example
from magma_ros.model.modeling import IGNORE_INDEX
from magma_ros.model.policy import MagmaPolicy
from magma_ros.training.config import AugmentConfig
from magma_ros.training.records import StepRecord, TraceSample

ACTION = "action"
TOM = "tom"


class TrainingDataError(ValueError):
    """Training data cannot be used (empty, no held-out episode...); the message says why."""


@dataclass
class DataSource:
    """One dataset's examples. ``steps``: indexable StepRecords (e.g. a TrajectoryDataset);
    ``step_episodes``: the episode id of each step (read without decoding images);
    ``traces``: its Trace-of-Mark samples; ``statistics_entry``: its ``dataset_statistics.json``
    entry as written (exported with the checkpoint)."""

    name: str
    statistics: ActionStatistics
    steps: Sequence[StepRecord]
    step_episodes: Sequence[str]
    traces: Sequence[TraceSample] = ()
    statistics_entry: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.steps) != len(self.step_episodes):
            raise TrainingDataError(f"dataset {self.name!r}: {len(self.steps)} steps but "
                                    f"{len(self.step_episodes)} episode ids")


@dataclass(frozen=True)
class ExampleRef:
    """One example: ``kind`` (action / tom), the source index and the item index in it."""

    kind: str
    source: int
    index: int


@dataclass(frozen=True)
class Pool:
    """The examples of one split, by kind."""

    actions: tuple[ExampleRef, ...]
    toms: tuple[ExampleRef, ...]

    def __len__(self) -> int:
        return len(self.actions) + len(self.toms)


def split_episodes(sources: Sequence[DataSource], eval_fraction: float, seed: int) -> tuple[Pool, Pool]:
    """(train, held-out) pools, split by episode so no held-out frame was seen in training.

    Of each source's episodes, ``round(eval_fraction * n)`` (at least one when there are two
    or more and ``eval_fraction > 0``) are held out, chosen by a generator seeded with ``seed``.
    Trace samples follow their episode. Raises TrainingDataError when there is nothing to train on.
    """
    train_a, train_t, held_a, held_t = [], [], [], []
    for s, source in enumerate(sources):
        episodes = sorted(set(source.step_episodes) | {t.episode_id for t in source.traces})
        n_held = 0
        if eval_fraction > 0 and len(episodes) >= 2:
            n_held = min(len(episodes) - 1, max(1, round(eval_fraction * len(episodes))))
        order = np.random.default_rng([seed, s]).permutation(len(episodes))
        held = {episodes[i] for i in order[:n_held]}
        for i, episode in enumerate(source.step_episodes):
            (held_a if episode in held else train_a).append(ExampleRef(ACTION, s, i))
        for i, sample in enumerate(source.traces):
            (held_t if sample.episode_id in held else train_t).append(ExampleRef(TOM, s, i))
    if not train_a and not train_t:
        raise TrainingDataError("no training examples: the datasets hold no steps and no trace samples")
    return Pool(tuple(train_a), tuple(train_t)), Pool(tuple(held_a), tuple(held_t))


def sample_refs(pool: Pool, step: int, count: int, tom_ratio: float, seed: int,
                mixing: str = "example") -> list[ExampleRef]:
    """The ``count`` examples of optimizer step ``step`` (with replacement, seeded by
    ``(seed, step)``): a ToM example with probability ``tom_ratio`` when the pool has any, else
    an action example. ``mixing="example"`` draws the kind for each example, ``"step"`` once
    for the whole step (a batch of one kind: no action prompt padded to a ToM answer's length).
    Independent of how many processes share them."""
    if not pool.actions and not pool.toms:
        raise TrainingDataError("cannot sample from an empty pool")
    if mixing not in ("example", "step"):
        raise ValueError(f"mixing must be 'example' or 'step', got {mixing!r}")
    rng = np.random.default_rng([seed, step, 7])

    def draw_kind() -> bool:
        return bool(pool.toms) and (not pool.actions or rng.random() < tom_ratio)

    step_is_tom = draw_kind() if mixing == "step" else False
    out = []
    for _ in range(count):
        use_tom = step_is_tom if mixing == "step" else draw_kind()
        items = pool.toms if use_tom else pool.actions
        out.append(items[int(rng.integers(len(items)))])
    return out


def eval_refs(pool: Pool, limit: int) -> list[ExampleRef]:
    """A fixed, evenly spread subset of at most ``limit`` examples of each kind."""
    out: list[ExampleRef] = []
    for items in (pool.actions, pool.toms):
        if len(items) <= limit:
            out += items
        else:
            out += [items[int(i)] for i in np.linspace(0, len(items) - 1, limit).round()]
    return out


def augment_image(image: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """A random crop (each side keeps at least ``crop_scale``, resized back to the input size)
    and colour jitter (brightness, contrast, saturation) of an (H, W, 3) uint8 RGB frame."""
    from PIL import Image

    h, w = image.shape[:2]
    out = image
    if config.crop_scale < 1.0:
        scale = rng.uniform(config.crop_scale, 1.0)
        ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        out = np.asarray(Image.fromarray(out[y:y + ch, x:x + cw]).resize((w, h), Image.Resampling.BILINEAR))
    pixels = out.astype(np.float32)
    if config.brightness:
        pixels *= rng.uniform(1 - config.brightness, 1 + config.brightness)
    if config.contrast:
        mean = pixels.mean()
        pixels = (pixels - mean) * rng.uniform(1 - config.contrast, 1 + config.contrast) + mean
    if config.saturation:
        grey = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        grey = grey[..., None]
        pixels = (pixels - grey) * rng.uniform(1 - config.saturation, 1 + config.saturation) + grey
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


class ExampleEncoder:
    """Turns example references into encoded examples the way inference builds prompts."""

    def __init__(self, policy: MagmaPolicy, sources: Sequence[DataSource], action_frame_size: int | None,
                 tom_frame_size: int | None = None) -> None:
        self.policy = policy
        self.sources = list(sources)
        self.codec = ActionCodec(policy.tokenizer.base_vocab_size)
        self.action_frame_size = action_frame_size
        self.tom_frame_size = tom_frame_size

    def action_ids(self, ref: ExampleRef) -> np.ndarray:
        source = self.sources[ref.source]
        return self.codec.encode(source.steps[ref.index].action, source.statistics)

    def supervised(self, ref: ExampleRef, augment: AugmentConfig | None = None,
                   rng: np.random.Generator | None = None) -> SupervisedExample:
        source = self.sources[ref.source]
        if ref.kind == ACTION:
            record = source.steps[ref.index]
            image = record.image
            if augment is not None and augment.enabled and rng is not None:
                image = augment_image(image, augment, rng)
            ids = self.codec.encode(record.action, source.statistics)
            return SupervisedExample(image, self.policy.action_query(record.instruction),
                                     answer_ids=tuple(int(i) for i in ids), frame_size=self.action_frame_size,
                                     regions=self.policy.action_regions)
        sample = source.traces[ref.index]
        image = sample.image
        if augment is not None and augment.enabled and rng is not None:   # colour only: marks stay put
            image = augment_image(image, AugmentConfig(True, 1.0, augment.brightness, augment.contrast,
                                                       augment.saturation), rng)
        return SupervisedExample(image, sample.question, answer=sample.answer, frame_size=self.tom_frame_size)

    def encode(self, ref: ExampleRef, augment: AugmentConfig | None = None,
               rng: np.random.Generator | None = None) -> EncodedExample:
        return encode_example(self.policy, self.supervised(ref, augment, rng))


@dataclass(frozen=True)
class Batch:
    """A padded batch: ``input_ids`` / ``attention_mask`` / ``labels`` (B, L) right padded,
    ``pixel_values`` every crop of every image in order (or None), ``image_sizes`` per image,
    ``kinds`` per example."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None
    image_sizes: tuple[tuple[int, int], ...]
    kinds: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        pv = self.pixel_values.to(device) if self.pixel_values is not None else None
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device), pv,
                     self.image_sizes, self.kinds)

    def model_inputs(self) -> dict[str, Any]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "labels": self.labels,
                "pixel_values": self.pixel_values, "image_sizes": self.image_sizes}


def collate(examples: Sequence[EncodedExample], pad_id: int, kinds: Sequence[str] = ()) -> Batch:
    """Right-pad encoded examples into a batch; labels are the answer tokens only."""
    if not examples:
        raise TrainingDataError("cannot collate an empty batch")
    length = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), length), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    pixels, sizes = [], []
    for b, e in enumerate(examples):
        n, k = len(e.input_ids), len(e.target_ids)
        ids[b, :n] = e.input_ids
        mask[b, :n] = 1
        labels[b, n - k:n] = e.target_ids
        if e.pixel_values is not None:
            pixels.append(e.pixel_values)
            sizes.extend(tuple(size) for size in e.image_sizes)
    pixel_values = torch.cat(pixels) if pixels else None
    return Batch(ids, mask, labels, pixel_values, tuple(sizes), tuple(kinds))
