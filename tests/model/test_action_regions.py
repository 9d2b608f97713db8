"""``action_regions``: crops of the action frame given to the model as images of their own.

Served (MagmaPolicy.predict_action), trained (encode_example / ExampleEncoder) and configured
(preprocessor_config.json) the same way; the sim's INSET_REGION is exactly the pasted wrist view.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from magma_ros.model import (
    ConfigError,
    MagmaPolicy,
    PreprocessorConfig,
    region_crops,
    robot_action_query,
    save_checkpoint,
)
from magma_ros.model.finetune import SupervisedExample, encode_example
from magma_ros.model.tokenizer import IMAGE_TOKEN
from magma_ros.sim.config import INSET_REGION

BOX = (0.65, 0.0, 1.0, 0.35)


@pytest.fixture(scope="module")
def region_policy(tiny, tmp_path_factory) -> MagmaPolicy:
    model, tokenizer = tiny
    pre = PreprocessorConfig(base_img_size=model.config.vision.img_size, action_regions=(BOX,))
    directory = save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("regions"), preprocessor=pre)
    return MagmaPolicy.from_pretrained(directory, dtype="float32")


def test_preprocessor_config_round_trips_regions_and_omits_them_when_empty() -> None:
    pre = PreprocessorConfig(256, action_regions=(BOX, (0.0, 0.5, 0.25, 1.0)))
    data = json.loads(json.dumps(pre.to_dict()))
    assert data["action_regions"] == [list(BOX), [0.0, 0.5, 0.25, 1.0]]
    assert PreprocessorConfig.from_dict(data, default_size=64) == pre
    assert "action_regions" not in PreprocessorConfig(256).to_dict()   # Microsoft's files stay as they are
    assert PreprocessorConfig.from_dict({"base_img_size": 256}, default_size=64).action_regions == ()


@pytest.mark.parametrize("regions", [
    [[0.5, 0.0, 0.5, 1.0]],          # empty width
    [[0.0, 0.6, 1.0, 0.4]],          # upside down
    [[-0.1, 0.0, 0.5, 0.5]],         # outside the frame
    [[0.0, 0.0, 1.2, 0.5]],
    [[0.0, 0.0, math.nan, 0.5]],
    [[0.0, 0.0, True, 0.5]],
    [[0.0, 0.0, 0.5]],               # three numbers
    [["0", 0.0, 0.5, 0.5]],
    "0,0,1,1",
    [0.0, 0.0, 1.0, 1.0],            # a box, not a list of boxes
])
def test_bad_regions_are_refused_by_name(regions) -> None:
    with pytest.raises(ConfigError, match="action_regions"):
        PreprocessorConfig.from_dict({"base_img_size": 256, "action_regions": regions}, default_size=64)


def test_region_crops_round_to_pixels_and_keep_at_least_one() -> None:
    frame = np.arange(256 * 256 * 3, dtype=np.int64).reshape(256, 256, 3)
    (crop,) = region_crops(frame, [BOX])
    assert crop.shape == (90, 90, 3)   # x 166..256, y 0..90 (0.65 * 256 = 166.4, 0.35 * 256 = 89.6)
    np.testing.assert_array_equal(crop, frame[0:90, 166:256])
    (tiny_box,) = region_crops(frame, [(0.999, 0.999, 1.0, 1.0)])
    assert tiny_box.shape == (1, 1, 3)
    assert region_crops(frame, []) == []


def test_the_sim_inset_region_is_exactly_the_pasted_wrist_view() -> None:
    from magma_ros.sim.camera import paste_inset
    from magma_ros.sim.config import THIRD_PERSON_CAMERA, wrist_inset_camera

    main = THIRD_PERSON_CAMERA
    inset = wrist_inset_camera(main)
    rng = np.random.default_rng(0)
    rgb = np.zeros((main.height, main.width, 3), np.uint8)
    depth = np.ones((main.height, main.width), np.float32)
    view = rng.integers(1, 256, (inset.height, inset.width, 3), dtype=np.uint8)
    paste_inset(rgb, depth, None, view)
    (crop,) = region_crops(rgb, [INSET_REGION])
    np.testing.assert_array_equal(crop, view)


def test_action_query_has_one_image_token_per_image() -> None:
    assert robot_action_query("pick up the cube").count(IMAGE_TOKEN) == 1
    query = robot_action_query("pick up the cube", 3)
    assert query.count(IMAGE_TOKEN) == 3 and query.endswith("What action should the robot take to pick up the cube?")
    with pytest.raises(ValueError):
        robot_action_query("x", 0)


def test_served_inputs_hold_the_frame_then_the_region_as_its_own_image(region_policy: MagmaPolicy) -> None:
    policy = region_policy
    frame = np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    prepared = policy.prepare_inputs(frame, policy.action_query("pick up the cube"),
                                     frame_size=policy.action_frame_size, regions=policy.action_regions)
    # by hand: the frame resized to 256, its region cropped from that, each processed on its own
    from magma_ros.image_codec import resize_frame

    resized = resize_frame(frame, policy.action_frame_size)
    images = [policy.image_processor(a) for a in (resized, *region_crops(resized, [BOX]))]
    ids = torch.tensor(policy.prompt_builder.encode(robot_action_query("pick up the cube", 2)))
    with torch.inference_mode():
        feats = [policy.model.image_features(i.pixel_values, [i.image_size])[0] for i in images]
        expected = policy.model.embed(ids, feats)
    assert prepared.inputs_embeds.shape == expected.shape
    assert prepared.inputs_embeds.shape[1] == len(ids) - 2 + images[0].num_tokens + images[1].num_tokens
    torch.testing.assert_close(prepared.inputs_embeds, expected, rtol=0, atol=1e-6)


def test_the_region_changes_the_answer_logits_only_through_its_pixels(region_policy: MagmaPolicy) -> None:
    """Pixels inside the region reach the model twice (frame and crop); the crop's image is really used."""
    policy = region_policy
    frame = np.random.default_rng(2).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    query = policy.action_query("pick up the cube")

    def crop_features(f):
        with torch.inference_mode():
            prepared = policy.prepare_inputs(f, query, frame_size=256, regions=policy.action_regions)
        return prepared.inputs_embeds[0]

    base = crop_features(frame)
    outside = frame.copy()
    outside[200:, :100] = 0   # outside the box: the crop image's tokens stay, the frame's change
    inside = frame.copy()
    inside[10:80, 180:250] = 0
    from magma_ros.image_codec import resize_frame

    resized = resize_frame(frame, 256)
    frame_tokens = policy.image_processor(resized).num_tokens
    crop_tokens = policy.image_processor(region_crops(resized, [BOX])[0]).num_tokens
    ids = torch.tensor(policy.prompt_builder.encode(query))
    _, second = torch.nonzero(ids == policy.model.image_token_index).flatten().tolist()
    start = second + frame_tokens - 1   # the second image's first row after the first image's expansion
    crop_span = slice(start, start + crop_tokens)
    torch.testing.assert_close(crop_features(outside)[crop_span], base[crop_span], rtol=0, atol=0)
    assert (crop_features(inside)[crop_span] - base[crop_span]).abs().max() > 1e-3


