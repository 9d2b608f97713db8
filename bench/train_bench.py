"""Training step time per batch size (magma-tiny, full fine-tuning and LoRA).

    .venv/bin/python bench/train_bench.py [--variant magma-tiny] [--batch-sizes 1 2 4 8]
        [--frame-size 256] [--steps 5] [--device cpu] [--threads N] [--no-lora]

One optimizer step = encode + collate + forward + backward + clip + AdamW, the trainer's own
``Trainer.train_step`` on synthetic frames (in memory, no disk reads). Robot frames are resized to
``--frame-size`` as serving does (256: the policy's default; the tiny model's 64 px crops make that
a 2x2 crop layout). Reports the median over ``--steps`` steps after one warm-up step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from magma_ros.codecs import ActionStatistics
from magma_ros.model import PreprocessorConfig, build_tiny_model
from magma_ros.training.collate import DataSource
from magma_ros.training.config import LoraConfig, TrainConfig
from magma_ros.training.parallelize import DistContext, resolve_device
from magma_ros.training.records import StepRecord
from magma_ros.training.trainer import ModelBundle, Trainer

STATS = ActionStatistics("bench", q01=(-0.02,) * 3 + (-0.1,) * 3 + (0.0,), q99=(0.02,) * 3 + (0.1,) * 3 + (1.0,))


def synthetic_source(frames: int = 64, size: int = 256) -> DataSource:
    rng = np.random.default_rng(0)
    records, owners = [], []
    for i in range(frames):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        action = rng.uniform(-0.02, 0.02, 7)
        action[6] = float(i % 2)
        records.append(StepRecord(f"ep{i // 8}", i % 8, i, image, action, np.zeros(7), "pick up the red block"))
        owners.append(f"ep{i // 8}")
    return DataSource("bench", STATS, records, owners)


def time_steps(variant: str, batch_size: int, frame_size: int, steps: int, lora: bool,
               device: torch.device) -> tuple[float, float]:
    """Median wall seconds and median process CPU seconds (all threads) per optimizer step; the
    CPU time is the steadier figure on a shared machine."""
    model, tokenizer = build_tiny_model(variant, seed=0)
    for p in model.parameters():
        p.requires_grad_(True)
    model.to(device)
    config = TrainConfig(steps=steps + 1, batch_size=batch_size, lr=1e-3, warmup_steps=1, action_frame_size=frame_size,
                         eval_fraction=0.0, precision="bf16", lora=LoraConfig(rank=8) if lora else None)
    bundle = ModelBundle(model, tokenizer, PreprocessorConfig(base_img_size=model.config.vision.img_size))
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, bundle, [synthetic_source()], out, DistContext(device=device))
        trainer.train_step()   # warm-up (allocations, lazy init)
        times, cpu = [], []
        for _ in range(steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            trainer.train_step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return statistics.median(times), statistics.median(cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="magma-tiny")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--frame-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-lora", action="store_true", help="only full fine-tuning")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv if argv is not None else [])   # bench/run.py calls main()
    if args.steps < 1 or min(args.batch_sizes) < 1:
        parser.error("--steps and batch sizes must be >= 1")
    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{args.variant}, frames {args.frame_size}px, {device}, {torch.get_num_threads()} threads, "
          f"median of {args.steps} steps (bf16 autocast on CUDA only)")
    print(f"{'mode':<6}{'batch':>6}{'s/step':>9}{'examples/s':>12}{'cpu s/step':>12}")
    modes = [("full", False)] + ([] if args.no_lora else [("lora", True)])
    for name, lora in modes:
        for batch in args.batch_sizes:
            seconds, cpu = time_steps(args.variant, batch, args.frame_size, args.steps, lora, device)
            print(f"{name:<6}{batch:>6}{seconds:>9.3f}{batch / seconds:>12.1f}{cpu:>12.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
