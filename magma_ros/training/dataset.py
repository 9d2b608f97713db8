"""Magma training datasets on disk: write (the dataset builder) and read (trainer, evaluation).

Layout (see :mod:`magma_ros.training.records`)::

    DIR/
      dataset.json                      name, format_version, image_format, the build spec,
                                        one entry per episode (id, file, steps, source, metadata),
                                        and the summary of every build run
      dataset_statistics.json           {name: {"action": {q01, q99, mean, std, min, max, mask}, ...}}
      episodes/<episode_id>.parquet     one row per control step
      traces/<episode_id>.parquet       Trace-of-Mark labels (``magma-ros dataset label-traces``)

An episode file is plain Parquet (read it with pyarrow, pandas, polars or HF ``datasets``):

============  ====================  ==========================================================
column        type                  meaning
============  ====================  ==========================================================
step          int32                 0, 1, 2 ... (control steps of the episode)
stamp_ns      int64                 time of the step (ns, the recording's header clock)
image         binary                the camera frame, PNG or JPEG encoded (``image_format``),
                                    RGB, resized to the spec's image size
action        fixed_size_list<7>    dx dy dz (m, base frame), droll dpitch dyaw (rad, relative
              float64               rotation about the base axes, the spec's
                                    ``rotation_convention``), gripper (0 closed .. 1 open, the
                                    command in force during the step; never normalized)
state         fixed_size_list<7>    EE pose at the step: x y z (m) roll pitch yaw (rad, extrinsic
              float64               about the base axes), gripper opening 0..1
instruction   string                the language instruction
============  ====================  ==========================================================

The file's key-value metadata ``magma_ros.episode`` holds the episode's metadata as JSON
(recorder metadata from ``episode.json``, source bag, what the builder dropped and why).
Files are written to a temporary name and renamed, and ``dataset.json`` is rewritten atomically
after each episode, so an interrupted build leaves a valid dataset that a re-run completes.

Reading::

    data = TrajectoryDataset("DIR")          # DatasetError with a clear message when it is not one
    data.name, data.statistics, data.episode_ids, len(data)
    data[i]                                  # StepRecord (image decoded to (H, W, 3) uint8 RGB)
    data.episode("episode_0003")             # list[StepRecord]
    data.actions()                           # (N, 7) labels of every step, no image decoding

ROS-free and torch-free (a torch ``Dataset`` wraps this one in the trainer).
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from magma_ros.codecs import ACTION_DIM, ActionStatistics, StatisticsError, load_dataset_statistics
from magma_ros.training.records import (
    DATASET_FILE,
    FORMAT_VERSION,
    STATISTICS_FILE,
    STEPS_DIR,
    DatasetError,
    StepRecord,
)
from magma_ros.training.statistics import compute_statistics, write_statistics

__all__ = [
    "EPISODE_METADATA_KEY",
    "IMAGE_FORMATS",
    "DatasetWriter",
    "EpisodeEntry",
    "TrajectoryDataset",
    "decode_image",
    "encode_image",
    "write_episode_file",
]

IMAGE_FORMATS = ("png", "jpeg")
EPISODE_METADATA_KEY = b"magma_ros.episode"
STATE_DIM = 7
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CACHED_EPISODES = 4


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:  # pragma: no cover - pyarrow is pinned in requirements/lock.txt
        raise DatasetError("pyarrow is required for magma_ros datasets (pip install pyarrow)") from err
    return pa, pq


# ----------------------------------------------------------------------------------- images
def encode_image(rgb: np.ndarray, image_format: str = "png", jpeg_quality: int = 95) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG or JPEG bytes."""
    import cv2

    array = np.asarray(rgb)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise DatasetError(f"images must be (H, W, 3) uint8 RGB, got {array.shape} {array.dtype}")
    bgr = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGB2BGR)
    if image_format == "png":
        # fast settings (zlib level 1, the 'up' row filter): ~3x faster than OpenCV's default filter choice
        params = [cv2.IMWRITE_PNG_COMPRESSION, 1]
        if hasattr(cv2, "IMWRITE_PNG_FILTER"):
            params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
        ok, data = cv2.imencode(".png", bgr, params)
    elif image_format == "jpeg":
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    else:
        raise DatasetError(f"unknown image format {image_format!r}; expected one of {IMAGE_FORMATS}")
    if not ok:
        raise DatasetError(f"OpenCV could not encode a {array.shape} image as {image_format}")
    return data.tobytes()


