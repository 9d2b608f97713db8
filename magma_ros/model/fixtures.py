"""A checkpoint directory with Magma-8B's exact published layout, at tiny sizes.

Same files (``config.json``, four bf16 shards ``model-0000i-of-00004.safetensors`` +
``model.safetensors.index.json``, ``tokenizer.json`` / ``tokenizer_config.json`` /
``special_tokens_map.json``, ``preprocessor_config.json``, ``generation_config.json``),
same config fields (flat LLaMA fields with null top-level bos/eos/pad, ``text_config``,
``vision_config`` dict naming ``convnextxxlarge``), same parameter names including the
unused head keys (``...trunk.head.norm.*``, ``...clip_vision_model.head.proj.weight``).
Only the sizes are toy. Used to prove the loader handles the real layout without the
17.8 GB download.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from magma_ros.model.config import CLIP_MEAN, CLIP_STD, MagmaConfig, PreprocessorConfig, TextConfig, VisionConfig
from magma_ros.model.loading import CONFIG_FILE, INDEX_FILE, PREPROCESSOR_FILE
from magma_ros.model.modeling import MagmaForCausalLM
from magma_ros.model.saving import LLAMA3_CHAT_TEMPLATE, model_tensors, shard_name, split_into_shards, write_weights
from magma_ros.model.tiny import TINY_VARIANTS, build_tiny_model, build_tiny_tokenizer
from magma_ros.model.tokenizer import IMAGE_TOKEN, MagmaTokenizer
from magma_ros.model.vision import TOWER_PREFIX, TRUNK_PREFIX, ConvNeXtSpec

MAGMA8B_SHARDS = 4
# open_clip's projection of the CLIP image embedding (unused by Magma); 1024 on ConvNeXt-XXLarge.
_CLIP_EMBED_DIM = 32


@dataclass(frozen=True)
class LayoutFixture:
    """The written directory, the in-memory source model/tokenizer (weights as written,
    i.e. rounded to bf16), and the names of the unused keys it carries."""

    directory: Path
    model: MagmaForCausalLM
    tokenizer: MagmaTokenizer
    unused_keys: tuple[str, ...]


def _config_json(model: MagmaForCausalLM, tokenizer: MagmaTokenizer) -> dict:
    text = model.config.text
    vision = model.config.vision
    llama = {
        "attention_bias": False, "attention_dropout": 0.0, "hidden_act": "silu",
        "hidden_size": text.hidden_size, "initializer_range": 0.02, "intermediate_size": text.intermediate_size,
        "max_position_embeddings": text.max_position_embeddings, "mlp_bias": False,
        "num_attention_heads": text.num_attention_heads, "num_hidden_layers": text.num_hidden_layers,
        "num_key_value_heads": text.num_key_value_heads, "pretraining_tp": 1, "rms_norm_eps": text.rms_norm_eps,
        "rope_scaling": None, "rope_theta": text.rope_theta, "tie_word_embeddings": False, "use_cache": True,
        "vocab_size": text.vocab_size,
    }
    return {
        "_name_or_path": "microsoft/Magma-8B",
        "architectures": ["MagmaForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_magma.MagmaConfig",
                     "AutoModelForCausalLM": "modeling_magma.MagmaForCausalLM"},
        **llama,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "image_token_index": model.config.image_token_index,
        "img_size": vision.img_size,
        "mm_hidden_size": vision.mm_hidden_size,
        "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_start_end": False,
        "model_type": "magma",
        "text_config": {
            "_name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct",
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "torch_dtype": "bfloat16",
            **llama,
            "bos_token_id": tokenizer.bos_id,
            "eos_token_id": tokenizer.eos_id,
        },
        "tokenizer_model_max_length": 4096,
        "tokenizer_padding_side": "right",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.44.1",
        "vision_config": {
            "img_anyres_strategy": "crop",
            "img_size": vision.img_size,
            "max_num_crops": 4,
            "mm_hidden_size": vision.mm_hidden_size,
            "mm_projector_type": "mlp2x_gelu",
            "mm_use_im_start_end": False,
            "mm_use_row_seperator": True,
            "vision_backbone": "convnextxxlarge",
            "vision_feature_layer": "clip_vis_dense",
            "vision_tower": "convnext_xxlarge",
        },
    }


def write_magma8b_layout_fixture(directory: str | Path, seed: int = 0) -> LayoutFixture:
    """Write a tiny checkpoint with Magma-8B's exact layout into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model, tokenizer = build_tiny_model(TINY_VARIANTS["magma-tiny"], seed=seed)
    # round the in-memory weights to bf16 so the returned model equals what is on disk
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(p.dtype))
    tensors = model_tensors(model, torch.bfloat16)
    channels = model.vision_spec.out_channels
    gen = torch.Generator().manual_seed(seed + 1)
    unused = {
        TRUNK_PREFIX + "head.norm.weight": torch.ones(channels, dtype=torch.bfloat16),
        TRUNK_PREFIX + "head.norm.bias": torch.zeros(channels, dtype=torch.bfloat16),
        TOWER_PREFIX + "head.proj.weight": torch.randn(_CLIP_EMBED_DIM, channels, generator=gen).to(torch.bfloat16),
    }
    # published shards keep the vision tower (head included) first
    ordered = {k: v for k, v in tensors.items() if k.startswith(TOWER_PREFIX)}
    ordered.update(unused)
    ordered.update({k: v for k, v in tensors.items() if not k.startswith(TOWER_PREFIX)})
    write_weights(ordered, directory, shards=MAGMA8B_SHARDS)
    (directory / CONFIG_FILE).write_text(json.dumps(_config_json(model, tokenizer), indent=2) + "\n")
    tokenizer.save(directory, model_max_length=4096, chat_template=LLAMA3_CHAT_TEMPLATE)
    preprocessor = {
        "anyres_strategy": "crop",
        "auto_map": {"AutoImageProcessor": "image_processing_magma.MagmaImageProcessor",
                     "AutoProcessor": "processing_magma.MagmaProcessor"},
        "base_img_size": model.config.vision.img_size,
        "do_convert_rgb": True,
        "image_mean": list(CLIP_MEAN),
        "image_processor_type": "MagmaImageProcessor",
        "image_std": list(CLIP_STD),
        "num_crops": 4,
        "processor_class": "MagmaProcessor",
    }
    (directory / PREPROCESSOR_FILE).write_text(json.dumps(preprocessor, indent=2) + "\n")
    generation = {"bos_token_id": tokenizer.bos_id, "eos_token_id": [tokenizer.eos_id],
                  "transformers_version": "4.44.1"}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return LayoutFixture(directory=directory, model=model, tokenizer=tokenizer, unused_keys=tuple(unused))


