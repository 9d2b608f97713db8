"""Backend benchmark: per-stage latency of every backend available here, against PyTorch eager
in the same run, beside the analytic floor of Magma-8B on GPUs and Jetsons.

    .venv/bin/python bench/backend_bench.py [--variant magma-tiny] [--repeats 15] [--json PATH]

Measured: magma-tiny (untrained, seed 0), one 240x320 frame, medians over ``--repeats`` action
steps per backend, backends interleaved round by round so load on a shared machine hits all
alike. Stages: preprocess (resize + anyres + prompt), vision (tower + projector + merge),
prefill (+ first token), decode per token (6 single-token steps), full action step (all of
it, wall clock around ``backend.act``). Control rate = 1000 / full step. tensorrt and the
onnxruntime GPU providers are measured only where a GPU is present (bench/gpu_check.sh).

Floor (analytic, Magma-8B): decode per token = weight bytes read per token / memory bandwidth
(decoder layers + the 256 action rows of lm_head; the constrained head never reads the full
vocabulary, embeddings are a gather); prefill = 2 * params * tokens FLOPs / peak dense tensor
throughput, vision = ConvNeXt-XXLarge FLOPs at one 512 px crop / peak. Action step floor =
vision + prefill + 6 decode tokens. Peak numbers are spec-sheet values (dense, no sparsity).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

INSTRUCTION = "pick up the coke can"
DEFAULT_JSON = REPO / "runs" / "bench" / "backend_bench.json"

# -- analytic floor ---------------------------------------------------------------------------
# Magma-8B: LLaMA-3-8B decoder (32 layers, hidden 4096, 14336 MLP, GQA 8 KV heads) + ConvNeXt-XXLarge.
HIDDEN, LAYERS, INTER, KV_DIM = 4096, 32, 14336, 1024
DECODER_PARAMS = LAYERS * (2 * HIDDEN * HIDDEN + 2 * HIDDEN * KV_DIM + 3 * HIDDEN * INTER + 2 * HIDDEN) + HIDDEN
ACTION_HEAD_PARAMS = 256 * HIDDEN
VISION_FLOPS_512 = 396e9 * 4          # ~396 GFLOPs at 256 px -> 4x at one 512 px crop
PREFILL_TOKENS = 272 + 64             # one crop (16 x 17 positions) + prompt text
DECODE_STEPS = 6                      # token 1 comes from the prefill
BYTES = {"bf16": 2.0, "int8": 1.0, "int4": 0.5}
# name: (memory bandwidth GB/s, dense bf16/fp16 tensor TFLOPS), spec sheets. int8/int4 are
# weight-only (activations stay 16-bit), so they shrink bytes per token, not prefill FLOPs.
DEVICES = {
    "H100 SXM": (3350, 989),
    "H200 SXM": (4800, 989),
    "RTX 4090": (1008, 165),
    "Jetson AGX Orin 64GB": (204.8, 85),
    "Jetson Thor": (273, 500),
}


def floor_table() -> list[dict[str, object]]:
    rows = []
    weights = DECODER_PARAMS + ACTION_HEAD_PARAMS
    for device, (bw, peak) in DEVICES.items():
        for precision, nbytes in BYTES.items():
            token_ms = weights * nbytes / (bw * 1e9) * 1e3
            prefill_ms = 2 * DECODER_PARAMS * PREFILL_TOKENS / (peak * 1e12) * 1e3
            vision_ms = VISION_FLOPS_512 / (peak * 1e12) * 1e3
            step = vision_ms + prefill_ms + DECODE_STEPS * token_ms
            rows.append({"device": device, "precision": precision, "weights_gb": weights * nbytes / 1e9,
                         "decode_ms_per_token": token_ms, "prefill_ms": prefill_ms, "vision_ms": vision_ms,
                         "action_step_ms": step, "control_hz": 1e3 / step})
    return rows


# -- measurement ------------------------------------------------------------------------------
def available_backends() -> list[tuple[str, dict[str, object]]]:
    """(label, create_backend kwargs) for everything that can run here; GPU ones only with a GPU."""
    import onnxruntime
    import torch

    out: list[tuple[str, dict[str, object]]] = [("torch eager", {"name": "torch"}),
                                                ("onnxruntime cpu", {"name": "onnxruntime"})]
    providers = onnxruntime.get_available_providers()
    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        out.append(("torch eager cuda", {"name": "torch", "device": "cuda:0"}))
        if "CUDAExecutionProvider" in providers:
            out.append(("onnxruntime cuda", {"name": "onnxruntime", "device": "cuda:0"}))
        if "TensorrtExecutionProvider" in providers:
            out.append(("onnxruntime tensorrt-ep", {"name": "onnxruntime", "device": "cuda:0",
                                                    "execution_provider": "tensorrt"}))
        try:
            import tensorrt  # noqa: F401

            out.append(("tensorrt fp16", {"name": "tensorrt", "device": "cuda:0", "dtype": "float16"}))
        except ImportError:
            pass
    return out


def measure(variant: str, repeats: int, warmup: int, threads: int) -> tuple[list[dict[str, object]], int]:
    from magma_ros.backends import BackendError, create_backend
    from magma_ros.backends.options import BackendOptions
    from magma_ros.model import build_tiny_model, save_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="magma_backend_bench_"))
    model, tokenizer = build_tiny_model(variant, seed=0)
    checkpoint = save_checkpoint(model, tokenizer, tmp / "ckpt")
    frame = np.random.default_rng(0).integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    backends = {}
    skipped = []
    for label, kw in available_backends():
        kw = dict(kw)
        name = kw.pop("name")
        options = BackendOptions(export_dir=str(tmp / "onnx"), num_threads=threads,
                                 execution_provider=str(kw.pop("execution_provider", "")))
        t0 = time.perf_counter()
        try:
            backends[label] = create_backend(str(name), str(checkpoint), options=options, **kw)  # type: ignore[arg-type]
        except BackendError as err:
            skipped.append(f"{label}: {err}")
            continue
        print(f"[bench] {label}: ready in {time.perf_counter() - t0:.1f} s", flush=True)
    samples: dict[str, list[tuple[float, object]]] = {k: [] for k in backends}
    tokens: dict[str, tuple[int, ...]] = {}
    labels = list(backends)
    for i in range(warmup + repeats):
        order = labels if i % 2 == 0 else labels[::-1]
        for label in order:
            t0 = time.perf_counter()
            out = backends[label].act(frame, INSTRUCTION)
            elapsed = (time.perf_counter() - t0) * 1e3
            if i >= warmup:
                samples[label].append((elapsed, out.timings))
            tokens[label] = out.token_ids
    rows = []
    base = statistics.median(s[0] for s in samples["torch eager"])
    for label, runs in samples.items():
        full = statistics.median(r[0] for r in runs)

        def med(attr: str, runs=runs) -> float:
            return statistics.median(getattr(r[1], attr) for r in runs)

        rows.append({"backend": label, "preprocess_ms": med("preprocess_ms"), "vision_ms": med("vision_ms"),
                     "prefill_ms": med("prefill_ms"), "decode_ms_per_token": med("decode_ms") / DECODE_STEPS,
                     "action_step_ms": full, "control_hz": 1e3 / full, "speedup_vs_torch_eager": base / full,
                     "same_tokens_as_torch": tokens[label] == tokens["torch eager"]})
    for backend in backends.values():
        backend.close()
    for line in skipped:
        print(f"[bench] skipped {line}")
    return rows, len(runs)


def print_tables(rows: list[dict[str, object]], floor: list[dict[str, object]], variant: str, n: int,
                 threads: str) -> None:
    print(f"\n## Backends on this machine: {variant}, CPU threads {threads}, median of {n} action steps")
    print("| backend | preprocess ms | vision ms | prefill ms | decode ms/token | action step ms | control Hz "
          "| vs torch eager | same tokens |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['preprocess_ms']:.2f} | {r['vision_ms']:.2f} | {r['prefill_ms']:.2f} | "
              f"{r['decode_ms_per_token']:.2f} | {r['action_step_ms']:.2f} | {r['control_hz']:.1f} | "
              f"{r['speedup_vs_torch_eager']:.2f}x | {'yes' if r['same_tokens_as_torch'] else 'NO'} |")
    print("\n## Analytic floor, Magma-8B (decode: weight bytes / bandwidth; prefill, vision: FLOPs / peak)")
    print("| device | precision | weights GB | vision ms | prefill ms | decode ms/token | action step ms | max Hz |")
    print("|---|---|---|---|---|---|---|---|")
    for f in floor:
        print(f"| {f['device']} | {f['precision']} | {f['weights_gb']:.1f} | {f['vision_ms']:.1f} | "
              f"{f['prefill_ms']:.1f} | {f['decode_ms_per_token']:.2f} | {f['action_step_ms']:.1f} | "
              f"{f['control_hz']:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="magma-tiny")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = default)")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="where to write the results")
    args = parser.parse_args(argv if argv is not None else [])
    import torch

    rows, n = measure(args.variant, args.repeats, args.warmup, args.threads)
    floor = floor_table()
    print_tables(rows, floor, args.variant, n, str(args.threads or torch.get_num_threads()))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"variant": args.variant, "repeats": n, "torch_threads": torch.get_num_threads(),
                               "measured": rows, "floor_magma8b": floor}, indent=2) + "\n")
    print(f"\nwrote {out}")
    bad = [r["backend"] for r in rows if not r["same_tokens_as_torch"]]
    if bad:
        print(f"WARNING: different action tokens than torch eager: {', '.join(bad)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
