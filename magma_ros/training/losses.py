"""Training losses over the scored positions of :meth:`MagmaForCausalLM.forward_batch`.

Magma scores the 7 action tokens of an answer by cross-entropy over the whole vocabulary: a
prediction one bin off the expert's costs as much as one at the other end of the range. The
bins are ordered (``ActionCodec``: neighbouring ids are neighbouring bins), and a small model
trained on a few hundred demonstrations learns the continuous action much sooner when the loss
says so: :func:`smoothed_answer_loss` scores an action token against a Gaussian over the
neighbouring bins (the target distribution of "soft" discretized regression) and every other
token (Trace-of-Mark text, end of turn) by plain cross-entropy.

Trace-of-Mark answers have the same problem: their coordinates are integers on Magma's 256 grid,
one token each in Magma's tokenizer and in magma-tiny's (``coordinate_token_ids``), and plain
cross-entropy scores a trace point 1 px off like one 200 px off. With ``coordinate_sigma`` > 0 a
coordinate token is scored against a Gaussian over the coordinate tokens by value (in pixels of
the 256 grid), like an action bin. A number that is not one token (magma-tiny's tokenizer splits
156 into 15 and 6) keeps its pieces scored as they come: its first piece as the coordinate it
reads as, which is still near on the grid.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from magma_ros.codecs.actions import TokenRange
from magma_ros.model.modeling import mean_over_examples

COORDINATE_GRID = 256
"""Trace and mark coordinates are integers in [0, 256) (magma-reference.md, Set-of-Mark and ToM)."""


class _Encoder(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


def coordinate_token_ids(tokenizer: _Encoder) -> torch.Tensor:
    """(256,) the token id of each coordinate value 0..255 written alone, -1 where it is not one token."""
    ids = []
    for value in range(COORDINATE_GRID):
        pieces = tokenizer.encode(str(value), add_special_tokens=False)
        ids.append(pieces[0] if len(pieces) == 1 else -1)
    return torch.tensor(ids, dtype=torch.long)


def _soft_loss(logits: torch.Tensor, targets: torch.Tensor, ids: torch.Tensor, values: torch.Tensor,
               sigma: float) -> torch.Tensor:
    """Cross-entropy of each row against a Gaussian (std ``sigma``) over the tokens ``ids`` at ``values``."""
    log_probs = torch.log_softmax(logits, dim=-1)[:, ids]                                   # (A, K)
    distance = values[None, :].float() - targets[:, None].float()
    weights = torch.exp(-0.5 * (distance / sigma) ** 2)
    weights = weights / weights.sum(-1, keepdim=True)
    return -(weights * log_probs).sum(-1)


def smoothed_answer_loss(logits: torch.Tensor, targets: torch.Tensor, example_index: torch.Tensor,
                         batch_size: int, action_range: TokenRange, sigma_bins: float,
                         coordinate_ids: torch.Tensor | None = None, coordinate_sigma: float = 0.0) -> torch.Tensor:
    """Mean over examples of each example's mean token loss (as ``forward_batch``'s ``loss``).

    ``logits``: (N, vocab) of the N scored positions; ``targets``: (N,) token ids;
    ``example_index``: (N,) the example of each position. Targets inside ``action_range`` are
    scored by cross-entropy against ``exp(-d^2 / (2 sigma^2))`` over the action ids at
    distance ``d`` (normalized; mass only on action ids), others by plain cross-entropy.
    ``coordinate_ids`` (:func:`coordinate_token_ids`) with ``coordinate_sigma`` > 0 (pixels of the
    256 grid) does the same for targets that are coordinate tokens. Both 0 is plain cross-entropy
    everywhere (bit for bit).
    """
    token_loss = nn.functional.cross_entropy(logits, targets, reduction="none")
    lo, hi = action_range
    is_action = (targets >= lo) & (targets <= hi)
    if sigma_bins > 0 and bool(is_action.any()):
        ids = torch.arange(lo, hi + 1, device=logits.device)
        token_loss = token_loss.masked_scatter(
            is_action, _soft_loss(logits[is_action], targets[is_action], ids, ids, sigma_bins))
    if coordinate_sigma > 0 and coordinate_ids is not None:
        known = coordinate_ids >= 0
        ids = coordinate_ids[known].to(logits.device)
        values = torch.arange(len(coordinate_ids), device=logits.device)[known.to(logits.device)]
        value_of = torch.full((logits.shape[-1],), -1, dtype=torch.long, device=logits.device)
        value_of[ids] = values
        target_values = value_of[targets]
        is_coordinate = (target_values >= 0) & ~is_action
        if bool(is_coordinate.any()):
            token_loss = token_loss.masked_scatter(
                is_coordinate,
                _soft_loss(logits[is_coordinate], target_values[is_coordinate], ids, values, coordinate_sigma))
    return mean_over_examples(token_loss, example_index, batch_size)[0]
