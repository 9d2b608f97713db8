"""Parallelism and parameter-efficient wrappers, applied to a model built on the meta device
or freshly loaded (the torchtitan order: build on meta -> LoRA / activation checkpointing /
FSDP -> materialize the weights).

* Process groups come from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``):
  gloo on CPU, nccl on GPU. One process without torchrun is a world of one.
* DDP: :func:`apply_ddp` (stock ``DistributedDataParallel``).
* FSDP: :func:`apply_fsdp` (stock FSDP2 ``fully_shard``): every LLaMA decoder layer and every
  ConvNeXt stage is its own shard unit, the root holds the rest (embeddings, head, projector).
  Parameters are sharded over the data-parallel mesh; bf16 compute with fp32 reductions.
* LoRA: :func:`apply_lora` (peft ``get_peft_model``) on the language model's linear layers.
* Activation checkpointing: :func:`apply_activation_checkpointing` (transformers' for the
  LLaMA layers, timm's for the ConvNeXt stages).

:func:`memory_plan` states what a configuration needs per GPU; training/README.md quotes it
for Magma-8B (:func:`magma8b_config`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from magma_ros.model.config import MagmaConfig
from magma_ros.model.modeling import BatchOutput, MagmaForCausalLM
from magma_ros.model.vision import VISION_BACKBONES, ConvNeXtSpec
from magma_ros.training.config import LoraConfig

# Magma-8B's sizes (magma-reference.md); the embedding rows (LLaMA-3 vocabulary + Magma's added
# tokens, padded) are read from the real config.json at load time, this value only sizes plans.
MAGMA8B_CONFIG: dict[str, Any] = {
    "vocab_size": 128320, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
    "max_position_embeddings": 8192, "tie_word_embeddings": False, "image_token_index": 128257,
    "img_size": 512, "mm_hidden_size": 3072, "mm_projector_type": "mlp2x_gelu",
    "vision_config": {"vision_backbone": "convnextxxlarge", "vision_feature_layer": "clip_vis_dense",
                      "img_anyres_strategy": "crop", "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": 3072},
}


class ParallelError(RuntimeError):
    """A parallel setup cannot be built (bad environment, unsupported combination)."""


def magma8b_config() -> tuple[MagmaConfig, ConvNeXtSpec]:
    """Magma-8B's config and vision tower layout (ConvNeXt-XXLarge, LLaMA-3-8B)."""
    return MagmaConfig.from_dict(MAGMA8B_CONFIG, source="Magma-8B layout"), VISION_BACKBONES["convnextxxlarge"]


def build_meta_model(config: MagmaConfig, spec: ConvNeXtSpec) -> MagmaForCausalLM:
    with torch.device("meta"):
        return MagmaForCausalLM(config, spec)


# -- processes ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DistContext:
    """This process's place: ``rank`` of ``world_size``, its ``device``; ``backend`` is None
    for a single process without a process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


def resolve_device(device: str) -> torch.device:
    """``auto`` = CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def init_distributed(device: str = "auto") -> DistContext:
    """Join torchrun's process group (gloo on CPU, nccl on CUDA) or run as a world of one."""
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=dev)
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ParallelError(f"WORLD_SIZE={world} but {name} is not set: start with torchrun")
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev, backend=backend)


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# -- the trained module -------------------------------------------------------------------
def unwrap(module: nn.Module) -> nn.Module:
    """The module inside DDP / the training wrapper (a peft model stays a peft model)."""
    while True:
        if isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        elif isinstance(module, TrainingModule):
            module = module.model
        else:
            return module


def magma_of(module: nn.Module) -> MagmaForCausalLM:
    """The :class:`MagmaForCausalLM` inside any wrapper (DDP, training wrapper, peft)."""
    module = unwrap(module)
    if isinstance(module, MagmaForCausalLM):
        return module
    base = getattr(getattr(module, "base_model", None), "model", None)   # peft: PeftModel.base_model.model
    if isinstance(base, MagmaForCausalLM):
        return base
    raise ParallelError(f"no MagmaForCausalLM inside {type(module).__name__}")


class TrainingModule(nn.Module):
    """``forward(**batch) -> BatchOutput`` through :meth:`MagmaForCausalLM.forward_batch`, so
    DDP / FSDP see a real ``forward`` call (their hooks run on it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                pixel_values: torch.Tensor | None, image_sizes: Sequence[tuple[int, int]]) -> BatchOutput:
        return magma_of(self.model).forward_batch(input_ids, attention_mask, pixel_values, image_sizes, labels)


# -- LoRA -----------------------------------------------------------------------------------
def lora_target_pattern(config: LoraConfig) -> str:
    """A regex that selects the language model's linear layers named in ``config`` (never the
    vision tower or the projector)."""
    names = "|".join(sorted(set(config.target_modules)))
    return rf"language_model\.model\.layers\.\d+\.(self_attn|mlp)\.({names})"


def apply_lora(model: MagmaForCausalLM, config: LoraConfig) -> nn.Module:
    """Freeze ``model`` and add LoRA adapters (peft) on the configured linear layers; the
    projector stays trainable when ``config.train_projector``. Returns the peft model."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    for p in model.parameters():
        p.requires_grad_(False)
    peft_config = PeftLoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                 target_modules=lora_target_pattern(config), bias="none")
    peft_model = get_peft_model(model, peft_config)
    if config.train_projector:
        for p in model.multi_modal_projector.parameters():
            p.requires_grad_(True)
    if not any(p.requires_grad for p in peft_model.parameters()):
        raise ParallelError(f"LoRA targets {list(config.target_modules)} matched no layer of the language model")
    return peft_model