def test_training_encodes_an_action_example_exactly_as_the_policy_serves_it(region_policy: MagmaPolicy) -> None:
    policy = region_policy
    frame = np.random.default_rng(3).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    example = SupervisedExample(frame, policy.action_query("reach the red cube"), answer_ids=(5, 6, 7, 8, 9, 10, 11),
                                frame_size=256, regions=policy.action_regions)
    encoded = encode_example(policy, example)
    prompt = policy.prompt_builder.encode(policy.action_query("reach the red cube"))
    assert encoded.input_ids[:len(prompt)].tolist() == prompt
    from magma_ros.image_codec import resize_frame

    resized = resize_frame(frame, 256)
    assert encoded.image_sizes == (policy.image_processor(resized).image_size,
                                   policy.image_processor(region_crops(resized, [BOX])[0]).image_size)
    with torch.inference_mode():
        served = policy.prepare_inputs(frame, policy.action_query("reach the red cube"), frame_size=256,
                                       regions=policy.action_regions).inputs_embeds
        feats = policy.model.image_features(encoded.pixel_values, encoded.image_sizes)
        trained = policy.model.embed(encoded.input_ids[:len(prompt)], feats)
    torch.testing.assert_close(trained, served, rtol=0, atol=1e-6)
    # an image without <image> in the text gets one token per image
    bare = encode_example(policy, SupervisedExample(frame, "What action?", answer="x", regions=policy.action_regions))
    assert int((bare.input_ids == policy.model.image_token_index).sum()) == 2
