"""rosbag2 recordings (mcap or sqlite3) read and written without ROS, via ``rosbags``.

ROS-free: the replay node, the recorder and the dataset builder share this module.
Messages stay raw CDR bytes (exactly what goes over the wire), so a player can
publish them without decoding; :meth:`BagReader.deserialize` decodes one when a
caller needs fields.

Reading::

    with BagReader("episode_0001") as bag:          # a bag directory, or one storage file
        for conn in bag.connections: ...            # topic, msgtype, count, recorded QoS
        for msg in bag.messages(): ...              # BagMessage(topic, msgtype, timestamp, data)
        bag.result()                                # announced / stored / read / unreadable, with reasons

The reader never loses a message silently: it reads every message the storage
files hold, or says in one line how many it could not and why. What rosbag2 writes
and a plain reader trips over is read as rosbag2 reads it:

- split bags (several storage files) are merged in recording-time order, and
  playback starts at the first *stored* message, not at metadata.yaml's
  ``starting_time`` (which can be later);
- streams are matched between metadata.yaml and the storage files by topic and
  type, never by QoS (they differ in deadline/lifespan in rosbag2's own bags);
- zstd file-compressed (``*.mcap.zstd``, ``*.db3.zstd``) and message-compressed
  bags are decompressed;
- a stream whose type definition cannot be parsed (Jazzy's service-event
  topics, ``.../srv/X_Event``) is skipped as a whole, listed with its count in
  :attr:`BagReader.skipped` and one warning, and the rest is read.

Damaged recordings degrade instead of failing where that is safe, each time with
a line in :attr:`BagReader.warnings` (also logged) or in the read's result:

- an mcap file cut short (a recorder killed mid-write) or with a damaged index is
  read up to its last complete record from a repaired temporary copy;
- a damaged mcap chunk (bad compression, checksum or record) is skipped and its
  messages counted; a sqlite3 file that breaks part-way ends that file's read;
- a storage file that cannot be opened or is missing loses its messages (counted
  from metadata.yaml), the other files are read;
- a bag directory whose metadata.yaml is missing has its storage files read directly.

Everything that goes wrong with a bag is a :class:`BagError`; a missing path is a
:class:`BagNotFoundError`, an unreadable one a :class:`CorruptBagError`. A
:meth:`BagReader.messages` pass that could not deliver everything raises
:class:`IncompleteBagError` (``.result``: a :class:`BagReadResult`) once every
readable message has been yielded; ``strict=False`` leaves the account to
:meth:`BagReader.result`.

Writing (test bags, recordings)::

    write_bag("out", [(topic, msgtype, stamp_ns, message), ...], storage="mcap")

where ``message`` is raw CDR bytes or a message object of the writer's typestore.
Bags are rosbag2 format version 9, readable by ``ros2 bag`` on Iron and newer.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import struct
import sys
import tempfile
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path, PurePath
from types import TracebackType
from typing import Any, NamedTuple

import apsw
from rosbags.interfaces import ConnectionExtRosbag2, MessageDefinitionFormat, QosDurability, QosReliability
from rosbags.rosbag2 import ReaderError, StoragePlugin, Writer, WriterError
from rosbags.rosbag2.metadata import parse_qos
from rosbags.rosbag2.storage_mcap import ChunkInfo, McapReader, read_exact
from rosbags.rosbag2.storage_mcap import decompress as mcap_decompress
from rosbags.rosbag2.storage_sqlite3 import Sqlite3Reader
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, TypesysError, get_types_from_idl, get_types_from_msg, get_typestore
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # the backport rosbags depends on
    from backports import zstd

log = logging.getLogger(__name__)

DISTROS: dict[str, Stores] = {
    "humble": Stores.ROS2_HUMBLE,
    "jazzy": Stores.ROS2_JAZZY,
    "kilted": Stores.ROS2_KILTED,
    "lyrical": Stores.ROS2_LYRICAL,
}
"""Type stores used for bags that carry no message definitions (Humble sqlite3) and for writing."""

STORAGES: dict[str, StoragePlugin] = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
_SUFFIXES = {".mcap": "mcap", ".db3": "sqlite3"}
_MCAP_MAGIC = b"\x89MCAP0\r\n"
_MCAP_DATA_END, _MCAP_FOOTER = 0x0F, 0x02


class BagError(Exception):
    """Root of every error about reading or writing a bag; the message names the bag and the problem."""


class BagNotFoundError(BagError, FileNotFoundError):
    """The bag path does not exist."""


class CorruptBagError(BagError):
    """The bag exists but cannot be read (corrupt, truncated beyond repair, unsupported)."""


class BagConnection(NamedTuple):
    """One (topic, message type) stream of a bag.

    ``reliable`` / ``transient_local`` describe the QoS the recorded publishers
    offered (all of them reliable / all transient-local); ``None`` when the bag
    did not record QoS.
    """

    topic: str
    msgtype: str
    count: int
    reliable: bool | None
    transient_local: bool | None


class BagMessage(NamedTuple):
    """One recorded message: ``timestamp`` is the recording time in ns, ``data`` raw CDR bytes."""

    topic: str
    msgtype: str
    timestamp: int
    data: bytes


def typestore_for(distro: str) -> Any:
    """The rosbags typestore of a ROS 2 distro name (humble, jazzy, kilted, lyrical)."""
    if distro not in DISTROS:
        raise BagError(f"unknown ROS distro {distro!r}; expected one of {', '.join(DISTROS)}")
    return get_typestore(DISTROS[distro])


# ----------------------------------------------------------------------------------- reading
class Unreadable(NamedTuple):
    """Messages a read could not deliver: how many (``None``: unknown), why, and on which topic ('' = several)."""

    count: int | None
    reason: str
    topic: str = ""


@dataclass(frozen=True)
class BagReadResult:
    """What one :meth:`BagReader.messages` pass delivered, against what the bag announced.

    ``announced`` is metadata.yaml's count for the topics read (``None``: no
    metadata.yaml, or a time window was read); ``stored`` what the storage files'
    indexes hold for them (``None`` for a time window); ``read`` what was yielded.
    ``skipped`` lists streams left out as a whole (a type whose definition cannot be
    parsed...), ``damaged`` what was lost to damage (a chunk, a file, a message).
    """

    path: Path
    announced: int | None
    stored: int | None
    read: int
    skipped: tuple[Unreadable, ...] = ()
    damaged: tuple[Unreadable, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def expected(self) -> int | None:
        """The larger of what metadata.yaml announces and what the storage holds (``None`` for a window)."""
        known = [n for n in (self.announced, self.stored) if n is not None]
        return max(known) if known else None

    @property
    def unread(self) -> int:
        """Messages not delivered (skipped streams included); a lower bound when a damage count is unknown."""
        if self.expected is not None:
            return max(0, self.expected - self.read)
        return sum(u.count or 0 for u in (*self.skipped, *self.damaged))

    @property
    def lost(self) -> int:
        """Messages not delivered because of damage or a short storage (not counting skipped streams)."""
        return max(0, self.unread - sum(u.count or 0 for u in self.skipped))

    @property
    def complete(self) -> bool:
        """Every message of the topics read was delivered (skipped streams aside)."""
        return self.lost == 0 and not any(u.count is None for u in self.damaged)

    def line(self) -> str:
        """One line: what was read against what was announced, and every reason something was not."""
        expected = self.expected
        head = f"bag {self.path}: read {self.read}"
        if expected is not None:
            head += f" of {expected} messages"
            if self.announced is not None and self.stored is not None and self.announced != self.stored:
                head += f" (metadata.yaml announces {self.announced}, the storage files hold {self.stored})"
            elif self.announced is not None:
                head += " announced by metadata.yaml"
        else:
            head += " messages"
        reasons = [f"{_count(u.count)}{f' on {u.topic}' if u.topic else ''}: {u.reason}"
                   for u in (*self.damaged, *self.skipped)]
        accounted = sum(u.count or 0 for u in (*self.damaged, *self.skipped))
        if expected is not None and self.unread > accounted and not any(u.count is None for u in self.damaged):
            reasons.append(f"{self.unread - accounted} announced but not in the storage files"
                           + (f" ({'; '.join(self.notes)})" if self.notes else ""))
        elif self.notes:
            reasons.extend(self.notes)
        if not reasons or (self.unread == 0 and not self.damaged):
            return head
        return f"{head}; {self.unread} unreadable: " + "; ".join(reasons)


class IncompleteBagError(CorruptBagError):
    """A read delivered what it could but not every message; ``result`` says how many and why."""

    def __init__(self, result: BagReadResult) -> None:
        super().__init__(result.line())
        self.result = result


def _count(n: int | None) -> str:
    return "an unknown number of messages" if n is None else f"{n} message{'s' if n != 1 else ''}"


@dataclass
class _Storage:
    """One opened storage file of a bag."""

    name: str                        # the file as the bag names it (x_0.mcap, x_0.mcap.zstd)
    reader: Any                      # rosbags McapReader / Sqlite3Reader
    streams: dict[tuple[str, str], list[Any]]  # (topic, type) -> storage connections
    chunk_ranges: dict[int, tuple[int, int]] = field(default_factory=dict)  # mcap chunk offset -> times


@dataclass
class _Tally:
    """Bookkeeping of one messages() pass."""

    keys: set[tuple[str, str]]
    whole: bool                      # every readable stream of the bag, no time window
    window: bool
    read: int = 0
    damaged: dict[tuple[str, str], list[int | None]] = field(default_factory=dict)  # (where, why) -> counts

    def lose(self, count: int | None, where: str, why: str) -> None:
        self.damaged.setdefault((where, why), []).append(None if self.window else count)


class _Meta(NamedTuple):
    """What metadata.yaml announces."""

    storage: str
    files: list[str]
    file_counts: dict[str, int]
    compression_mode: str            # '', 'file', 'message'
    message_count: int
    topics: dict[tuple[str, str], tuple[int, list[Any], str]]  # (topic, type) -> count, QoS, serialization


_DAMAGE: tuple[type[BaseException], ...] = (
    ReaderError, zstd.ZstdError, apsw.Error, OSError, OverflowError, ValueError, KeyError, IndexError,
    EOFError, struct.error, RuntimeError, MemoryError, TypesysError)
"""What damaged bytes make the storage readers raise (lz4 raises RuntimeError, zstd ZstdError...)."""


class BagReader:
    """A rosbag2 recording opened for reading; a context manager (open on enter, closed on exit).

    ``path`` is a bag directory (with metadata.yaml) or one storage file (``.mcap``,
    ``.db3``, or either zstd file-compressed). ``distro`` picks the typestore for bags
    without embedded message definitions.
    """

    def __init__(self, path: str | Path, distro: str = "kilted") -> None:
        self.path = Path(path).expanduser()
        self.default_typestore = typestore_for(distro)
        self.typestore: Any = self.default_typestore
        self.warnings: list[str] = []
        self.connections: tuple[BagConnection, ...] = ()
        self.skipped: tuple[Unreadable, ...] = ()   # streams left out as a whole, with counts and reasons
        self.announced: int | None = None          # metadata.yaml's message_count (None: no metadata.yaml)
        self.storage = ""
        self._meta: _Meta | None = None
        self._storages: list[_Storage] = []
        self._lost_files: list[Unreadable] = []     # storage files that could not be opened
        self._notes: list[str] = []                 # why storage may hold less than announced
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._open = False
        self._tally: _Tally | None = None
        self._start = self._end = 0

    # -- opening ---------------------------------------------------------------------
    def open(self) -> BagReader:
        if self._open:
            return self
        self.warnings, self._notes, self._lost_files, self._storages = [], [], [], []
        try:
            self._open_all()
        except BagError:  # before OSError: BagNotFoundError is one
            self._close_storages()
            raise
        except OSError as err:  # unreadable file or directory
            self._close_storages()
            raise CorruptBagError(f"cannot read bag {self.path}: {_describe(err)}") from err
        self._open = True
        for warning in self.warnings:
            log.warning(warning)
        return self

    def _open_all(self) -> None:
        files = self._storage_files()
        self._storages = []
        failures: list[tuple[str, str]] = []
        for name, path in files:
            try:
                storage = self._open_storage(name, path)
            except BagError as err:
                failures.append((name, str(err)))
                continue
            if storage is not None:
                self._storages.append(storage)
        if failures and not self._storages:
            name, why = failures[0]
            raise CorruptBagError(why if len(files) == 1 else f"cannot read bag {self.path}: no storage file "
                                  f"is readable ({name}: {why})")
        for name, why in failures:
            count = self._meta.file_counts.get(name) if self._meta else None
            self._lost_files.append(Unreadable(count, f"{name} cannot be read ({why})"))
            self._warn(f"{self.path}: storage file {name} cannot be read, {_count(count)} lost: {why}")
        self._index()
        if self._notes and self.message_count == 0:  # repaired or partly decompressed, and nothing left
            raise CorruptBagError(f"bag {self.path} holds no complete message: {'; '.join(self._notes)}")

    def _has_metadata(self) -> bool:
        return self.path.is_dir() and (self.path / "metadata.yaml").is_file()

    def _storage_files(self) -> list[tuple[str, Path]]:
        """(name, path) of every storage file of the bag, checked to exist and to be of one known kind."""
        if not self.path.exists():
            raise BagNotFoundError(f"bag not found: {self.path}")
        if self.path.is_file():
            if self.path.suffix == ".bag":
                raise CorruptBagError(f"{self.path} is a ROS 1 bag; convert it first (rosbags-convert)")
            if _storage_kind(self.path) is None:
                raise CorruptBagError(f"{self.path} is not a rosbag2 storage file "
                                      f"(expected .mcap or .db3, possibly .zstd compressed)")
            self.storage = _storage_kind(self.path) or ""
            return [(self.path.name, self.path)]
        if self._has_metadata():
            meta = self._meta = _read_metadata(self.path)
            self.announced = meta.message_count
            if meta.storage not in STORAGES:
                raise CorruptBagError(f"cannot read bag {self.path}: storage {meta.storage!r} is not supported "
                                      f"(expected {' or '.join(STORAGES)})")
            self.storage = meta.storage
            files = []
            for name in meta.files:
                path = self.path / name
                if not path.is_file() and (self.path / f"{name}.zstd").is_file():
                    name, path = f"{name}.zstd", self.path / f"{name}.zstd"
                if not path.is_file():
                    count = meta.file_counts.get(name)
                    self._lost_files.append(Unreadable(count, f"{name} is listed in metadata.yaml but missing"))
                    self._warn(f"{self.path}: storage file {name} is missing, {_count(count)} lost")
                    continue
                files.append((name, path))
            if not files:
                raise CorruptBagError(f"cannot read bag {self.path}: none of its storage files "
                                      f"({', '.join(meta.files) or 'none listed'}) exists")
            return files
        found = sorted(p for p in self.path.iterdir() if p.is_file() and _storage_kind(p) is not None)
        if not found:
            raise CorruptBagError(f"{self.path} holds no .mcap or .db3 storage file (nor a .zstd compressed one)")
        kinds = {_storage_kind(p) for p in found}
        if len(kinds) > 1:
            raise CorruptBagError(f"{self.path} mixes .mcap and .db3 files")
        self.storage = kinds.pop() or ""
        self._warn(f"{self.path}: metadata.yaml missing (recording not closed cleanly?); "
                   f"reading {len(found)} storage file(s) directly")
        return [(p.name, p) for p in found]

    def _temp_dir(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="magma_ros_bag_")
        return Path(self._tmp.name)

    def _open_storage(self, name: str, path: Path) -> _Storage | None:
        """Open one storage file: decompress a .zstd one, repair a cut mcap, fall back to scanning."""
        partial = False
        if path.suffix == ".zstd":
            path, partial = self._decompress_file(name, path)
        ranges: dict[int, tuple[int, int]] = {}
        if path.suffix != ".mcap":
            reader = _open_reader(Sqlite3Reader, path, name, self.path)
        else:
            index: list[ChunkInfo] | None = None
            if _mcap_truncated(path):
                path, index = self._repair(name, path, "is cut short where its zstd stream breaks" if partial
                                           else "is truncated (recording interrupted?)")
            try:
                reader = _open_reader(McapReader, path)
                problem, ranges = ("", {}) if index is not None else _mcap_index_problem(reader, path)
            except _DAMAGE as err:
                if index is not None or not _is_mcap(path):
                    raise CorruptBagError(f"cannot read bag {self.path}: {name}: {_describe(err)}") from err
                reader, problem = None, _describe(err)
            if problem:
                if reader is not None:
                    with contextlib.suppress(Exception):
                        reader.close()
                path, index = self._repair(name, path, f"has a damaged index ({problem})")
                reader = _open_reader(McapReader, path, name, self.path)
            if index:
                reader.chunks = index  # the repaired file's index, built from its chunks
        streams: dict[tuple[str, str], list[Any]] = {}
        for conn in reader.connections:
            streams.setdefault((conn.topic, conn.msgtype), []).append(conn)
        return _Storage(name, reader, streams, ranges)

    def _decompress_file(self, name: str, path: Path) -> tuple[Path, bool]:
        """A zstd file-compressed storage file decompressed to the temporary directory; whether only partly."""
        target = self._temp_dir() / path.stem
        written = 0
        try:
            with path.open("rb") as raw, zstd.open(raw, "rb") as src, target.open("wb") as dst:
                while block := src.read(1 << 16):  # small blocks: a damaged stream keeps its good part
                    dst.write(block)
                    written += len(block)
        except (zstd.ZstdError, EOFError) as err:
            if not written:
                raise CorruptBagError(f"cannot read bag {self.path}: {name} does not decompress "
                                      f"({_describe(err)})") from err
            self._notes.append(f"{name} decompresses only to byte {written} ({_describe(err)})")
            self._warn(f"{path}: zstd stream damaged; reading the first {written} decompressed bytes")
            return target, True
        return target, False

    def _repair(self, name: str, path: Path, why: str) -> tuple[Path, list[ChunkInfo]]:
        target = self._temp_dir() / f"repaired_{path.name}"
        kept, size, dropped, index = _repair_mcap(path, target)
        note = f"{name} {why}; read up to its last complete record (byte {kept} of {size})"
        if dropped:
            note += f", {dropped} damaged chunk(s) left out"
        self._notes.append(note)
        self._warn(f"{self.path / name if self.path.is_dir() else path}: mcap file {why}; reading its first "
                   f"{kept} of {size} bytes, up to the last complete record")
        return target, index

    def _index(self) -> None:
        """Connections, typestore and time range from the opened storage files."""
        streams: dict[tuple[str, str], list[Any]] = {}
        for storage in self._storages:
            for key, conns in storage.streams.items():
                streams.setdefault(key, []).extend(conns)
        skipped: list[Unreadable] = []
        self.typestore, undecodable = self._typestore(streams)
        announced = self._meta.topics if self._meta else {}
        readable = []
        for key, conns in streams.items():
            count = sum(c.msgcount for c in conns)
            fmt = {getattr(c.ext, "serialization_format", "cdr") for c in conns} - {"cdr"}
            why = undecodable.get(key[1]) or (f"skipped, serialization format {fmt.pop()!r} is not supported"
                                              if fmt else "")
            if why:
                skipped.append(Unreadable(count, why, key[0]))
                continue
            qos_profiles = [q for c in conns if isinstance(c.ext, ConnectionExtRosbag2)
                            for q in c.ext.offered_qos_profiles] or announced.get(key, (0, [], ""))[1]
            readable.append(_connection(key, count, qos_profiles))
        self.connections = tuple(readable)
        self.skipped = tuple(skipped)
        if skipped:
            self._warn(f"{self.path}: {sum(u.count or 0 for u in skipped)} message(s) cannot be decoded and are "
                       "skipped: " + "; ".join(f"{u.topic}: {_count(u.count)} {u.reason}" for u in skipped))
        ranges = [(s.reader.metadata.start_time, s.reader.metadata.end_time) for s in self._storages
                  if s.reader.metadata.message_count]
        self._start = min((r[0] for r in ranges), default=0)
        self._end = max((r[1] for r in ranges), default=0)

    def _typestore(self, streams: dict[tuple[str, str], list[Any]]) -> tuple[Any, dict[str, str]]:
        """The types the bag defines (each parsed on its own), else the default store; unparsable types."""
        types: dict[str, Any] = {}
        bad: dict[str, str] = {}
        digests: dict[str, str] = {}
        defined = False
        for (_, msgtype), conns in streams.items():
            conn = next((c for c in conns if c.msgdef.format != MessageDefinitionFormat.NONE), None)
            if conn is None or msgtype in types or msgtype in bad:
                continue
            defined = True
            try:
                types.update(_parse_definition(conn))
            except (TypesysError, ValueError, KeyError, IndexError) as err:
                bad[msgtype] = _unparsable(conn.msgdef.data, err)
                continue
            if conn.digest:
                digests[msgtype] = conn.digest
        if not defined:
            return self.default_typestore, {}
        for msgtype in {k[1] for k in streams} - set(types) - set(bad):
            if msgtype in self.default_typestore.fielddefs:  # no definition stored for it: the distro's
                types.update({msgtype: self.default_typestore.fielddefs[msgtype]})
        store = get_typestore(Stores.EMPTY)
        try:
            store.register(types)
        except TypesysError as err:
            raise CorruptBagError(f"cannot read bag {self.path}: its type definitions conflict "
                                  f"({_describe(err)})") from err
        for msgtype, digest in digests.items():
            try:
                have = store.hash_rihs01(msgtype)
            except (TypesysError, KeyError) as err:
                bad[msgtype] = f"skipped, its type's stored definition is incomplete ({_describe(err)})"
                continue
            if have != digest:
                bad[msgtype] = f"skipped, its type's stored definition does not match its hash {digest}"
        return store, bad

    def _warn(self, message: str) -> None:
        """Note a degradation; it is logged only once the bag has opened (failures say enough)."""
        self.warnings.append(message)

    # -- queries -----------------------------------------------------------------------
    def _check(self) -> None:
        if not self._open:
            raise BagError(f"bag {self.path} is not open")

    @property
    def start_ns(self) -> int:
        """Recording time of the first stored message (ns), whatever metadata.yaml says; 0 for an empty bag."""
        self._check()
        return self._start if self.message_count else 0

    @property
    def end_ns(self) -> int:
        """Recording time of the last stored message (ns); 0 for an empty bag."""
        self._check()
        return self._end - 1 if self.message_count else 0

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def message_count(self) -> int:
        """Messages the readable streams hold (skipped streams not included)."""
        return sum(c.count for c in self.connections)

    @property
    def files(self) -> tuple[str, ...]:
        """The storage files read (as the bag names them)."""
        return tuple(s.name for s in self._storages)

    def messages(self, connections: Collection[BagConnection] | None = None,
                 start_ns: int | None = None, stop_ns: int | None = None,
                 strict: bool = True) -> Iterator[BagMessage]:
        """Messages in recording-time order (across split files), optionally of some connections and a window.

        Damage is skipped over: a damaged chunk, file or message is counted and the read
        goes on. When the pass ends, :meth:`result` says what was read against what the
        bag announced; with ``strict`` an incomplete pass then raises
        :class:`IncompleteBagError` (one line: how many, why) after every readable
        message has been yielded.
        """
        self._check()
        selected = self.connections if connections is None else connections
        keys = {(c.topic, c.msgtype) for c in selected} & {(c.topic, c.msgtype) for c in self.connections}
        window = start_ns is not None or stop_ns is not None
        tally = self._tally = _Tally(keys, whole=connections is None and not window, window=window)
        sources = [self._file_messages(s, tally, start_ns, stop_ns) for s in self._storages]
        compressed = self._meta is not None and self._meta.compression_mode == "message"
        for timestamp, key, data, where in heapq.merge(*sources, key=itemgetter(0)):
            if key is None:
                continue  # a chunk's place holder
            if compressed:
                try:
                    data = zstd.decompress(data)
                except (zstd.ZstdError, ValueError) as err:
                    tally.lose(1, where, f"holds messages that do not decompress ({_describe(err)})")
                    continue
            tally.read += 1
            yield BagMessage(key[0], key[1], timestamp, data)
        if strict:
            result = self.result()
            if not result.complete:
                raise IncompleteBagError(result)

    def _file_messages(self, storage: _Storage, tally: _Tally, start: int | None,
                       stop: int | None) -> Iterator[tuple[int, tuple[str, str] | None, bytes, str]]:
        conns = {c.id: key for key, cs in storage.streams.items() if key in tally.keys for c in cs}
        if not conns:
            return
        reader, name = storage.reader, storage.name
        if isinstance(reader, McapReader) and reader.chunks:
            sources = [_chunk_messages(reader, chunk, conns, start, stop, tally, name,
                                       storage.chunk_ranges.get(chunk.chunk_start_offset,
                                                                (chunk.message_start_time, chunk.message_end_time)))
                       for chunk in reader.chunks
                       if (start is None or start <= chunk.message_end_time)
                       and (stop is None or chunk.message_start_time < stop)
                       and any(chunk.channel_count.get(cid, 0) for cid in conns)]
            yield from heapq.merge(*sources, key=itemgetter(0))
            return
        expected = sum(c.msgcount for key, cs in storage.streams.items() if key in tally.keys for c in cs)
        read = 0
        wanted = [c for cs in storage.streams.values() for c in cs if c.id in conns]
        try:
            for conn, timestamp, data in reader.messages(wanted, start, stop):
                read += 1
                yield timestamp, conns[conn.id], data, name
        except _DAMAGE as err:
            tally.lose(max(0, expected - read), name, f"breaks after {read} of them ({_describe(err)})")

    def result(self) -> BagReadResult:
        """What the last :meth:`messages` pass delivered against what the bag announced (see BagReadResult)."""
        self._check()
        tally = self._tally or _Tally({(c.topic, c.msgtype) for c in self.connections}, True, False)
        damaged = [Unreadable(None if None in counts else sum(c or 0 for c in counts), f"{where} {why}")
                   for (where, why), counts in tally.damaged.items()]
        skipped: list[Unreadable] = []
        if tally.whole:
            damaged = self._lost_files + damaged
            skipped = list(self.skipped)
        if tally.window:
            return BagReadResult(self.path, None, None, tally.read, tuple(skipped), tuple(damaged))
        stored = sum(c.count for c in self.connections if (c.topic, c.msgtype) in tally.keys)
        stored += sum(u.count or 0 for u in skipped) + sum(u.count or 0 for u in self._lost_files if tally.whole)
        announced = None
        if self._meta is not None:
            topics = self._meta.topics
            if tally.whole:
                announced = max(self._meta.message_count, sum(n for n, _, _ in topics.values()))
            else:
                announced = sum(topics.get(k, (0,))[0] for k in tally.keys)
        # A file lost as a whole held some of these topics, in proportions only its index could tell.
        notes = self._notes + ([] if tally.whole else [u.reason for u in self._lost_files])
        return BagReadResult(self.path, announced, stored, tally.read, tuple(skipped), tuple(damaged),
                             tuple(notes))

    def deserialize(self, message: BagMessage) -> Any:
        """Decode a message's CDR bytes into a rosbags message object."""
        store = self.typestore if message.msgtype in self.typestore.fielddefs else self.default_typestore
        try:
            return store.deserialize_cdr(message.data, message.msgtype)
        except (SerdeError, TypesysError, KeyError, struct.error, ValueError, IndexError) as err:
            raise CorruptBagError(f"cannot decode {message.msgtype} on {message.topic} "
                                  f"at {message.timestamp}: {_describe(err)}") from err

    def starts_with_header(self, msgtype: str) -> bool:
        """Whether the type's first field is a std_msgs/Header (its stamp sits at CDR offset 4)."""
        for store in (self.typestore, self.default_typestore):
            if msgtype in store.fielddefs:
                fields = store.fielddefs[msgtype][1]
                return bool(fields) and fields[0][1][1] == "std_msgs/msg/Header"
        return False

    # -- closing -----------------------------------------------------------------------
    def close(self) -> None:
        self._open = False
        self._close_storages()

    def _close_storages(self) -> None:
        storages, self._storages = self._storages, []
        try:
            for storage in storages:
                with contextlib.suppress(Exception):  # closing a damaged file must not hide anything
                    storage.reader.close()
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    def __enter__(self) -> BagReader:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def open_bag(path: str | Path, distro: str = "kilted") -> BagReader:
    """Open a bag for reading (close it, or use ``with``); raises BagError."""
    return BagReader(path, distro).open()