def merged_lora_model(peft_model: nn.Module) -> MagmaForCausalLM:
    """Fold the adapters into the base weights (peft ``merge_and_unload``) and return the plain
    model, ready for :func:`magma_ros.model.save_checkpoint`. The peft model is consumed."""
    merged = peft_model.merge_and_unload()
    if not isinstance(merged, MagmaForCausalLM):
        raise ParallelError(f"merge_and_unload returned {type(merged).__name__}, not MagmaForCausalLM")
    return merged


def lora_merged_tensors(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """The checkpoint tensors the merged model would have, without touching ``peft_model``
    (for intermediate exports): base weight + each adapter's delta on the LoRA layers."""
    from peft.tuners.lora import LoraLayer

    from magma_ros.model.loading import checkpoint_name

    magma = magma_of(peft_model)
    out: dict[str, torch.Tensor] = {}
    for module_name, module in magma.named_modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            weight = base.weight.detach()
            for adapter in module.active_adapters:
                weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
            out[checkpoint_name(f"{module_name}.weight")] = weight
    for name, param in magma.named_parameters():
        if "lora_" in name:
            continue
        key = checkpoint_name(name)
        out.setdefault(key, param.detach())
    return out


# -- activation checkpointing ----------------------------------------------------------------
def apply_activation_checkpointing(model: MagmaForCausalLM) -> None:
    """Recompute activations in the backward pass: every LLaMA decoder layer (transformers'
    non-reentrant checkpointing) and every ConvNeXt stage (timm)."""
    llm = model.language_model
    if hasattr(llm, "activation_checkpointing_enable"):    # transformers >= 5.2
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.language_model.config.use_cache = False
    trunk = model.vision_tower.clip_vision_model.trunk
    if hasattr(trunk, "set_grad_checkpointing"):
        trunk.set_grad_checkpointing(True)


# -- DDP / FSDP ------------------------------------------------------------------------------
def apply_ddp(module: nn.Module, ctx: DistContext) -> nn.Module:
    """Stock DDP over the process group (no-op for a world of one)."""
    if not ctx.distributed:
        return module
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def shard_units(model: MagmaForCausalLM) -> list[nn.Module]:
    """The modules FSDP shards as separate units, in forward order: ConvNeXt stages, then
    LLaMA decoder layers (the root keeps stem, projector, embeddings, final norm, head)."""
    units: list[nn.Module] = list(model.vision_tower.clip_vision_model.trunk.stages)
    units += list(model.language_model.model.layers)
    return units


def apply_fsdp(module: nn.Module, model: MagmaForCausalLM, mesh: Any, bf16: bool = True,
               reshard_after_forward: bool = True) -> nn.Module:
    """FSDP2 ``fully_shard`` every unit of :func:`shard_units`, then ``module`` (the root).

    Works on a meta-device model (nothing is allocated; ``to_empty`` + load afterwards).
    ``bf16``: parameters cast to bf16 for compute, gradients reduced in fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else \
        MixedPrecisionPolicy()
    for unit in shard_units(model):
        fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    return module


# -- memory plan ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU for the model states of one setup (activations excluded: they scale with
    batch x sequence and shrink with activation checkpointing)."""

    mode: str
    world_size: int
    total_params: int
    trainable_params: int
    weights_bytes: int
    grads_bytes: int
    optimizer_bytes: int

    @property
    def per_gpu_bytes(self) -> int:
        return self.weights_bytes + self.grads_bytes + self.optimizer_bytes

    def describe(self) -> str:
        gib = 1024 ** 3
        return (f"{self.mode}, {self.world_size} GPU(s): {self.total_params / 1e9:.2f} B params, "
                f"{self.trainable_params / 1e6:.1f} M trainable; per GPU weights "
                f"{self.weights_bytes / gib:.1f} GiB + grads {self.grads_bytes / gib:.1f} GiB + AdamW "
                f"{self.optimizer_bytes / gib:.1f} GiB = {self.per_gpu_bytes / gib:.1f} GiB before activations")


def count_lora_params(model: nn.Module, config: LoraConfig) -> int:
    """Adapter parameters LoRA adds (r x (in + out) per targeted linear layer) plus the
    projector when it is trained, counted on a meta model."""
    import re

    pattern = re.compile(lora_target_pattern(config))
    magma = magma_of(model)
    total = 0
    for name, module in magma.named_modules():
        if isinstance(module, nn.Linear) and pattern.fullmatch(name):
            total += config.rank * (module.in_features + module.out_features)
    if config.train_projector:
        total += sum(p.numel() for p in magma.multi_modal_projector.parameters())
    return total


def memory_plan(model: MagmaForCausalLM, world_size: int = 1, lora: LoraConfig | None = None,
                weights_bytes_per_param: int = 2) -> MemoryPlan:
    """Model-state bytes per GPU.

    Full fine-tuning under FSDP: fp32 master weights, fp32 gradients and AdamW's two fp32
    moments (16 bytes / parameter) sharded over ``world_size`` GPUs. LoRA on one GPU: the
    frozen base in ``weights_bytes_per_param`` (bf16: 2) plus fp32 adapters, their gradients
    and moments.
    """
    total = sum(p.numel() for p in model.parameters())
    if lora is None:
        shard = -(-total // world_size)
        return MemoryPlan("full fine-tuning, FSDP", world_size, total, total, 4 * shard, 4 * shard, 8 * shard)
    trainable = count_lora_params(model, lora)
    return MemoryPlan("LoRA", world_size, total + trainable, trainable,
                      weights_bytes_per_param * total + 4 * trainable, 4 * trainable, 8 * trainable)
