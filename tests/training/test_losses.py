"""The action-bin smoothed training loss (TrainConfig.action_smoothing_bins)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from magma_ros.codecs.actions import ActionCodec
from magma_ros.training.config import TrainConfig, TrainConfigError
from magma_ros.training.losses import smoothed_answer_loss

CODEC = ActionCodec(1024)
LO, HI = CODEC.token_range
VOCAB = 1100


def _peaked(targets: list[int], peaks: list[int], height: float = 8.0) -> torch.Tensor:
    logits = torch.zeros(len(targets), VOCAB)
    for row, peak in enumerate(peaks):
        logits[row, peak] = height
    return logits


def test_zero_sigma_is_plain_cross_entropy_averaged_per_example() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(9, VOCAB, generator=gen)
    targets = torch.tensor([LO + 3, LO + 100, HI, 17, LO + 5, LO, 40, LO + 7, HI - 2])
    example = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1])
    token = nn.functional.cross_entropy(logits, targets, reduction="none")
    expected = (token[:4].mean() + token[4:].mean()) / 2   # examples weigh the same
    assert torch.equal(smoothed_answer_loss(logits, targets, example, 2, CODEC.token_range, 0.0), expected)
    # an example without scored positions (batch of 3) is left out, not counted as zero
    assert torch.equal(smoothed_answer_loss(logits, targets, example, 3, CODEC.token_range, 0.0), expected)


@pytest.mark.parametrize("sigma", [1.0, 4.0, 16.0])
def test_a_near_miss_costs_less_than_a_far_one_and_text_tokens_are_unchanged(sigma: float) -> None:
    target = LO + 128
    losses = [smoothed_answer_loss(_peaked([target], [target + off]), torch.tensor([target]),
                                   torch.tensor([0]), 1, CODEC.token_range, sigma).item()
              for off in (0, 1, 3, 10, 60, 127)]
    assert all(a < b for a, b in itertools.pairwise(losses[:4])), losses   # grows with the distance ...
    assert losses[3] <= losses[4] <= losses[5], losses                   # ... and never falls
    # plain cross-entropy cannot tell a one-bin miss from a 127-bin miss
    plain = [nn.functional.cross_entropy(_peaked([target], [target + off]), torch.tensor([target])).item()
             for off in (1, 127)]
    assert plain[0] == pytest.approx(plain[1])
    # a text token (not an action id) is scored by plain cross-entropy whatever sigma is
    text = torch.tensor([17])
    logits = _peaked([17], [18])
    assert smoothed_answer_loss(logits, text, torch.tensor([0]), 1, CODEC.token_range, sigma).item() == \
        pytest.approx(nn.functional.cross_entropy(logits, text).item())


def test_the_gradient_pulls_towards_the_target_bins_only_inside_the_action_range() -> None:
    target = LO + 50
    logits = torch.zeros(1, VOCAB, requires_grad=True)
    smoothed_answer_loss(logits, torch.tensor([target]), torch.tensor([0]), 1, CODEC.token_range, 4.0).backward()
    grad = logits.grad[0]
    assert grad[target] < grad[target + 4] < 0 < grad[target + 40]   # the nearer, the stronger the pull
    assert (grad[:LO] > 0).all() and (grad[HI + 1:] > 0).all()          # text ids only pushed down


def test_config_validates_the_smoothing_width() -> None:
    assert TrainConfig.from_dict({"action_smoothing_bins": 6}).action_smoothing_bins == 6.0
    for bad in (-1, float("nan"), 100):
        with pytest.raises(TrainConfigError, match="action_smoothing_bins"):
            TrainConfig.from_dict({"action_smoothing_bins": bad})
