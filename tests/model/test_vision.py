"""The vision tower's size comes from tensor shapes; names match the published layout."""

from __future__ import annotations

import pytest
import torch

from magma_ros.model import (
    VISION_BACKBONES,
    MagmaConfig,
    MagmaForCausalLM,
    build_tiny_model,
    infer_convnext_spec,
)

# Magma-8B's sizes (magma-reference.md); the vocabulary value is only a test input.
MAGMA_8B = {
    "vocab_size": 128320, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
    "max_position_embeddings": 8192, "tie_word_embeddings": False, "image_token_index": 128257,
    "img_size": 512, "mm_hidden_size": 3072, "mm_projector_type": "mlp2x_gelu",
    "vision_config": {"vision_backbone": "convnextxxlarge", "vision_feature_layer": "clip_vis_dense",
                      "img_anyres_strategy": "crop", "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": 3072},
}


@pytest.fixture(scope="module")
def magma8b_on_meta():
    config = MagmaConfig.from_dict(MAGMA_8B)
    with torch.device("meta"):
        return MagmaForCausalLM(config, VISION_BACKBONES["convnextxxlarge"])


def test_magma8b_parameter_names_and_shapes(magma8b_on_meta):
    shapes = {k: tuple(p.shape) for k, p in magma8b_on_meta.named_parameters()}
    t = "vision_tower.clip_vision_model.trunk."
    assert shapes[t + "stem.0.weight"] == (384, 3, 4, 4)
    assert shapes[t + "stages.2.blocks.17.conv_dw.weight"] == (1536, 1, 7, 7)
    assert shapes[t + "stages.2.blocks.29.gamma"] == (1536,)
    assert shapes[t + "stages.3.blocks.2.mlp.fc1.weight"] == (4 * 3072, 3072)
    assert shapes[t + "stages.3.downsample.1.weight"] == (3072, 1536, 2, 2)
    assert shapes["multi_modal_projector.proj.0.weight"] == (4096, 3072)
    assert shapes["multi_modal_projector.proj.2.weight"] == (4096, 4096)
    assert shapes["multi_modal_projector.row_seperator"] == (1, 1, 4096)
    assert shapes["language_model.model.layers.31.self_attn.k_proj.weight"] == (1024, 4096)
    assert shapes["language_model.model.layers.0.mlp.gate_proj.weight"] == (14336, 4096)
    assert "language_model.lm_head.weight" in shapes and "language_model.model.norm.weight" in shapes
    assert not any(".head." in k for k in shapes)  # the unused heads are not part of the model
    total = sum(torch.Size(s).numel() for s in shapes.values())
    assert 8.7e9 < total < 9.1e9  # "about 8.9 B parameters"


def test_infer_spec_full_size_matches_table(magma8b_on_meta):
    shapes = {k: tuple(p.shape) for k, p in magma8b_on_meta.named_parameters()}
    result = infer_convnext_spec(shapes, "convnextxxlarge")
    assert result.spec == VISION_BACKBONES["convnextxxlarge"]
    assert result.note is None
    assert result.spec.stride == 32


def test_infer_spec_tiny_named_xxlarge_gets_note():
    model, _ = build_tiny_model("magma-tiny")
    shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
    result = infer_convnext_spec(shapes, "convnextxxlarge")
    assert result.spec.depths == (1, 1, 2, 1) and result.spec.dims == (8, 16, 32, 64)
    assert result.spec.norm_eps == 1e-5  # xxlarge's LayerNorm eps
    assert "differ" in result.note


def test_convnextlarge_variant():
    model, _ = build_tiny_model("magma-tiny-large")
    shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
    result = infer_convnext_spec(shapes, "convnextlarge")
    assert result.spec.norm_eps == 1e-6
    assert model.vision_tower.clip_vision_model.trunk.stages[0].blocks[0].norm.eps == 1e-6


def test_tower_output_stride_and_channels():
    model, _ = build_tiny_model("magma-tiny")
    with torch.no_grad():
        out = model.vision_tower(torch.zeros(2, 3, 64, 96))
    assert out.shape == (2, 2, 3, 64)