def decode_image(data: bytes) -> np.ndarray:
    """PNG or JPEG bytes -> (H, W, 3) uint8 RGB."""
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetError(f"stored image ({len(data)} bytes) does not decode")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------------------ index file
@dataclass(frozen=True)
class EpisodeEntry:
    """One episode as ``dataset.json`` lists it."""

    episode_id: str
    file: str
    steps: int
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.episode_id, "file": self.file, "steps": self.steps, "source": self.source,
                "metadata": self.metadata}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> EpisodeEntry:
        if not isinstance(data, Mapping) or not isinstance(data.get("id"), str) or \
                not isinstance(data.get("file"), str) or not isinstance(data.get("steps"), int):
            raise DatasetError(f"{where}: malformed episode entry {data!r}")
        return cls(data["id"], data["file"], data["steps"], str(data.get("source", "")),
                   dict(data.get("metadata") or {}))


def _read_index(root: Path) -> dict[str, Any]:
    path = root / DATASET_FILE
    if not root.is_dir():
        raise DatasetError(f"dataset directory not found: {root}")
    if not path.is_file():
        raise DatasetError(f"{root} is not a magma_ros dataset (no {DATASET_FILE}); "
                           "build one with `magma-ros dataset build`")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: unreadable: {err}") from err
    if not isinstance(index, dict) or not isinstance(index.get("name"), str):
        raise DatasetError(f"{path}: not a dataset index (no 'name')")
    version = index.get("format_version")
    if version != FORMAT_VERSION:
        raise DatasetError(f"{path}: format_version {version!r}, this magma_ros reads {FORMAT_VERSION}")
    if not isinstance(index.get("episodes", []), list):
        raise DatasetError(f"{path}: 'episodes' must be a list")
    return index


