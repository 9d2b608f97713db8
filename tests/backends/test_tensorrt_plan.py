"""The TensorRT path's CPU-testable parts: profiles from the model config, binding shapes,
precision selection, engine cache keys and invalidation, and a clear configure-time error
when tensorrt is selected without a GPU."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest

from magma_ros.backends import BackendError, create_backend
from magma_ros.backends.options import BackendOptions
from magma_ros.export.layout import DECODE, HEAD, PREFILL, VISION, Manifest, ModelDims, graph_specs, kv_names
from magma_ros.export.tensorrt import (
    TensorRTPlanError,
    binding_shapes,
    check_within_profile,
    choose_engine,
    ort_trt_provider_options,
    profile_shapes,
    select_precision,
    sequence_bounds,
    write_key,
)

# Magma-8B's dimensions (LLaMA-3-8B + ConvNeXt-XXLarge at 512 px, up to 4 crops)
MAGMA_8B = ModelDims(hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
                     intermediate_size=14336, vocab_size=128256, action_lo=127744, action_hi=127999, crop_size=512,
                     grid=16, num_crops=4, max_positions=8192, image_token_index=128257, row_separator=True,
                     use_im_start_end=False)


def test_profiles_come_from_the_model_config() -> None:
    # one 512 crop = 16 * 17 = 272 positions; of the 4-crop layouts 4 rows x 1 column is the longest
    assert MAGMA_8B.image_tokens(1, 1) == 272 and MAGMA_8B.image_tokens(2, 2) == 1056
    assert MAGMA_8B.max_image_tokens == MAGMA_8B.image_tokens(4, 1) == 1088
    lo, opt, hi = sequence_bounds(MAGMA_8B)
    assert (lo, hi) == (1, 1088 + 128) and lo <= opt <= hi and opt >= 272
    vision = profile_shapes(MAGMA_8B, VISION).shapes["pixel_values"]
    assert vision == ((1, 3, 512, 512), (1, 3, 512, 512), (4, 3, 512, 512))
    assert profile_shapes(MAGMA_8B, VISION, max_crops=1).shapes["pixel_values"][2] == (1, 3, 512, 512)
    prefill = profile_shapes(MAGMA_8B, PREFILL).shapes
    assert prefill == {"inputs_embeds": ((1, 1, 4096), (1, opt, 4096), (1, hi, 4096))}
    decode = profile_shapes(MAGMA_8B, DECODE).shapes
    assert set(decode) == {"inputs_embeds", *kv_names("past", 32)} and len(decode) == 65
    assert decode["past.31.value"] == ((1, 8, 1, 128), (1, 8, opt + 3, 128), (1, 8, hi + 384, 128))
    # every dynamic input of every graph has a profile, and nothing else
    specs = graph_specs(MAGMA_8B)
    for graph in (VISION, PREFILL, DECODE):
        assert set(profile_shapes(MAGMA_8B, graph).shapes) == {t.name for t in specs[graph].inputs}
    # a small model's max positions cap the sequence
    short = dataclasses.replace(MAGMA_8B, max_positions=600)
    assert sequence_bounds(short)[2] == 600 and profile_shapes(short, DECODE).shapes["past.0.key"][2][2] == 599
    # an action region (a second image in the action prompt) doubles the image positions to plan for
    two = dataclasses.replace(MAGMA_8B, action_regions=1)
    _, opt2, hi2 = sequence_bounds(two)
    assert hi2 == 2 * 1088 + 128 and opt2 >= 2 * 272 and opt2 > opt
    with pytest.raises(TensorRTPlanError):
        profile_shapes(MAGMA_8B, "nope")


def test_binding_shapes_match_the_documented_graph_io() -> None:
    specs = graph_specs(MAGMA_8B)
    for graph, sizes in ((VISION, {"crops": 3}), (PREFILL, {"seq": 300}), (DECODE, {"past": 300})):
        shapes = binding_shapes(MAGMA_8B, graph, **sizes)
        assert set(shapes) == {t.name for t in (*specs[graph].inputs, *specs[graph].outputs)}
        for t in (*specs[graph].inputs, *specs[graph].outputs):   # fixed dims agree with the spec
            assert len(shapes[t.name]) == len(t.shape)
            assert all(isinstance(d, str) or d == s for d, s in zip(t.shape, shapes[t.name], strict=True)), t
    assert binding_shapes(MAGMA_8B, VISION, crops=3)["image_features"] == (3, 16, 16, 4096)
    assert binding_shapes(MAGMA_8B, DECODE, past=300)["present.0.key"] == (1, 8, 301, 128)
    assert binding_shapes(MAGMA_8B, DECODE, past=300)["action_logits"] == (1, 256)
    assert binding_shapes(MAGMA_8B, HEAD, seq=2)["logits"] == (2, 128256)
    profile = profile_shapes(MAGMA_8B, PREFILL)
    check_within_profile(profile, binding_shapes(MAGMA_8B, PREFILL, seq=1216))
    with pytest.raises(TensorRTPlanError, match="outside the engine profile"):
        check_within_profile(profile, binding_shapes(MAGMA_8B, PREFILL, seq=1217))


def test_precision_selection() -> None:
    assert select_precision("", "10.13.0", (9, 0)).name == "fp16"
    assert select_precision("bf16", "10.13.0", (8, 7)).export_dtype == "bfloat16"   # Jetson Orin
    assert select_precision("int4", "10.13.0", (8, 9)).weight_quantization == "int4"
    assert select_precision("int8", "11.0", (7, 5)).weight_quantization == "int8"
    with pytest.raises(TensorRTPlanError, match=r"compute capability >= 8\.0"):
        select_precision("bf16", "10.13.0", (7, 5))
    with pytest.raises(TensorRTPlanError, match=r"TensorRT >= 10\.0"):
        select_precision("fp16", "8.6.1", (8, 6))
    with pytest.raises(TensorRTPlanError, match="unknown precision"):
        select_precision("fp8x", "10.13.0", (9, 0))


def _choose(export: Path, manifest: Manifest, cache: Path, **overrides: object):
    args = dict(cache_dir=cache, trt_version="10.13.0", gpu_name="NVIDIA H200", compute_capability=(9, 0),
                precision="fp16")
    args.update(overrides)
    return choose_engine(export, manifest, PREFILL, **args)  # type: ignore[arg-type]


def test_engine_cache_keys_and_invalidation(tiny_export: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    manifest = Manifest.read(export)
    cache = tmp_path / "engines"
    first = _choose(export, manifest, cache)
    assert first.build and first.reason == "no cached engine" and first.path.parent == cache
    assert "prefill-fp16-trt10.13.0-nvidia-h200-" in first.path.name
    cache.mkdir()
    first.path.write_bytes(b"engine")   # what build_engine leaves: the engine and its key
    write_key(first)
    again = _choose(export, manifest, cache)
    assert not again.build and again.path == first.path and again.reason == "cached"
    assert _choose(export, manifest, cache, force_update=True).build
    # another TensorRT, GPU or precision: another file; the cached one is never loaded for it
    for change in (dict(trt_version="10.14.1"), dict(gpu_name="Orin"), dict(compute_capability=(8, 7)),
                   dict(precision="fp32")):
        other = _choose(export, manifest, cache, **change)
        assert other.build and other.path != first.path, change
    # new weights (same graph file): the key changes
    data = export / "language.onnx.data"
    blob = bytearray(data.read_bytes())
    blob[-1] ^= 0xFF
    data.write_bytes(bytes(blob))
    changed = _choose(export, manifest, cache)
    assert changed.build and changed.key.onnx_sha256 != first.key.onnx_sha256
    # an explicit engine_file_path: its key file decides; a mismatch rebuilds instead of loading
    fixed = tmp_path / "my.engine"
    fixed.write_bytes(b"engine")
    stamp = Path(str(fixed) + ".key.json")
    stamp.write_text(json.dumps(dataclasses.asdict(first.key)))
    stale = _choose(export, manifest, cache, engine_file_path=str(fixed))
    assert stale.build and stale.path == fixed and "onnx_sha256" in stale.reason
    write_key(stale)
    assert not _choose(export, manifest, cache, engine_file_path=str(fixed)).build
    stamp.write_text("{not json")
    assert _choose(export, manifest, cache, engine_file_path=str(fixed)).build


def test_ort_tensorrt_provider_options_enable_the_engine_cache(tiny_export: Path, tmp_path: Path) -> None:
    manifest = Manifest.read(tiny_export)
    opts = ort_trt_provider_options(manifest, DECODE, tmp_path, device_id=1, precision="fp16")
    assert opts["trt_engine_cache_enable"] == "True" and opts["trt_engine_cache_path"] == str(tmp_path)
    assert opts["trt_fp16_enable"] == "True" and opts["device_id"] == "1"
    d = manifest.dims
    assert f"past.0.key:1x{d.num_kv_heads}x1x{d.head_dim}" in opts["trt_profile_min_shapes"]
    assert opts["trt_profile_max_shapes"].count("past.") == 2 * d.num_layers


def test_tensorrt_without_a_gpu_fails_at_configure(tiny_pair) -> None:
    checkpoint = str(tiny_pair[0])
    with pytest.raises(BackendError, match="runs on an NVIDIA GPU but device is 'cpu'"):
        create_backend("tensorrt", checkpoint, device="cpu")
    import torch

    if torch.cuda.is_available():  # pragma: no cover - GPU machines run bench/gpu_check.sh instead
        pytest.skip("this machine has a GPU")
    with pytest.raises(BackendError, match="needs an NVIDIA GPU, and none is visible"):
        create_backend("tensorrt", checkpoint, device="cuda:0")


def test_onnxruntime_gpu_providers_missing_fail_with_install_hint(tiny_pair, tiny_export: Path) -> None:
    import onnxruntime

    for provider, name in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        if name in onnxruntime.get_available_providers():  # pragma: no cover
            continue
        with pytest.raises(BackendError, match=f"no {name}.*onnxruntime-gpu"):
            create_backend("onnxruntime", str(tiny_export), device="cuda:0",
                           options=BackendOptions(execution_provider=provider))
    with pytest.raises(BackendError, match="contradicts"):
        create_backend("onnxruntime", str(tiny_export), device="cuda:0",
                       options=BackendOptions(execution_provider="cpu"))
    with pytest.raises(BackendError, match="execution_provider must be"):
        BackendOptions(execution_provider="rocm")
    assert os.environ.get("CUDA_VISIBLE_DEVICES", "") != "x"
