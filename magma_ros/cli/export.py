"""`magma-ros export`: a checkpoint as ONNX graphs for the onnxruntime / tensorrt backends.

    magma-ros export --checkpoint DIR --out DIR [--format onnx] [--dtype float32|float16] [--structure-only]

Writes vision.onnx, prefill.onnx + decode.onnx (explicit KV cache, sharing language.onnx.data),
head.onnx, the host-side embedding tables, a copy of the tokenizer/preprocessor files and
export.json (graph inputs/outputs and dimensions); see magma_ros/export/layout.py.
``--structure-only`` traces a meta-device model (no weights read, little host memory) to
check a large configuration's graphs. Exit codes: 0 done, 1 export error, 2 bad options.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export a checkpoint to ONNX for the onnxruntime / tensorrt backends",
        description="Export a Magma checkpoint as ONNX graphs: vision (per crop), prefill and single-step decode "
                    "with an explicit KV cache, the 256-row action head, and the full head for free text.")
    parser.add_argument("--checkpoint", required=True, help="Magma checkpoint directory")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="export format (onnx)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                        help="weights/activations element type (float16 for GPU engines)")
    parser.add_argument("--structure-only", action="store_true",
                        help="graphs without weights from a meta-device model (checks large configurations)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from magma_ros.export.layout import ExportError
    from magma_ros.export.onnx_export import export_checkpoint

    try:
        manifest = export_checkpoint(args.checkpoint, args.out, dtype=args.dtype, weights=not args.structure_only,
                                     progress=lambda msg: print(f"[export] {msg}", flush=True))
    except (ExportError, OSError) as err:
        print(f"magma-ros export: {err}", file=sys.stderr)
        return 1
    d = manifest.dims
    print(f"exported {args.checkpoint} -> {args.out} ({manifest.dtype}, opset {manifest.opset}"
          f"{', structure only' if not manifest.weights_included else ''}): {d.num_layers} layers, hidden "
          f"{d.hidden_size}, action rows {d.action_lo}..{d.action_hi}")
    return 0
