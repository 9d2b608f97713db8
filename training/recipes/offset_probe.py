"""Is the hand-to-cube offset readable near the cube, and where is it lost? (training/recipes/README.md, attempt 12)

    .venv/bin/python training/recipes/offset_probe.py DATASET [--checkpoint CKPT ...] [--crop inset|scene ...]
        [--regions checkpoint|none|inset] [--actions CKPT ...] [--seeds LO HI] [--steps 2500] [--seed 0]

Takes the pick frames of a dataset (``magma-ros dataset build``) where the hand is open, less than
6 cm above and 4 cm across from the target cube's centre (the moment a grasp is won or lost), and
regresses the hand's x-y offset from the cube (cm) two ways, on the same held-out tenth of the
episodes:

- ``--crop``: a small CNN (four convolutions, 3x3 pooled, linear) on a pixel crop of the 256x256
  frame: ``inset`` = the wrist inset's corner (96x96, top right), ``scene`` = the third-person view
  round the cube region (128x160). What the pixels hold.
- ``--checkpoint``: ridge regression from all of a checkpoint's image tokens (the projected tower
  features the language model sees), lambda chosen on a validation tenth. What the tower passes on.

- ``--actions``: the checkpoint's own lateral action on those frames (a random ``--limit`` of them),
  its slope and correlation against the offset beside the recorded labels'. Run on the checkpoint's own
  training data, a model that does not follow its labels under-fits the centring (attempt 13).

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


def load(dataset: Path, seeds: tuple[int, int] = (0, 2**32),
         ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Near-cube pick frames (256x256 RGB), their offsets (cm), episode ids, recorded lateral actions
    (mm, x and y) and instructions."""
    from magma_ros.sim.config import SceneConfig
    from magma_ros.sim.scene import sample_layout
    from magma_ros.training.dataset import TrajectoryDataset

    data, scene = TrajectoryDataset(dataset), SceneConfig()
    frames, offsets, episodes, actions, instructions, index = [], [], [], [], [], 0
    for episode in data.episode_ids:
        length, meta = data.episode_length(episode), data.episode_metadata(episode)
        if meta.get("task") == "pick" and seeds[0] <= int(meta["seed"]) < seeds[1]:
            cube = {c.color: c for c in sample_layout(scene, int(meta["seed"]))}[meta["color"]]
            for step in range(length):
                record = data[index + step]
                offset = near_cube_offset(np.asarray(record.state), (cube.x, cube.y), scene.cube_size)
                if offset is not None:
                    frames.append(np.asarray(record.image))
                    offsets.append(offset)
                    episodes.append(episode)
                    actions.append(np.asarray(record.action)[:2] * 1000.0)
                    instructions.append(record.instruction)
        index += length
    return (frames, np.asarray(offsets, np.float32), np.asarray(episodes), np.asarray(actions, np.float32),
            instructions)


def servo_fit(offset_cm: np.ndarray, label_mm: np.ndarray, model_mm: np.ndarray) -> dict[str, list[float]]:
    """Per axis (x, y): the slope (mm of lateral action per cm of offset) and correlation of the recorded
    label and of the model's action against the offset, and the model's correlation with the label."""
    def slope(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.polyfit(a, b, 1)[0]) if np.ptp(a) > 0 else float("nan")

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a, b)[0, 1]) if np.ptp(a) > 0 and np.ptp(b) > 0 else float("nan")

    axes = range(offset_cm.shape[1])
    return {"label_slope": [slope(offset_cm[:, k], label_mm[:, k]) for k in axes],
            "label_corr": [corr(offset_cm[:, k], label_mm[:, k]) for k in axes],
            "model_slope": [slope(offset_cm[:, k], model_mm[:, k]) for k in axes],
            "model_corr": [corr(offset_cm[:, k], model_mm[:, k]) for k in axes],
            "model_vs_label": [corr(label_mm[:, k], model_mm[:, k]) for k in axes]}


def probe_actions(frames: list[np.ndarray], y: np.ndarray, labels: np.ndarray, instructions: list[str],
                  checkpoint: str, limit: int) -> None:
    """Does the checkpoint's lateral action follow the offset as the recorded labels do? On the frames
    of its own training data, a model that does not under-fits the centring (attempt 13)."""
    from magma_ros.codecs import ActionCodec, resolve_statistics
    from magma_ros.model.policy import MagmaPolicy

    policy = MagmaPolicy.from_pretrained(checkpoint)
    stats = resolve_statistics("sim_panda", Path(checkpoint) / "dataset_statistics.json")
    codec = ActionCodec(policy.tokenizer.base_vocab_size)
    index = np.random.default_rng(0).permutation(len(frames))[:limit]
    model = np.array([codec.decode(policy.predict_action(frames[i], instructions[i]).token_ids, stats).action[:2]
                      for i in index]) * 1000.0
    fit = servo_fit(y[index], labels[index], model)
    print(f"actions of {checkpoint} on {len(index)} near-cube frames: slope x/y mm per cm, label "
          f"{fit['label_slope'][0]:.2f}/{fit['label_slope'][1]:.2f} (corr {fit['label_corr'][0]:.2f}/"
          f"{fit['label_corr'][1]:.2f}), model {fit['model_slope'][0]:.2f}/{fit['model_slope'][1]:.2f} (corr "
          f"{fit['model_corr'][0]:.2f}/{fit['model_corr'][1]:.2f}); model against label corr "
          f"{fit['model_vs_label'][0]:.2f}/{fit['model_vs_label'][1]:.2f}", flush=True)


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
    parser.add_argument("--actions", action="append", default=[], metavar="CHECKPOINT",
                        help="how this checkpoint's lateral action follows the offset, beside the recorded labels")
    parser.add_argument("--seeds", type=int, nargs=2, metavar=("LO", "HI"), default=(0, 2**32),
                        help="only pick episodes with LO <= seed < HI (e.g. the --aim-error recordings)")
    parser.add_argument("--limit", type=int, default=400, help="--actions: at most this many frames")
    parser.add_argument("--steps", type=int, default=2500, help="optimizer steps of each crop probe")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from magma_ros.sim.config import INSET_REGION

    frames, y, episodes, labels, instructions = load(args.dataset, tuple(args.seeds))
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
    for checkpoint in args.actions:
        probe_actions(frames, y, labels, instructions, checkpoint, args.limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
