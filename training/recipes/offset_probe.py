"""Is the hand-to-cube offset readable near the cube, and where is it lost? (training/recipes/README.md, attempt 12)

    .venv/bin/python training/recipes/offset_probe.py DATASET [--checkpoint CKPT ...] [--crop inset|scene ...]
        [--steps 2500] [--seed 0]

Takes the pick frames of a dataset (``magma-ros dataset build``) where the hand is open, less than
6 cm above and 4 cm across from the target cube's centre (the moment a grasp is won or lost), and
regresses the hand's x-y offset from the cube (cm) two ways, on the same held-out tenth of the
episodes:

- ``--crop``: a small CNN (four convolutions, 3x3 pooled, linear) on a pixel crop of the 256x256
  frame: ``inset`` = the wrist inset's corner (96x96, top right), ``scene`` = the third-person view
  round the cube region (128x160). What the pixels hold.
- ``--checkpoint``: ridge regression from all of a checkpoint's image tokens (the projected tower
  features the language model sees), lambda chosen on a validation tenth. What the tower passes on.

Prints the median, p90 and share within 0.8 cm of each, beside answering "no offset".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

NEAR_HEIGHT_M = 0.06
NEAR_ACROSS_M = 0.04
CROPS = {"inset": (slice(0, 96), slice(160, 256)), "scene": (slice(128, 256), slice(32, 192))}


def near_cube_offset(state: np.ndarray, cube_xy: tuple[float, float], cube_size: float) -> tuple[float, float] | None:
    """The hand's x-y offset from the cube (cm) when the hand is open (``state[6]`` = 1), less than
    ``NEAR_HEIGHT_M`` above the cube's centre and ``NEAR_ACROSS_M`` across from it; else None."""
    dx, dy = float(state[0] - cube_xy[0]), float(state[1] - cube_xy[1])
    if state[6] < 0.5 or state[2] - cube_size / 2 >= NEAR_HEIGHT_M or np.hypot(dx, dy) >= NEAR_ACROSS_M:
        return None
    return dx * 100.0, dy * 100.0


