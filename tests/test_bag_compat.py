"""rosbag2-written bag properties that made readers lose messages, reproduced on rosbags-written bags.

Each fixture (tests/bag_fixtures.py) carries one property of rosbag2's own test bags;
where a plain rosbags reader trips over it, the test shows that first (the fixture
really has the property), then that magma_ros.bags reads every message or says in one
line how many it could not and why.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag2 import Reader

from magma_ros.bags import (
    BagError,
    BagReader,
    CorruptBagError,
    IncompleteBagError,
    Unreadable,
    open_bag,
    read_all,
    typestore_for,
)
from tests.bag_fixtures import (
    SERVICE_EVENT_TOPIC,
    SERVICE_EVENT_TYPE,
    STORAGES,
    SUFFIX,
    T0,
    add_chunk_crcs,
    chunk_counts,
    copy,
    cut,
    flip,
    load_metadata,
    mcap_chunks,
    recorded,
    sample_records,
    set_starting_time,
    storage_file,
    talker_records,
    write_qos_bag,
    write_records,
    write_service_event_bag,
    write_split_bag,
)

RECORDS = sample_records(n_images=12)          # 55 messages over 0.6 s, one mcap chunk
N = len(RECORDS)
BIG = sample_records(n_images=12, width=320, height=240)  # 55 messages, three mcap chunks


def rosbags_count(path: Path, from_metadata_start: bool = False) -> int:
    """How many messages a plain rosbags reader yields (from metadata.yaml's start, as a player would)."""
    with Reader(path) as reader:
        start = reader.start_time if from_metadata_start else None
        return sum(1 for _ in reader.messages(start=start))


def full_line(path: Path, n: int = N) -> str:
    return f"bag {path}: read {n} of {n} messages announced by metadata.yaml"


def read_everything(path: Path) -> tuple[list, object]:
    with BagReader(path) as bag:
        messages = list(bag.messages())  # strict: raises if anything is missing
        return messages, bag.result()


# --------------------------------------------------------------- 6. split files, later start time
@pytest.mark.parametrize("storage", STORAGES)
def test_split_bag_whose_metadata_starts_late_is_read_from_its_first_stored_message(storage, tmp_path) -> None:
    path = write_split_bag(tmp_path / "wbag", RECORDS, storage, parts=3)
    info = load_metadata(path)["rosbag2_bagfile_information"]
    assert info["relative_file_paths"] == [f"wbag_{i}{SUFFIX[storage]}" for i in range(3)]
    assert info["starting_time"]["nanoseconds_since_epoch"] > RECORDS[0][2]  # the property...
    assert rosbags_count(path, from_metadata_start=True) == 18             # ...loses 37 of 55 that way
    with BagReader(path) as bag:
        assert bag.files == tuple(info["relative_file_paths"])
        assert bag.start_ns == RECORDS[0][2] and bag.end_ns == RECORDS[-1][2]
        assert bag.message_count == bag.announced == N
        got = [(m.topic, m.timestamp) for m in bag.messages()]
        result = bag.result()
    assert got == recorded(RECORDS)
    assert (result.announced, result.stored, result.read, result.complete) == (N, N, N, True)
    assert result.line() == full_line(path)


@pytest.mark.parametrize("storage", STORAGES)
def test_split_files_that_overlap_in_time_are_merged_in_time_order(storage, tmp_path) -> None:
    # Two files whose time ranges interleave (a writer that split mid-burst): one timeline.
    odd, even = RECORDS[1::2], RECORDS[0::2]
    path = write_split_bag(tmp_path / "wbag", [*odd, *even], storage, parts=2, start_from_last_file=False)
    messages, result = read_everything(path)
    assert [(m.topic, m.timestamp) for m in messages] == recorded(RECORDS)
    assert result.complete and result.read == N


@pytest.mark.parametrize("storage", STORAGES)
def test_reindexed_message_compressed_bag_with_late_start_reads_everything(storage, tmp_path) -> None:
    path = set_starting_time(write_records(tmp_path / "reindexed", RECORDS, storage, compression="message"),
                             RECORDS[50][2])
    assert load_metadata(path)["rosbag2_bagfile_information"]["compression_mode"] == "message"
    assert rosbags_count(path, from_metadata_start=True) == 5
    messages, result = read_everything(path)
    assert [(m.topic, m.timestamp) for m in messages] == recorded(RECORDS)
    ts = typestore_for("kilted")
    decoded = ts.deserialize_cdr(messages[0].data, messages[0].msgtype)  # decompressed to plain CDR
    assert decoded.data == "pick up the red cube"
    assert result.line() == full_line(path)


# --------------------------------------------------------------- 7. QoS differing in deadline/lifespan
@pytest.mark.parametrize("storage", STORAGES)
def test_talker_bag_whose_metadata_qos_differs_in_deadline_and_lifespan_reads_all_20(storage, tmp_path) -> None:
    path = write_qos_bag(tmp_path / "talker", talker_records(20), storage)
    with AnyReader([path], default_typestore=typestore_for("kilted")) as plain:
        assert plain.message_count == 20 and sum(1 for _ in plain.messages()) == 0  # the property
    with BagReader(path) as bag:
        (conn,) = bag.connections
        assert (conn.topic, conn.count, conn.reliable, conn.transient_local) == ("/chatter", 20, True, False)
        texts = [bag.deserialize(m).data for m in bag.messages()]
        assert bag.result().line() == full_line(path, 20)
    assert texts == [f"Hello World: {k}" for k in range(1, 21)]


# --------------------------------------------------------------- 8. zstd file compression
@pytest.mark.parametrize("storage", STORAGES)
def test_zstd_file_compressed_bag_is_read(storage, tmp_path) -> None:
    path = write_records(tmp_path / "compressed", BIG, storage, compression="file")
    info = load_metadata(path)["rosbag2_bagfile_information"]
    assert (info["compression_format"], info["compression_mode"]) == ("zstd", "file")
    (stored,) = info["relative_file_paths"]
    assert stored == f"compressed{SUFFIX[storage]}.zstd" and [p.name for p in path.iterdir()
                                                              if p.name != "metadata.yaml"] == [stored]
    messages, result = read_everything(path)
    assert [(m.topic, m.timestamp) for m in messages] == recorded(BIG)
    assert result.line() == full_line(path)
    with open_bag(path / stored) as bag:  # the compressed file on its own
        assert bag.storage == storage and bag.announced is None
        assert len(list(bag.messages())) == N
        assert bag.result().line() == f"bag {path / stored}: read {N} of {N} messages"


def test_zstd_file_compressed_mcap_cut_short_is_read_up_to_the_break(tmp_path) -> None:
    path = write_records(tmp_path / "compressed", BIG, "mcap", compression="file")
    damaged = cut(path, tmp_path / "cut", fraction=0.7)
    first_two_chunks = sum(n for _, n in chunk_counts(storage_file(write_records(tmp_path / "plain", BIG)))[:2])
    with BagReader(damaged) as bag:
        assert len(bag.warnings) == 2 and "zstd stream damaged" in bag.warnings[0]
        assert "cut short where its zstd stream breaks" in bag.warnings[1]
        got = list(bag.messages(strict=False))
        result = bag.result()
    assert [(m.topic, m.timestamp) for m in got] == recorded(BIG)[:first_two_chunks] and first_two_chunks == 43
    assert result.lost == N - 43
    assert result.line().startswith(f"bag {damaged}: read 43 of 55 messages (metadata.yaml announces 55, the "
                                    "storage files hold 43); 12 unreadable: 12 announced but not in the storage "
                                    "files (compressed.mcap.zstd decompresses only to byte ")


@pytest.mark.parametrize("storage", STORAGES)
def test_zstd_file_damaged_at_its_start_is_a_one_line_error(storage, tmp_path) -> None:
    path = write_records(tmp_path / "compressed", BIG, storage, compression="file")
    damaged = copy(path, tmp_path / "flipped")
    flip(storage_file(damaged), 6)  # inside the zstd frame header
    with pytest.raises(CorruptBagError) as info:
        open_bag(damaged)
    assert str(info.value).startswith(f"cannot read bag {damaged}: compressed{SUFFIX[storage]}.zstd does not "
                                      "decompress (")
    assert "\n" not in str(info.value)


# --------------------------------------------------------------- 10. service-event topics
@pytest.mark.parametrize("storage", STORAGES)
def test_service_event_topics_are_skipped_with_counts_and_the_rest_is_read(storage, tmp_path) -> None:
    path = write_service_event_bag(tmp_path / "jazzy", RECORDS, storage, events=4)
    with pytest.raises(AnyReaderError, match="Could not parse"):  # the property: refused as a whole
        AnyReader([path], default_typestore=typestore_for("kilted")).open()
    reason = "skipped, its type's stored definition is a service (.srv) one, which no message parser reads"
    with BagReader(path) as bag:
        assert bag.skipped == (Unreadable(4, reason, SERVICE_EVENT_TOPIC),)
        assert bag.warnings == [f"{path}: 4 message(s) cannot be decoded and are skipped: "
                                f"{SERVICE_EVENT_TOPIC}: 4 messages {reason}"]
        assert SERVICE_EVENT_TYPE not in {c.msgtype for c in bag.connections}
        messages = list(bag.messages())  # skipped streams are reported, not an incomplete read
        result = bag.result()
        images = [bag.deserialize(m) for m in messages if m.topic == "/camera/color/image_raw"]
    assert [(m.topic, m.timestamp) for m in messages] == recorded(RECORDS)
    assert len(images) == 12 and images[0].width == 64
    assert (result.announced, result.read, result.unread, result.lost, result.complete) == (N + 4, N, 4, 0, True)
    assert result.line() == (f"bag {path}: read {N} of {N + 4} messages announced by metadata.yaml; 4 unreadable: "
                             f"4 messages on {SERVICE_EVENT_TOPIC}: {reason}")


# --------------------------------------------------------------- 9. byte damage
@pytest.fixture(scope="module")
def chunked(tmp_path_factory) -> dict[str, Path]:
    """The 3-chunk episode as mcap with zstd chunks and with plain chunks, both with chunk CRCs (as
    rosbag2 writes them), and plain without CRCs (as rosbags writes them)."""
    root = tmp_path_factory.mktemp("chunked")
    bags = {"zstd": write_records(root / "zstd", BIG, compression="chunks"),
            "plain": write_records(root / "plain", BIG), "nocrc": write_records(root / "nocrc", BIG)}
    add_chunk_crcs(storage_file(bags["zstd"]))
    add_chunk_crcs(storage_file(bags["plain"]))
    return bags


def damaged_copy(chunked: dict[str, Path], kind: str, tmp_path: Path, offset_of: object,
                 mask: int = 0x40) -> tuple[Path, list]:
    target = copy(chunked[kind], tmp_path / f"damaged_{kind}")
    chunks = mcap_chunks(storage_file(target))
    flip(storage_file(target), offset_of(chunks), mask)
    return target, chunks


@pytest.mark.parametrize("kind, mask, why", [
    ("zstd", 0xFF, "Unable to decompress Zstandard data: Data corruption detected"),  # ZstdError
    ("zstd", 0x40, "Chunk checksum mismatch."),             # decompresses, to the wrong bytes
    ("plain", 0x40, "Chunk checksum mismatch."),
])
def test_flipped_byte_in_a_chunk_loses_that_chunk_only(chunked, tmp_path, kind, mask, why) -> None:
    path, chunks = damaged_copy(chunked, kind, tmp_path, lambda c: c[1].data_offset + c[1].data_size // 2, mask)
    counts = chunk_counts(storage_file(chunked[kind]))
    lost = counts[1][1]
    expected = recorded(BIG)[:counts[0][1]] + recorded(BIG)[counts[0][1] + lost:]
    got: list = []
    with pytest.raises(IncompleteBagError) as info, BagReader(path) as bag:
        assert bag.warnings == []
        got.extend((m.topic, m.timestamp) for m in bag.messages())
    assert got == expected and lost == 23
    assert str(info.value) == (f"bag {path}: read {N - lost} of {N} messages announced by metadata.yaml; "
                               f"{lost} unreadable: {lost} messages: {kind}.mcap chunk at byte {chunks[1].offset} "
                               f"is damaged ({why})")


def test_record_length_damaged_in_an_unchecked_chunk_loses_the_rest_of_that_chunk(chunked, tmp_path) -> None:
    # No CRC (rosbags' writer): the damage is found by the record parser (a huge length), not a checksum.
    path, chunks = damaged_copy(chunked, "nocrc", tmp_path, lambda c: c[1].data_offset + 8)  # 1st record's length
    messages, result = read_all(path)
    assert len(messages) == N - 23 and result.lost == 23
    assert result.line().startswith(f"bag {path}: read 32 of 55 messages announced by metadata.yaml; 23 unreadable:"
                                    f" 23 messages: nocrc.mcap chunk at byte {chunks[1].offset} is malformed "
                                    "(record at byte 0 claims ")


def test_message_time_damaged_in_an_unchecked_chunk_drops_that_message_and_keeps_the_order(chunked,
                                                                                         tmp_path) -> None:
    # log_time of chunk 1's first message (record: opcode, length u64, channel u16, sequence u32, log_time u64)
    path, chunks = damaged_copy(chunked, "nocrc", tmp_path, lambda c: c[1].data_offset + 9 + 6 + 7)
    counts = chunk_counts(storage_file(chunked["nocrc"]))
    messages, result = read_all(path)
    got = [(m.topic, m.timestamp) for m in messages]
    first_of_chunk_1 = recorded(BIG)[counts[0][1]]
    assert got == [r for r in recorded(BIG) if r != first_of_chunk_1]  # in order, the damaged one left out
    assert result.line() == (f"bag {path}: read 54 of 55 messages announced by metadata.yaml; 1 unreadable: "
                             f"1 message: nocrc.mcap chunk at byte {chunks[1].offset} holds messages whose recorded "
                             "time lies outside the chunk's (damaged)")


def test_damaged_summary_is_read_by_scanning_with_one_warning(chunked, tmp_path) -> None:
    path = copy(chunked["zstd"], tmp_path / "summary")
    size = storage_file(path).stat().st_size
    flip(storage_file(path), size - 200)  # in the statistics record: its counts no longer match the chunks
    with BagReader(path) as bag:
        assert len(bag.warnings) == 1 and "damaged index (statistics disagree with the chunk index)" in bag.warnings[0]
        got = [(m.topic, m.timestamp) for m in bag.messages()]
        assert bag.result().line() == full_line(path)
    assert got == recorded(BIG)


@pytest.mark.parametrize("fraction, chunks_kept", [(0.3, 0), (0.45, 1), (0.9, 2)])
def test_truncation_reads_the_complete_chunks_and_counts_the_rest(chunked, tmp_path, fraction, chunks_kept) -> None:
    counts = chunk_counts(storage_file(chunked["plain"]))
    path = cut(chunked["plain"], tmp_path / "cut", fraction=fraction)
    if not chunks_kept:
        with pytest.raises(CorruptBagError) as info:
            open_bag(path)
        assert str(info.value).startswith(f"bag {path} holds no complete message: plain.mcap is truncated")
        return
    kept = sum(n for _, n in counts[:chunks_kept])
    messages, result = read_all(path)
    assert [(m.topic, m.timestamp) for m in messages] == recorded(BIG)[:kept]
    assert (result.read, result.lost) == (kept, N - kept)
    assert result.line().startswith(f"bag {path}: read {kept} of {N} messages (metadata.yaml announces {N}, the "
                                    f"storage files hold {kept}); {N - kept} unreadable: {N - kept} announced but "
                                    "not in the storage files (plain.mcap is truncated (recording interrupted?)")


def test_cut_mcap_whose_chunks_overlap_in_time_is_read_in_time_order(tmp_path) -> None:
    """A recorder writes in arrival order: chunks can overlap in time. Without a summary (cut off),
    a plain scan refuses such a file; the repaired file's rebuilt index merges the chunks."""
    frames_first = sorted(BIG, key=lambda r: (r[0] != "/camera/color/image_raw", r[2]))
    path = write_records(tmp_path / "overlap", frames_first)
    chunks = mcap_chunks(storage_file(path))
    assert len(chunks) == 3
    damaged = cut(path, tmp_path / "cut", keep=chunks[-1].offset + 9 + chunks[-1].length + 10)  # no summary
    scan = Reader(storage_file(damaged))  # rosbags on the storage file
    with pytest.raises(Exception, match="File end magic is invalid"):
        scan.open()
    with BagReader(damaged) as bag:
        assert len(bag.warnings) == 1 and "truncated" in bag.warnings[0]
        got = [(m.topic, m.timestamp) for m in bag.messages()]
        assert bag.result().line() == full_line(damaged)
    assert got == recorded(BIG)


def test_byte_flips_anywhere_never_escape_as_a_traceback(chunked, tmp_path) -> None:
    """Every offset class at once: a flipped byte gives the recorded messages (some maybe lost, each counted)
    or a one-line BagError; never another exception."""
    source = storage_file(chunked["zstd"])
    size = source.stat().st_size
    outcomes = {"complete": 0, "counted loss": 0, "error": 0}
    for offset in range(0, size, max(1, size // 50)):
        path = copy(chunked["zstd"], tmp_path / f"flip_{offset}")
        flip(storage_file(path), offset, 0x5A)
        try:
            messages, result = read_all(path)
        except BagError as err:
            assert "\n" not in str(err)
            outcomes["error"] += 1
            continue
        got = [(m.topic, m.timestamp) for m in messages]
        assert set(got) <= set(recorded(BIG)) and got == sorted(got, key=lambda x: x[1])
        assert result.read + result.unread >= N and "\n" not in result.line()
        outcomes["complete" if result.complete else "counted loss"] += 1
    assert outcomes["complete"] and outcomes["counted loss"] and outcomes["error"], outcomes


# --------------------------------------------------------------- split bag with a bad file
@pytest.mark.parametrize("storage", STORAGES)
def test_split_bag_with_a_missing_or_unreadable_file_reads_the_others_and_counts_it(storage, tmp_path) -> None:
    path = write_split_bag(tmp_path / "wbag", RECORDS, storage, parts=3)
    middle = load_metadata(path)["rosbag2_bagfile_information"]["files"][1]
    n_middle = middle["message_count"]
    missing = copy(path, tmp_path / "missing")
    (missing / middle["path"]).unlink()
    garbage = copy(path, tmp_path / "garbage")
    (garbage / middle["path"]).write_bytes(b"not a storage file" * 20)
    expected = recorded(RECORDS)[:18] + recorded(RECORDS)[18 + n_middle:]  # files of 18, 19, 18
    for bag_path, why in [(missing, f"{middle['path']} is listed in metadata.yaml but missing"),
                          (garbage, f"{middle['path']} cannot be read (cannot read bag {garbage}: ")]:
        got: list = []
        with pytest.raises(IncompleteBagError) as info, BagReader(bag_path) as bag:
            assert len(bag.warnings) == 1 and middle["path"] in bag.warnings[0]
            got.extend((m.topic, m.timestamp) for m in bag.messages())
        assert got == expected and n_middle == 19
        assert str(info.value).startswith(
            f"bag {bag_path}: read {N - 19} of {N} messages announced by metadata.yaml; 19 unreadable: "
            f"19 messages: {why}")
        with BagReader(bag_path) as bag:  # the topics named one by one (as the player does): same account
            got = [(m.topic, m.timestamp) for m in bag.messages(bag.connections, strict=False)]
            result = bag.result()
        assert got == expected and (result.announced, result.stored, result.lost) == (N, N - 19, 19)
        assert f"19 announced but not in the storage files ({why}" in result.line()


def test_a_window_read_does_not_claim_completeness_it_cannot_check(tmp_path) -> None:
    path = write_split_bag(tmp_path / "wbag", RECORDS, "mcap", parts=3)
    with BagReader(path) as bag:
        got = list(bag.messages(start_ns=T0 + 300_000_000))
        result = bag.result()
    assert len(got) == sum(1 for r in RECORDS if r[2] >= T0 + 300_000_000)
    assert (result.announced, result.stored, result.read) == (None, None, len(got))
