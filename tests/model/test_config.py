"""config.json / preprocessor_config.json parsing and validation."""

from __future__ import annotations

import copy

import pytest

from magma_ros.model import ConfigError, MagmaConfig, PreprocessorConfig

FLAT = {
    "model_type": "magma",
    "architectures": ["MagmaForCausalLM"],
    "vocab_size": 1088, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "max_position_embeddings": 8192, "tie_word_embeddings": False,
    "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
    "image_token_index": 1030, "img_size": 512, "mm_hidden_size": 64, "mm_projector_type": "mlp2x_gelu",
    "mm_use_im_start_end": False, "tokenizer_model_max_length": 4096,
    "text_config": {"model_type": "llama", "vocab_size": 1088, "hidden_size": 64, "intermediate_size": 128,
                    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                    "bos_token_id": 1024, "eos_token_id": 1028},
    "vision_config": {"vision_backbone": "convnextxxlarge", "vision_feature_layer": "clip_vis_dense",
                      "img_anyres_strategy": "crop", "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": 64},
}


def test_flat_layout_null_ids_from_text_config():
    cfg = MagmaConfig.from_dict(FLAT)
    assert cfg.text.bos_token_id == 1024 and cfg.text.eos_token_id == (1028,)
    assert cfg.text.pad_token_id is None
    assert cfg.vision.img_size == 512 and cfg.vision.grid == 16
    assert cfg.extra["architectures"] == ["MagmaForCausalLM"]


def test_top_level_only_config():
    data = copy.deepcopy(FLAT)
    del data["text_config"]
    data["eos_token_id"] = [1028, 1025]
    cfg = MagmaConfig.from_dict(data)
    assert cfg.text.hidden_size == 64 and cfg.text.eos_token_id == (1028, 1025)


def test_round_trip_to_dict():
    cfg = MagmaConfig.from_dict(FLAT)
    again = MagmaConfig.from_dict(cfg.to_dict())
    assert again == cfg
    out = cfg.to_dict()
    assert out["text_config"]["hidden_size"] == out["hidden_size"] == 64
    assert out["vision_config"]["vision_backbone"] == "convnextxxlarge"


def test_llama_config_rope():
    llama = MagmaConfig.from_dict(FLAT).text.to_llama_config()
    assert llama.rope_parameters["rope_theta"] == 500000.0
    assert llama.num_key_value_heads == 2


def test_transformers_v5_rope_parameters():
    data = copy.deepcopy(FLAT)
    del data["rope_theta"]
    data["text_config"]["rope_parameters"] = {"rope_type": "default", "rope_theta": 123.0}
    assert MagmaConfig.from_dict(data).text.rope_theta == 123.0


@pytest.mark.parametrize(("edit", "fragment"), [
    (lambda d: d.pop("vision_config"), "vision_config"),
    (lambda d: d.pop("image_token_index"), "image_token_index"),
    (lambda d: d["vision_config"].__setitem__("img_anyres_strategy", "pad"), "img_anyres_strategy"),
    (lambda d: d["vision_config"].__setitem__("vision_feature_layer", -2), "vision_feature_layer"),
    (lambda d: d["vision_config"].__setitem__("vision_backbone", "siglip"), "vision_backbone"),
    (lambda d: d["vision_config"].__setitem__("mm_projector_type", "qformer"), "mm_projector_type"),
    (lambda d: d.__setitem__("img_size", 500), "img_size"),
    (lambda d: d["text_config"].__setitem__("hidden_size", 66), "hidden_size"),
    (lambda d: d["text_config"].__setitem__("num_hidden_layers", 0), "num_hidden_layers"),
    (lambda d: d["text_config"].__setitem__("rms_norm_eps", -1.0), "rms_norm_eps"),
    (lambda d: [d["text_config"].pop("vocab_size"), d.pop("vocab_size")], "vocab_size"),
])
def test_bad_fields_named(edit, fragment):
    data = copy.deepcopy(FLAT)
    edit(data)
    with pytest.raises(ConfigError, match=fragment):
        MagmaConfig.from_dict(data, source="ckpt/config.json")


def test_preprocessor_config():
    pre = PreprocessorConfig.from_dict({"base_img_size": 512, "num_crops": 4, "anyres_strategy": "crop"},
                                       default_size=64)
    assert pre.base_img_size == 512 and pre.num_crops == 4
    assert PreprocessorConfig.from_dict({}, default_size=64).base_img_size == 64
    for bad, fragment in [({"num_crops": 0}, "num_crops"), ({"image_std": [1, 0, 1]}, "image_std"),
                          ({"base_img_size": 100}, "base_img_size"), ({"image_mean": [0.5]}, "image_mean")]:
        with pytest.raises(ConfigError, match=fragment):
            PreprocessorConfig.from_dict(bad, default_size=64)
