"""rosbag2 recordings (mcap or sqlite3) read and written without ROS, via ``rosbags``.

ROS-free: the replay node, the recorder and the dataset builder share this module.
Messages stay raw CDR bytes (exactly what goes over the wire), so a player can
publish them without decoding; :meth:`BagReader.deserialize` decodes one when a
caller needs fields.

Reading::

    with BagReader("episode_0001") as bag:          # a bag directory, .mcap or .db3 file
        for conn in bag.connections: ...            # topic, msgtype, count, recorded QoS
        for msg in bag.messages(): ...              # BagMessage(topic, msgtype, timestamp, data)

Everything that goes wrong with a bag is a :class:`BagError`; a missing path is a
:class:`BagNotFoundError`, an unreadable one a :class:`CorruptBagError`. Damaged
recordings degrade instead of failing where that is safe, each time with a line
in :attr:`BagReader.warnings` (also logged):

- an mcap file cut short (a recorder killed mid-write) is read up to its last
  complete record from a repaired temporary copy (one file copy, on open);
- a bag directory whose metadata.yaml is missing has its storage files read directly;
- a read error in the middle of a bag ends :meth:`BagReader.messages` with a
  :class:`CorruptBagError` after every message before it has been yielded.

Writing (test bags, recordings)::

    write_bag("out", [(topic, msgtype, stamp_ns, message), ...], storage="mcap")

where ``message`` is raw CDR bytes or a message object of the writer's typestore.
Bags are rosbag2 format version 9, readable by ``ros2 bag`` on Iron and newer.
"""

from __future__ import annotations

