"""Attempt 3 of training/recipes/README.md: a seeing and a blind copy of a dataset's first reach episodes.

usage: python training/recipes/image_ablation_subsets.py DATASET OUT [--episodes 40]

Writes OUT/seeing/data (the episodes as they are) and OUT/blind/data (every frame replaced by one
grey PNG of the same size), both with DATASET's statistics, and prints how much the per-episode
mean step varies across episodes against how much a step varies within its episode.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--episodes", type=int, default=40)
    args = parser.parse_args(argv)
    meta = json.loads((args.dataset / "dataset.json").read_text())
    keep = [e for e in meta["episodes"] if e["metadata"].get("task") == "reach"][:args.episodes]
    size = int(meta["spec"]["image"]["size"])
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (128, 128, 128)).save(buffer, format="PNG")
    grey = buffer.getvalue()
    for name, blind in (("seeing", False), ("blind", True)):
        out = args.out / name / "data"
        if out.exists():
            shutil.rmtree(out)
        (out / "episodes").mkdir(parents=True)
        shutil.copy(args.dataset / "dataset_statistics.json", out / "dataset_statistics.json")
        for entry in keep:
            source = args.dataset / entry["file"]
            if blind:
                table = pq.read_table(source)
                column = table.schema.get_field_index("image")
                table = table.set_column(column, "image", pa.array([grey] * table.num_rows, type=pa.binary()))
                pq.write_table(table.replace_schema_metadata(pq.read_schema(source).metadata), out / entry["file"])
            else:
                shutil.copy(source, out / entry["file"])
        (out / "dataset.json").write_text(json.dumps({**meta, "episodes": keep}))
    actions = [np.stack(pq.read_table(args.dataset / e["file"]).column("action").to_pylist()) for e in keep]
    across = np.stack([a.mean(0) for a in actions]).std(0)[:3] * 1e3
    within = np.mean([a.std(0) for a in actions], 0)[:3] * 1e3
    print(f"{len(keep)} reach episodes -> {args.out}/seeing, {args.out}/blind")
    print(f"per-episode mean step, std across episodes (dx dy dz, mm): {np.round(across, 2)}")
    print(f"step std within an episode (mean over episodes, mm):     {np.round(within, 2)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
