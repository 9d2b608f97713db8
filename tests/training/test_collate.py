"""Batches: answer-only labels, right padding + masks, the batched forward equal to one example at a
time, the episode split, the seeded prompt mix and image augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from magma_ros.codecs import ActionCodec, ActionStatistics
from magma_ros.model import MagmaPolicy, PreprocessorConfig, build_tiny_model
from magma_ros.model.modeling import IGNORE_INDEX
from magma_ros.model.tokenizer import EOS_TOKEN
from magma_ros.training.collate import (
    ACTION,
    TOM,
    DataSource,
    ExampleEncoder,
    ExampleRef,
    TrainingDataError,
    augment_image,
    collate,
    eval_refs,
    sample_refs,
    split_episodes,
)
from magma_ros.training.config import AugmentConfig
from magma_ros.training.records import StepRecord, TraceSample

STATS = ActionStatistics("sim", q01=(-0.02, -0.02, -0.02, -0.1, -0.1, -0.1, 0.0),
                         q99=(0.02, 0.02, 0.02, 0.1, 0.1, 0.1, 1.0))
TOM_ANSWER = 'Mark 2 at [10,20] should be moved, and their future positions are: "Mark 2": "[[12,22],[14,24]]"'


def _source(episodes: int = 5, steps: int = 3, traces: int = 1) -> DataSource:
    rng = np.random.default_rng(0)
    records, owners, samples = [], [], []
    for e in range(episodes):
        for t in range(steps):
            image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            action = np.array([0.01 * (t - 1), -0.005, 0.02, 0.05, -0.05, 0.0, float(t % 2)])
            task = "pick up the red block" if e % 2 else "stack the blue cube on the red one please"
            records.append(StepRecord(f"ep{e}", t, t, image, action, np.zeros(7), task))
            owners.append(f"ep{e}")
        for _ in range(traces):
            samples.append(TraceSample(f"ep{e}", 0, rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
                                       "The robot is doing: pick up the red block. To finish the task, how to "
                                       "move the numerical marks in the image for the next 2 steps?",
                                       TOM_ANSWER, {2: np.zeros((2, 2))}))
    return DataSource("sim", STATS, records, owners, samples)



@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread: None) -> None:
    """These modules train: one torch thread (see tests/training/conftest.py)."""


@pytest.fixture(scope="module")
def policy() -> MagmaPolicy:
    model, tokenizer = build_tiny_model("magma-tiny", seed=0)
    return MagmaPolicy(model, tokenizer, PreprocessorConfig(base_img_size=64))


@pytest.fixture(scope="module")
def source() -> DataSource:
    return _source()


def test_action_example_labels_are_the_codec_tokens_and_end_of_turn(policy, source):
    encoder = ExampleEncoder(policy, [source], action_frame_size=64)
    ref = ExampleRef(ACTION, 0, 4)
    encoded = encoder.encode(ref)
    expected = ActionCodec(policy.tokenizer.base_vocab_size).encode(source.steps[4].action, STATS)
    eot = policy.tokenizer.token_id(EOS_TOKEN)
    assert encoded.target_ids.tolist() == [*expected.tolist(), eot]
    assert encoded.input_ids[-8:].tolist() == encoded.target_ids.tolist()
    # the prompt is exactly what inference builds for this frame and instruction
    prepared = policy.prepare_inputs(source.steps[4].image, "<image>\nWhat action should the robot take to "
                                     f"{source.steps[4].instruction}?", frame_size=64)
    assert encoded.input_ids[:-8].tolist() == prepared.input_ids.tolist()


def test_collate_pads_right_and_scores_answers_only(policy, source):
    encoder = ExampleEncoder(policy, [source], action_frame_size=64)
    refs = [ExampleRef(ACTION, 0, 0), ExampleRef(ACTION, 0, 3), ExampleRef(TOM, 0, 1)]
    encoded = [encoder.encode(r) for r in refs]
    batch = collate(encoded, policy.tokenizer.pad_id, [r.kind for r in refs])
    lengths = [len(e.input_ids) for e in encoded]
    assert len(set(lengths)) > 1                               # different lengths: real padding
    assert batch.input_ids.shape == (3, max(lengths))
    for b, e in enumerate(encoded):
        n, k = len(e.input_ids), len(e.target_ids)
        assert batch.attention_mask[b].tolist() == [1] * n + [0] * (max(lengths) - n)
        assert (batch.input_ids[b, n:] == policy.tokenizer.pad_id).all()
        scored = batch.labels[b] != IGNORE_INDEX
        assert scored.sum() == k and batch.labels[b, n - k:n].tolist() == e.target_ids.tolist()
    assert batch.pixel_values.shape[0] == sum(r * c for r, c in batch.image_sizes) and len(batch.image_sizes) == 3
    with pytest.raises(TrainingDataError):
        collate([], 0)


def test_batched_loss_equals_the_single_example_losses(policy, source):
    from magma_ros.model.finetune import supervised_loss

    encoder = ExampleEncoder(policy, [source], action_frame_size=64)
    refs = [ExampleRef(ACTION, 0, 1), ExampleRef(TOM, 0, 2), ExampleRef(ACTION, 0, 5)]
    encoded = [encoder.encode(r) for r in refs]
    batch = collate(encoded, policy.tokenizer.pad_id)
    with torch.no_grad():
        out = policy.model.forward_batch(batch.input_ids, batch.attention_mask, batch.pixel_values,
                                         batch.image_sizes, batch.labels)
        singles = torch.stack([supervised_loss(policy, e) for e in encoded])
    assert torch.allclose(out.per_example_loss, singles, atol=1e-5), (out.per_example_loss, singles)
    assert torch.isclose(out.loss, singles.mean(), atol=1e-5)
    # the scored positions are the answers' tokens, in order
    assert out.targets.tolist() == [t for e in encoded for t in e.target_ids.tolist()]
    # without labels: logits of every position, row b equal to the single-example forward
    with torch.no_grad():
        full = policy.model.forward_batch(batch.input_ids, batch.attention_mask, batch.pixel_values,
                                          batch.image_sizes).logits
        first = policy.model(encoded[0].input_ids, encoded[0].pixel_values, encoded[0].image_sizes)
    assert torch.allclose(full[0, :first.shape[1]], first[0], atol=1e-4)


def test_split_is_by_episode_and_seeded(source):
    train, held = split_episodes([source], 0.4, seed=3)
    train_eps = {source.step_episodes[r.index] for r in train.actions}
    held_eps = {source.step_episodes[r.index] for r in held.actions}
    assert len(held_eps) == 2 and not train_eps & held_eps and len(train_eps | held_eps) == 5
    assert {source.traces[r.index].episode_id for r in held.toms} == held_eps
    assert split_episodes([source], 0.4, seed=3) == (train, held)
    assert split_episodes([source], 0.0, seed=3)[1].actions == ()
    one = _source(episodes=1)
    assert len(split_episodes([one], 0.5, seed=0)[1]) == 0         # a single episode is never held out
    with pytest.raises(TrainingDataError):
        split_episodes([DataSource("empty", STATS, [], [])], 0.1, 0)


def test_sampling_is_seeded_and_mixes_at_the_configured_ratio(source):
    train, _ = split_episodes([source], 0.2, seed=0)
    a = sample_refs(train, step=7, count=400, tom_ratio=0.25, seed=1)
    assert a == sample_refs(train, step=7, count=400, tom_ratio=0.25, seed=1)
    assert a != sample_refs(train, step=8, count=400, tom_ratio=0.25, seed=1)
    share = sum(r.kind == TOM for r in a) / len(a)
    assert 0.19 < share < 0.31, share
    assert all(r.kind == ACTION for r in sample_refs(train, 0, 50, 0.0, 1))
    assert len(eval_refs(train, 3)) == 3 + 3


def test_step_mixing_gives_batches_of_one_kind_at_the_configured_ratio(source):
    train, _ = split_episodes([source], 0.2, seed=0)
    batches = [sample_refs(train, step, 8, 0.25, seed=1, mixing="step") for step in range(400)]
    kinds = [{r.kind for r in batch} for batch in batches]
    assert all(len(k) == 1 for k in kinds)
    share = sum(k == {TOM} for k in kinds) / len(kinds)
    assert 0.19 < share < 0.31, share
    assert batches[7] == sample_refs(train, 7, 8, 0.25, seed=1, mixing="step")
    assert all(r.kind == ACTION for r in sample_refs(train, 0, 50, 0.0, 1, mixing="step"))
    with pytest.raises(ValueError, match="mixing"):
        sample_refs(train, 0, 8, 0.25, seed=1, mixing="batch")


def test_augmentation_is_seeded_and_off_by_default(policy, source):
    image = source.steps[0].image
    config = AugmentConfig(enabled=True)
    one = augment_image(image, config, np.random.default_rng(4))
    assert one.shape == image.shape and one.dtype == np.uint8 and not np.array_equal(one, image)
    assert np.array_equal(one, augment_image(image, config, np.random.default_rng(4)))
    assert not AugmentConfig().enabled
    encoder = ExampleEncoder(policy, [source], action_frame_size=64)
    ref = ExampleRef(ACTION, 0, 0)
    plain = encoder.supervised(ref, AugmentConfig(), np.random.default_rng(0)).image
    assert np.array_equal(plain, image)
    jittered = encoder.supervised(ref, config, np.random.default_rng(0)).image
    assert not np.array_equal(jittered, image)
