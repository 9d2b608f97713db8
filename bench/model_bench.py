"""Model-core benchmark: per-stage latency of the tiny Magma on CPU, our action path vs
transformers ``generate()``, and (``--memory``) peak host memory while loading.

    .venv/bin/python bench/model_bench.py               # latency tables
    .venv/bin/python bench/model_bench.py --memory      # + loading peak-RSS measurement

Latency: medians over ``--repeats`` runs after warm-up, one 256x256 RGB frame. The full
action step is preprocess + vision + prefill + 7 action tokens, both ways: ours
(:meth:`MagmaPolicy.predict_action`) and the same model driven through
``LlamaForCausalLM.generate(inputs_embeds=...)`` with a logits processor that masks all
but the action range (same 7 tokens; checked). Memory: a checkpoint of a few GB is written
once to a temporary directory, then loaded in fresh subprocesses by our loader and by a
naive load (materialized model + full state dict), reporting each one's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from magma_ros.model import (  # noqa: E402
    MagmaPolicy,
    PreprocessorConfig,
    build_tiny_model,
    robot_action_query,
)
from magma_ros.model.fixtures import write_large_checkpoint  # noqa: E402

INSTRUCTION = "pick up the coke can"


def _median_ms(fn, repeats: int, warmup: int) -> tuple[float, object]:
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


def _hf_action_step(policy: MagmaPolicy, frame: np.ndarray) -> tuple[int, ...]:
    """The same action step driven through transformers generate() with a masking processor."""
    from transformers import LogitsProcessor, LogitsProcessorList

    rng = policy.action_token_range

    class ActionRangeOnly(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            out = torch.full_like(scores, float("-inf"))
            out[:, rng.lo: rng.hi + 1] = scores[:, rng.lo: rng.hi + 1]
            return out

    prepared = policy.prepare_inputs(frame, robot_action_query(INSTRUCTION), frame_size=policy.action_frame_size)
    with torch.inference_mode():
        out = policy.model.language_model.generate(
            inputs_embeds=prepared.inputs_embeds, max_new_tokens=7, min_new_tokens=7, do_sample=False,
            logits_processor=LogitsProcessorList([ActionRangeOnly()]), pad_token_id=policy.tokenizer.pad_id,
            eos_token_id=None,
        )
    return tuple(out[0, -7:].tolist())


def latency(variant: str, repeats: int, warmup: int) -> dict[str, float]:
    """Per-stage medians and ours-vs-generate() full-step medians for one tiny variant."""
    model, tokenizer = build_tiny_model(variant)
    policy = MagmaPolicy(model, tokenizer, PreprocessorConfig(base_img_size=model.config.vision.img_size))
    frame = np.random.default_rng(0).integers(0, 256, size=(256, 256, 3), dtype=np.uint8)

    steps = []
    for i in range(warmup + repeats):
        step = policy.predict_action(frame, INSTRUCTION)
        if i >= warmup:
            steps.append(step)
    med = {k: statistics.median(getattr(s.timings, k) for s in steps)
           for k in ("preprocess_ms", "vision_ms", "prefill_ms", "decode_ms_per_token")}
    # interleave ours and generate() so drift (other load on the machine) hits both alike
    ours_t, hf_t = [], []
    ours_ids = hf_ids = None
    for i in range(warmup + repeats):
        for which in ((0, 1) if i % 2 else (1, 0)):  # alternate who goes first
            t0 = time.perf_counter()
            if which == 0:
                ours_ids = policy.predict_action(frame, INSTRUCTION).token_ids
            else:
                hf_ids = _hf_action_step(policy, frame)
            elapsed = (time.perf_counter() - t0) * 1e3
            if i >= warmup:
                (ours_t if which == 0 else hf_t).append(elapsed)
    if ours_ids != hf_ids:
        raise SystemExit(f"[{variant}] token mismatch: ours {ours_ids} vs generate() {hf_ids}")
    prompt_len = len(policy.prompt_builder.action_prompt(INSTRUCTION))
    processed = policy.image_processor(frame)
    return {
        **med,
        "seq_len": prompt_len - 1 + processed.num_tokens,
        "ours_ms": statistics.median(ours_t),
        "generate_ms": statistics.median(hf_t),
    }


def print_latency(results: dict[str, dict[str, float]], repeats: int) -> None:
    print(f"\n## Model core latency, CPU ({torch.get_num_threads()} threads), median of {repeats}, 256x256 frame")
    print("| variant | seq len | preprocess ms | vision ms | prefill ms | decode ms/token | action step ms |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        step = r["preprocess_ms"] + r["vision_ms"] + r["prefill_ms"] + 6 * r["decode_ms_per_token"]
        print(f"| {name} | {int(r['seq_len'])} | {r['preprocess_ms']:.2f} | {r['vision_ms']:.2f} | "
              f"{r['prefill_ms']:.2f} | {r['decode_ms_per_token']:.2f} | {step:.2f} |")
    print("\n## Full action step (preprocess + vision + prefill + 7 tokens): ours vs transformers generate()")
    print("| variant | ours ms | generate() ms | generate/ours | same 7 tokens |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['ours_ms']:.2f} | {r['generate_ms']:.2f} | "
              f"{r['generate_ms'] / r['ours_ms']:.2f}x | yes |")


# -- loading memory ------------------------------------------------------------------------
def _rss_gb(field: str) -> float:
    """VmRSS (current) or VmHWM (peak) of this process in GB. Unlike ru_maxrss, VmHWM
    belongs to the current address space, so a parent's peak does not leak in via fork."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _measure_child(mode: str, directory: str) -> None:
    """Runs in a fresh process: load one way, print JSON with baseline and peak RSS (GB)."""
    import magma_ros.model.loading as loading  # noqa: F401  (imports counted in the baseline)
    from magma_ros.model.modeling import MagmaForCausalLM

    base = _rss_gb("VmRSS")
    t0 = time.perf_counter()
    if mode == "ours":
        from magma_ros.model import load_checkpoint

        loaded = load_checkpoint(directory, dtype="fp32")
        n = sum(p.numel() for p in loaded.model.parameters())
    else:  # naive: materialized random-init model + full state dict, then load_state_dict
        from safetensors.torch import load_file

        from magma_ros.model import MagmaConfig
        from magma_ros.model.safetensors_reader import SafetensorsFile
        from magma_ros.model.vision import infer_convnext_spec

        d = Path(directory)
        config = MagmaConfig.from_file(d / "config.json")
        files = sorted(d.glob("model-*.safetensors"))
        shapes = {}
        for f in files:
            shapes.update(SafetensorsFile.open(f).shapes())
        model = MagmaForCausalLM(config, infer_convnext_spec(shapes, "convnextxxlarge").spec)
        state = {}
        for f in files:
            state.update(load_file(str(f)))
        model.load_state_dict(state, strict=True)
        n = sum(p.numel() for p in model.parameters())
    seconds = time.perf_counter() - t0
    peak = _rss_gb("VmHWM")
    print(json.dumps({"mode": mode, "baseline_gb": base, "peak_gb": peak, "params": n, "seconds": seconds}))


