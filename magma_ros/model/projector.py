"""Magma's multi-modal projector: vision features -> LLM embedding space.

Parameter names (``multi_modal_projector.``): ``proj.0`` (mm_hidden -> hidden), GELU,
``proj.2`` (hidden -> hidden) for ``mlp2x_gelu``, and ``row_seperator`` (1 x 1 x hidden,
the misspelling is the checkpoint's). With ``mm_use_im_start_end`` the checkpoint also
carries ``img_start_seperator`` / ``img_end_seperator`` (1 x hidden).
"""

from __future__ import annotations

import torch
from torch import nn


class MagmaProjector(nn.Module):
    """``forward(x (..., mm_hidden)) -> (..., hidden)``; ``row_seperator`` is used by the model
    when tiling crop features (one after every tiled row)."""

    def __init__(self, mm_hidden_size: int, hidden_size: int, depth: int = 2,
                 use_im_start_end: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(mm_hidden_size, hidden_size)]
        for _ in range(1, depth):
            layers += [nn.GELU(), nn.Linear(hidden_size, hidden_size)]
        self.proj = nn.Sequential(*layers)
        self.row_seperator = nn.Parameter(torch.zeros(1, 1, hidden_size))
        if use_im_start_end:
            self.img_start_seperator = nn.Parameter(torch.zeros(1, hidden_size))
            self.img_end_seperator = nn.Parameter(torch.zeros(1, hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)
