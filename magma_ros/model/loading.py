"""Load a Magma checkpoint directory as published, with stock libraries only.

Directory: ``config.json``; ``model.safetensors`` or shards + ``model.safetensors.index.json``;
``tokenizer.json`` (+ ``tokenizer_config.json`` / ``special_tokens_map.json``);
``preprocessor_config.json``; optionally ``dataset_statistics.json``. No hub access and no
remote code is ever involved.

Memory: the model is built on the ``meta`` device (no storage), then every parameter is
read from its shard, one tensor at a time, straight into its final dtype and device.
Peak host memory is about one copy of the weights plus the largest single tensor,
instead of the two copies (random-initialized model + loaded state dict) of a naive load.

Checks, all before any weight data is read: every shard the index names exists and holds
the tensors the index says; no parameter is missing; no shape differs; unexpected keys are
an error (``strict=True``) except the known-unused ones (ConvNeXt classifier head
``...trunk.head.norm.*``, open_clip ``...clip_vision_model.head.proj.weight``, stale rotary
buffers), which are listed in the report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from magma_ros.model.config import MagmaConfig, PreprocessorConfig, read_json
from magma_ros.model.errors import CheckpointError, ConfigError
from magma_ros.model.modeling import MagmaForCausalLM
from magma_ros.model.safetensors_reader import SafetensorsFile, TensorEntry
from magma_ros.model.tokenizer import MagmaTokenizer
from magma_ros.model.vision import TOWER_PREFIX, TRUNK_PREFIX, ConvNeXtSpec, infer_convnext_spec

CONFIG_FILE = "config.json"
SINGLE_WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
STATISTICS_FILE = "dataset_statistics.json"

# Keys published checkpoints carry that Magma never uses.
KNOWN_UNUSED_PREFIXES: tuple[str, ...] = (TRUNK_PREFIX + "head.", TOWER_PREFIX + "head.")
KNOWN_UNUSED_SUFFIXES: tuple[str, ...] = ("rotary_emb.inv_freq",)

_DTYPE_NAMES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}
_LIST_LIMIT = 12


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``torch.float32/bfloat16/float16`` or one of their names ("fp32", "bf16", "float16"...)."""
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float32, torch.bfloat16, torch.float16):
            return dtype
    elif isinstance(dtype, str) and dtype.lower() in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype.lower()]
    raise ConfigError(f"dtype {dtype!r} is not supported (fp32, bf16 or fp16)")


def is_known_unused(key: str) -> bool:
    return key.startswith(KNOWN_UNUSED_PREFIXES) or key.endswith(KNOWN_UNUSED_SUFFIXES)


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    more = f" ... and {len(keys) - _LIST_LIMIT} more" if len(keys) > _LIST_LIMIT else ""
    return f"{shown}{more}"


@dataclass(frozen=True)
class LoadReport:
    """What loading found. ``missing`` is empty after a successful load (missing parameters
    are an error); ``unexpected`` lists unknown extra keys (only possible with
    ``strict=False``); ``ignored`` the known-unused keys that were skipped."""

    checkpoint: Path
    weight_files: tuple[str, ...]
    num_tensors: int
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    ignored: tuple[str, ...]
    vision_spec: ConvNeXtSpec
    dtype: torch.dtype
    device: torch.device
    notes: tuple[str, ...]
    seconds: float


@dataclass(frozen=True)
class LoadedCheckpoint:
    """Everything a checkpoint directory holds, ready to run."""

    model: MagmaForCausalLM
    tokenizer: MagmaTokenizer
    config: MagmaConfig
    preprocessor: PreprocessorConfig
    dataset_statistics: Mapping[str, Any] | None
    report: LoadReport