def _write_json(path: Path, data: Any) -> None:
    """Atomically (temporary file + rename); an unchanged file is not touched."""
    text = json.dumps(data, indent=2) + "\n"
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------- writer
class DatasetWriter:
    """Writes episodes into a dataset directory; re-opening an existing one continues it.

    ``name`` is the statistics name (``dataset_statistics.json`` key, the policy node's
    ``statistics`` parameter). ``spec`` (a JSON-able mapping) is recorded in ``dataset.json``.
    """

    def __init__(self, root: str | Path, name: str, *, spec: Mapping[str, Any] | None = None,
                 image_format: str = "png", jpeg_quality: int = 95) -> None:
        if not _NAME.match(name or ""):
            raise DatasetError(f"dataset name {name!r} must be letters, digits, '_', '.', '-'")
        if image_format not in IMAGE_FORMATS:
            raise DatasetError(f"unknown image format {image_format!r}; expected one of {IMAGE_FORMATS}")
        if not 1 <= int(jpeg_quality) <= 100:
            raise DatasetError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        self.root = Path(root).expanduser()
        self.name, self.image_format, self.jpeg_quality = name, image_format, int(jpeg_quality)
        self.spec = dict(spec or {})
        if (self.root / DATASET_FILE).exists():
            index = _read_index(self.root)
            if index["name"] != name:
                raise DatasetError(f"{self.root} holds dataset {index['name']!r}, not {name!r}; "
                                   "choose another --out or the same name")
            if index.get("image_format") != image_format:
                raise DatasetError(f"{self.root} stores {index.get('image_format')} images, not {image_format}")
            self._index = index
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            self._index = {"format_version": FORMAT_VERSION, "name": name, "image_format": image_format,
                           "spec": self.spec, "episodes": [], "builds": []}
        self._entries: dict[str, EpisodeEntry] = {
            e.episode_id: e for e in (EpisodeEntry.from_dict(d, str(self.root / DATASET_FILE))
                                      for d in self._index.get("episodes", []))}
        (self.root / STEPS_DIR).mkdir(exist_ok=True)
        self._save_index()

    @property
    def recorded_spec(self) -> dict[str, Any]:
        """The spec ``dataset.json`` holds (the one the existing episodes were built with); {} if none."""
        return dict(self._index.get("spec") or {})

    @property
    def entries(self) -> dict[str, EpisodeEntry]:
        return dict(self._entries)

    def has_episode(self, episode_id: str) -> bool:
        """Whether the episode is listed and its file exists (a finished episode a re-run skips)."""
        entry = self._entries.get(episode_id)
        return entry is not None and (self.root / entry.file).is_file()

    def source_of(self, episode_id: str) -> str | None:
        entry = self._entries.get(episode_id)
        return entry.source if entry else None

    def write_episode(self, episode_id: str, *, stamps_ns: Sequence[int], images: Sequence[np.ndarray | bytes],
                      actions: np.ndarray, states: np.ndarray, instructions: str | Sequence[str],
                      metadata: Mapping[str, Any] | None = None, source: str = "") -> EpisodeEntry:
        """Write one episode (images as RGB arrays, or bytes already encoded in ``image_format``)."""
        entry = write_episode_file(self.root, episode_id, stamps_ns=stamps_ns, images=images, actions=actions,
                                   states=states, instructions=instructions, metadata=metadata, source=source,
                                   image_format=self.image_format, jpeg_quality=self.jpeg_quality)
        self.add_entry(entry)
        return entry

    def add_entry(self, entry: EpisodeEntry) -> None:
        """List an episode whose file :func:`write_episode_file` wrote (e.g. in a worker process)."""
        if not (self.root / entry.file).is_file():
            raise DatasetError(f"{self.root / entry.file}: episode file missing")
        self._entries[entry.episode_id] = entry
        self._save_index()

    def order(self, episode_ids: Sequence[str]) -> None:
        """Put these episodes first, in this order (the rest keep theirs after them)."""
        first = {i: self._entries[i] for i in episode_ids if i in self._entries}
        self._entries = {**first, **{k: v for k, v in self._entries.items() if k not in first}}
        self._save_index()

    def read_actions(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per-episode (n, 7) actions and states of every listed episode (no images read)."""
        _, pq = _pyarrow()
        actions, states = [], []
        for entry in self._entries.values():
            table = pq.read_table(self.root / entry.file, columns=["action", "state"])
            actions.append(_matrix(table.column("action"), ACTION_DIM))
            states.append(_matrix(table.column("state"), STATE_DIM))
        return actions, states

    def write_statistics(self) -> dict[str, Any]:
        """Compute the statistics over every episode now in the dataset and write them."""
        actions, states = self.read_actions()
        entry = compute_statistics(actions, states)
        write_statistics(self.root, self.name, entry)
        return entry

    def record_build(self, summary: Mapping[str, Any]) -> None:
        """Append one build run's summary (inputs, written, skipped with reasons, counts) to dataset.json."""
        self._index.setdefault("builds", []).append(dict(summary))
        self._save_index()

    def _save_index(self) -> None:
        self._index["episodes"] = [e.to_dict() for e in self._entries.values()]
        if self.spec:
            self._index["spec"] = self.spec
        _write_json(self.root / DATASET_FILE, self._index)


def write_episode_file(root: str | Path, episode_id: str, *, stamps_ns: Sequence[int],
                       images: Sequence[np.ndarray | bytes], actions: np.ndarray, states: np.ndarray,
                       instructions: str | Sequence[str], metadata: Mapping[str, Any] | None = None,
                       source: str = "", image_format: str = "png", jpeg_quality: int = 95) -> EpisodeEntry:
    """Write ``root/episodes/<episode_id>.parquet`` (atomically) and return its index entry.

    Safe to call from worker processes; the caller lists the entry with :meth:`DatasetWriter.add_entry`.
    Non-finite actions or states are refused (never written).
    """
    pa, pq = _pyarrow()
    if not _NAME.match(episode_id or ""):
        raise DatasetError(f"episode id {episode_id!r} must be letters, digits, '_', '.', '-'")
    n = len(stamps_ns)
    if n == 0:
        raise DatasetError(f"episode {episode_id}: no steps to write")
    acts = np.asarray(actions, dtype=np.float64).reshape(-1, ACTION_DIM)
    sts = np.asarray(states, dtype=np.float64).reshape(-1, STATE_DIM)
    texts = [instructions] * n if isinstance(instructions, str) else list(instructions)
    if not (len(images) == len(acts) == len(sts) == len(texts) == n):
        raise DatasetError(f"episode {episode_id}: {n} stamps, {len(images)} images, {len(acts)} actions, "
                           f"{len(sts)} states, {len(texts)} instructions")
    if not (np.all(np.isfinite(acts)) and np.all(np.isfinite(sts))):
        raise DatasetError(f"episode {episode_id}: non-finite action or state values are never written")
    encoded = [img if isinstance(img, bytes) else encode_image(img, image_format, jpeg_quality) for img in images]
    table = pa.table({
        "step": pa.array(np.arange(n, dtype=np.int32)),
        "stamp_ns": pa.array(np.asarray(stamps_ns, dtype=np.int64)),
        "image": pa.array(encoded, type=pa.binary()),
        "action": pa.FixedSizeListArray.from_arrays(pa.array(acts.reshape(-1)), ACTION_DIM),
        "state": pa.FixedSizeListArray.from_arrays(pa.array(sts.reshape(-1)), STATE_DIM),
        "instruction": pa.array(texts, type=pa.string()),
    })
    meta = dict(metadata or {})
    table = table.replace_schema_metadata({EPISODE_METADATA_KEY: json.dumps(
        {"episode_id": episode_id, "source": source, **meta}).encode()})
    relative = f"{STEPS_DIR}/{episode_id}.parquet"
    path = Path(root) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # images are already compressed; zstd still shrinks the numeric columns
    pq.write_table(table, tmp, compression="zstd", row_group_size=256)
    os.replace(tmp, path)
    return EpisodeEntry(episode_id, relative, n, source, meta)


def _matrix(column: Any, width: int) -> np.ndarray:
    """A fixed_size_list<float64> column as an (n, width) float64 array."""
    chunks = [c.flatten().to_numpy(zero_copy_only=False) for c in column.chunks]
    flat = np.concatenate(chunks) if chunks else np.zeros(0)
    return flat.astype(np.float64, copy=False).reshape(-1, width)


# ----------------------------------------------------------------------------------- reader
class TrajectoryDataset:
    """A dataset directory opened for reading: every step of every episode, by index or by episode.

    ``statistics`` is the dataset's :class:`~magma_ros.codecs.ActionStatistics` (from
    ``dataset_statistics.json``, entry ``name``). Steps are indexed episode by episode in
    ``dataset.json`` order. Episode tables are cached (a few at a time), so reading in order
    decodes each file once. Picklable (for DataLoader workers): the cache is not pickled.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        index = _read_index(self.root)
        self.name: str = index["name"]
        self.image_format: str = index.get("image_format", "png")
        self.spec: dict[str, Any] = dict(index.get("spec") or {})
        self.builds: list[dict[str, Any]] = list(index.get("builds") or [])
        entries = [EpisodeEntry.from_dict(d, str(self.root / DATASET_FILE)) for d in index.get("episodes", [])]
        missing = [e.file for e in entries if not (self.root / e.file).is_file()]
        if missing:
            raise DatasetError(f"{self.root}: episode file(s) listed in {DATASET_FILE} are missing: "
                               f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if not entries:
            raise DatasetError(f"{self.root} holds no episodes yet (every bag skipped? the reasons are under "
                               f"'builds' in {DATASET_FILE})")
        self._entries = {e.episode_id: e for e in entries}
        self.episode_ids: tuple[str, ...] = tuple(self._entries)
        self._offsets = np.cumsum([0] + [e.steps for e in entries])
        self.statistics: ActionStatistics = self._load_statistics()
        self._cache: OrderedDict[str, Any] = OrderedDict()

    def _load_statistics(self) -> ActionStatistics:
        path = self.root / STATISTICS_FILE
        if not path.is_file():
            raise DatasetError(f"{self.root}: {STATISTICS_FILE} is missing (the build did not finish); "
                               "re-run `magma-ros dataset build` with the same --out")
        try:
            sets = load_dataset_statistics(path)
        except StatisticsError as err:
            raise DatasetError(str(err)) from err
        if self.name not in sets:
            raise DatasetError(f"{path} has no entry {self.name!r} (has {sorted(sets)})")
        return sets[self.name]

    # -- sizes ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._offsets[-1])

    def episode_length(self, episode_id: str) -> int:
        return self._entry(episode_id).steps

    def episode_metadata(self, episode_id: str) -> dict[str, Any]:
        return dict(self._entry(episode_id).metadata)

    def _entry(self, episode_id: str) -> EpisodeEntry:
        try:
            return self._entries[episode_id]
        except KeyError:
            raise DatasetError(f"{self.root}: no episode {episode_id!r}") from None

    # -- rows ----------------------------------------------------------------------------
    def __getitem__(self, index: int) -> StepRecord:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"step {index} out of range for a dataset of {n} steps")
        e = int(np.searchsorted(self._offsets, i, side="right")) - 1
        episode_id = self.episode_ids[e]
        return self._record(episode_id, self._table(episode_id), i - int(self._offsets[e]))

    def __iter__(self) -> Iterator[StepRecord]:
        for episode_id in self.episode_ids:
            yield from self.episode(episode_id)

    def episode(self, episode_id: str) -> list[StepRecord]:
        table = self._table(episode_id)
        return [self._record(episode_id, table, row) for row in range(table["num_rows"])]

    def actions(self, episode_id: str | None = None) -> np.ndarray:
        """(n, 7) action labels of one episode, or of the whole dataset; images are not read."""
        ids = self.episode_ids if episode_id is None else (episode_id,)
        parts = [_matrix(self._columns(i, "action"), ACTION_DIM) for i in ids]
        return np.concatenate(parts) if parts else np.zeros((0, ACTION_DIM))

    def states(self, episode_id: str | None = None) -> np.ndarray:
        """(n, 7) states (EE pose xyz rpy, gripper opening), like :meth:`actions`."""
        ids = self.episode_ids if episode_id is None else (episode_id,)
        parts = [_matrix(self._columns(i, "state"), STATE_DIM) for i in ids]
        return np.concatenate(parts) if parts else np.zeros((0, STATE_DIM))

    def _columns(self, episode_id: str, column: str) -> Any:
        _, pq = _pyarrow()
        if episode_id in self._cache:
            return self._cache[episode_id]["table"].column(column)
        path = self.root / self._entry(episode_id).file
        try:
            return pq.read_table(path, columns=[column]).column(column)
        except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
            raise DatasetError(f"{path}: unreadable: {err}") from err

    def _table(self, episode_id: str) -> dict[str, Any]:
        cached = self._cache.get(episode_id)
        if cached is not None:
            self._cache.move_to_end(episode_id)
            return cached
        _, pq = _pyarrow()
        entry = self._entry(episode_id)
        path = self.root / entry.file
        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as err:
            raise DatasetError(f"{path}: unreadable: {err}") from err
        if table.num_rows != entry.steps:
            raise DatasetError(f"{path}: {table.num_rows} rows, {DATASET_FILE} lists {entry.steps}")
        cached = {"table": table, "num_rows": table.num_rows,
                  "stamp_ns": table.column("stamp_ns").to_numpy(),
                  "image": table.column("image").to_pylist(),
                  "action": _matrix(table.column("action"), ACTION_DIM),
                  "state": _matrix(table.column("state"), STATE_DIM),
                  "instruction": table.column("instruction").to_pylist()}
        self._cache[episode_id] = cached
        while len(self._cache) > _CACHED_EPISODES:
            self._cache.popitem(last=False)
        return cached

    @staticmethod
    def _record(episode_id: str, table: dict[str, Any], row: int) -> StepRecord:
        return StepRecord(episode_id=episode_id, step=row, stamp_ns=int(table["stamp_ns"][row]),
                          image=decode_image(table["image"][row]), action=table["action"][row].copy(),
                          state=table["state"][row].copy(), instruction=table["instruction"][row])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state

    def __repr__(self) -> str:
        return f"TrajectoryDataset({str(self.root)!r}, name={self.name!r}, episodes={len(self.episode_ids)}, " \
               f"steps={len(self)})"
