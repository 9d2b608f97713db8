"""`magma-ros predict` on the tiny checkpoint (the parser is built here: the lead adds
"predict" to magma_ros.cli.SUBCOMMANDS)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from PIL import Image

from magma_ros.cli import predict


def _run(argv):
    parser = argparse.ArgumentParser(prog="magma-ros")
    predict.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["predict", *argv])
    return args.func(args)


@pytest.fixture()
def image_path(tmp_path):
    path = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(path)
    return path


def test_predict_action_and_traces(tiny_dir, image_path, tmp_path, capsys):
    out = tmp_path / "drawn.png"
    code = _run(["--checkpoint", str(tiny_dir), "--image", str(image_path), "--instruction", "open the drawer",
                 "--traces", "--max-new-tokens", "16", "--out", str(out), "--stats", "google_robot"])
    text = capsys.readouterr().out
    assert code == 0
    assert "action tokens:" in text and "statistics: google_robot" in text and "gripper:" in text
    assert "trace answer" in text and "timings ms:" in text
    assert np.asarray(Image.open(out)).shape == (240, 320, 3)


@pytest.mark.parametrize(("argv", "code", "fragment"), [
    (["--image", "missing.png"], 1, "missing.png"),
    (["--mark-grid", "three"], 2, "--mark-grid"),
    (["--stats", "nope"], 1, "nope"),
])
def test_predict_errors(tiny_dir, image_path, capsys, argv, code, fragment):
    base = {"--checkpoint": str(tiny_dir), "--image": str(image_path), "--instruction": "lift the lid"}
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        base[flag] = value
    assert _run([x for kv in base.items() for x in kv]) == code
    assert fragment in capsys.readouterr().err


def test_predict_bad_checkpoint(tmp_path, image_path, capsys):
    assert _run(["--checkpoint", str(tmp_path), "--image", str(image_path), "--instruction", "x"]) == 1
    assert "config.json" in capsys.readouterr().err
