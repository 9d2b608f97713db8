"""ONNX export of magma-tiny and the onnxruntime backend against PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from magma_ros.backends import BackendError, create_backend
from magma_ros.backends.compiled import ExportedPolicy
from magma_ros.backends.onnxruntime_backend import OrtRunner
from magma_ros.backends.options import BackendOptions
from magma_ros.backends.parity import COSINE_MIN, check_parity, cosine, torch_reference
from magma_ros.export.layout import GRAPHS, Manifest, graph_file, graph_specs

WORDS = ("pick", "up", "the", "red", "blue", "block", "cube", "put", "carrot", "on", "plate", "open", "drawer",
         "move", "sponge", "left", "right", "can", "close", "towel", "into", "basket")


def _dims(value: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    return tuple(d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim)


def test_graphs_have_the_documented_inputs_outputs_and_dynamic_axes(tiny_export: Path) -> None:
    manifest = Manifest.read(tiny_export)
    specs = graph_specs(manifest.dims, manifest.dtype)
    for name in GRAPHS:
        proto = onnx.load(str(tiny_export / graph_file(name)), load_external_data=False)
        assert proto.opset_import[0].version >= 17
        spec = specs[name]
        assert [i.name for i in proto.graph.input] == [t.name for t in spec.inputs]
        assert [o.name for o in proto.graph.output] == [t.name for t in spec.outputs]
        for value, t in zip([*proto.graph.input, *proto.graph.output], [*spec.inputs, *spec.outputs], strict=True):
            got = _dims(value)
            assert len(got) == len(t.shape), (name, t.name, got)
            for g, want in zip(got, t.shape, strict=True):
                assert isinstance(g, str) if isinstance(want, str) else g == want, (name, t.name, got, t.shape)
        # weights live in external data, not in the graph file
        external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        assert external, name
    # the action head is 256 rows, decode never holds the full vocabulary head
    assert specs["decode"].outputs[0].shape == (1, 256)
    decode = onnx.load(str(tiny_export / "decode.onnx"), load_external_data=False)
    vocab = manifest.dims.vocab_size
    assert not any(vocab in tuple(t.dims) for t in decode.graph.initializer)
    # prefill and decode share one weights file, stored once
    lm_params = manifest.dims.language_params - 2 * vocab * manifest.dims.hidden_size
    size = (tiny_export / "language.onnx.data").stat().st_size
    assert size < 1.5 * 4 * (lm_params + 256 * manifest.dims.hidden_size)


@pytest.mark.slow
def test_onnxruntime_matches_torch_on_50_random_images_and_instructions(tiny_pair, tiny_export: Path) -> None:
    _, reference = tiny_pair
    policy = ExportedPolicy(tiny_export, OrtRunner(tiny_export, Manifest.read(tiny_export), BackendOptions()))
    rng = np.random.default_rng(123)
    worst = 1.0
    for i in range(50):
        h, w = int(rng.integers(32, 300)), int(rng.integers(32, 300))
        frame = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        instruction = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 9))))
        ids, logits = torch_reference(reference, frame, instruction)
        step = policy.predict_action(frame, instruction)
        assert step.token_ids == ids, (i, instruction)
        worst = min(worst, *(cosine(a, b) for a, b in zip(step.logits, logits, strict=True)))
    assert worst >= COSINE_MIN


def test_backend_parity_check_and_free_text(tiny_pair, tiny_export: Path) -> None:
    backend = create_backend("onnxruntime", str(tiny_export), options=BackendOptions(verify_backend=True))
    report = check_parity(backend, tiny_pair[0], probes=2, reference=tiny_pair[1])
    assert report.passed and report.probes == 2, report.summary()
    # the full head answers free text exactly as torch does (greedy)
    frame = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ids, finished, _ = backend.policy.generate_text(frame, "What is in the image?", max_new_tokens=12)
    ref = tiny_pair[1].generate_text(frame, "What is in the image?", max_new_tokens=12)
    assert ids == ref.token_ids and finished == ref.finished
    out = backend.act(frame, "pick up the can")
    assert out.valid and len(out.token_ids) == 7 and out.timings.prefill_ms > 0
    backend.close()


@pytest.mark.slow
def test_a_broken_backend_fails_the_parity_check(tiny_pair, tiny_export: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_export, broken)
    embed = np.load(broken / "embed_tokens.npy")
    np.save(broken / "embed_tokens.npy", embed[:, ::-1].copy())   # wrong embeddings: different logits
    backend = create_backend("onnxruntime", str(broken))
    report = check_parity(backend, tiny_pair[0], probes=2, reference=tiny_pair[1])
    assert not report.passed and report.min_cosine < COSINE_MIN
    with pytest.raises(BackendError, match="parity check"):
        create_backend("onnxruntime", str(broken), options=BackendOptions(verify_backend=True))


def test_a_checkpoint_with_an_action_region_exports_and_matches_torch(tmp_path: Path) -> None:
    """The wrist-inset region is a second image in the action prompt, in ONNX Runtime as in PyTorch."""
    from magma_ros.model import MagmaPolicy, PreprocessorConfig, build_tiny_model, save_checkpoint
    from magma_ros.sim.config import INSET_REGION

    model, tokenizer = build_tiny_model("magma-tiny", seed=1)
    pre = PreprocessorConfig(base_img_size=model.config.vision.img_size, action_regions=(INSET_REGION,))
    checkpoint = save_checkpoint(model, tokenizer, tmp_path / "ckpt", preprocessor=pre)
    from magma_ros.export.onnx_export import export_checkpoint

    manifest = export_checkpoint(checkpoint, tmp_path / "onnx")
    assert manifest.dims.action_regions == 1 and Manifest.read(tmp_path / "onnx").dims.action_regions == 1
    reference = MagmaPolicy.from_pretrained(checkpoint, dtype="float32")
    backend = create_backend("onnxruntime", str(tmp_path / "onnx"))
    assert backend.policy.action_regions == (INSET_REGION,)
    report = check_parity(backend, checkpoint, probes=3, reference=reference)
    assert report.passed and report.probes == 3, report.summary()
    # the region really is a second image: the same frame without it answers differently somewhere
    frame = np.random.default_rng(5).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    with_region = backend.policy.predict_action(frame, "pick up the red cube")
    backend.policy.image_processor.config = PreprocessorConfig(base_img_size=model.config.vision.img_size)
    without = backend.policy.predict_action(frame, "pick up the red cube")
    assert not np.allclose(with_region.logits, without.logits, atol=1e-4)
    backend.close()


def test_stale_exports_are_redone_and_bad_directories_named(tiny_pair, tmp_path: Path) -> None:
    from magma_ros.backends.exports import resolve_export

    checkpoint = tiny_pair[0]
    out = tmp_path / "cache"
    first, manifest = resolve_export(checkpoint, BackendOptions(export_dir=str(out)), quiet=True)
    mtime = (first / "prefill.onnx").stat().st_mtime_ns
    again, _ = resolve_export(checkpoint, BackendOptions(export_dir=str(out)), quiet=True)
    assert again == first and (first / "prefill.onnx").stat().st_mtime_ns == mtime   # reused
    stale = manifest.to_json().replace(manifest.fingerprint, "0" * 16)
    (first / "export.json").write_text(stale)
    redone, fresh = resolve_export(checkpoint, BackendOptions(export_dir=str(out)), quiet=True)
    assert fresh.fingerprint == manifest.fingerprint and (redone / "prefill.onnx").stat().st_mtime_ns != mtime
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(BackendError, match="holds other files and no export"):
        resolve_export(checkpoint, BackendOptions(export_dir=str(precious)), quiet=True)
    assert (precious / "notes.txt").read_text() == "keep me"
    with pytest.raises(BackendError, match="neither a checkpoint"):
        resolve_export(tmp_path, BackendOptions(), quiet=True)


def test_export_cli(tiny_pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from magma_ros.cli import main

    assert main(["export", "--checkpoint", str(tiny_pair[0]), "--out", str(tmp_path / "x")]) == 0
    manifest = Manifest.read(tmp_path / "x")
    assert manifest.weights_included and manifest.opset >= 17 and manifest.dims.action_rows == 256
    assert all((tmp_path / "x" / f).is_file() for files in manifest.files.values() for f in files)
    assert main(["export", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "y")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("magma-ros export:") and "missing" in err[0]