def find_weight_files(directory: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors files of a checkpoint and the index's key -> file map (None if single).

    Raises CheckpointError when the index is unreadable or names a shard that is missing.
    """
    index_path = directory / INDEX_FILE
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{index_path}: cannot read index ({err})") from err
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index_path}: index has no weight_map")
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            if not (directory / shard).is_file():
                raise CheckpointError(f"{directory / shard}: shard listed in {index_path.name} is missing")
        return [directory / s for s in shards], dict(weight_map)
    single = directory / SINGLE_WEIGHTS_FILE
    if single.is_file():
        return [single], None
    others = sorted(p.name for p in directory.glob("*.bin")) if directory.is_dir() else []
    hint = f" (found {', '.join(others)}: only safetensors checkpoints are supported)" if others else ""
    raise CheckpointError(f"{directory}: no weights: expected {SINGLE_WEIGHTS_FILE} or {INDEX_FILE}{hint}")


def read_headers(files: list[Path],
                 weight_map: dict[str, str] | None) -> dict[str, tuple[SafetensorsFile, TensorEntry]]:
    """Key -> (file, entry) over all files, checked against the index when there is one."""
    located: dict[str, tuple[SafetensorsFile, TensorEntry]] = {}
    for path in files:
        st = SafetensorsFile.open(path)
        for name, entry in st.entries.items():
            if name in located:
                raise CheckpointError(f"{path}: tensor {name!r} also appears in {located[name][0].path.name}")
            located[name] = (st, entry)
    if weight_map is not None:
        for name, shard in weight_map.items():
            if name not in located or located[name][0].path.name != shard:
                raise CheckpointError(f"{files[0].parent / INDEX_FILE}: index places tensor {name!r} in "
                                      f"{shard}, but that shard does not hold it")
    return located


# Segments wrappers add to parameter names; the checkpoint name is the name without them.
# (activation checkpointing, FSDP1, DDP, peft's PeftModel / LoRA base layer).
_WRAPPER_SEGMENTS: tuple[str, ...] = ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "_orig_mod.")
# (MagmaForCausalLM's own names start with vision_tower., multi_modal_projector., language_model.)
_WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "model.", "base_model.model.")


def checkpoint_name(name: str) -> str:
    """The checkpoint key of a (possibly wrapped) model's parameter name: wrapper segments
    (activation checkpointing, FSDP1, ``torch.compile``, DDP ``module.``, a training wrapper's
    ``model.``, peft ``base_model.model.`` and LoRA ``.base_layer``) removed."""
    for segment in _WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                changed = True
    return name.replace(".base_layer.", ".")


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    owner, _, leaf = name.rpartition(".")
    return (model.get_submodule(owner) if owner else model), leaf


def _finish_buffers(model: nn.Module, device: torch.device) -> None:
    """Rebuild non-persistent buffers (rotary frequencies), which a meta build leaves empty."""
    for module in list(model.modules()):   # always: after ``to_empty`` they hold garbage, not meta
        for child_name, child in list(module.named_children()):
            if isinstance(child, LlamaRotaryEmbedding):
                setattr(module, child_name, LlamaRotaryEmbedding(config=child.config).to(device))
    leftovers = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftovers:
        raise CheckpointError(f"model tensors were never materialized: {_listing(leftovers)}")


@dataclass
class OpenedCheckpoint:
    """A checkpoint directory read and checked, weights not loaded yet (first half of
    :func:`load_checkpoint`): ``model`` is built on the ``meta`` device (no storage), so a
    trainer can apply LoRA / FSDP / activation checkpointing before :meth:`load_weights`
    materializes the weights (the torchtitan pattern). :meth:`build_meta_model` builds
    another empty copy (e.g. for an export)."""

    directory: Path
    model: MagmaForCausalLM
    tokenizer: MagmaTokenizer
    config: MagmaConfig
    preprocessor: PreprocessorConfig
    dataset_statistics: Mapping[str, Any] | None
    vision_spec: ConvNeXtSpec
    files: tuple[Path, ...]
    located: dict[str, tuple[SafetensorsFile, TensorEntry]]
    unexpected: tuple[str, ...]
    ignored: tuple[str, ...]
    notes: tuple[str, ...]
    started: float

    def build_meta_model(self) -> MagmaForCausalLM:
        with torch.device("meta"):
            return MagmaForCausalLM(self.config, self.vision_spec)

    def load_weights(self, model: nn.Module | None = None, dtype: str | torch.dtype = "float32",
                     device: str | torch.device = "cpu", requires_grad: bool = False) -> LoadReport:
        """Read every parameter of ``model`` (default :attr:`model`) from the weight files,
        one tensor at a time, straight into ``dtype`` on ``device``.

        ``model`` may be wrapped (activation checkpointing, peft LoRA, FSDP ``fully_shard``):
        names are matched through :func:`checkpoint_name`. A parameter still on the meta
        device is replaced by the loaded tensor (no second copy); an allocated one (e.g.
        after ``to_empty``, or a DTensor shard after ``fully_shard``) is copied into, each
        rank keeping its shard. Parameters the checkpoint cannot hold (LoRA adapters,
        ``lora_`` in the name) are left alone. ``requires_grad``: the flag of every loaded
        parameter (False for inference, True to train them).
        """
        target_dtype = resolve_dtype(dtype)
        target_device = torch.device(device)
        model = self.model if model is None else model
        tied = self.config.text.tie_word_embeddings
        by_key: dict[str, list[str]] = {}
        for name, _ in model.named_parameters(remove_duplicate=False):
            if "lora_" in name:
                continue
            by_key.setdefault(checkpoint_name(name), []).append(name)
        lm_head = "language_model.lm_head.weight"
        missing = [k for k in by_key if k not in self.located and not (tied and k == lm_head)]
        if missing:
            raise CheckpointError(f"{self.directory}: {len(missing)} parameter(s) of the model are not in the "
                                  f"weight files: {_listing(missing)}")
        count = 0
        for st in {id(st): st for st, _ in self.located.values()}.values():
            for key, tensor in st.iter_tensors(set(by_key)):
                if tensor.is_floating_point():
                    tensor = tensor.to(device=target_device, dtype=target_dtype)
                else:
                    tensor = tensor.to(device=target_device)
                for name in by_key[key]:
                    _assign(model, name, tensor, requires_grad)
                count += 1
        if tied and lm_head not in self.located:
            for name in by_key.get(lm_head, []):
                owner, leaf = _owner(model, name)
                embed = by_key["language_model.model.embed_tokens.weight"][0]
                embed_owner, embed_leaf = _owner(model, embed)
                setattr(owner, leaf, getattr(embed_owner, embed_leaf))
        _finish_buffers(model, target_device)
        return LoadReport(
            checkpoint=self.directory, weight_files=tuple(p.name for p in self.files), num_tensors=count,
            missing=(), unexpected=self.unexpected, ignored=self.ignored, vision_spec=self.vision_spec,
            dtype=target_dtype, device=target_device, notes=self.notes,
            seconds=time.perf_counter() - self.started,
        )


def _assign(model: nn.Module, name: str, value: torch.Tensor, requires_grad: bool) -> None:
    owner, leaf = _owner(model, name)
    current = owner._parameters[leaf]
    if current is None or current.is_meta:
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=requires_grad and value.is_floating_point())
        return
    with torch.no_grad():
        if hasattr(current, "device_mesh") and hasattr(current, "placements"):   # a DTensor shard (FSDP2)
            from torch.distributed.tensor import distribute_tensor

            value = distribute_tensor(value.to(current.device_mesh.device_type), current.device_mesh,
                                      current.placements, src_data_rank=None)
        current.copy_(value)
    current.requires_grad_(requires_grad and current.is_floating_point())


def open_checkpoint(directory: str | Path, strict: bool = True) -> OpenedCheckpoint:
    """Read and check a checkpoint directory and build its model on the ``meta`` device.

    Everything :func:`load_checkpoint` checks is checked here, before any weight data is
    read. Raises CheckpointError (files, tensors), TokenizerError, ConfigError.
    """
    t0 = time.perf_counter()
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found")
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: config file not found")
    tokenizer = MagmaTokenizer.from_dir(directory)
    config = MagmaConfig.from_file(config_path).with_token_ids(tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
    notes: list[str] = []
    pre_path = directory / PREPROCESSOR_FILE
    if pre_path.is_file():
        preprocessor = PreprocessorConfig.from_dict(read_json(pre_path, PREPROCESSOR_FILE),
                                                    default_size=config.vision.img_size, source=str(pre_path))
    else:
        preprocessor = PreprocessorConfig(base_img_size=config.vision.img_size, source=str(pre_path))
        notes.append(f"{PREPROCESSOR_FILE} not found: crop size {config.vision.img_size} from config.json, "
                     f"num_crops {preprocessor.num_crops}, CLIP mean/std")
    statistics = None
    stats_path = directory / STATISTICS_FILE
    if stats_path.is_file():
        try:
            statistics = json.loads(stats_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{stats_path}: cannot read dataset statistics ({err})") from err

    files, weight_map = find_weight_files(directory)
    located = read_headers(files, weight_map)
    shapes = {name: entry.shape for name, (_, entry) in located.items()}
    vision = infer_convnext_spec(shapes, config.vision.vision_backbone, source=str(directory))
    if vision.note:
        notes.append(vision.note)

    with torch.device("meta"):
        model = MagmaForCausalLM(config, vision.spec)
    expected = dict(model.named_parameters(remove_duplicate=False))
    tied = config.text.tie_word_embeddings
    missing = [k for k in expected if k not in located and not (tied and k == "language_model.lm_head.weight")]
    extra = [k for k in located if k not in expected]
    ignored = [k for k in extra if is_known_unused(k)]
    unexpected = [k for k in extra if not is_known_unused(k)]
    if missing:
        raise CheckpointError(f"{directory}: {len(missing)} parameter(s) missing from the weight files: "
                              f"{_listing(missing)}")
    if unexpected and strict:
        raise CheckpointError(f"{directory}: {len(unexpected)} unexpected tensor(s) in the weight files: "
                              f"{_listing(unexpected)} (load with strict=False to ignore them)")
    mismatched = [
        f"{k} (checkpoint {list(located[k][1].shape)} in {located[k][0].path.name}, model {list(p.shape)})"
        for k, p in expected.items() if k in located and tuple(located[k][1].shape) != tuple(p.shape)
    ]
    if mismatched:
        raise CheckpointError(f"{directory}: shape mismatch: {_listing(mismatched)}")
    return OpenedCheckpoint(
        directory=directory, model=model, tokenizer=tokenizer, config=model.config, preprocessor=preprocessor,
        dataset_statistics=statistics, vision_spec=vision.spec, files=tuple(files), located=located,
        unexpected=tuple(unexpected), ignored=tuple(ignored), notes=tuple(notes), started=t0,
    )


def load_checkpoint(directory: str | Path, dtype: str | torch.dtype = "float32",
                    device: str | torch.device = "cpu", strict: bool = True,
                    trainable: bool = False) -> LoadedCheckpoint:
    """Load a published Magma checkpoint directory: :func:`open_checkpoint` (checks, meta
    build) then :meth:`OpenedCheckpoint.load_weights`.

    ``dtype``: fp32 / bf16 / fp16 for all weights. ``device``: where they live.
    ``strict``: unknown unexpected keys are an error (else only reported).
    ``trainable``: parameters require grad and the model is left in train mode (default:
    frozen, eval mode, for inference).
    Raises CheckpointError (files, tensors), TokenizerError, ConfigError; every message
    names the file, field or tensor at fault.
    """
    target_dtype = resolve_dtype(dtype)
    opened = open_checkpoint(directory, strict=strict)
    report = opened.load_weights(dtype=target_dtype, device=device, requires_grad=trainable)
    model = opened.model
    model.train(trainable)
    return LoadedCheckpoint(model=model, tokenizer=opened.tokenizer, config=model.config,
                            preprocessor=opened.preprocessor, dataset_statistics=opened.dataset_statistics,
                            report=report)
