"""Reproducibility check of training/recipes/default_model.sh: compare two of its output directories.

    .venv/bin/python training/recipes/compare_runs.py RUN_A RUN_B [--losses N]

Datasets: every episode both runs built is hashed over its content (frames as stored, actions,
states, stamps, instruction; not the file's metadata, which names the source path) and the
Trace-of-Mark labels likewise. Training: the first N logged training losses (metrics.jsonl) are
compared exactly. Prints what matched and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq


def content_hash(path: Path) -> str:
    """sha256 over every column's values (not the schema metadata)."""
    table = pq.read_table(path)
    digest = hashlib.sha256()
    for name in sorted(table.column_names):
        digest.update(name.encode())
        for value in table.column(name).to_pylist():
            digest.update(value if isinstance(value, bytes) else json.dumps(value, sort_keys=True).encode())
    return digest.hexdigest()


def hashes(directory: Path) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): content_hash(p)
            for sub in ("episodes", "traces") for p in sorted((directory / sub).glob("*.parquet"))}


def losses(run: Path, n: int) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return [(r["step"], r["loss"]) for r in rows if r.get("kind") == "train"][:n]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--losses", type=int, default=30, help="logged losses to compare (every log_every steps)")
    args = parser.parse_args(argv)
    ok = True
    a, b = hashes(args.run_a / "data"), hashes(args.run_b / "data")
    common = sorted(set(a) & set(b))
    same = [k for k in common if a[k] == b[k]]
    print(f"dataset files in both runs: {len(common)}; identical content: {len(same)}")
    for key in common:
        if a[key] != b[key]:
            ok = False
            print(f"  DIFFERENT {key}: {a[key][:16]} vs {b[key][:16]}")
    if common:
        print(f"  e.g. {common[0]}: {a[common[0]][:16]}")
    if (args.run_a / "run" / "metrics.jsonl").is_file() and (args.run_b / "run" / "metrics.jsonl").is_file():
        la, lb = losses(args.run_a / "run", args.losses), losses(args.run_b / "run", args.losses)
        n = min(len(la), len(lb))
        equal = sum(x == y for x, y in zip(la[:n], lb[:n], strict=True))
        print(f"training losses compared: {n} (steps {la[0][0] if n else '-'}..{la[n - 1][0] if n else '-'}); "
              f"bit-identical: {equal}")
        for x, y in zip(la[:n], lb[:n], strict=True):
            if x != y:
                ok = False
                print(f"  step {x[0]}: {x[1]!r} vs {y[1]!r}")
    print("REPRODUCED" if ok else "DIFFERENCES FOUND")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