def write_large_checkpoint(directory: str | Path, target_gb: float, shards: int = 4, hidden_size: int = 2048,
                           seed: int = 0) -> int:
    """Write a LLaMA-shaped Magma checkpoint of about ``target_gb`` GB (fp32) for memory tests.

    The number of decoder layers is chosen to reach the size (a toy vision tower, the
    magma-tiny tokenizer, a 32000-row embedding). Shards are written one at a time from
    random values, so the writer never holds more than one shard. Returns the weight bytes.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer()
    inter, vocab, heads, kv_heads = hidden_size * 11 // 4, 32000, 16, 4
    kv_dim = hidden_size * kv_heads // heads
    per_layer = 4 * (2 * hidden_size * hidden_size + 2 * hidden_size * kv_dim + 3 * hidden_size * inter)
    layers = max(1, round((target_gb * 1e9 - 4 * 2 * vocab * hidden_size) / per_layer))
    text = TextConfig(vocab_size=vocab, hidden_size=hidden_size, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, bos_token_id=tok.bos_id,
                      eos_token_id=(tok.eos_id,), pad_token_id=tok.pad_id)
    vision = VisionConfig(vision_backbone="convnextxxlarge", img_size=64, mm_hidden_size=64)
    config = MagmaConfig(text=text, vision=vision, image_token_index=tok.token_id(IMAGE_TOKEN))
    with torch.device("meta"):
        model = MagmaForCausalLM(config, ConvNeXtSpec(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64), norm_eps=1e-5))
    params = dict(model.named_parameters())
    groups = split_into_shards(params, shards)
    gen = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    for i, group in enumerate(groups, start=1):
        name = shard_name(i, len(groups))
        tensors = {k: torch.empty(params[k].shape).uniform_(-0.02, 0.02, generator=gen) for k in group}
        save_file(tensors, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, name))
        del tensors
    total = sum(p.numel() * 4 for p in params.values())
    (directory / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (directory / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    tok.save(directory)
    (directory / PREPROCESSOR_FILE).write_text(json.dumps(PreprocessorConfig(64).to_dict(), indent=2) + "\n")
    return total
