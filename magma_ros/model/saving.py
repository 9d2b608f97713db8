"""Write a Magma model as a checkpoint directory in the published layout.

``config.json`` (flat Magma layout), ``model.safetensors`` or N shards
``model-0000i-of-0000N.safetensors`` + ``model.safetensors.index.json``, the tokenizer files,
``preprocessor_config.json`` and optionally ``dataset_statistics.json``. The result loads
with :func:`magma_ros.model.loading.load_checkpoint`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from magma_ros.model.config import PreprocessorConfig
from magma_ros.model.errors import ConfigError
from magma_ros.model.loading import (
    CONFIG_FILE,
    INDEX_FILE,
    PREPROCESSOR_FILE,
    SINGLE_WEIGHTS_FILE,
    STATISTICS_FILE,
    resolve_dtype,
)
from magma_ros.model.modeling import MagmaForCausalLM
from magma_ros.model.tokenizer import MagmaTokenizer

# The LLaMA-3 chat template (as tokenizer_config.json carries it), for tools that render it.
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def shard_name(index: int, total: int) -> str:
    """``model-00001-of-00004.safetensors`` style name of shard ``index`` (1-based)."""
    return f"model-{index:05d}-of-{total:05d}.safetensors"


def split_into_shards(tensors: Mapping[str, torch.Tensor], shards: int) -> list[list[str]]:
    """Split keys (in order) into ``shards`` contiguous, non-empty groups of similar byte size."""
    names = list(tensors)
    if not 1 <= shards <= len(names):
        raise ConfigError(f"shards must be between 1 and the number of tensors ({len(names)}), got {shards}")
    sizes = [tensors[n].numel() * tensors[n].element_size() for n in names]
    target = sum(sizes) / shards
    groups: list[list[str]] = [[]]
    acc = 0
    for i, (name, size) in enumerate(zip(names, sizes, strict=True)):
        to_open = shards - len(groups)  # groups still to start
        left = len(names) - i  # names not placed yet, this one included
        if groups[-1] and to_open > 0 and (acc >= target * len(groups) or left <= to_open):
            groups.append([])
        groups[-1].append(name)
        acc += size
    return groups


def write_weights(tensors: Mapping[str, torch.Tensor], directory: Path, shards: int = 1) -> list[str]:
    """Write ``tensors`` as one file or as shards + index; returns the file names."""
    if shards == 1:
        save_file(dict(tensors), str(directory / SINGLE_WEIGHTS_FILE), metadata={"format": "pt"})
        return [SINGLE_WEIGHTS_FILE]
    groups = split_into_shards(tensors, shards)
    weight_map: dict[str, str] = {}
    files = []
    for i, group in enumerate(groups, start=1):
        name = shard_name(i, len(groups))
        save_file({k: tensors[k] for k in group}, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, name))
        files.append(name)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return files


def model_tensors(model: MagmaForCausalLM, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The model's parameters under their checkpoint names, contiguous, on CPU (tied
    ``lm_head`` left out, as transformers does)."""
    out: dict[str, torch.Tensor] = {}
    tied = model.config.text.tie_word_embeddings
    for name, param in model.named_parameters():
        if tied and name == "language_model.lm_head.weight":
            continue
        t = param.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[name] = t.contiguous().clone()
    return out


def save_checkpoint(model: MagmaForCausalLM, tokenizer: MagmaTokenizer, directory: str | Path, shards: int = 1,
                    dtype: str | torch.dtype | None = None, preprocessor: PreprocessorConfig | None = None,
                    dataset_statistics: Mapping[str, Any] | None = None,
                    extra_tensors: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write a complete checkpoint directory for ``model`` + ``tokenizer``; returns its path.

    ``dtype`` converts floating weights (default: as they are). ``extra_tensors`` are added
    to the weight files verbatim (e.g. the unused head keys of published checkpoints).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = resolve_dtype(dtype) if dtype is not None else None
    tensors = model_tensors(model, target)
    for name, t in (extra_tensors or {}).items():
        tensors[name] = t.detach().to("cpu").contiguous()
    write_weights(tensors, directory, shards)
    config = model.config.to_dict()
    config["torch_dtype"] = _DTYPE_NAMES.get(target or model.dtype, "float32")
    config.setdefault("architectures", ["MagmaForCausalLM"])
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save(directory, model_max_length=model.config.tokenizer_model_max_length or 4096,
                   chat_template=LLAMA3_CHAT_TEMPLATE)
    pre = preprocessor or PreprocessorConfig(base_img_size=model.config.vision.img_size)
    (directory / PREPROCESSOR_FILE).write_text(json.dumps(pre.to_dict(), indent=2) + "\n")
    if dataset_statistics is not None:
        (directory / STATISTICS_FILE).write_text(json.dumps(dataset_statistics, indent=2) + "\n")
    return directory