def read_all(path: str | Path, distro: str = "kilted") -> tuple[list[BagMessage], BagReadResult]:
    """Every readable message of a bag and the account of the read (never raises for a partial read)."""
    with BagReader(path, distro) as bag:
        messages = list(bag.messages(strict=False))
        return messages, bag.result()


def _storage_kind(path: Path) -> str | None:
    name = path.name[: -len(".zstd")] if path.name.endswith(".zstd") else path.name
    return _SUFFIXES.get(Path(name).suffix)


def _is_mcap(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(len(_MCAP_MAGIC)) == _MCAP_MAGIC


def _mcap_index_problem(reader: Any, path: Path) -> tuple[str, dict[int, tuple[int, int]]]:
    """What is wrong with an opened mcap's summary (chunk index, statistics), '' when it is consistent;
    and each chunk's time range as wide as its index and its own header say.

    The reader trusts the summary; a damaged byte there would misplace chunks or
    misstate counts, so it is checked against itself and the chunk records it points to
    (a damaged chunk itself is caught when it is read: decompression, checksum, records).
    A chunk is decoded when the merge reaches its earliest time: taking the earlier of
    the two copies keeps the order when one of them is damaged.
    """
    ranges: dict[int, tuple[int, int]] = {}
    if not reader.chunks:
        return "", ranges
    size = path.stat().st_size
    totals: dict[int, int] = {}
    with path.open("rb") as f:
        for chunk in reader.chunks:
            if not 0 < chunk.chunk_start_offset < size:
                return f"chunk index points outside the file ({chunk.chunk_start_offset})", ranges
            f.seek(chunk.chunk_start_offset)
            head = f.read(9 + 16)
            if len(head) < 25 or head[0] != 0x06:
                return f"chunk index points to no chunk (byte {chunk.chunk_start_offset})", ranges
            start, end = struct.unpack_from("<QQ", head, 9)
            ranges[chunk.chunk_start_offset] = (min(chunk.message_start_time, start),
                                                max(chunk.message_end_time, end))
            for cid, count in chunk.channel_count.items():
                totals[cid] = totals.get(cid, 0) + count
    stats = reader.statistics
    if stats is not None and {k: v for k, v in stats.channel_message_counts.items() if v} != \
            {k: v for k, v in totals.items() if v}:
        return "statistics disagree with the chunk index", ranges
    if any(cid not in reader.channels for cid in totals):
        return "chunk index names unknown channels", ranges
    return "", ranges


def _open_reader(cls: type, path: Path, name: str = "", bag: Path | None = None) -> Any:
    """An opened rosbags storage reader; with ``bag``, damage becomes a CorruptBagError."""
    reader = cls(path)
    try:
        reader.open()
    except _DAMAGE as err:
        if bag is None:
            raise
        raise CorruptBagError(f"cannot read bag {bag}: {name}: {_describe(err)}") from err
    return reader


def _read_metadata(bag: Path) -> _Meta:
    """metadata.yaml of a bag directory, checked; the files it lists, per-topic counts and QoS."""
    path = bag / "metadata.yaml"
    try:
        doc = YAML(typ="safe").load(path.read_text())
        info = doc["rosbag2_bagfile_information"]
        topics: dict[tuple[str, str], tuple[int, list[Any], str]] = {}
        for entry in info.get("topics_with_message_count") or []:
            meta = entry["topic_metadata"]
            key = (str(meta["name"]), str(meta["type"]))
            profiles = meta.get("offered_qos_profiles") or []
            try:
                qos_profiles = parse_qos(profiles)
            except (KeyError, ValueError, TypeError, AttributeError, YAMLError):
                qos_profiles = []  # an odd QoS entry loses QoS, never the messages
            old = topics.get(key, (0, [], "cdr"))
            topics[key] = (old[0] + int(entry["message_count"]), old[1] + qos_profiles,
                           str(meta.get("serialization_format", "cdr")))
        files = [PurePath(str(p)).name for p in info.get("relative_file_paths") or []]
        file_counts = {PurePath(str(f["path"])).name: int(f["message_count"]) for f in info.get("files") or []
                       if isinstance(f, dict) and "path" in f and "message_count" in f}  # optional (version >= 5)
        mode = str(info.get("compression_mode") or "").lower()
        mode = "" if mode == "none" else mode
        fmt = str(info.get("compression_format") or "").lower()
        if mode and fmt != "zstd":
            raise CorruptBagError(f"cannot read bag {bag}: compression format {fmt!r} is not supported "
                                  "(only zstd)")
        return _Meta(str(info["storage_identifier"]), files, file_counts, mode, int(info["message_count"]), topics)
    except (YAMLError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise CorruptBagError(f"cannot read bag {bag}: invalid metadata.yaml ({_describe(err)})") from err


def _unparsable(text: str, err: BaseException) -> str:
    """Why a stored definition is refused, in a few words."""
    if any(line.strip() == "---" for line in text.splitlines()):
        return "skipped, its type's stored definition is a service (.srv) one, which no message parser reads"
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"skipped, its type's stored definition cannot be parsed ({first})"


def _parse_definition(conn: Any) -> dict[str, Any]:
    """The types one stored message definition declares (ros2msg or ros2idl, as rosbag2 writes them)."""
    text = conn.msgdef.data
    if conn.msgdef.format == MessageDefinitionFormat.MSG:
        return dict(get_types_from_msg(text, conn.msgtype))
    sep = "=" * 80 + "\n"
    types: dict[str, Any] = {}
    if text.startswith(f"{sep}IDL: "):
        for part in text.split(sep)[1:]:
            _, idl = part.split("\n", 1)
            types.update(get_types_from_idl(idl))
    else:
        types.update(get_types_from_idl(text))
    return types


def _chunk_messages(reader: Any, chunk: Any, conns: dict[int, tuple[str, str]], start: int | None,
                    stop: int | None, tally: _Tally, name: str, span: tuple[int, int],
                    ) -> Iterator[tuple[int, tuple[str, str] | None, bytes, str]]:
    """One mcap chunk's messages in time order, decoded only when the merge reaches the chunk.

    A chunk that does not decompress, fails its checksum or holds a malformed record
    is counted as lost (its index says how many messages it held) and skipped.
    """
    first, last = span
    yield first, None, b"", name  # the merge's place holder until the chunk is due
    expected = sum(chunk.channel_count.get(cid, 0) for cid in conns)
    where = f"{name} chunk at byte {chunk.chunk_start_offset}"
    bio = reader.bio
    try:
        bio.seek(chunk.chunk_start_offset + 9 + 24)
        (crc,) = struct.unpack("<I", read_exact(bio, 4))
        bio.seek(chunk.chunk_start_offset + 9 + 40 + len(chunk.compression))
        raw = mcap_decompress(read_exact(bio, chunk.compressed_size), chunk.compression,
                              chunk.uncompressed_size, crc)
    except _DAMAGE as err:
        tally.lose(expected, where, f"is damaged ({_describe(err)})")
        return
    low, high = (-1 if start is None else start), (1 << 64 if stop is None else stop)
    found: list[tuple[int, tuple[str, str] | None, bytes, str]] = []
    seen = outside = pos = 0
    view = memoryview(raw)
    try:
        while pos < len(raw):
            if pos + 9 > len(raw):
                raise ValueError(f"record header cut at byte {pos}")
            opcode, length = raw[pos], int.from_bytes(raw[pos + 1:pos + 9], "little")
            body = pos + 9
            if length > len(raw) - body:
                raise ValueError(f"record at byte {pos} claims {length} bytes, {len(raw) - body} left")
            if opcode == 0x05:
                if length < 22:
                    raise ValueError(f"message record at byte {pos} is {length} bytes long")
                channel, _, log_time = struct.unpack_from("<HIQ", raw, body)
                if channel in conns:
                    seen += 1
                    if not first <= log_time <= last:  # a damaged time: it would also break the merge order
                        outside += 1
                    elif low <= log_time < high:
                        found.append((log_time, conns[channel], bytes(view[body + 22:body + length]), name))
            pos = body + length
    except (ValueError, struct.error) as err:
        tally.lose(max(0, expected - seen), where, f"is malformed ({_describe(err)})")
    else:
        if seen < expected:
            tally.lose(expected - seen, where, "holds fewer messages than its index says (damaged channel ids?)")
    if outside:
        tally.lose(outside, where, "holds messages whose recorded time lies outside the chunk's (damaged)")
    found.sort(key=itemgetter(0))
    yield from found


def _connection(key: tuple[str, str], count: int, offered: list[Any]) -> BagConnection:
    reliable = all(q.reliability == QosReliability.RELIABLE for q in offered) if offered else None
    latched = all(q.durability == QosDurability.TRANSIENT_LOCAL for q in offered) if offered else None
    return BagConnection(key[0], key[1], count, reliable, latched)


def _describe(err: BaseException) -> str:
    """The error's message on one line (YAML and sqlite errors span several)."""
    text = " ".join(" ".join(str(a) for a in err.args).split()) if err.args else ""
    return text or type(err).__name__


# ------------------------------------------------------------------------- mcap repair
def _mcap_truncated(path: Path) -> bool:
    """True when an mcap file lacks its closing magic (the recorder never finished it)."""
    with path.open("rb") as f:
        head = f.read(len(_MCAP_MAGIC))
        if head != _MCAP_MAGIC:
            return False  # not mcap at all: let the reader report it
        size = f.seek(0, 2)
        if size < 2 * len(_MCAP_MAGIC):
            return True
        f.seek(size - len(_MCAP_MAGIC))
        return f.read() != _MCAP_MAGIC


def _complete_prefix(path: Path) -> tuple[int, int]:
    """(bytes of complete data-section records, file size) of an mcap file."""
    with path.open("rb") as f:
        size = f.seek(0, 2)
        pos = len(_MCAP_MAGIC)
        while True:
            f.seek(pos)
            head = f.read(9)
            if len(head) < 9:
                return pos, size
            opcode, length = head[0], int.from_bytes(head[1:], "little")
            end = pos + 9 + length
            if not 0x01 <= opcode <= 0x0F or opcode in (_MCAP_DATA_END, _MCAP_FOOTER) or end > size:
                return pos, size
            pos = end


def _repair_mcap(source: Path, target: Path) -> tuple[int, int, int, list[ChunkInfo]]:
    """Copy the complete data-section records of a cut or damaged mcap and close it with a DataEnd and
    a footer (no summary). Chunks that do not decompress or hold malformed records are left out.

    Returns (bytes kept, file size, chunks left out, an index of the chunks kept). The index is
    built from the chunks' own records, so a read merges them in time order as with an intact
    file's summary (a scan would refuse chunks whose times overlap); it is empty when messages
    also sit outside chunks, which only a scan reads.
    """
    kept, size = _complete_prefix(source)
    if kept <= len(_MCAP_MAGIC):
        raise CorruptBagError(f"{source}: truncated mcap file with no complete record")
    dropped, index, loose = 0, [], False
    with source.open("rb") as src, target.open("wb") as dst:
        dst.write(src.read(len(_MCAP_MAGIC)))
        pos = len(_MCAP_MAGIC)
        while pos < kept:
            head = src.read(9)
            length = int.from_bytes(head[1:], "little")
            body = src.read(length)
            pos += 9 + length
            if head[0] == 0x06:
                info = _chunk_index_entry(body, dst.tell())
                if info is None:
                    dropped += 1
                    continue
                index.append(info)
            loose = loose or head[0] == 0x05
            dst.write(head)
            dst.write(body)
        dst.write(bytes([_MCAP_DATA_END]) + struct.pack("<QI", 4, 0))            # DataEnd, no CRC
        dst.write(bytes([_MCAP_FOOTER]) + struct.pack("<QQQI", 20, 0, 0, 0))     # Footer, no summary
        dst.write(_MCAP_MAGIC)
    return kept, size, dropped, [] if loose else index


def _chunk_index_entry(body: bytes, offset: int) -> ChunkInfo | None:
    """The index entry of a chunk record's body (to sit at ``offset``), or None when it is damaged:
    it does not decompress to its size (or checksum, when set), or a record in it is malformed."""
    try:
        _, _, usize, crc, clen = struct.unpack_from("<QQQII", body)
        compression = body[32:32 + clen].decode()
        (csize,) = struct.unpack_from("<Q", body, 32 + clen)
        data = body[40 + clen:40 + clen + csize]
        if len(data) != csize:
            return None
        raw = mcap_decompress(data, compression, usize, crc)
        counts: dict[int, int] = {}
        first, last, pos = 1 << 64, -1, 0
        while pos < len(raw):
            opcode, length = raw[pos], int.from_bytes(raw[pos + 1:pos + 9], "little")
            if pos + 9 > len(raw) or length > len(raw) - pos - 9 or (opcode == 0x05 and length < 22):
                return None
            if opcode == 0x05:
                channel, _, log_time = struct.unpack_from("<HIQ", raw, pos + 9)
                counts[channel] = counts.get(channel, 0) + 1
                first, last = min(first, log_time), max(last, log_time)
            pos += 9 + length
    except _DAMAGE:
        return None
    if not counts:
        first = last = 0
    return ChunkInfo(first, last, offset, 9 + len(body), {}, 0, compression, csize, usize, counts)


# ----------------------------------------------------------------------------------- writing
class BagWriter:
    """A new rosbag2 recording; a context manager. ``storage`` is 'mcap' (default) or 'sqlite3'.

    ``typestore`` serializes message objects and supplies the message definitions
    stored in the bag; by default the ``distro`` one (add custom types to it with
    ``typestore.register``).
    """

    def __init__(self, path: str | Path, storage: str = "mcap", distro: str = "kilted",
                 typestore: Any | None = None) -> None:
        if storage not in STORAGES:
            raise BagError(f"unknown bag storage {storage!r}; expected one of {', '.join(STORAGES)}")
        self.path = Path(path).expanduser()
        self.storage = storage
        self.typestore = typestore if typestore is not None else typestore_for(distro)
        try:
            self._writer = Writer(self.path, version=9, storage_plugin=STORAGES[storage])
        except WriterError as err:  # the path exists: rosbags never overwrites
            raise BagError(f"cannot create bag {self.path}: {_describe(err)}") from err
        self._connections: dict[tuple[str, str], Any] = {}
        self._open = False

    def open(self) -> BagWriter:
        try:
            self._writer.open()
        except (WriterError, OSError) as err:
            raise BagError(f"cannot create bag {self.path}: {_describe(err)}") from err
        self._open = True
        return self

    def write(self, topic: str, msgtype: str, stamp_ns: int, message: Any) -> None:
        """Append one message (raw CDR bytes or a typestore message object) at ``stamp_ns``."""
        key = (topic, msgtype)
        try:
            if key not in self._connections:
                self._connections[key] = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
            if not isinstance(message, (bytes, bytearray, memoryview)):
                message = self.typestore.serialize_cdr(message, msgtype)
            self._writer.write(self._connections[key], int(stamp_ns), bytes(message))
        except (WriterError, TypesysError, SerdeError, KeyError, AttributeError, TypeError, struct.error) as err:
            raise BagError(f"cannot write {msgtype} on {topic} to {self.path}: {_describe(err)}") from err

    def close(self) -> None:
        if self._open:
            self._open = False
            self._writer.close()

    def __enter__(self) -> BagWriter:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def write_bag(path: str | Path, records: Iterable[tuple[str, str, int, Any]], storage: str = "mcap",
              distro: str = "kilted", typestore: Any | None = None) -> Path:
    """Write (topic, msgtype, stamp_ns, message) records to a new bag directory; returns its path."""
    with BagWriter(path, storage, distro, typestore) as writer:
        for topic, msgtype, stamp_ns, message in records:
            writer.write(topic, msgtype, stamp_ns, message)
    return writer.path

