"""`magma-ros train`: fine-tune Magma on datasets built by `magma-ros dataset build`.

    magma-ros train --checkpoint DIR --data DIR [DIR ...] --out DIR [--lora] [--config RECIPE.yaml]
    magma-ros train --init tiny:magma-tiny --data DIR --out DIR          # from scratch, no download
    torchrun --nproc_per_node N -m magma_ros.cli.train ...               # data parallel (or FSDP)

Writes OUT/model (the runtime checkpoint, LoRA merged), OUT/checkpoints/step-N (resumable with
``--resume auto``), metrics.jsonl, loss_curve.png and train_config.yaml. Options given here
override the recipe. Exit codes: 0 done, 1 data/model/training error, 2 bad options.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="fine-tune Magma on recorded datasets (full or LoRA)",
        description="Fine-tune a Magma checkpoint (or a magma-tiny from scratch) on datasets written by "
                    "`magma-ros dataset build`; the result loads in magma_policy_node unchanged.")
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="Magma checkpoint directory to start from")
    source.add_argument("--init", metavar="tiny:VARIANT", help="start from scratch: tiny:magma-tiny, ...")
    parser.add_argument("--data", nargs="+", required=True, metavar="DIR", help="dataset directories")
    parser.add_argument("--out", required=True, help="run directory (checkpoints, metrics, final model)")
    parser.add_argument("--config", metavar="YAML", help="training recipe (training/*.yaml)")
    parser.add_argument("--lora", action="store_true", help="LoRA instead of full fine-tuning "
                                                            "(recipe's lora settings, else defaults)")
    parser.add_argument("--steps", type=int, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, help="examples per process per micro-batch")
    parser.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--seed", type=int, help="seed (data order, augmentation, initialization)")
    parser.add_argument("--parallel", choices=["auto", "none", "ddp", "fsdp"], help="parallelism under torchrun")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")
    parser.add_argument("--resume", metavar="auto|DIR", help="continue from OUT's newest checkpoint or DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _fail(message: str, code: int) -> int:
    print(f"magma-ros train: {message}", file=sys.stderr, flush=True)
    return code


def build_config(args: argparse.Namespace):
    from magma_ros.training.config import LoraConfig, TrainConfig

    config = TrainConfig.from_yaml(args.config) if args.config else TrainConfig(precision="bf16")
    changes = {name: getattr(args, name) for name in ("steps", "batch_size", "grad_accum", "lr", "seed", "parallel")
               if getattr(args, name, None) is not None}
    if args.lora and config.lora is None:
        changes["lora"] = LoraConfig()
    config = config.replace(**changes)
    config.validate("command line")
    return config


def run(args: argparse.Namespace) -> int:
    from magma_ros.training.config import TrainConfigError

    try:
        config = build_config(args)
    except TrainConfigError as err:
        return _fail(str(err), 2)

    from magma_ros.codecs import CodecError
    from magma_ros.model.errors import MagmaModelError
    from magma_ros.training.collate import TrainingDataError
    from magma_ros.training.parallelize import ParallelError, init_distributed, shutdown_distributed
    from magma_ros.training.records import DatasetError
    from magma_ros.training.trainer import TrainingError, run_training

    ctx = None
    try:
        ctx = init_distributed(args.device)
        result = run_training(config, args.data, args.out, checkpoint=args.checkpoint, init=args.init,
                              resume=args.resume, ctx=ctx, progress=not args.no_progress)
    except (TrainingError, TrainingDataError, DatasetError, MagmaModelError, CodecError, ParallelError,
            OSError) as err:
        return _fail(str(err), 1)
    finally:
        if ctx is not None:
            shutdown_distributed(ctx)
    if ctx.is_main:
        last = result.evals[-1] if result.evals else {}
        loss = f", held-out loss {last['loss']:.4f}" if "loss" in last else ""
        print(f"trained {result.steps_done} steps in {result.seconds:.1f} s{loss}; "
              f"checkpoint: {result.final_dir or result.last_state_dir}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``torchrun -m magma_ros.cli.train ...`` (same options as ``magma-ros train``)."""
    parser = argparse.ArgumentParser(prog="magma-ros train")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
