"""`magma-ros predict`: one action (and optionally a Trace-of-Mark answer) from one image.

    magma-ros predict --checkpoint DIR --image PATH --instruction TEXT \\
        [--traces] [--stats NAME] [--out PNG]

Prints the 7 action token ids, the normalized and metric action (statistics set
``--stats``: the checkpoint's ``dataset_statistics.json`` or a built-in set), the gripper,
and per-stage timings. ``--traces`` also labels the image with numbered marks, asks
Magma's Trace-of-Mark question and prints the parsed traces. ``--out`` writes the image
with marks and traces drawn. Exit codes: 0 done, 1 model/checkpoint/image error,
2 bad options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from magma_ros.backends.options import add_backend_arguments

    parser = subparsers.add_parser(
        "predict", help="predict one action (and optionally traces) from an image",
        description="Load a Magma checkpoint directory, predict the 7-DoF action for an image and an "
                    "instruction, and optionally the Trace-of-Mark traces.")
    parser.add_argument("--checkpoint", required=True, help="Magma checkpoint directory (config.json, ...)")
    parser.add_argument("--image", required=True, help="RGB image file (png, jpg, ...)")
    parser.add_argument("--instruction", required=True, help='task, e.g. "put the carrot on the plate"')
    parser.add_argument("--traces", action="store_true", help="also ask the Trace-of-Mark question")
    parser.add_argument("--stats", default=None, metavar="NAME",
                        help="action statistics set: an entry of the checkpoint's dataset_statistics.json "
                             "or bridge_orig / google_robot (default: the file's single entry, else "
                             "bridge_orig)")
    parser.add_argument("--out", default=None, metavar="PNG", help="write the image with marks/traces here")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"],
                        help="weight dtype (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--seed", type=int, default=None, help="seed for temperature sampling")
    parser.add_argument("--mark-grid", default="3x3", metavar="ROWSxCOLS",
                        help="marks for --traces, on a grid of image cells (default 3x3)")
    parser.add_argument("--trace-steps", type=int, default=8, help="future steps asked for (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="length limit of the trace answer")
    add_backend_arguments(parser)
    parser.set_defaults(func=run)


def _fail(message: str, code: int) -> int:
    print(f"magma-ros predict: {message}", file=sys.stderr, flush=True)
    return code


def _grid(text: str) -> tuple[int, int] | None:
    rows, sep, cols = text.lower().partition("x")
    if not sep or not rows.isdigit() or not cols.isdigit() or int(rows) < 1 or int(cols) < 1:
        return None
    return int(rows), int(cols)


def _read_image(path: Path):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"{path}: cannot read image ({err})") from err


def run(args: argparse.Namespace) -> int:
    grid = _grid(args.mark_grid)
    if grid is None:
        return _fail(f"--mark-grid expects ROWSxCOLS (e.g. 3x3), got {args.mark_grid!r}", 2)
    if args.trace_steps < 1 or args.max_new_tokens < 1:
        return _fail("--trace-steps and --max-new-tokens must be >= 1", 2)
    if args.temperature < 0:
        return _fail(f"--temperature must be >= 0, got {args.temperature}", 2)

    from magma_ros.backends import BackendError, create_backend
    from magma_ros.backends.options import options_from_args
    from magma_ros.backends.torch_backend import TorchBackend
    from magma_ros.codecs import ACTION_DIM_NAMES
    from magma_ros.model import ImageError
    from magma_ros.visualization import annotate_frame

    try:
        image = _read_image(Path(args.image))
        if args.backend == "torch":
            backend = TorchBackend(args.checkpoint, dtype=args.dtype, device=args.device,
                                   statistics=args.stats or "", temperature=args.temperature, seed=args.seed,
                                   mark_grid=grid, trace_max_new_tokens=args.max_new_tokens)
        else:
            backend = create_backend(args.backend, args.checkpoint, dtype=args.dtype or "float32",
                                     device=args.device, statistics=args.stats or "", temperature=args.temperature,
                                     options=options_from_args(args), seed=args.seed)
            backend.mark_grid, backend.trace_max_new_tokens = grid, args.max_new_tokens
    except (BackendError, ImageError, ValueError) as err:
        return _fail(str(err), 1)
    out = backend.act(image, args.instruction)
    if not out.valid and not out.token_ids:
        return _fail(out.error, 1)

    t = out.timings
    token_range = backend.policy.tokenizer.action_token_range
    print(f"instruction: {args.instruction}")
    print(f"action tokens: {list(out.token_ids)}  (range {token_range.lo}..{token_range.hi})")
    print(f"statistics: {backend.statistics.name}" + ("" if out.valid else f"  INVALID: {out.error}"))
    print(f"{'dim':<10} {'normalized':>11} {'metric':>11}")
    for name, n, a in zip(ACTION_DIM_NAMES, out.normalized, out.action, strict=True):
        print(f"{name:<10} {n:>11.4f} {a:>11.5f}")
    print(f"gripper: {out.action[6]:.3f} ({'open' if out.action[6] > 0.5 else 'closed'})")
    print(f"timings ms: preprocess {t.preprocess_ms:.1f}, vision {t.vision_ms:.1f}, prefill {t.prefill_ms:.1f}, "
          f"decode {t.decode_ms / max(1, len(out.token_ids)):.1f}/token, total {t.model_ms:.1f}")

    drawn = image
    if args.traces:
        traced = backend.trace(image, args.instruction, args.trace_steps)
        if traced.error.startswith("model: "):
            return _fail(traced.error, 1)
        print(f"\ntrace answer ({len(traced.token_ids)} tokens, {traced.timings.model_ms:.1f} ms):")
        print(traced.raw_text)
        for mark_id, trace in traced.traces:
            pixels = ", ".join(f"({u:.0f},{v:.0f})" for u, v in trace.pixels)
            print(f"mark {mark_id}: {pixels}")
        for error in filter(None, traced.error.split("; ")):
            print(f"trace parse: {error}")
        drawn = annotate_frame(image, traced.marks, traced.traces)
    if args.out:
        from PIL import Image

        try:
            Image.fromarray(drawn).save(args.out)
        except (OSError, ValueError) as err:
            return _fail(f"{args.out}: cannot write image ({err})", 1)
        print(f"wrote {args.out}")
    return 0
