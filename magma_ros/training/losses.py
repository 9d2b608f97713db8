"""Training losses over the scored positions of :meth:`MagmaForCausalLM.forward_batch`.

Magma scores the 7 action tokens of an answer by cross-entropy over the whole vocabulary: a
prediction one bin off the expert's costs as much as one at the other end of the range. The
bins are ordered (``ActionCodec``: neighbouring ids are neighbouring bins), and a small model
trained on a few hundred demonstrations learns the continuous action much sooner when the loss
says so: :func:`smoothed_answer_loss` scores an action token against a Gaussian over the
neighbouring bins (the target distribution of "soft" discretized regression) and every other
token (Trace-of-Mark text, end of turn) by plain cross-entropy.
"""

from __future__ import annotations

import torch
from torch import nn

from magma_ros.codecs.actions import TokenRange
from magma_ros.model.modeling import mean_over_examples


def smoothed_answer_loss(logits: torch.Tensor, targets: torch.Tensor, example_index: torch.Tensor,
                         batch_size: int, action_range: TokenRange, sigma_bins: float) -> torch.Tensor:
    """Mean over examples of each example's mean token loss (as ``forward_batch``'s ``loss``).

    ``logits``: (N, vocab) of the N scored positions; ``targets``: (N,) token ids;
    ``example_index``: (N,) the example of each position. Targets inside ``action_range`` are
    scored by cross-entropy against ``exp(-d^2 / (2 sigma^2))`` over the action ids at
    distance ``d`` (normalized; mass only on action ids), others by plain cross-entropy.
    ``sigma_bins`` = 0 is plain cross-entropy everywhere (bit for bit).
    """
    token_loss = nn.functional.cross_entropy(logits, targets, reduction="none")
    lo, hi = action_range
    is_action = (targets >= lo) & (targets <= hi)
    if sigma_bins > 0 and bool(is_action.any()):
        log_probs = torch.log_softmax(logits[is_action], dim=-1)[:, lo:hi + 1]       # (A, n_bins)
        ids = torch.arange(lo, hi + 1, device=logits.device, dtype=torch.float32)
        distance = ids[None, :] - targets[is_action, None].float()
        weights = torch.exp(-0.5 * (distance / sigma_bins) ** 2)
        weights = weights / weights.sum(-1, keepdim=True)
        token_loss = token_loss.masked_scatter(is_action, -(weights * log_probs).sum(-1))
    return mean_over_examples(token_loss, example_index, batch_size)[0]
