"""``magma-ros dataset build``: many recordings -> one dataset directory, resumably.

:func:`build_dataset` finds the bags (a bag directory or storage file, or a folder of them),
turns each into an episode (:func:`magma_ros.training.episodes.read_episode`) and writes it
(:func:`magma_ros.training.dataset.write_episode_file`), in ``workers`` processes. An episode
already in the output (same id, same source bag) is skipped, so a re-run after an interruption
finishes the job and a re-run of a finished build is a no-op. A bag that cannot become an
episode (truncated, corrupt, lacking a topic...) is reported in one line and skipped; the
summary lists every skipped bag with its reason and counts the steps dropped by reason. The
statistics are recomputed over every episode of the dataset at the end. ROS-free.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import multiprocessing.context
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magma_ros.training.dataset import DatasetWriter, EpisodeEntry, write_episode_file
from magma_ros.training.episodes import EpisodeError, episode_id_for, find_bags, read_episode
from magma_ros.training.progress import progress_bar
from magma_ros.training.records import STATISTICS_FILE, DatasetError
from magma_ros.training.spec import DatasetSpec

__all__ = ["BuildSummary", "build_dataset"]

FORK_UNSAFE_MODULES = ("rclpy", "onnxruntime")
"""Once imported, the builder starts its workers from a fork server instead of forking this process."""


@dataclass
class BuildSummary:
    """What one build run did."""

    out: Path
    written: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (bag, one-line reason)
    steps: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    total_episodes: int = 0
    total_steps: int = 0

    @property
    def frames_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"written": self.written, "already_done": self.already_done,
                "skipped": [{"bag": b, "reason": r} for b, r in self.skipped], "steps": self.steps,
                "dropped": dict(self.dropped), "warnings": self.warnings, "seconds": round(self.seconds, 3),
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def lines(self) -> list[str]:
        out = [f"{len(self.written)} episode(s) written ({self.steps} steps, {self.seconds:.1f} s, "
               f"{self.frames_per_second:.0f} frames/s), {len(self.already_done)} already in the dataset, "
               f"{len(self.skipped)} skipped"]
        out += [f"  skipped {bag}: {reason}" for bag, reason in self.skipped]
        if self.dropped:
            out.append("  steps dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())))
        out.append(f"dataset {self.out}: {self.total_episodes} episode(s), {self.total_steps} steps")
        return out


@dataclass(frozen=True)
class _Job:
    bag: str
    episode_id: str
    spec: DatasetSpec
    out: str
    keep_damaged: bool


@dataclass(frozen=True)
class _Outcome:
    job: _Job
    entry: EpisodeEntry | None
    reason: str = ""
    dropped: dict[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def _run(job: _Job) -> _Outcome:
    """Read one bag and write its episode file (in a worker process or inline)."""
    try:
        episode = read_episode(job.bag, job.spec, job.episode_id, keep_damaged=job.keep_damaged)
        metadata = {**episode.metadata.to_dict(), "dropped": dict(episode.dropped),
                    "warnings": list(episode.warnings)}
        entry = write_episode_file(job.out, job.episode_id, stamps_ns=episode.stamps_ns.tolist(),
                                   images=episode.images, actions=episode.actions, states=episode.states,
                                   instructions=episode.instructions, metadata=metadata, source=job.bag,
                                   image_format=job.spec.image.format, jpeg_quality=job.spec.image.jpeg_quality)
        return _Outcome(job, entry, dropped=dict(episode.dropped), warnings=tuple(episode.warnings))
    except EpisodeError as err:
        return _Outcome(job, None, " ".join(str(err).split()))
    except DatasetError as err:
        return _Outcome(job, None, f"{job.bag}: {' '.join(str(err).split())}")
    except Exception as err:  # a bag that breaks a library in an unforeseen way: skip it, say so, go on
        return _Outcome(job, None, f"{job.bag}: unexpected {type(err).__name__}: {' '.join(str(err).split())}")


def _unique_id(bag: Path, taken: dict[str, str]) -> str:
    """The bag's episode id, disambiguated when another source already uses it."""
    source = str(bag.resolve())
    base = episode_id_for(bag)
    for candidate in (base, f"{episode_id_for(bag.parent)}_{base}",
                      f"{base}_{hashlib.sha1(source.encode()).hexdigest()[:8]}"):
        if taken.get(candidate, source) == source:
            return candidate
    raise DatasetError(f"cannot find a free episode id for {bag}")


