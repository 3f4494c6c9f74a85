"""Following a log directory: rotation (new file, rename, truncation, deletion mid-read), the budget and
backlog, entries too long to keep, and resuming from the state file without counting a line twice."""
from __future__ import annotations

import os
from pathlib import Path

from logsupport import Recorder, csv_record

from exporter.serverlog import csvlog, positions
from exporter.serverlog.counters import LogCounters
from exporter.serverlog.entry import MAX_ENTRY_BYTES
from exporter.serverlog.reader import LogReader
from exporter.serverlog.source import FileSource, LogFile, SourceError


def reader(path: Path, state: Path | None = None, source=None) -> tuple[LogReader, Recorder, LogCounters]:
    sink, counters = Recorder(), LogCounters()
    return LogReader(source or FileSource(path), "csvlog", csvlog.parse, sink, counters,
                     positions.load(state)), sink, counters


def write(path: Path, *messages: str, mode: str = "ab") -> None:
    with open(path, mode) as fh:
        for message in messages:
            fh.write(csv_record(message))


def messages(sink: Recorder) -> list[str]:
    return [entry[4] for entry in sink.entries]


def test_first_start_begins_at_the_end_then_follows(tmp_path):
    write(tmp_path / "a.csv", "history")
    read, sink, counters = reader(tmp_path)
    read.cycle(1 << 20)
    assert messages(sink) == []
    write(tmp_path / "a.csv", "one")
    (tmp_path / "a.log").write_text("stderr file beside: not this format's\n")
    read.cycle(1 << 20)
    assert messages(sink) == ["one"] and counters.backlog_bytes == 0


def test_rotation_new_file_rename_truncation_deletion(tmp_path):
    write(tmp_path / "a.csv", "old")
    read, sink, counters = reader(tmp_path)
    read.cycle(1 << 20)
    write(tmp_path / "a.csv", "a1")
    os.utime(tmp_path / "a.csv", (1, 1))  # older than the next file: finished first
    write(tmp_path / "b.csv", "b1")
    read.cycle(1 << 20)
    assert messages(sink) == ["a1", "b1"]
    os.rename(tmp_path / "b.csv", tmp_path / "b.csv.1.csv")
    write(tmp_path / "b.csv.1.csv", "b2")
    read.cycle(1 << 20)
    write(tmp_path / "a.csv", "x", mode="wb")  # truncated and rewritten: shorter than its position
    read.cycle(1 << 20)
    (tmp_path / "a.csv").unlink()
    read.cycle(1 << 20)
    assert messages(sink) == ["a1", "b1", "b2", "x"]
    assert counters.rotations.values == {("new_file",): 1, ("renamed",): 1, ("truncated",): 1, ("deleted",): 1}


class VanishingSource(FileSource):
    """Deletes the file after the first chunk was read: the file goes away in the middle of a read."""

    def read(self, file: LogFile, offset: int, length: int) -> bytes:
        if offset > 0:
            (self.path / file.name).unlink(missing_ok=True)
        return super().read(file, offset, length)


def test_deletion_in_the_middle_of_a_read(tmp_path, monkeypatch):
    monkeypatch.setattr("exporter.serverlog.reader.CHUNK_BYTES", 4096)
    read, sink, counters = reader(tmp_path, source=VanishingSource(tmp_path))
    read.cycle(1 << 20)
    write(tmp_path / "a.csv", *[f"m{i}" for i in range(100)])
    read.cycle(1 << 20)
    assert 0 < len(sink.entries) < 100 and counters.rotations.values == {("new_file",): 1, ("deleted",): 1}
    assert read.positions == {}


def test_budget_leaves_a_backlog_read_in_later_cycles(tmp_path):
    read, sink, counters = reader(tmp_path)
    read.cycle(1 << 20)
    write(tmp_path / "a.csv", *[f"m{i}" for i in range(5000)])
    size = (tmp_path / "a.csv").stat().st_size
    read.cycle(64 * 1024)
    first = len(sink.entries)
    assert 0 < first < 5000 and counters.read_bytes <= 64 * 1024
    assert counters.backlog_bytes == size - read.positions[next(iter(read.positions))].offset > 0
    for _ in range(size // (64 * 1024) + 1):
        read.cycle(64 * 1024)
    assert messages(sink) == [f"m{i}" for i in range(5000)] and counters.backlog_bytes == 0


def test_entry_cut_at_the_end_of_the_file_waits(tmp_path):
    read, sink, _ = reader(tmp_path)
    read.cycle(1 << 20)
    record = csv_record("multi\nline")
    with open(tmp_path / "a.csv", "ab") as fh:
        fh.write(record[:30])
    read.cycle(1 << 20)
    assert sink.entries == []
    with open(tmp_path / "a.csv", "ab") as fh:
        fh.write(record[30:])
    read.cycle(1 << 20)
    assert messages(sink) == ["multi\nline"]


def test_an_entry_larger_than_kept_is_skipped_and_counted(tmp_path):
    read, sink, counters = reader(tmp_path)
    read.cycle(1 << 20)
    write(tmp_path / "a.csv", "before", "x" * (MAX_ENTRY_BYTES + 100), "after")
    for _ in range(4):
        read.cycle(64 << 20)
    assert messages(sink)[0] == "before" and messages(sink)[-1] == "after" and counters.parse_errors >= 1


def test_restart_resumes_at_the_saved_position(tmp_path):
    logs, state = tmp_path / "log", tmp_path / "state.json"
    logs.mkdir()
    read, sink, _ = reader(logs, state)
    read.cycle(1 << 20)
    write(logs / "a.csv", "one", "two")
    read.cycle(1 << 20)
    assert read.positions is not None and positions.save(state, read.positions)
    write(logs / "a.csv", "three")  # written while pgvigil is down
    again, sink2, _ = reader(logs, state)
    again.cycle(1 << 20)
    assert messages(sink) == ["one", "two"] and messages(sink2) == ["three"]


def test_a_reused_inode_is_a_new_file(tmp_path):
    logs, state = tmp_path / "log", tmp_path / "state.json"
    logs.mkdir()
    read, _, _ = reader(logs, state)
    read.cycle(1 << 20)
    write(logs / "a.csv", "one", "two")
    read.cycle(1 << 20)
    assert read.positions is not None
    positions.save(state, read.positions)
    with open(logs / "a.csv", "r+b") as fh:  # same inode, other first bytes
        fh.write(csv_record("new", user="bob"))
    again, sink, counters = reader(logs, state)
    again.cycle(1 << 20)
    assert messages(sink)[0] == "new" and counters.rotations.values == {("new_file",): 1}


def test_unreadable_state_file_starts_at_the_end(tmp_path, caplog):
    state = tmp_path / "state.json"
    state.write_text("{not json")
    assert positions.load(state) is None
    assert "is not a pgvigil log state" in caplog.text


def test_missing_log_path_is_a_reason(tmp_path):
    read, _, _ = reader(tmp_path / "absent")
    try:
        read.cycle(1 << 20)
    except SourceError as exc:
        assert exc.reason == "not_found"
    else:
        raise AssertionError("no error")
