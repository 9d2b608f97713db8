#!/usr/bin/env bash
# One prepared GPU check for the compiled backends (issue 11). Run on a machine with an NVIDIA GPU,
# from the repository root, with the project venv (plus onnxruntime-gpu and tensorrt installed):
#   bash bench/gpu_check.sh [OUT_DIR]
# It prints what the GPU is, runs the TensorRT-path unit tests without the CPU-only skips, builds
# engines for magma-tiny and magma-tiny-512 through the backend (engine cache on, parity check on),
# and writes per-stage tables (JSON + text) for every backend available to OUT_DIR (default runs/gpu_check).
set -uo pipefail
OUT=${1:-${OUT:-runs/gpu_check}}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
export XDG_CACHE_HOME="$OUT/cache"   # exports and engines land here (a fresh engine cache each run)
{
  echo "== $(date -u)"; nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv || true
  $PY - <<'PY'
import torch, onnxruntime
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.version.cuda)
print("onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
try:
    import tensorrt; print("tensorrt", tensorrt.__version__)
except ImportError as err:
    print("tensorrt: NOT INSTALLED", err)
PY
} 2>&1 | tee "$OUT/env.txt"

# 1. the backend tests (the CPU-only expectations skip themselves where a GPU exists)
timeout 900 $PY -m pytest tests/backends -q -x -p no:randomly 2>&1 | tail -n 20 | tee "$OUT/tests.txt"

# 2. each GPU backend with the parity check at configure (same greedy tokens, cosine >= 0.999)
for variant in magma-tiny magma-tiny-512; do
  $PY - "$variant" "$OUT" <<'PY' 2>&1 | tee -a "$OUT/parity.txt"
import sys, time
from pathlib import Path
from magma_ros.backends import BackendError, create_backend
from magma_ros.backends.options import BackendOptions
from magma_ros.model import build_tiny_model, save_checkpoint
variant, out = sys.argv[1], Path(sys.argv[2])
ckpt = out / f"ckpt-{variant}"
if not (ckpt / "config.json").is_file():
    save_checkpoint(*build_tiny_model(variant, seed=0), ckpt)
for label, name, kw in (("ort-cuda", "onnxruntime", {}), ("ort-trt-ep", "onnxruntime", {"execution_provider": "tensorrt"}),
                        ("tensorrt-fp32", "tensorrt", {"precision": "fp32"}), ("tensorrt-fp16", "tensorrt", {"precision": "fp16"})):
    dtype = "float16" if kw.get("precision") == "fp16" else "float32"
    t0 = time.time()
    try:
        b = create_backend(name, str(ckpt), device="cuda:0", dtype=dtype,
                           options=BackendOptions(verify_backend=True, **kw))
        print(f"{variant} {label}: parity OK, configure {time.time() - t0:.1f} s")
        b.close()
    except BackendError as err:
        print(f"{variant} {label}: FAILED {err}")
PY
done

# 3. per-stage tables, every backend available (GPU ones included), both variants
for variant in magma-tiny magma-tiny-512; do
  $PY bench/backend_bench.py --variant "$variant" --repeats 20 --json "$OUT/backend_bench-$variant.json" 2>&1 \
    | tee "$OUT/backend_bench-$variant.txt"
done
echo "results in $OUT"
