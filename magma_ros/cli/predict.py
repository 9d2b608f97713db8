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

    from magma_ros.codecs import (
        ACTION_DIM_NAMES,
        ActionCodec,
        CodecError,
        build_tom_query,
        draw_marks,
        draw_traces,
        parse_traces,
        place_marks_on_grid,
        resolve_statistics,
    )
    from magma_ros.codecs.grid import ImageSize
    from magma_ros.model import MagmaModelError, MagmaPolicy, Sampling
    from magma_ros.model.loading import STATISTICS_FILE

    checkpoint = Path(args.checkpoint)
    stats_file = checkpoint / STATISTICS_FILE
    try:
        image = _read_image(Path(args.image))
        stats_path = stats_file if stats_file.is_file() else None
        stats = resolve_statistics(args.stats or (None if stats_path else "bridge_orig"), stats_path)
        sampling = Sampling(temperature=args.temperature, seed=args.seed)
        policy = MagmaPolicy.from_pretrained(checkpoint, dtype=args.dtype, device=args.device)
        step = policy.predict_action(image, args.instruction, sampling=sampling)
        decoded = ActionCodec(policy.tokenizer.base_vocab_size).decode(step.token_ids, stats)
    except (MagmaModelError, CodecError, ValueError) as err:
        return _fail(str(err), 1)

    t = step.timings
    print(f"instruction: {args.instruction}")
    print(f"action tokens: {list(step.token_ids)}  (range {policy.action_token_range.lo}.."
          f"{policy.action_token_range.hi})")
    print(f"statistics: {decoded.statistics}" + ("" if decoded.valid else f"  INVALID: {decoded.error}"))
    print(f"{'dim':<10} {'normalized':>11} {'metric':>11}")
    for name, n, a in zip(ACTION_DIM_NAMES, decoded.normalized, decoded.action, strict=True):
        print(f"{name:<10} {n:>11.4f} {a:>11.5f}")
    print(f"gripper: {decoded.gripper:.3f} ({'open' if decoded.gripper > 0.5 else 'closed'})")
    print(f"timings ms: preprocess {t.preprocess_ms:.1f}, vision {t.vision_ms:.1f}, prefill {t.prefill_ms:.1f}, "
          f"decode {t.decode_ms_per_token:.1f}/token, total {t.total_ms:.1f}")

    drawn = image
    if args.traces:
        try:
            size = ImageSize.of(image)
            marks = place_marks_on_grid(size, *grid)
            marked = draw_marks(image, marks)
            query = build_tom_query(args.instruction, args.trace_steps, mark_ids=sorted(m.id for m in marks))
            answer = policy.generate_text(marked, query, max_new_tokens=args.max_new_tokens, sampling=sampling)
        except (MagmaModelError, CodecError, ValueError) as err:
            return _fail(str(err), 1)
        parsed = parse_traces(answer.text, size)
        print(f"\ntrace answer ({len(answer.token_ids)} tokens, {answer.timings.total_ms:.1f} ms"
              f"{'' if answer.finished else ', hit --max-new-tokens'}):")
        print(answer.text)
        for mark_id, trace in parsed.traces.items():
            pixels = ", ".join(f"({u:.0f},{v:.0f})" for u, v in trace.pixels)
            print(f"mark {mark_id}: {pixels}")
        for error in parsed.errors:
            print(f"trace parse: {error}")
        drawn = draw_traces(marked, parsed)
    if args.out:
        from PIL import Image

        try:
            Image.fromarray(drawn).save(args.out)
        except (OSError, ValueError) as err:
            return _fail(f"{args.out}: cannot write image ({err})", 1)
        print(f"wrote {args.out}")
    return 0
