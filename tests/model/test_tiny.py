"""The magma-tiny family: tokenizer contract, variants, checkpoint writer."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from magma_ros.model import (
    TINY_VARIANTS,
    ConfigError,
    build_tiny_model,
    build_tiny_tokenizer,
    save_checkpoint,
)
from magma_ros.model.tiny import tiny_corpus
from magma_ros.model.tokenizer import MAGMA_SPECIAL_TOKENS


def test_tokenizer_special_tokens_and_action_slots(tiny):
    _, tok = tiny
    assert tok.base_vocab_size == 1024
    for token in MAGMA_SPECIAL_TOKENS:
        assert tok.token_id(token) >= tok.base_vocab_size  # added after the base vocabulary
    rng = tok.action_token_range
    assert (rng.lo, rng.hi) == (768, 1023)
    produced = {i for line in tiny_corpus() for i in tok.encode(line, add_special_tokens=False)}
    assert not produced & set(rng)  # ordinary text never lands in the action bins
    assert tok.encode("hi")[0] == tok.bos_id
    line = "What action should the robot take to pick up the red block?"
    assert tok.decode(tok.encode(line, add_special_tokens=False)) == line


def test_tokenizer_is_deterministic():
    a, b = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert a.backend.to_str() == b.backend.to_str()


@pytest.mark.parametrize("name", sorted(TINY_VARIANTS))
def test_variants_build_and_run(name):
    model, tok = build_tiny_model(name)
    v = TINY_VARIANTS[name]
    assert model.config.text.num_hidden_layers == v.num_layers
    s = v.img_size
    ids = torch.tensor([tok.bos_id, model.config.image_token_index, tok.eos_id])
    with torch.no_grad():
        logits = model(ids, torch.zeros(1, 3, s, s), [(1, 1)])
    g = s // 32
    assert logits.shape == (1, 2 + g * (g + 1), model.config.text.vocab_size)


def test_seeds_differ():
    a, _ = build_tiny_model(seed=0)
    b, _ = build_tiny_model(seed=1)
    w = "multi_modal_projector.proj.0.weight"
    assert not torch.equal(a.get_parameter(w), b.get_parameter(w))


def test_save_checkpoint_shards(tiny, tmp_path):
    model, tok = tiny
    save_checkpoint(model, tok, tmp_path / "five", shards=5)
    assert len(list((tmp_path / "five").glob("model-*-of-00005.safetensors"))) == 5
    with pytest.raises(ConfigError, match="shards"):
        save_checkpoint(model, tok, tmp_path / "bad", shards=10_000)


def test_unknown_variant():
    with pytest.raises(ConfigError, match="magma-huge"):
        build_tiny_model("magma-huge")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 1000), min_size=1, max_size=40), st.integers(1, 40))
def test_split_into_shards_keeps_order_and_count(sizes, shards):
    from magma_ros.model.saving import split_into_shards

    tensors = {f"t{i}": torch.empty(n) for i, n in enumerate(sizes)}
    if shards > len(tensors):
        with pytest.raises(ConfigError):
            split_into_shards(tensors, shards)
        return
    groups = split_into_shards(tensors, shards)
    assert len(groups) == shards and all(groups)
    assert [k for g in groups for k in g] == list(tensors)
