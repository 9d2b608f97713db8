"""Decoding: the constrained 7-token action path and KV-cached text generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from magma_ros.model import (
    GREEDY,
    REFERENCE_SAMPLING,
    GenerationError,
    Sampling,
    decode_constrained,
    decode_text,
    robot_action_query,
)


def test_action_range_from_tokenizer_not_embedding(policy):
    rng = policy.action_token_range
    base = policy.tokenizer.base_vocab_size
    assert (rng.lo, rng.hi) == (base - 256, base - 1)
    assert rng.size == 256
    # the tiny model pads its embedding past the tokenizer, like Magma-8B
    assert policy.model.embed_tokens.num_embeddings > policy.tokenizer.vocab_size > base


@pytest.mark.parametrize("sampling", [GREEDY, REFERENCE_SAMPLING, Sampling(temperature=5.0, seed=3)])
def test_action_path_returns_seven_ids_in_range(policy, frame, sampling):
    step = policy.predict_action(frame, "push the yellow ball to the left", sampling=sampling)
    assert len(step.token_ids) == 7
    assert all(policy.action_token_range.contains(t) for t in step.token_ids)
    assert step.text == policy.tokenizer.decode(step.token_ids)
    t = step.timings
    assert t.decode_steps == 6
    assert min(t.preprocess_ms, t.vision_ms, t.prefill_ms, t.decode_ms_per_token) > 0
    assert t.total_ms >= t.prefill_ms


def test_seeded_sampling_repeats(policy, frame):
    s = Sampling(temperature=1.0, seed=7)
    a = policy.predict_action(frame, "grasp the sponge", sampling=s).token_ids
    b = policy.predict_action(frame, "grasp the sponge", sampling=s).token_ids
    assert a == b


def _no_cache_greedy(model, embeds, steps, allowed=None):
    """Reference: full forward over the whole sequence for every new token."""
    ids = []
    with torch.no_grad():
        seq = embeds
        for _ in range(steps):
            logits = model.language_model(inputs_embeds=seq, use_cache=False).logits[0, -1].float()
            if allowed is not None:
                mask = torch.full_like(logits, float("-inf"))
                mask[allowed.lo: allowed.hi + 1] = 0
                logits = logits + mask
            ids.append(int(logits.argmax()))
            seq = torch.cat([seq, model.embed(torch.tensor([ids[-1]]))], dim=1)
    return ids


def test_constrained_greedy_equals_masked_no_cache_reference(policy, frame):
    prepared = policy.prepare_inputs(frame, robot_action_query("pour the bottle"), frame_size=256)
    ours = decode_constrained(policy.model, prepared.inputs_embeds, policy.action_token_range)
    ref = _no_cache_greedy(policy.model, prepared.inputs_embeds, 7, allowed=policy.action_token_range)
    assert list(ours.token_ids) == ref


def test_kv_cached_greedy_equals_no_cache_reference(policy, frame):
    prepared = policy.prepare_inputs(frame, "<image>\nWhat is in the image?")
    ours = decode_text(policy.model, prepared.inputs_embeds, max_new_tokens=12, stop_ids=())
    ref = _no_cache_greedy(policy.model, prepared.inputs_embeds, 12)
    assert list(ours.token_ids) == ref
    assert not ours.finished and ours.decode_steps == 11


def test_constrained_matches_transformers_generate(policy, frame):
    from transformers import LogitsProcessor, LogitsProcessorList

    rng = policy.action_token_range

    class OnlyActions(LogitsProcessor):
        def __call__(self, input_ids, scores):
            out = torch.full_like(scores, float("-inf"))
            out[:, rng.lo: rng.hi + 1] = scores[:, rng.lo: rng.hi + 1]
            return out

    prepared = policy.prepare_inputs(frame, robot_action_query("slide the towel"), frame_size=256)
    lm = policy.model.language_model
    with torch.inference_mode():
        out = lm.generate(inputs_embeds=prepared.inputs_embeds, max_new_tokens=7, min_new_tokens=7,
                          do_sample=False, logits_processor=LogitsProcessorList([OnlyActions()]),
                          pad_token_id=policy.tokenizer.pad_id, eos_token_id=None)
    ours = decode_constrained(policy.model, prepared.inputs_embeds, rng)
    assert out[0, -7:].tolist() == list(ours.token_ids)


def test_decode_text_stops_at_stop_id(policy, frame):
    prepared = policy.prepare_inputs(frame, "<image>\nDescribe the scene.")
    free = decode_text(policy.model, prepared.inputs_embeds, max_new_tokens=10, stop_ids=())
    stop = free.token_ids[4]
    cut = free.token_ids.index(stop)
    stopped = decode_text(policy.model, prepared.inputs_embeds, max_new_tokens=10, stop_ids={stop})
    assert stopped.finished
    assert stopped.token_ids == free.token_ids[: cut + 1]


def test_generate_text_result(policy, frame):
    result = policy.generate_text(frame, "Describe the scene.", max_new_tokens=8)
    assert 1 <= len(result.token_ids) <= 8
    body = result.token_ids[:-1] if result.finished else result.token_ids
    assert result.text == policy.tokenizer.decode(body)
    assert result.timings.decode_steps == len(result.token_ids) - 1


def test_generate_text_without_image(policy):
    result = policy.generate_text(None, "Name a color.", max_new_tokens=5)
    assert 1 <= len(result.token_ids) <= 5 and result.image_size is None


def test_bad_generation_inputs(policy, frame):
    with pytest.raises(GenerationError, match="temperature"):
        Sampling(temperature=-1)
    with pytest.raises(GenerationError, match="instruction"):
        policy.predict_action(frame, "  ")
    with pytest.raises(GenerationError, match="image"):
        policy.generate_text(None, "<image>\nWhat is this?")
    with pytest.raises(GenerationError, match="max_new_tokens"):
        policy.generate_text(frame, "hi", max_new_tokens=0)


def test_predict_action_uint8_any_size(policy):
    for shape in [(256, 256, 3), (720, 1280, 3), (1, 1, 3)]:
        image = np.random.default_rng(2).integers(0, 256, size=shape, dtype=np.uint8)
        assert len(policy.predict_action(image, "knock over the pot").token_ids) == 7


def test_top_k_one_is_greedy(policy, frame):
    greedy = policy.predict_action(frame, "stack the blue cube").token_ids
    top1 = policy.predict_action(frame, "stack the blue cube", sampling=Sampling(temperature=3.0, top_k=1, seed=0))
    assert top1.token_ids == greedy
    with pytest.raises(GenerationError, match="top_k"):
        Sampling(temperature=1.0, top_k=0)


def test_action_range_agrees_with_action_codec(policy):
    from magma_ros.codecs.actions import ActionCodec

    lo, hi = ActionCodec(policy.tokenizer.base_vocab_size).token_range
    assert (lo, hi) == (policy.action_token_range.lo, policy.action_token_range.hi)
