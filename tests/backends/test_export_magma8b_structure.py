"""Magma-8B-sized graphs export structurally (meta device, no weights) within 4 GB of host RAM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

CHILD = r'''
import json, sys
from pathlib import Path
import torch
from magma_ros.export.onnx_export import export_model
from magma_ros.model.config import MagmaConfig, PreprocessorConfig
from magma_ros.model.fixtures import write_magma8b_layout_fixture
from magma_ros.model.modeling import MagmaForCausalLM
from magma_ros.model.vision import ConvNeXtSpec

out, graphs = Path(sys.argv[1]), tuple(sys.argv[2].split(","))
fx = write_magma8b_layout_fixture(out / "fixture")
cfg = json.loads((fx.directory / "config.json").read_text())
big = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
           num_key_value_heads=8, vocab_size=128256)
cfg.update(big, img_size=512, mm_hidden_size=3072)
cfg["text_config"].update(big)
cfg["vision_config"].update(img_size=512, mm_hidden_size=3072)
config = MagmaConfig.from_dict(cfg).with_token_ids(fx.tokenizer.bos_id, fx.tokenizer.eos_id, fx.tokenizer.pad_id)
with torch.device("meta"):
    model = MagmaForCausalLM(config, ConvNeXtSpec(depths=(3, 4, 30, 3), dims=(384, 768, 1536, 3072)))
export_model(model, fx.tokenizer, PreprocessorConfig(base_img_size=512, num_crops=4), out / "onnx", weights=False,
             graphs=graphs)
peak = [int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmHWM:")][0] * 1024
print(json.dumps({"peak_bytes": peak}))
'''


@pytest.mark.slow
def test_magma8b_layout_exports_structurally_within_4gb(tmp_path: Path) -> None:
    """The Magma-8B layout fixture's config at Magma-8B's sizes (LLaMA-3-8B, ConvNeXt-XXLarge at 512 px)."""
    # decode: every KV-cache input and output of the 32 layers (prefill's I/O is a subset of it)
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), "decode"], capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    peak = json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"]
    assert peak < 4 * 2**30, f"peak host memory {peak / 2**30:.2f} GiB"
    manifest = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert manifest["weights_included"] is False and manifest["dims"]["num_layers"] == 32
    for graph, cache_axis in (("decode", "past_plus_1"),):
        proto = onnx.load(str(tmp_path / "onnx" / f"{graph}.onnx"), load_external_data=False)
        outputs = {o.name: tuple(d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim)
                   for o in proto.graph.output}
        assert list(outputs)[:2] == ["action_logits", "hidden"] and len(outputs) == 2 + 64
        assert outputs["action_logits"] == (1, 256) and outputs["hidden"] == (1, 4096)
        assert outputs["present.31.value"][:2] == (1, 8) and outputs["present.31.value"][3] == 128
        assert isinstance(outputs["present.31.value"][2], str), cache_axis
        inputs = {i.name: tuple(d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim)
                  for i in proto.graph.input}
        if graph == "decode":
            assert len(inputs) == 65 and inputs["inputs_embeds"] == (1, 1, 4096)
            assert inputs["past.0.key"][:2] == (1, 8) and inputs["past.0.key"][3] == 128
        else:
            assert list(inputs) == ["inputs_embeds"] and inputs["inputs_embeds"][2] == 4096