import logging
import struct
import tempfile
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import apsw
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.interfaces import ConnectionExtRosbag2, QosDurability, QosReliability
from rosbags.rosbag2 import ReaderError, StoragePlugin, Writer, WriterError
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, TypesysError, get_typestore

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
class BagReader:
    """A rosbag2 recording opened for reading; a context manager (open on enter, closed on exit).

    ``path`` is a bag directory (with metadata.yaml) or one ``.mcap`` / ``.db3`` file.
    ``distro`` picks the typestore for bags without embedded message definitions.
    """

    def __init__(self, path: str | Path, distro: str = "kilted") -> None:
        self.path = Path(path).expanduser()
        self.default_typestore = typestore_for(distro)
        self.warnings: list[str] = []
        self._reader: AnyReader | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._streams: dict[tuple[str, str], list[Any]] = {}
        self.connections: tuple[BagConnection, ...] = ()
        self.storage = ""

    # -- opening ---------------------------------------------------------------------
    def open(self) -> BagReader:
        if self._reader is not None:
            return self
        self.warnings = []
        try:
            files = self._storage_files()
            self.storage = _SUFFIXES[files[0].suffix]
            paths = self._repaired(files)
        except BagError:  # before OSError: BagNotFoundError is one
            self._cleanup()
            raise
        except OSError as err:  # unreadable file or directory
            self._cleanup()
            raise CorruptBagError(f"cannot read bag {self.path}: {err}") from err
        if paths is None:
            paths = [self.path] if self._has_metadata() else files
        try:
            reader = AnyReader(paths, default_typestore=self.default_typestore)
            reader.open()
        except FileNotFoundError as err:
            self._cleanup()
            raise BagNotFoundError(f"bag {self.path}: {err}") from None
        except (AnyReaderError, ReaderError, TypesysError, OSError, ValueError, KeyError, struct.error) as err:
            self._cleanup()
            raise CorruptBagError(f"cannot read bag {self.path}: {_describe(err)}") from err
        self._reader = reader
        self._index(reader)
        if self._tmp is not None and not self.message_count:
            self.close()
            raise CorruptBagError(f"bag {self.path} is truncated before its first complete message")
        for warning in self.warnings:
            log.warning(warning)
        return self

    def _has_metadata(self) -> bool:
        return self.path.is_dir() and (self.path / "metadata.yaml").is_file()

    def _storage_files(self) -> list[Path]:
        """The storage files of the bag, checked to exist and to be of one known kind."""
        if not self.path.exists():
            raise BagNotFoundError(f"bag not found: {self.path}")
        if self.path.is_file():
            if self.path.suffix == ".bag":
                raise CorruptBagError(f"{self.path} is a ROS 1 bag; convert it first (rosbags-convert)")
            if self.path.suffix not in _SUFFIXES:
                raise CorruptBagError(f"{self.path} is not a rosbag2 storage file (expected .mcap or .db3)")
            return [self.path]
        files = sorted(p for p in self.path.iterdir() if p.suffix in _SUFFIXES and p.is_file())
        if not files:
            raise CorruptBagError(f"{self.path} holds no .mcap or .db3 storage file")
        if len({p.suffix for p in files}) > 1:
            raise CorruptBagError(f"{self.path} mixes .mcap and .db3 files")
        if not self._has_metadata():
            self._warn(f"{self.path}: metadata.yaml missing (recording not closed cleanly?); "
                       f"reading {len(files)} storage file(s) directly")
        return files

    def _repaired(self, files: list[Path]) -> list[Path] | None:
        """Repaired copies of the bag's mcap files when any is cut short, else None."""
        if files[0].suffix != ".mcap" or not any(_mcap_truncated(f) for f in files):
            return None
        self._tmp = tempfile.TemporaryDirectory(prefix="magma_ros_bag_")
        repaired = []
        for f in files:
            if not _mcap_truncated(f):
                repaired.append(f)
                continue
            target = Path(self._tmp.name) / f.name
            kept, size = _repair_mcap(f, target)
            self._warn(f"{f}: mcap file is truncated (recording interrupted?); reading its first "
                       f"{kept} of {size} bytes, up to the last complete record")
            repaired.append(target)
        return repaired

    def _index(self, reader: AnyReader) -> None:
        streams: dict[tuple[str, str], list[Any]] = {}
        for conn in reader.connections:
            streams.setdefault((conn.topic, conn.msgtype), []).append(conn)
        self._streams = streams
        self.connections = tuple(_connection(key, conns) for key, conns in streams.items())

    def _warn(self, message: str) -> None:
        """Note a degradation; it is logged only once the bag has opened (failures say enough)."""
        self.warnings.append(message)

    # -- queries -----------------------------------------------------------------------
    @property
    def reader(self) -> AnyReader:
        if self._reader is None:
            raise BagError(f"bag {self.path} is not open")
        return self._reader

    @property
    def start_ns(self) -> int:
        """Recording time of the first message (ns); 0 for an empty bag."""
        return self.reader.start_time if self.message_count else 0

    @property
    def end_ns(self) -> int:
        """Recording time of the last message (ns); 0 for an empty bag."""
        return self.reader.end_time - 1 if self.message_count else 0

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def message_count(self) -> int:
        return sum(c.count for c in self.connections)

    def messages(self, connections: Collection[BagConnection] | None = None,
                 start_ns: int | None = None, stop_ns: int | None = None) -> Iterator[BagMessage]:
        """Messages in recording-time order, optionally of some connections and a time window.

        A read error part-way ends the iteration with :class:`CorruptBagError` after
        every message before it has been yielded.
        """
        selected = self.connections if connections is None else connections
        conns = [c for s in selected for c in self._streams.get((s.topic, s.msgtype), [])]
        if not conns:
            return
        count = 0
        try:
            for conn, timestamp, data in self.reader.messages(conns, start=start_ns, stop=stop_ns):
                yield BagMessage(conn.topic, conn.msgtype, timestamp, data)
                count += 1
        except (AnyReaderError, ReaderError, apsw.Error, OSError, ValueError, KeyError, IndexError,
                struct.error) as err:  # apsw: sqlite pages missing or malformed
            raise CorruptBagError(f"bag {self.path} is corrupt after {count} message(s): {_describe(err)}") from err

    def deserialize(self, message: BagMessage) -> Any:
        """Decode a message's CDR bytes into a rosbags message object."""
        store = self.reader.typestore if message.msgtype in self.reader.typestore.fielddefs \
            else self.default_typestore
        try:
            return store.deserialize_cdr(message.data, message.msgtype)
        except (SerdeError, TypesysError, KeyError, struct.error, ValueError, IndexError) as err:
            raise CorruptBagError(f"cannot decode {message.msgtype} on {message.topic} "
                                  f"at {message.timestamp}: {_describe(err)}") from err

    def starts_with_header(self, msgtype: str) -> bool:
        """Whether the type's first field is a std_msgs/Header (its stamp sits at CDR offset 4)."""
        for store in (self.reader.typestore, self.default_typestore):
            if msgtype in store.fielddefs:
                fields = store.fielddefs[msgtype][1]
                return bool(fields) and fields[0][1][1] == "std_msgs/msg/Header"
        return False

    # -- closing -----------------------------------------------------------------------
    def close(self) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            finally:
                self._reader = None
        self._cleanup()

    def _cleanup(self) -> None:
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


def _connection(key: tuple[str, str], conns: list[Any]) -> BagConnection:
    offered = [q for c in conns if isinstance(c.ext, ConnectionExtRosbag2) for q in c.ext.offered_qos_profiles]
    reliable = all(q.reliability == QosReliability.RELIABLE for q in offered) if offered else None
    latched = all(q.durability == QosDurability.TRANSIENT_LOCAL for q in offered) if offered else None
    return BagConnection(key[0], key[1], sum(c.msgcount for c in conns), reliable, latched)


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


def _repair_mcap(source: Path, target: Path) -> tuple[int, int]:
    """Copy the complete records of a truncated mcap and close it with a DataEnd and a footer."""
    kept, size = _complete_prefix(source)
    if kept <= len(_MCAP_MAGIC):
        raise CorruptBagError(f"{source}: truncated mcap file with no complete record")
    with source.open("rb") as src, target.open("wb") as dst:
        remaining = kept
        while remaining:
            chunk = src.read(min(remaining, 1 << 22))
            if not chunk:
                break
            dst.write(chunk)
            remaining -= len(chunk)
        dst.write(bytes([_MCAP_DATA_END]) + struct.pack("<QI", 4, 0))            # DataEnd, no CRC
        dst.write(bytes([_MCAP_FOOTER]) + struct.pack("<QQQI", 20, 0, 0, 0))     # Footer, no summary
        dst.write(_MCAP_MAGIC)
    return kept, size


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

