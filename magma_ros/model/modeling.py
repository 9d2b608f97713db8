"""The Magma model on stock building blocks: timm ConvNeXt tower, our projector, and
transformers ``LlamaForCausalLM`` as the language model.

Image path (``img_anyres_strategy`` "crop"): every crop goes through tower + projector on
its own; the crops of one image, laid out as ``image_size = (rows, cols)``, are tiled
into a (rows*g) x (cols*g) feature grid (g = crop/32); one ``row_seperator`` embedding is
appended after every tiled row and the grid is flattened row-major, giving
``rows*g*(cols*g+1)`` vectors. ("global" runs the re-assembled image through the tower
once; same count.) In the token sequence the single ``<image>`` token is replaced by
those vectors; position ids are the running count of the merged sequence.

Parameter names match the published checkpoint: ``vision_tower.clip_vision_model.trunk.*``,
``multi_modal_projector.*``, ``language_model.model.*``, ``language_model.lm_head.weight``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import LlamaForCausalLM

from magma_ros.model.config import MagmaConfig, projector_depth
from magma_ros.model.errors import CheckpointError, GenerationError
from magma_ros.model.projector import MagmaProjector
from magma_ros.model.vision import ConvNeXtSpec, MagmaVisionTower

ImageSize = tuple[int, int]  # (rows, cols) of the crop grid


def num_image_tokens(rows: int, cols: int, grid: int, row_separator: bool = True) -> int:
    """Embedding positions one image takes: ``rows*g*(cols*g + 1)`` (without separators
    ``rows*g*cols*g``). 272 for one 512-pixel crop, 1056 for a 2x2 layout."""
    return rows * grid * (cols * grid + (1 if row_separator else 0))


class MagmaForCausalLM(nn.Module):
    """Magma: ``forward(input_ids, pixel_values, image_sizes) -> logits``.

    Built from a :class:`MagmaConfig` and the tower's :class:`ConvNeXtSpec` (read from the
    checkpoint's shapes by the loader). Works on a single sequence (batch size 1), which
    is what a robot policy runs; the sequence may hold several ``<image>`` tokens.
    """

    def __init__(self, config: MagmaConfig, vision_spec: ConvNeXtSpec) -> None:
        super().__init__()
        mm_hidden = config.vision.mm_hidden_size
        if mm_hidden is None:
            config = config.with_mm_hidden_size(vision_spec.out_channels)
        elif mm_hidden != vision_spec.out_channels:
            raise CheckpointError(
                f"{config.source}: vision_config.mm_hidden_size is {mm_hidden} but the vision tower "
                f"outputs {vision_spec.out_channels} channels (vision tower dims {vision_spec.dims})"
            )
        self.config = config
        self.vision_spec = vision_spec
        self.vision_tower = MagmaVisionTower(vision_spec)
        self.multi_modal_projector = MagmaProjector(
            vision_spec.out_channels,
            config.text.hidden_size,
            depth=projector_depth(config.vision.mm_projector_type, config.source),
            use_im_start_end=config.vision.mm_use_im_start_end,
        )
        self.language_model = LlamaForCausalLM(config.text.to_llama_config())

    # -- properties -------------------------------------------------------------------
    @property
    def image_token_index(self) -> int:
        return self.config.image_token_index

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.language_model.lm_head.weight.device

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.language_model.model.embed_tokens

    # -- vision -----------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor, image_sizes: Sequence[ImageSize]) -> list[torch.Tensor]:
        """Projected, tiled features per image: a list of ``(n_tokens_i, hidden)`` tensors.

        ``pixel_values`` is ``(sum(rows*cols), 3, S, S)``: the crops of all images in order,
        each image's crops row-major; ``image_sizes`` gives (rows, cols) per image.
        """
        counts = [int(r) * int(c) for r, c in image_sizes]
        if pixel_values.dim() != 4 or pixel_values.shape[0] != sum(counts):
            raise GenerationError(
                f"pixel_values has shape {tuple(pixel_values.shape)} but image_sizes {list(image_sizes)} "
                f"need {sum(counts)} crops of shape (3, S, S)"
            )
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        separator = self.config.vision.mm_use_row_seperator
        out = []
        if self.config.vision.img_anyres_strategy == "global":
            for crops, (rows, cols) in zip(pixel_values.split(counts), image_sizes, strict=True):
                s = crops.shape[-1]
                whole = crops.view(rows, cols, 3, s, s).permute(2, 0, 3, 1, 4).reshape(1, 3, rows * s, cols * s)
                grid = self.multi_modal_projector(self.vision_tower(whole))[0]
                out.append(self._flatten_with_separators(grid, separator))
            return out
        feats = self.multi_modal_projector(self.vision_tower(pixel_values))  # (N, g, g, D)
        for crop_feats, (rows, cols) in zip(feats.split(counts), image_sizes, strict=True):
            out.append(self._flatten_with_separators(tile_crop_features(crop_feats, rows, cols), separator))
        return out

    def _flatten_with_separators(self, grid: torch.Tensor, separator: bool) -> torch.Tensor:
        """(R, C, D) -> (R*(C+1), D) with ``row_seperator`` after every row (or R*C, D)."""
        if separator:
            sep = self.multi_modal_projector.row_seperator.to(grid.dtype).expand(grid.shape[0], 1, -1)
            grid = torch.cat((grid, sep), dim=1)
        return grid.reshape(-1, grid.shape[-1])

    # -- merge ------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, image_features: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """Token embeddings with every ``<image>`` token replaced by its image's features.

        ``input_ids`` is 1-D (or ``(1, L)``); returns ``(1, L', hidden)``. The number of
        ``<image>`` tokens must equal ``len(image_features)``.
        """
        ids = input_ids.reshape(-1).to(self.device)
        is_image = ids == self.image_token_index
        positions = torch.nonzero(is_image).flatten().tolist()
        if len(positions) != len(image_features):
            raise GenerationError(
                f"the prompt holds {len(positions)} <image> token(s) (id {self.image_token_index}) "
                f"but {len(image_features)} image(s) were given"
            )
        # the image token id may lie outside the embedding matrix: look up 0 and overwrite
        text = self.embed_tokens(ids.masked_fill(is_image, 0))
        if not positions:
            return text.unsqueeze(0)
        pieces, start = [], 0
        for pos, feats in zip(positions, image_features, strict=True):
            pieces += [text[start:pos], feats.to(text.dtype)]
            start = pos + 1
        pieces.append(text[start:])
        return torch.cat(pieces, dim=0).unsqueeze(0)

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                image_sizes: Sequence[ImageSize] = ()) -> torch.Tensor:
        """Full-sequence float32 logits ``(1, L', vocab)`` (no cache; for tests and scoring)."""
        feats = self.image_features(pixel_values, image_sizes) if pixel_values is not None else []
        embeds = self.embed(input_ids, feats)
        out = self.language_model(inputs_embeds=embeds, use_cache=False)
        return out.logits.float()


def tile_crop_features(crop_feats: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Tile per-crop grids ``(rows*cols, g, g, D)`` (crops row-major) into ``(rows*g, cols*g, D)``."""
    n, g, g2, d = crop_feats.shape
    if n != rows * cols:
        raise GenerationError(f"{n} crop feature grids cannot tile a {rows}x{cols} layout")
    return crop_feats.view(rows, cols, g, g2, d).permute(0, 2, 1, 3, 4).reshape(rows * g, cols * g2, d)
