"""Image preprocessing (anyres crop), token counts, and the chat prompt token sequence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from magma_ros.model import (
    SYSTEM_MESSAGE,
    ImageError,
    MagmaImageProcessor,
    PreprocessorConfig,
    PromptBuilder,
    num_image_tokens,
    robot_action_query,
    select_crop_grid,
    tile_crop_features,
)
from magma_ros.model.saving import LLAMA3_CHAT_TEMPLATE
from magma_ros.model.tokenizer import END_HEADER_TOKEN, EOS_TOKEN, START_HEADER_TOKEN


@pytest.mark.parametrize(("width", "height", "grid"), [
    (256, 256, (1, 1)), (640, 480, (1, 2)), (1280, 720, (2, 2)), (1, 1, (1, 1)),
    (480, 640, (2, 1)), (2048, 400, (1, 4)), (512, 512, (1, 1)), (1024, 1024, (2, 2)),
])
def test_select_crop_grid_magma_sizes(width, height, grid):
    assert select_crop_grid(width, height, crop_size=512, num_crops=4) == grid


def test_published_token_counts():
    assert num_image_tokens(1, 1, 16) == 272
    assert num_image_tokens(2, 2, 16) == 1056


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000), st.integers(1, 9))
def test_grid_always_within_budget(width, height, num_crops):
    rows, cols = select_crop_grid(width, height, 512, num_crops)
    assert rows >= 1 and cols >= 1 and rows * cols <= num_crops


@pytest.mark.parametrize(("width", "height", "grid"), [(64, 64, (1, 1)), (128, 64, (1, 2)),
                                                       (64, 128, (2, 1)), (128, 128, (2, 2))])
def test_token_counts_match_formula(policy, width, height, grid):
    model = policy.model
    image = np.random.default_rng(1).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    processed = policy.image_processor(image)
    rows, cols = processed.image_size
    assert (rows, cols) == grid
    g = processed.grid
    expected = rows * g * (cols * g + 1)
    assert processed.num_tokens == expected
    assert processed.pixel_values.shape == (rows * cols, 3, 64, 64)
    with torch.no_grad():
        feats = model.image_features(processed.pixel_values, [processed.image_size])
        ids = torch.tensor(policy.prompt_builder.encode(robot_action_query("wipe the table")))
        embeds = model.embed(ids, feats)
    assert feats[0].shape == (expected, model.config.text.hidden_size)
    assert embeds.shape[1] == len(ids) - 1 + expected
    # one row separator closes every tiled row
    sep = model.multi_modal_projector.row_seperator.reshape(-1)
    row_len = cols * g + 1
    for r in range(rows * g):
        assert torch.equal(feats[0][r * row_len + row_len - 1], sep)


@pytest.mark.parametrize("shape", [(256, 256, 3), (480, 640, 3), (720, 1280, 3), (1, 1, 3)])
def test_sizes_go_through(policy, shape):
    image = np.full(shape, 127, dtype=np.uint8)
    processed = policy.image_processor(image)
    assert processed.pixel_values.dtype == torch.float32
    with torch.no_grad():
        feats = policy.model.image_features(processed.pixel_values, [processed.image_size])
    assert feats[0].shape[0] == processed.num_tokens
    assert torch.isfinite(feats[0]).all()


@pytest.mark.parametrize("shape", [(0, 10, 3), (10, 0, 3), (0, 0, 3)])
def test_zero_size_image_clear_error(policy, shape):
    with pytest.raises(ImageError, match="zero size"):
        policy.image_processor(np.zeros(shape, dtype=np.uint8))


@pytest.mark.parametrize("shape", [(10, 10, 2), (10,), (2, 10, 10, 3)])
def test_bad_image_shapes(policy, shape):
    with pytest.raises(ImageError, match="shape"):
        policy.image_processor(np.zeros(shape, dtype=np.uint8))


def test_gray_and_rgba_converted(policy):
    assert policy.image_processor(np.zeros((64, 64), dtype=np.uint8)).pixel_values.shape[1] == 3
    assert policy.image_processor(np.zeros((64, 64, 4), dtype=np.uint8)).pixel_values.shape[1] == 3


def test_normalization_and_crop_order():
    processor = MagmaImageProcessor(PreprocessorConfig(base_img_size=64))
    image = np.zeros((64, 128, 3), dtype=np.uint8)
    image[:, 64:] = 255  # left half black, right half white -> crops (1, 2)
    out = processor(image)
    assert out.image_size == (1, 2)
    mean = torch.tensor(processor.config.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.config.image_std).view(3, 1, 1)
    left, right = out.pixel_values
    assert torch.allclose(left[:, 8:56, 8:56], ((0 - mean) / std).expand(3, 48, 48), atol=1e-5)
    assert torch.allclose(right[:, 8:56, 8:56], ((1 - mean) / std).expand(3, 48, 48), atol=1e-5)


def test_tile_crop_features_row_major():
    rows, cols, g = 2, 3, 2
    feats = torch.zeros(rows * cols, g, g, 3)
    for c in range(rows * cols):
        for y in range(g):
            for x in range(g):
                feats[c, y, x] = torch.tensor([c, y, x])
    tiled = tile_crop_features(feats, rows, cols)
    assert tiled.shape == (rows * g, cols * g, 3)
    for r in range(rows * g):
        for q in range(cols * g):
            crop = (r // g) * cols + q // g
            assert tiled[r, q].tolist() == [crop, r % g, q % g]


def test_prompt_sequence(tiny):
    _, tokenizer = tiny
    ids = PromptBuilder(tokenizer).action_prompt("put the carrot on the plate")
    bos = tokenizer.bos_id
    start, end, eot = (tokenizer.token_id(t) for t in (START_HEADER_TOKEN, END_HEADER_TOKEN, EOS_TOKEN))
    assert ids[:2] == [bos, bos] and ids[2] != bos  # the reference's doubled begin-of-text
    assert ids.count(start) == 3 and ids.count(end) == 3 and ids.count(eot) == 2
    assert ids.count(tokenizer.token_id("<image>")) == 1
    text = tokenizer.decode(ids)
    assert SYSTEM_MESSAGE in text
    assert "What action should the robot take to put the carrot on the plate?" in text
    tail = [start, *tokenizer.encode("assistant", add_special_tokens=False), end,
            *tokenizer.encode("\n\n", add_special_tokens=False)]
    assert ids[-len(tail):] == tail
    single = PromptBuilder(tokenizer, double_bos=False).action_prompt("put the carrot on the plate")
    assert single == ids[1:]


def test_prompt_matches_transformers_reference_flow(tiny, tmp_path):
    """The reference: apply_chat_template(tokenize=False) then tokenize with defaults."""
    from transformers import AutoTokenizer

    _, tokenizer = tiny
    tokenizer.save(tmp_path, chat_template=LLAMA3_CHAT_TEMPLATE)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    user = robot_action_query("close the drawer")
    text = hf.apply_chat_template([{"role": "system", "content": SYSTEM_MESSAGE},
                                   {"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    builder = PromptBuilder(tokenizer)
    assert builder.text(user) == text
    assert builder.encode(user) == hf(text)["input_ids"]


def test_image_start_end_wrapping(tiny):
    _, tokenizer = tiny
    ids = PromptBuilder(tokenizer, use_im_start_end=True).action_prompt("lift the lid")
    image = ids.index(tokenizer.token_id("<image>"))
    assert ids[image - 1] == tokenizer.token_id("<image_start>")
    assert ids[image + 1] == tokenizer.token_id("<image_end>")
