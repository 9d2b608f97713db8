"""Stage 0 of the default model's recipe: teach a magma-tiny variant's vision tower where things are.

usage: python training/recipes/pretrain_vision.py DATASET [DATASET ...] --out CHECKPOINT
           [--steps 1000] [--batch-size 32] [--every 2] [--seed 0] [--variant NAME] [--global-weight W]
           [--state-weight W] [--yaw-weight W] [--offset-weight W] [--init CHECKPOINT]

Why (training/recipes/README.md, attempts 3-4): trained from scratch on actions alone, the model
stays at the instruction-conditional mean action and takes nothing from the frames, because the
part of the image tokens that tells one scene from another is ~1% of their spread. This stage
gives the vision tower and projector a direct, dense signal first (Magma itself starts from a
pretrained vision encoder, and its Set-of-Mark pretraining is a grounding objective).

Labels come from the recorded data of a ``sim_panda`` dataset, nothing privileged
(``magma_ros.training.grounding``): each cube's pixel centroid from its colour, and the TCP's
pixel position from the recorded end-effector state projected through the workcell's camera.

A per-cell head on the projected image tokens (the 8x8 grid the LM sees) learns, for each of the
four objects, which cell holds it (softmax over the 64 cells) and where inside the cell (offset
regression), and from every token the place of its own cell (so a token the LM attends to
carries where it is, not only what). With ``--global-weight`` (for ``magma-tiny-sim256``, one
256-px crop whose 8x8 tokens each see most of the frame) every token also regresses every object's
place in the whole frame, so the LM can read the target's place off any image token. With
``--state-weight`` every token also regresses the TCP's height and the gripper opening recorded
with the frame: a pick's phase (hover, descend, close, lift) depends on both, and neither is a
place in the image. With ``--yaw-weight`` every token also regresses, for each cube, how far the
hand must turn to square the fingers with the cube's faces (the cube's yaw at the episode's start,
from the recorded seed's layout, minus the TCP's recorded yaw, modulo a quarter turn, as the sine and
cosine of four times the angle): the expert's descent waits for it. With ``--offset-weight`` every
token also regresses, for each cube, where the TCP is from it across the table (x and y in the base
frame, the TCP's recorded position minus the cube's starting centre from the seed's layout, in
tenths of a metre clipped to +-1), on frames with the gripper open (a closed hand may hold the cube
elsewhere): what a grasp needs to within a centimetre, and what one camera shows only along its line of
sight (attempt 8); with the sim's wrist inset (attempt 9) the wrist view shows it. ``--init`` starts from a
checkpoint (e.g. a shipped default) instead of a fresh variant and keeps its language model and
statistics: the tower learns the new targets beside the old ones. The head
is thrown away: the output is the variant (seed 0) with the trained vision tower and projector,
a checkpoint for ``magma-ros train --checkpoint``. Held-out
localization error (pixels at 256x256) is printed every 250 steps and at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from magma_ros.model import build_tiny_model, load_checkpoint, save_checkpoint
from magma_ros.model.modeling import tile_crop_features
from magma_ros.model.policy import MagmaPolicy
from magma_ros.sim.config import SceneConfig
from magma_ros.sim.scene import sample_layout
from magma_ros.training.dataset import TrajectoryDataset
from magma_ros.training.grounding import OBJECTS, CameraProjector, frame_labels

VARIANT = "magma-tiny-sim"
N_OBJ = len(OBJECTS)
OFFSET_SCALE_M = 0.1
"""--offset-weight: the hand-to-cube offset is regressed in this unit, clipped to +-1."""


def load_frames(datasets: list[str], every: int, size: int,
                processor) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                    list[str]]:  # type: ignore[no-untyped-def]
    """Preprocessed pixel values (N, crops, 3, S, S) in float16, labels (N, 4, 2), label mask
    (N, 4), the recorded TCP height and gripper opening (N, 2), each cube's grasp yaw error
    (N, cubes, 2: sine and cosine of four times the angle), the TCP's x-y offset from each cube's
    starting centre (N, cubes, 2, metres) and the episode id of each frame (for a held-out split by
    episode)."""
    scene = SceneConfig()
    project = CameraProjector(size)
    pixels, labels, known, states, yaws, offsets, episodes = [], [], [], [], [], [], []
    for root in datasets:
        data = TrajectoryDataset(root)
        index = 0
        for episode_id in data.episode_ids:
            length = data.episode_length(episode_id)
            placements = sample_layout(scene, int(data.episode_metadata(episode_id)["seed"]))
            layout = {c.color: c.yaw for c in placements}
            centres = {c.color: (c.x, c.y) for c in placements}
            for step in range(0, length, every):
                record = data[index + step]
                frame = np.asarray(record.image)
                if frame.shape[:2] != (size, size):
                    raise SystemExit(f"{root}: frames are {frame.shape[1]}x{frame.shape[0]}, expected {size}x{size}")
                row, mask = frame_labels(frame, record.state[:3], project)
                processed = processor(frame)
                pixels.append(processed.pixel_values.to(torch.float16))
                labels.append(row)
                known.append(mask)
                states.append((record.state[2], record.state[6]))
                turn = [4 * (layout[colour] - record.state[5]) for colour in OBJECTS if colour in layout]
                yaws.append([(np.sin(t), np.cos(t)) for t in turn])
                hand = np.asarray(record.state[:2])
                offsets.append([hand - centres[colour] for colour in OBJECTS if colour in centres])
                episodes.append(f"{root}:{episode_id}")
            index += length
    return (torch.stack(pixels), np.asarray(labels, np.float32), np.asarray(known, bool),
            np.asarray(states, np.float32), np.asarray(yaws, np.float32), np.asarray(offsets, np.float32), episodes)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--every", type=int, default=2, help="use every N-th step of each episode")
    parser.add_argument("--held-out", type=float, default=0.05, help="fraction of episodes held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", default=VARIANT, help="magma-tiny variant to start from")
    parser.add_argument("--global-weight", type=float, default=0.0,
                        help="weight of the frame-level target: every token regresses every object's place in "
                             "the frame (for one-crop variants, whose tokens see most of the frame)")
    parser.add_argument("--yaw-weight", type=float, default=0.0,
                        help="weight of the grasp-yaw target: every token regresses how far the hand must turn to "
                             "square the fingers with each cube (the expert's descent waits for it)")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from this checkpoint (language model and statistics kept) instead of --variant")
    parser.add_argument("--offset-weight", type=float, default=0.0,
                        help="weight of the hand-to-cube target: every token also regresses the TCP's x-y offset "
                             "from each cube's starting centre (frames with the gripper open)")
    parser.add_argument("--state-weight", type=float, default=0.0,
                        help="weight of the arm-state target: every token also regresses the TCP's height and the "
                             "gripper opening recorded with the frame (what a pick's phase depends on)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    if args.init is not None:
        loaded = load_checkpoint(args.init, trainable=True)
        model, tokenizer = loaded.model, loaded.tokenizer
    else:
        model, tokenizer = build_tiny_model(args.variant, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:   # the processor exactly as the policy node builds it
        policy = MagmaPolicy.from_pretrained(save_checkpoint(model, tokenizer, tmp))
    size = policy.action_frame_size or 256
    started = time.perf_counter()
    pixels, labels, known, states, yaw_targets, offset_m, episodes = load_frames(args.datasets, args.every, size,
                                                                       policy.image_processor)
    n = len(pixels)
    rows, cols = policy.image_processor(np.zeros((size, size, 3), np.uint8)).image_size
    with torch.no_grad():
        g = model.multi_modal_projector(model.vision_tower(pixels[:1, 0].float())).shape[1]
    grid = (rows * g, cols * g)
    cell = size / grid[1], size / grid[0]
    print(f"{n} frames from {len(set(episodes))} episodes in {time.perf_counter() - started:.0f} s; labelled "
          + ", ".join(f"{o} {known[:, i].mean():.0%}" for i, o in enumerate(OBJECTS))
          + f"; grid {grid[0]}x{grid[1]} cells of {cell[0]:.0f} px", flush=True)

    rng = np.random.default_rng(args.seed)
    names = sorted(set(episodes))
    held = set(rng.choice(names, max(1, int(len(names) * args.held_out)), replace=False).tolist())
    is_held = np.array([e in held for e in episodes])
    train_idx, eval_idx = np.nonzero(~is_held)[0], np.nonzero(is_held)[0]

    vision, projector = model.vision_tower, model.multi_modal_projector
    hidden = model.config.text.hidden_size
    # per object: cell logit, offset (2); own cell (2); per object: its place in the frame (2);
    # with --state-weight: the TCP height and the gripper opening (both scaled to 0..1)
    n_state = 2 if args.state_weight > 0 else 0
    n_cubes = yaw_targets.shape[1]
    n_yaw = 2 * n_cubes if args.yaw_weight > 0 else 0
    n_offset = 2 * n_cubes if args.offset_weight > 0 else 0
    head = torch.nn.Linear(hidden, N_OBJ * 3 + 2 + N_OBJ * 2 + n_state + n_yaw + n_offset)
    yaw_t = torch.from_numpy(yaw_targets)
    offset_t = torch.from_numpy(np.clip(offset_m / OFFSET_SCALE_M, -1.0, 1.0))
    hand_open = torch.from_numpy(states[:, 1] > 0.9)
    z_low, z_high = float(states[train_idx, 0].min()), float(states[train_idx, 0].max())
    state_t = torch.from_numpy(np.stack([(states[:, 0] - z_low) / max(z_high - z_low, 1e-6),
                                         np.clip(states[:, 1], 0.0, 1.0)], -1).astype(np.float32))
    params = [*vision.parameters(), *projector.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    def lr_factor(s: int) -> float:   # 100 warm-up steps, then cosine to 5%
        return min(1.0, (s + 1) / 100) * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(s, args.steps) / args.steps)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    label_t, known_t = torch.from_numpy(labels), torch.from_numpy(known)

    def forward(idx: np.ndarray) -> torch.Tensor:
        crops = pixels[idx].float()                       # (B, crops, 3, S, S)
        k = crops.shape[1]
        feats = projector(vision(crops.flatten(0, 1)))    # (B*crops, g, g, D)
        tiles = [tile_crop_features(f, rows, cols) for f in feats.split(k)]
        return head(torch.stack(tiles))                   # (B, rows, cols, 4 * 3 + 2 + 4 * 2)

    own = torch.stack(torch.meshgrid(torch.arange(grid[0]) / (grid[0] - 1), torch.arange(grid[1]) / (grid[1] - 1),
                                     indexing="ij"), -1)      # (rows, cols, 2): each cell's own place

    def losses(full: torch.Tensor,
               idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None,
                                         torch.Tensor | None, torch.Tensor | None]:
        lab, ok = label_t[idx], known_t[idx]                 # (B, 4, 2), (B, 4)
        state_loss, state_pred = torch.zeros(()), None
        yaw_loss, yaw_pred = torch.zeros(()), None
        offset_loss, offset_pred = torch.zeros(()), None
        if n_offset:   # every token says where the hand is from each cube across the table (hand open)
            offset_pred = torch.tanh(full[..., -n_offset:]).unflatten(-1, (n_cubes, 2))   # (B, rows, cols, cubes, 2)
            w_open = hand_open[idx].float()[:, None, None, None]
            offset_loss = ((offset_pred - offset_t[idx][:, None, None]).abs().sum(-1) * w_open).sum() / (
                w_open.sum() * offset_pred.shape[1] * offset_pred.shape[2] * n_cubes).clamp(min=1)
            full = full[..., :-n_offset]
        if n_yaw:   # every token says how far the hand must turn for each cube
            yaw_pred = torch.tanh(full[..., -n_yaw:]).unflatten(-1, (n_cubes, 2))    # (B, rows, cols, cubes, 2)
            yaw_loss = (yaw_pred - yaw_t[idx][:, None, None]).abs().sum(-1).mean()
            full = full[..., :-n_yaw]
        if n_state:   # every token says how high the TCP is and whether the gripper is open
            state_pred = torch.sigmoid(full[..., -n_state:])                       # (B, rows, cols, 2)
            state_loss = (state_pred - state_t[idx][:, None, None]).abs().sum(-1).mean()
            full = full[..., :-n_state]
        # every token also says where every object is in the frame (the LM then needs no attention to
        # one token to read a place), ...
        glob = torch.sigmoid(full[..., -2 * N_OBJ:].unflatten(-1, (N_OBJ, 2)))   # (B, rows, cols, 4, 2)
        glob_px = glob * size
        glob_err = (glob_px - lab[:, None, None]).norm(dim=-1)                    # (B, rows, cols, 4)
        w_tok = ok[:, None, None].float()   # summed over the tokens, averaged over frames and objects
        glob_loss = ((glob - lab[:, None, None] / size).abs().sum(-1) * w_tok).sum() / w_tok.sum().clamp(min=1)
        glob_err = glob_err.masked_fill(~ok[:, None, None], float("nan")).flatten(1, 2)  # (B, tokens, 4)
        full = full[..., :-2 * N_OBJ]
        # ... and where it is itself: the LM's attention then reads a place off the
        # token it attends to (RoPE gives the LM relative order, not image coordinates)
        where = (torch.sigmoid(full[..., -2:]) - own).abs().sum(-1).mean()
        out = full[..., :-2].unflatten(-1, (N_OBJ, 3))
        cx = (lab[..., 0] / cell[1]).clamp(0, grid[1] - 1e-3)
        cy = (lab[..., 1] / cell[0]).clamp(0, grid[0] - 1e-3)
        target = cy.long() * grid[1] + cx.long()            # (B, 4) cell index
        logits = out[..., 0].permute(0, 3, 1, 2).flatten(2)  # (B, 4, cells)
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view_as(target)
        offsets = torch.sigmoid(out[..., 1:]).permute(0, 3, 1, 2, 4).flatten(2, 3)  # (B, 4, cells, 2)
        chosen = offsets.gather(2, target[..., None, None].expand(-1, -1, 1, 2))[:, :, 0]
        frac = torch.stack([cx - cx.floor(), cy - cy.floor()], -1)
        reg = (chosen - frac).abs().sum(-1)
        w = ok.float()
        loss = ((ce + 4.0 * reg) * w).sum() / w.sum().clamp(min=1) + 4.0 * where + args.global_weight * glob_loss
        loss = loss + args.state_weight * state_loss + args.yaw_weight * yaw_loss
        # predicted pixel position: the arg-max cell plus its offset
        best = logits.argmax(-1)
        off = offsets.gather(2, best[..., None, None].expand(-1, -1, 1, 2))[:, :, 0]
        px = torch.stack([(best % grid[1] + off[..., 0]) * cell[1], (best // grid[1] + off[..., 1]) * cell[0]], -1)
        err = (px - lab).norm(dim=-1).masked_fill(~ok, float("nan"))
        loss = loss + args.offset_weight * offset_loss
        return loss, err, glob_err, state_pred, yaw_pred, offset_pred

    def evaluate() -> str:
        vision.eval(), projector.eval()
        errs, glob, state_errs, yaw_errs, offset_errs = [], [], [], [], []
        with torch.no_grad():
            for start in range(0, len(eval_idx), 64):
                idx = eval_idx[start:start + 64]
                _, err, glob_err, state_pred, yaw_pred, offset_pred = losses(forward(idx), idx)
                errs.append(err), glob.append(glob_err)
                if state_pred is not None:   # per frame: the tokens' median answer against the record
                    guess = state_pred.flatten(1, 2).median(dim=1).values
                    state_errs.append(torch.stack([(guess[:, 0] - state_t[idx][:, 0]).abs() * (z_high - z_low),
                                                   ((guess[:, 1] > 0.5) == (state_t[idx][:, 1] > 0.5)).float()], -1))
                if yaw_pred is not None:   # the tokens' median answer, as an angle (degrees), against the label
                    guess = yaw_pred.flatten(1, 2).median(dim=1).values                    # (B, cubes, 2)
                    angle = torch.atan2(guess[..., 0], guess[..., 1]) / 4
                    truth = torch.atan2(yaw_t[idx][..., 0], yaw_t[idx][..., 1]) / 4
                    miss = torch.remainder(angle - truth + np.pi / 4, np.pi / 2) - np.pi / 4
                    yaw_errs.append(torch.rad2deg(miss).abs())
                if offset_pred is not None:   # the tokens' median answer (cm) against the record, hand open,
                    # hand within 10 cm of the cube (unclipped)
                    guess = offset_pred.flatten(1, 2).median(dim=1).values * OFFSET_SCALE_M * 100    # (B, cubes, 2)
                    truth = torch.from_numpy(offset_m[idx]) * 100
                    near = (truth.norm(dim=-1) < OFFSET_SCALE_M * 100) & hand_open[idx][:, None]
                    offset_errs.append((guess - truth).norm(dim=-1)[near])
        vision.train(), projector.train()
        err, g = torch.cat(errs).numpy(), torch.cat(glob).numpy()
        text = ", ".join(f"{o} {np.nanmedian(err[:, i]):.1f}" for i, o in enumerate(OBJECTS))
        if args.global_weight > 0:   # median over frames and tokens; the worst tenth of tokens
            text += "; from every token: " + ", ".join(
                f"{o} {np.nanmedian(g[..., i]):.1f} (p90 {np.nanpercentile(g[..., i], 90):.1f})"
                for i, o in enumerate(OBJECTS))
        if state_errs:
            s_err = torch.cat(state_errs).numpy()
            height_cm = 100 * s_err[:, 0]
            text += (f"; TCP height {np.median(height_cm):.1f} cm (p90 {np.percentile(height_cm, 90):.1f}),"
                     f" gripper open/closed {s_err[:, 1].mean():.1%} right")
        if yaw_errs:
            y_err = torch.cat(yaw_errs).numpy()
            text += f"; grasp yaw {np.median(y_err):.1f} deg (p90 {np.percentile(y_err, 90):.1f})"
        if offset_errs:
            o_err = torch.cat(offset_errs).numpy()
            if len(o_err):
                text += (f"; hand from cube {np.median(o_err):.2f} cm (p90 {np.percentile(o_err, 90):.2f}, "
                         f"within 1 cm {np.mean(o_err < 1.0):.0%}, {len(o_err)} cube-frames within 10 cm)")
        return text

    print(f"held-out median error (px) before training: {evaluate()}", flush=True)
    history = []
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = rng.choice(train_idx, args.batch_size)
        loss = losses(forward(idx), idx)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        history.append(loss.item())
        if step % 250 == 0 or step == args.steps:
            print(f"step {step}/{args.steps} loss {np.mean(history[-250:]):.3f} "
                  f"({(time.perf_counter() - t0) / step:.2f} s/step); held-out median error (px): {evaluate()}",
                  flush=True)
    model.eval()
    save_checkpoint(model, tokenizer, args.out)
    if args.init is not None and (args.init / "dataset_statistics.json").is_file():   # the LM's action statistics
        shutil.copy2(args.init / "dataset_statistics.json", args.out / "dataset_statistics.json")
    (args.out / "vision_pretraining.json").write_text(json.dumps({
        "datasets": args.datasets, "frames": n, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "seed": args.seed, "variant": args.variant, "global_weight": args.global_weight,
        "state_weight": args.state_weight, "yaw_weight": args.yaw_weight, "offset_weight": args.offset_weight,
        "init": str(args.init) if args.init is not None else None, "tcp_height_range_m": [z_low, z_high],
        "held_out_episodes": len(held), "held_out_median_error_px": evaluate(),
        "loss_every_10": history[::10]}, indent=1))
    print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
