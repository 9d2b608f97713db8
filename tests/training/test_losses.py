"""The smoothed training losses: action bins (TrainConfig.action_smoothing_bins) and Trace-of-Mark
coordinates (TrainConfig.trace_smoothing_px)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from magma_ros.codecs.actions import ActionCodec
from magma_ros.training.config import TrainConfig, TrainConfigError
from magma_ros.training.losses import coordinate_token_ids, smoothed_answer_loss

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


# Trace-of-Mark coordinates: 256 made-up coordinate token ids, scattered in value order below the action range
COORDS = torch.arange(256) * 2 + 100


def test_coordinate_tokens_of_the_shipped_tokenizer_read_as_their_values() -> None:
    from magma_ros.backends.default_checkpoint import shipped_checkpoint
    from magma_ros.model.tokenizer import MagmaTokenizer

    tokenizer = MagmaTokenizer.from_dir(shipped_checkpoint())
    ids = coordinate_token_ids(tokenizer)
    single = [v for v in range(256) if ids[v] >= 0]
    assert len(single) >= 250                       # magma-tiny's BPE splits a few (156 -> 15, 6)
    assert all(tokenizer.decode([int(ids[v])]) == str(v) for v in single)
    lo, _ = tokenizer.action_token_range
    assert int(ids.max()) < lo                       # never an action id
    answer = tokenizer.encode('"Mark 3": "[[12,200],[13,201]]"', add_special_tokens=False)
    assert {int(ids[12]), int(ids[200]), int(ids[13]), int(ids[201])} <= set(answer)


@pytest.mark.parametrize("sigma", [2.0, 8.0])
def test_a_trace_point_near_the_truth_costs_less_and_other_tokens_are_unchanged(sigma: float) -> None:
    target = int(COORDS[128])
    losses = [smoothed_answer_loss(_peaked([target], [int(COORDS[128 + off])]), torch.tensor([target]),
                                   torch.tensor([0]), 1, CODEC.token_range, 0.0, COORDS, sigma).item()
              for off in (0, 1, 3, 10, 60, 127)]
    assert all(a < b for a, b in itertools.pairwise(losses[:4])), losses
    assert losses[3] <= losses[4] <= losses[5], losses
    # an action target keeps its own rule (plain here: sigma_bins 0), a text token plain cross-entropy
    for token, peak in ((LO + 9, LO + 10), (17, 18)):
        logits = _peaked([token], [peak])
        assert smoothed_answer_loss(logits, torch.tensor([token]), torch.tensor([0]), 1, CODEC.token_range, 0.0,
                                    COORDS, sigma).item() == pytest.approx(
            nn.functional.cross_entropy(logits, torch.tensor([token])).item())
    # a coordinate the tokenizer splits (-1) is not a coordinate token: plain cross-entropy
    split = COORDS.clone()
    split[128] = -1
    logits = _peaked([target], [int(COORDS[129])])
    assert smoothed_answer_loss(logits, torch.tensor([target]), torch.tensor([0]), 1, CODEC.token_range, 0.0,
                                split, sigma).item() == pytest.approx(
        nn.functional.cross_entropy(logits, torch.tensor([target])).item())


def test_zero_coordinate_sigma_is_bit_for_bit_the_action_only_loss() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, VOCAB, generator=gen)
    targets = torch.tensor([int(COORDS[5]), LO + 3, 17, int(COORDS[250]), HI, 40])
    example = torch.tensor([0, 0, 0, 1, 1, 1])
    for sigma_bins in (0.0, 4.0):
        reference = smoothed_answer_loss(logits, targets, example, 2, CODEC.token_range, sigma_bins)
        assert torch.equal(smoothed_answer_loss(logits, targets, example, 2, CODEC.token_range, sigma_bins,
                                                COORDS, 0.0), reference)


def test_the_trace_gradient_pulls_towards_nearby_coordinates_only() -> None:
    target = int(COORDS[50])
    logits = torch.zeros(1, VOCAB, requires_grad=True)
    smoothed_answer_loss(logits, torch.tensor([target]), torch.tensor([0]), 1, CODEC.token_range, 0.0,
                         COORDS, 3.0).backward()
    grad = logits.grad[0]
    assert grad[COORDS[50]] < grad[COORDS[53]] < 0 < grad[COORDS[80]]
    others = torch.ones(VOCAB, dtype=torch.bool)
    others[COORDS] = False
    assert (grad[others] > 0).all()                  # every other token only pushed down


def test_config_validates_the_trace_smoothing_width() -> None:
    assert TrainConfig.from_dict({"trace_smoothing_px": 3}).trace_smoothing_px == 3.0
    for bad in (-1, float("nan"), 65):
        with pytest.raises(TrainConfigError, match="trace_smoothing_px"):
            TrainConfig.from_dict({"trace_smoothing_px": bad})