def build_dataset(inputs: Sequence[str | Path], spec: DatasetSpec, out: str | Path, *, workers: int = 1,
                  keep_damaged: bool = False, progress: bool = True,
                  report: Callable[[str], None] = print) -> BuildSummary:
    """Build (or continue) the dataset at ``out`` from ``inputs``; see the module docstring."""
    started = time.perf_counter()
    if workers < 1:
        raise DatasetError(f"workers must be >= 1, got {workers}")
    bags = find_bags(list(inputs))
    writer = DatasetWriter(out, spec.name, spec=None, image_format=spec.image.format,
                           jpeg_quality=spec.image.jpeg_quality)
    previous = writer.recorded_spec
    if previous and previous != spec.as_dict():
        changed = sorted(k for k in {*previous, *spec.as_dict()} if previous.get(k) != spec.as_dict().get(k))
        raise DatasetError(f"{out} was built with a different spec (differs in: {', '.join(changed)}); "
                           "use another --out or the same spec")
    writer.spec = spec.as_dict()
    summary = BuildSummary(Path(out))
    taken = {eid: str(Path(e.source).resolve()) for eid, e in writer.entries.items()}
    jobs: list[_Job] = []
    order: list[str] = []
    for bag in bags:
        episode_id = _unique_id(bag, taken)
        taken[episode_id] = str(bag.resolve())
        order.append(episode_id)
        if writer.has_episode(episode_id):
            summary.already_done.append(episode_id)
            continue
        jobs.append(_Job(str(bag.resolve()), episode_id, spec, str(writer.root), keep_damaged))

    bar = progress_bar(len(jobs), progress, "episode", "dataset build")
    try:
        for outcome in _outcomes(jobs, workers):
            if outcome.entry is None:
                summary.skipped.append((outcome.job.bag, outcome.reason))
                report(f"skipped: {outcome.reason}")
            else:
                writer.add_entry(outcome.entry)
                summary.written.append(outcome.entry.episode_id)
                summary.steps += outcome.entry.steps
                summary.dropped.update(outcome.dropped)
                summary.warnings.extend(outcome.warnings)
            bar.update(1)
            bar.set_postfix(steps=summary.steps, skipped=len(summary.skipped))
    finally:
        bar.close()
    writer.order(order)
    entries = writer.entries
    if entries and (summary.written or not (writer.root / STATISTICS_FILE).is_file()):
        writer.write_statistics()
    summary.seconds = time.perf_counter() - started
    summary.total_episodes = len(entries)
    summary.total_steps = sum(e.steps for e in entries.values())
    if summary.written or summary.skipped:
        writer.record_build(summary.as_dict())
    return summary


def _outcomes(jobs: list[_Job], workers: int):  # type: ignore[no-untyped-def]
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            yield _run(job)
        return
    # import the heavy libraries once, before the workers fork, instead of once in every worker
    import cv2  # noqa: F401
    import PIL.Image  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    with ProcessPoolExecutor(max_workers=min(workers, len(jobs), os.cpu_count() or 1),
                             mp_context=_pool_context()) as pool:
        yield from pool.map(_run, jobs)


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork (fast: the workers inherit the imports) unless this process runs libraries whose native
    threads hold locks across a fork (a DDS participant, ONNX Runtime's pools: e.g. a program that
    ran a node or a model before building): then a fork server, whose workers never inherit them."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context()
    if not any(name in sys.modules for name in FORK_UNSAFE_MODULES):
        return multiprocessing.get_context("fork")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


