"""The batched forward (training and scoring): padded rows with any number of images give what
the single-sequence forward gives; malformed batches are named errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from magma_ros.model import GenerationError, MagmaImageProcessor, PreprocessorConfig, PromptBuilder
from magma_ros.model.modeling import IGNORE_INDEX


@pytest.fixture(scope="module")
def rows(tiny):
    model, tokenizer = tiny
    processor = MagmaImageProcessor(PreprocessorConfig(base_img_size=model.config.vision.img_size))
    builder = PromptBuilder(tokenizer)
    rng = np.random.default_rng(1)
    images = [processor(rng.integers(0, 256, shape, dtype=np.uint8)) for shape in
              ((64, 64, 3), (200, 90, 3), (50, 150, 3))]
    prompts = ["<image>\nWhat action should the robot take to stack the blue cube?",   # one image
               "What is in the image?",                                                # none
               "<image>\nCompare <image>\nwith the first frame."]                      # two
    ids = [torch.tensor(builder.encode(p)) for p in prompts]
    per_row = [[images[0]], [], [images[1], images[2]]]
    return ids, per_row


def _pad(ids, pad_id):
    length = max(len(i) for i in ids)
    batch = torch.full((len(ids), length), pad_id)
    mask = torch.zeros((len(ids), length), dtype=torch.long)
    for b, row in enumerate(ids):
        batch[b, :len(row)] = row
        mask[b, :len(row)] = 1
    return batch, mask


def test_padded_batch_matches_single_sequences(tiny, rows):
    model, tokenizer = tiny
    ids, per_row = rows
    batch, mask = _pad(ids, tokenizer.pad_id)
    flat = [img for row in per_row for img in row]
    with torch.no_grad():
        out = model.forward_batch(batch, mask, torch.cat([i.pixel_values for i in flat]),
                                  [i.image_size for i in flat])
        for b, (row_ids, images) in enumerate(zip(ids, per_row, strict=True)):
            pv = torch.cat([i.pixel_values for i in images]) if images else None
            single = model(row_ids, pv, [i.image_size for i in images])
            assert torch.allclose(out.logits[b, :single.shape[1]], single[0], atol=1e-4), b
    assert out.loss is None


def test_one_unpadded_example_is_identical_to_forward(tiny, rows):
    model, _ = tiny
    ids, per_row = rows
    image = per_row[0][0]
    with torch.no_grad():
        batched = model.forward_batch(ids[0][None], None, image.pixel_values, [image.image_size]).logits
        single = model(ids[0], image.pixel_values, [image.image_size])
    assert torch.equal(batched, single)


def test_labels_follow_the_image_merge(tiny, rows):
    model, tokenizer = tiny
    ids, per_row = rows
    batch, mask = _pad(ids[:1], tokenizer.pad_id)
    labels = torch.full_like(batch, IGNORE_INDEX)
    labels[0, -3:] = batch[0, -3:]
    image = per_row[0][0]
    with torch.no_grad():
        out = model.forward_batch(batch, mask, image.pixel_values, [image.image_size], labels)
        logits = model(ids[0], image.pixel_values, [image.image_size])[0]
    assert out.targets.tolist() == batch[0, -3:].tolist()
    assert torch.allclose(out.logits, logits[-4:-1], atol=1e-5)
    expected = torch.nn.functional.cross_entropy(logits[-4:-1], batch[0, -3:])
    assert torch.isclose(out.loss, expected, atol=1e-5)


def test_malformed_batches_are_named_errors(tiny, rows):
    model, tokenizer = tiny
    ids, per_row = rows
    batch, mask = _pad(ids, tokenizer.pad_id)
    image = per_row[0][0]
    with pytest.raises(GenerationError, match="right padding"):
        model.forward_batch(batch, mask.flip(1), image.pixel_values, [image.image_size])
    with pytest.raises(GenerationError, match="<image> token"):
        model.forward_batch(batch, mask, image.pixel_values, [image.image_size])
    with pytest.raises(GenerationError, match=r"\(batch, length\)"):
        model.forward_batch(ids[1])
    labels = torch.full_like(batch[1:2], IGNORE_INDEX)
    with pytest.raises(GenerationError, match="score no position"):
        model.forward_batch(batch[1:2], mask[1:2], labels=labels)
