"""Attempt 3 of training/recipes/README.md: how much of a model's image input depends on the frame.

usage: python training/recipes/image_signal_probe.py CHECKPOINT DATASET

On the first frames of four episodes of DATASET: the pixel difference between two episodes, the
norm of the projected image tokens against the text embeddings, how much of the image tokens
changes between episodes, and how much the first action token's logits move when another
episode's frame is put under the same prompt.
"""

from __future__ import annotations

import argparse
import sys

import torch

from magma_ros.model import robot_action_query
from magma_ros.model.finetune import SupervisedExample, encode_example
from magma_ros.model.policy import MagmaPolicy
from magma_ros.training.dataset import TrajectoryDataset


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("dataset")
    parser.add_argument("--frame-size", type=int, default=256)
    args = parser.parse_args(argv)
    policy = MagmaPolicy.from_pretrained(args.checkpoint)
    model = policy.model.eval()
    data = TrajectoryDataset(args.dataset)
    starts, index = [], 0
    for episode_id in list(data.episode_ids)[:4]:
        starts.append(index)
        index += data.episode_length(episode_id)
    records = [data[i] for i in starts]
    with torch.no_grad():
        encoded = [encode_example(policy, SupervisedExample(r.image, robot_action_query(r.instruction),
                                                            answer_ids=(1,), frame_size=args.frame_size))
                   for r in records]
        pixels = [e.pixel_values for e in encoded]
        print(f"pixel values {tuple(pixels[0].shape)}: std {float(pixels[0].std()):.3f}, mean abs difference "
              f"between two episodes {float((pixels[0] - pixels[1]).abs().mean()):.4f}")
        feats = [model.image_features(e.pixel_values, e.image_sizes)[0] for e in encoded]
        print(f"image tokens {tuple(feats[0].shape)}: norm {float(feats[0].norm(dim=-1).mean()):.1f} "
              f"(text embeddings: {float(model.embed_tokens.weight.norm(dim=-1).mean()):.1f}); spread over "
              f"tokens {float(feats[0].std(0).mean()):.3f}, difference between episodes "
              f"{float((feats[0] - feats[1]).abs().mean()):.4f}")
        first = encoded[0]
        base = model(first.input_ids, first.pixel_values, first.image_sizes)[0, -2]
        for other in encoded[1:]:
            swapped = model(first.input_ids, other.pixel_values, other.image_sizes)[0, -2]
            print(f"same prompt, another episode's frame: first action token argmax {int(base.argmax())} -> "
                  f"{int(swapped.argmax())}, logits mean abs change {float((base - swapped).abs().mean()):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
