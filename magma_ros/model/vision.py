"""Magma's vision tower: a timm ConvNeXt trunk, stride-32 features of its last stage.

The published tower is open_clip's visual module around timm ``convnext_xxlarge``; only
``clip_vision_model.trunk`` (stem + stages) is used: no head, no pooling. Parameter
names therefore start with ``vision_tower.clip_vision_model.trunk.`` and the ConvNeXt
layer scales are named ``gamma``.

The trunk's depths and dims are read from the checkpoint's tensor shapes
(:func:`infer_convnext_spec`) and compared with the backbone the config names, so toy
towers that still carry the name ``convnextxxlarge`` load as well as the real one.
Blocks use Linear MLPs (timm ``conv_mlp=False``: 2-D ``mlp.fc1/fc2`` weights).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from timm.models.convnext import ConvNeXt
from torch import nn

from magma_ros.model.errors import CheckpointError

TOWER_PREFIX = "vision_tower.clip_vision_model."
TRUNK_PREFIX = TOWER_PREFIX + "trunk."


@dataclass(frozen=True)
class ConvNeXtSpec:
    """Shape of a ConvNeXt trunk: blocks per stage, channels per stage, kernel, stem patch,
    LayerNorm epsilon (timm: 1e-5 for convnext_xxlarge, 1e-6 otherwise)."""

    depths: tuple[int, ...]
    dims: tuple[int, ...]
    kernel_size: int = 7
    patch_size: int = 4
    norm_eps: float = 1e-6

    @property
    def out_channels(self) -> int:
        return self.dims[-1]

    @property
    def stride(self) -> int:
        """Total downsampling: stem patch times 2 per later stage (32 for Magma)."""
        return self.patch_size * 2 ** (len(self.dims) - 1)


# The backbones Microsoft's code names, as timm builds them (variants are rows, not code).
VISION_BACKBONES: dict[str, ConvNeXtSpec] = {
    "convnextxxlarge": ConvNeXtSpec(depths=(3, 4, 30, 3), dims=(384, 768, 1536, 3072), norm_eps=1e-5),
    "convnextlarge": ConvNeXtSpec(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536), norm_eps=1e-6),
}

_BLOCK_KEY = re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.weight")


@dataclass(frozen=True)
class VisionSpecResult:
    """What :func:`infer_convnext_spec` found: the spec, and a note when it differs from the
    named backbone's standard size (None when it matches)."""

    spec: ConvNeXtSpec
    note: str | None


def infer_convnext_spec(shapes: Mapping[str, Sequence[int]], backbone: str,
                        prefix: str = TRUNK_PREFIX, source: str = "checkpoint") -> VisionSpecResult:
    """Derive the trunk's depths/dims/kernel/patch from parameter shapes under ``prefix``.

    ``shapes`` maps full parameter names to shapes. The LayerNorm epsilon comes from the
    named ``backbone`` row of :data:`VISION_BACKBONES` (1e-6 for names not in the table).
    Raises CheckpointError naming the missing tensor or the non-Magma block layout.
    """
    stem_key = prefix + "stem.0.weight"
    if stem_key not in shapes:
        raise CheckpointError(f"{source}: vision tower tensor {stem_key} is missing")
    stem = tuple(shapes[stem_key])
    if len(stem) != 4:
        raise CheckpointError(f"{source}: {stem_key} has shape {list(stem)}, expected 4-D")
    blocks: dict[int, set[int]] = {}
    for key in shapes:
        if key.startswith(prefix):
            match = _BLOCK_KEY.fullmatch(key[len(prefix):])
            if match:
                blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    if not blocks:
        raise CheckpointError(f"{source}: no ConvNeXt blocks under {prefix}stages.*")
    n_stages = max(blocks) + 1
    depths, dims = [], []
    kernel = 0
    for s in range(n_stages):
        ids = blocks.get(s, set())
        if not ids or ids != set(range(max(ids) + 1)):
            raise CheckpointError(f"{source}: vision tower stage {s} has blocks {sorted(ids)}; "
                                  "expected a contiguous 0..N-1 range")
        depths.append(len(ids))
        dw = tuple(shapes[f"{prefix}stages.{s}.blocks.0.conv_dw.weight"])
        dims.append(dw[0])
        kernel = dw[-1]
        fc1_key = f"{prefix}stages.{s}.blocks.0.mlp.fc1.weight"
        fc1 = shapes.get(fc1_key)
        if fc1 is None:
            raise CheckpointError(f"{source}: vision tower tensor {fc1_key} is missing")
        if len(fc1) != 2:
            raise CheckpointError(f"{source}: {fc1_key} has shape {list(fc1)}: 1x1-conv MLP blocks are "
                                  "not Magma's layout (expected Linear MLPs, 2-D weights)")
    if dims[0] != stem[0]:
        raise CheckpointError(f"{source}: {stem_key} has {stem[0]} output channels but stage 0 blocks "
                              f"have {dims[0]}")
    known = VISION_BACKBONES.get(backbone)
    spec = ConvNeXtSpec(depths=tuple(depths), dims=tuple(dims), kernel_size=kernel, patch_size=stem[-1],
                        norm_eps=known.norm_eps if known else 1e-6)
    note = None
    if known is None:
        note = (f"vision_backbone {backbone!r} is not one of {sorted(VISION_BACKBONES)}; "
                f"using the checkpoint's shapes (depths {spec.depths}, dims {spec.dims}, eps 1e-6)")
    elif (known.depths, known.dims) != (spec.depths, spec.dims):
        note = (f"vision tower depths {spec.depths} / dims {spec.dims} differ from {backbone}'s "
                f"{known.depths} / {known.dims}: loading a non-standard ConvNeXt size")
    return VisionSpecResult(spec=spec, note=note)


class ClipVisual(nn.Module):
    """Stands in for open_clip's visual module so parameter paths match (``.trunk``)."""

    def __init__(self, spec: ConvNeXtSpec) -> None:
        super().__init__()
        trunk = ConvNeXt(
            depths=spec.depths,
            dims=spec.dims,
            kernel_sizes=spec.kernel_size,
            patch_size=spec.patch_size,
            conv_mlp=False,
            ls_init_value=1e-6,  # keeps the `gamma` layer scales
            norm_eps=spec.norm_eps,
            num_classes=0,
            global_pool="",
        )
        # Magma never uses the classifier head; its checkpoint keys are tolerated as unused.
        trunk.head = nn.Identity()
        self.trunk = trunk


class MagmaVisionTower(nn.Module):
    """ConvNeXt trunk returning last-stage features, channels last.

    ``forward(pixel_values (N, 3, H, W)) -> (N, H/32, W/32, C)`` with C = ``spec.out_channels``.
    """

    def __init__(self, spec: ConvNeXtSpec) -> None:
        super().__init__()
        self.spec = spec
        self.clip_vision_model = ClipVisual(spec)

    @property
    def out_channels(self) -> int:
        return self.spec.out_channels

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        trunk = self.clip_vision_model.trunk
        x = trunk.stages(trunk.stem(pixel_values))
        return x.permute(0, 2, 3, 1)