def memory(target_gb: float) -> None:
    with tempfile.TemporaryDirectory(prefix="magma_mem_") as tmp:
        directory = Path(tmp)
        t0 = time.perf_counter()
        weights_gb = write_large_checkpoint(directory, target_gb) / 1e9
        print(f"\n## Loading peak host memory (checkpoint {weights_gb:.2f} GB fp32 in 4 shards, "
              f"written in {time.perf_counter() - t0:.0f} s)")
        print("| loader | peak RSS GB | RSS above imports GB | x weights | load s |")
        print("|---|---|---|---|---|")
        for mode in ("ours", "naive"):
            out = subprocess.run([sys.executable, __file__, "--_child", mode, str(directory)],
                                 check=True, capture_output=True, text=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            above = r["peak_gb"] - r["baseline_gb"]
            print(f"| {mode} | {r['peak_gb']:.2f} | {above:.2f} | {above / weights_gb:.2f} | {r['seconds']:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["magma-tiny", "magma-tiny-512"])
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="also measure loading peak RSS (writes a few GB)")
    parser.add_argument("--memory-gb", type=float, default=3.0, help="checkpoint size for --memory")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 is steadier on a busy machine")
    parser.add_argument("--_child", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        _measure_child(*args._child)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {v: latency(v, args.repeats, args.warmup) for v in args.variants}
    print_latency(results, args.repeats)
    slower = [v for v, r in results.items() if r["ours_ms"] > r["generate_ms"]]
    if args.memory:
        memory(args.memory_gb)
    if slower:
        print(f"\nWARNING: our action path is slower than generate() for {', '.join(slower)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