def load(dataset: Path) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Near-cube pick frames (256x256 RGB), their offsets (cm) and episode ids."""
    from magma_ros.sim.config import SceneConfig
    from magma_ros.sim.scene import sample_layout
    from magma_ros.training.dataset import TrajectoryDataset

    data, scene = TrajectoryDataset(dataset), SceneConfig()
    frames, offsets, episodes, index = [], [], [], 0
    for episode in data.episode_ids:
        length, meta = data.episode_length(episode), data.episode_metadata(episode)
        if meta.get("task") == "pick":
            cube = {c.color: c for c in sample_layout(scene, int(meta["seed"]))}[meta["color"]]
            for step in range(length):
                record = data[index + step]
                offset = near_cube_offset(np.asarray(record.state), (cube.x, cube.y), scene.cube_size)
                if offset is not None:
                    frames.append(np.asarray(record.image))
                    offsets.append(offset)
                    episodes.append(episode)
        index += length
    return frames, np.asarray(offsets, np.float32), np.asarray(episodes)


def report(name: str, error: np.ndarray, truth: np.ndarray, seconds: float) -> None:
    print(f"{name}: held-out median {np.median(error):.2f} cm (p90 {np.percentile(error, 90):.2f}), within 0.8 cm "
          f"{np.mean(error < 0.8):.0%}; answering 0: {np.median(np.hypot(*truth.T)):.2f} cm; {seconds:.0f} s",
          flush=True)


def probe_crop(frames: list[np.ndarray], y: np.ndarray, train: np.ndarray, test: np.ndarray, crop: str,
               steps: int, seed: int) -> None:
    torch.manual_seed(seed)
    rows, cols = CROPS[crop]
    x = torch.from_numpy(np.stack([f[rows, cols] for f in frames])).permute(0, 3, 1, 2).float() / 255.0
    target = torch.from_numpy(y)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 5, 2, 2), torch.nn.GELU(), torch.nn.Conv2d(32, 64, 3, 2, 1), torch.nn.GELU(),
        torch.nn.Conv2d(64, 64, 3, 2, 1), torch.nn.GELU(), torch.nn.Conv2d(64, 64, 3, 2, 1), torch.nn.GELU(),
        torch.nn.AdaptiveAvgPool2d(3), torch.nn.Flatten(), torch.nn.Linear(64 * 9, 2))   # 3x3 keeps where things are
    optimizer = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    rng, started = np.random.default_rng(seed), time.perf_counter()
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(np.nonzero(train)[0], 64))
        loss = (net(x[idx]) - target[idx]).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        error = (net(x[torch.from_numpy(np.nonzero(test)[0])]) - target[test]).norm(dim=1).numpy()
    report(f"CNN on the {crop} crop", error, y[test], time.perf_counter() - started)


def probe_tokens(frames: list[np.ndarray], y: np.ndarray, train: np.ndarray, val: np.ndarray, test: np.ndarray,
                 checkpoint: str, regions: tuple[tuple[float, float, float, float], ...] | None = None) -> None:
    from magma_ros.model.policy import MagmaPolicy
    from magma_ros.model.processor import region_crops

    started = time.perf_counter()
    policy = MagmaPolicy.from_pretrained(checkpoint)   # the model and the processor the policy node builds
    model, processor = policy.model.eval(), policy.image_processor
    regions = policy.action_regions if regions is None else regions
    features = []
    with torch.no_grad():
        for start in range(0, len(frames), 64):
            processed = [[processor(a) for a in (f, *region_crops(f, regions))] for f in frames[start:start + 64]]
            pixels = torch.cat([p.pixel_values for images in processed for p in images])
            feats = model.image_features(pixels, [p.image_size for images in processed for p in images])
            per_frame = 1 + len(regions)
            features += [torch.cat([f.flatten() for f in feats[i:i + per_frame]]).double()
                         for i in range(0, len(feats), per_frame)]
    x = torch.stack(features)
    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
    target = torch.from_numpy(y).double()
    gram = x[train] @ x[train].T
    best: tuple[float, float, np.ndarray] | None = None
    for lam in (1e1, 1e2, 1e3, 1e4, 1e5):   # ridge in its dual form: fewer frames than features
        alpha = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), target[train])
        error = ((x @ (x[train].T @ alpha)) - target).norm(dim=1).numpy()
        if best is None or np.median(error[val]) < best[0]:
            best = (float(np.median(error[val])), lam, error)
    assert best is not None
    report(f"ridge (lambda {best[1]:g}) from the {x.shape[1]} image-token features of {checkpoint} "
           f"(frame + {len(regions)} region(s))", best[2][test],
           y[test], time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--checkpoint", action="append", default=[], help="probe this checkpoint's image tokens")
    parser.add_argument("--crop", action="append", choices=sorted(CROPS), default=[], help="probe these pixels")
    parser.add_argument("--regions", choices=("checkpoint", "none", "inset"), default="checkpoint",
                        help="images besides the frame whose tokens the ridge reads: the checkpoint's action_regions, "
                             "none, or the wrist inset's box")
    parser.add_argument("--steps", type=int, default=2500, help="optimizer steps of each crop probe")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from magma_ros.sim.config import INSET_REGION

    frames, y, episodes = load(args.dataset)
    if len(frames) < 20:
        print(f"offset_probe: only {len(frames)} near-cube pick frames in {args.dataset}", file=sys.stderr)
        return 2
    names = np.unique(episodes)
    rng = np.random.default_rng(args.seed)
    held = set(rng.choice(names, max(1, len(names) // 10), replace=False).tolist())
    val_names = set(rng.choice(sorted(set(names) - held), max(1, len(names) // 10), replace=False).tolist())
    test = np.array([e in held for e in episodes])
    val = np.array([e in val_names for e in episodes])
    print(f"{len(frames)} near-cube frames from {len(names)} pick episodes, {test.sum()} held out; "
          f"|offset| median {np.median(np.hypot(*y.T)):.2f} cm", flush=True)
    for crop in args.crop:
        probe_crop(frames, y, ~test, test, crop, args.steps, args.seed)
    for checkpoint in args.checkpoint:
        probe_tokens(frames, y, ~test & ~val, val, test, checkpoint,
                     {"checkpoint": None, "none": (), "inset": (INSET_REGION,)}[args.regions])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
