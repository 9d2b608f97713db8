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
from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlamaForCausalLM

from magma_ros.model.config import MagmaConfig, projector_depth
from magma_ros.model.errors import CheckpointError, GenerationError
from magma_ros.model.projector import MagmaProjector
from magma_ros.model.vision import ConvNeXtSpec, MagmaVisionTower

ImageSize = tuple[int, int]  # (rows, cols) of the crop grid
IGNORE_INDEX = -100  # label of a position that is not scored (prompt, image, padding)


@dataclass(frozen=True)
class MergedBatch:
    """A padded batch after the image merge (right padding, like Magma's tokenizer).

    ``inputs_embeds`` (B, L', hidden); ``attention_mask`` (B, L') 1 = real position;
    ``position_ids`` (B, L') running count of each row's merged sequence; ``token_index``
    (B, L') the position in ``input_ids`` a merged position came from (-1 for image
    features and padding), so per-token labels can follow the merge.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    token_index: torch.Tensor

    def merge_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, L) per-token labels -> (B, L') labels of the merged sequence (IGNORE_INDEX on
        image features and padding)."""
        index = self.token_index.to(labels.device)
        gathered = labels.gather(1, index.clamp(min=0))
        return gathered.masked_fill(index < 0, IGNORE_INDEX)


@dataclass(frozen=True)
class BatchOutput:
    """:meth:`MagmaForCausalLM.forward_batch` result.

    ``loss``: mean over examples of each example's mean answer-token cross-entropy (examples
    weigh the same whatever their answer length, so data-parallel ranks and gradient
    accumulation average to the combined batch exactly); None without labels.
    ``logits``: float32 logits of the scored positions only, (N, vocab), in row-major order
    (``labels`` given), else of every position (B, L', vocab). ``targets``: the token each
    scored position predicts (N,). ``example_index``: the example of each scored position (N,).
    ``per_example_loss``: (B,) mean cross-entropy per example (NaN for an example without
    scored tokens).
    """

    loss: torch.Tensor | None
    logits: torch.Tensor
    targets: torch.Tensor | None
    example_index: torch.Tensor | None
    per_example_loss: torch.Tensor | None


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

    def merge_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    image_features: Sequence[torch.Tensor] = ()) -> MergedBatch:
        """Embed a right-padded batch ``input_ids`` (B, L) and replace its ``<image>`` tokens by
        ``image_features`` (one per ``<image>`` token, in row-major order over the batch).

        ``attention_mask`` (B, L): 1 for real tokens; they must come first in each row (right
        padding). Default: all real. Each row is merged exactly as :meth:`embed` merges one
        sequence; rows are then right-padded with zeros to the longest merged row.
        """
        if input_ids.dim() != 2:
            raise GenerationError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        ids = input_ids.to(self.device)
        mask = (torch.ones_like(ids) if attention_mask is None else attention_mask.to(self.device)).bool()
        if mask.shape != ids.shape:
            raise GenerationError(f"attention_mask shape {tuple(mask.shape)} differs from input_ids "
                                  f"{tuple(ids.shape)}")
        lengths = mask.sum(dim=1)
        if not torch.equal(mask, torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]):
            raise GenerationError("attention_mask must be right padding: ones then zeros in every row")
        is_image = (ids == self.image_token_index) & mask
        if int(is_image.sum()) != len(image_features):
            raise GenerationError(
                f"the batch holds {int(is_image.sum())} <image> token(s) (id {self.image_token_index}) "
                f"but {len(image_features)} image(s) were given"
            )
        text = self.embed_tokens(ids.masked_fill(is_image | ~mask, 0))   # (B, L, hidden)
        rows, sources, feature_iter = [], [], iter(image_features)
        for b in range(ids.shape[0]):
            n = int(lengths[b])
            positions = torch.nonzero(is_image[b, :n]).flatten().tolist()
            pieces, index, start = [], [], 0
            for pos in positions:
                feats = next(feature_iter).to(text.dtype)
                pieces += [text[b, start:pos], feats]
                index += [torch.arange(start, pos, device=ids.device),
                          torch.full((feats.shape[0],), -1, device=ids.device, dtype=torch.long)]
                start = pos + 1
            pieces.append(text[b, start:n])
            index.append(torch.arange(start, n, device=ids.device))
            rows.append(torch.cat(pieces, dim=0))
            sources.append(torch.cat(index))
        width = max(r.shape[0] for r in rows)
        embeds = text.new_zeros(len(rows), width, text.shape[-1])
        token_index = torch.full((len(rows), width), -1, dtype=torch.long, device=ids.device)
        merged_mask = torch.zeros(len(rows), width, dtype=torch.long, device=ids.device)
        for b, (row, source) in enumerate(zip(rows, sources, strict=True)):
            embeds[b, :row.shape[0]] = row
            token_index[b, :row.shape[0]] = source
            merged_mask[b, :row.shape[0]] = 1
        positions = torch.arange(width, device=ids.device).expand(len(rows), width)
        return MergedBatch(embeds, merged_mask, positions, token_index)

    def forward_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      pixel_values: torch.Tensor | None = None, image_sizes: Sequence[ImageSize] = (),
                      labels: torch.Tensor | None = None) -> BatchOutput:
        """Batched forward for training and scoring.

        ``input_ids`` / ``attention_mask`` / ``labels``: (B, L), right padded; ``labels`` holds
        the token each position should be (``IGNORE_INDEX`` where unscored, e.g. the prompt);
        position t's logits are scored against ``labels[t + 1]`` (the usual shift happens
        here). ``pixel_values``: the crops of every image of the batch in order (row-major
        over the batch), ``image_sizes`` one (rows, cols) per image, as in :meth:`image_features`.
        With ``labels`` only the scored positions go through ``lm_head`` (a 128k-row head on
        every position of every example is the largest activation of a Magma-8B step).
        A batch of one unpadded example gives the logits :meth:`forward` gives.
        """
        feats = self.image_features(pixel_values, image_sizes) if pixel_values is not None else []
        merged = self.merge_batch(input_ids, attention_mask, feats)
        body = self.language_model.model(inputs_embeds=merged.inputs_embeds, attention_mask=merged.attention_mask,
                                         position_ids=merged.position_ids, use_cache=False)
        hidden = body.last_hidden_state
        head = self.language_model.lm_head
        if labels is None:
            return BatchOutput(None, head(hidden).float(), None, None, None)
        merged_labels = merged.merge_labels(labels.to(self.device))
        targets = torch.full_like(merged_labels, IGNORE_INDEX)
        targets[:, :-1] = merged_labels[:, 1:]
        scored = targets != IGNORE_INDEX
        example_index = torch.nonzero(scored)[:, 0]
        logits = head(hidden[scored]).float()
        flat_targets = targets[scored]
        token_loss = nn.functional.cross_entropy(logits, flat_targets, reduction="none")
        if not bool(scored.any()):
            raise GenerationError("labels score no position: every example needs at least one answer token")
        loss, per_example = mean_over_examples(token_loss, example_index, input_ids.shape[0])
        return BatchOutput(loss, logits, flat_targets, example_index, per_example)

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                image_sizes: Sequence[ImageSize] = ()) -> torch.Tensor:
        """Full-sequence float32 logits ``(1, L', vocab)`` (no cache; for tests and scoring)."""
        feats = self.image_features(pixel_values, image_sizes) if pixel_values is not None else []
        embeds = self.embed(input_ids, feats)
        out = self.language_model(inputs_embeds=embeds, use_cache=False)
        return out.logits.float()


def mean_over_examples(token_loss: torch.Tensor, example_index: torch.Tensor,
                       batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, per_example): each example's mean over its scored positions (NaN for an example with
    none, left out of ``loss``) and the mean of those over the examples, so examples weigh the same
    whatever their answer length. ``token_loss`` and ``example_index``: (N,) per scored position."""
    counts = torch.zeros(batch_size, device=token_loss.device).index_add_(0, example_index,
                                                                         torch.ones_like(token_loss))
    sums = torch.zeros(batch_size, device=token_loss.device, dtype=token_loss.dtype).index_add_(0, example_index,
                                                                                               token_loss)
    per_example = sums / counts
    return per_example[counts > 0].mean(), per_example


def tile_crop_features(crop_feats: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Tile per-crop grids ``(rows*cols, g, g, D)`` (crops row-major) into ``(rows*g, cols*g, D)``."""
    n, g, g2, d = crop_feats.shape
    if n != rows * cols:
        raise GenerationError(f"{n} crop feature grids cannot tile a {rows}x{cols} layout")
    return crop_feats.view(rows, cols, g, g2, d).permute(0, 2, 1, 3, 4).reshape(rows * g, cols * g2, d)
