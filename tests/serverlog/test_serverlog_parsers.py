"""The three formats parsed from bytes: multi-line entries, entries cut by a read, bytes that are not UTF-8."""
from __future__ import annotations

import json

import pytest
from logsupport import Recorder, csv_record

from exporter.serverlog import csvlog, jsonlog
from exporter.serverlog.stderr import PrefixError, StderrParser, prefix_pattern


def test_csvlog_multiline_quoted_fields_are_one_entry():
    data = csv_record("duration: 1.5 ms  statement: SELECT 1,\n\"a\"\nFROM t") + csv_record("connection authorized")
    sink = Recorder()
    parsed = csvlog.parse(data, sink)
    assert parsed == (len(data), 2, 0)
    assert sink.entries[0] == ("LOG", "00000", "app", "app", "duration: 1.5 ms  statement: SELECT 1,\n\"a\"\nFROM t",
                               "127.0.0.1")


@pytest.mark.parametrize("cut", [1, 40, 120, -3, -1])
def test_csvlog_entry_cut_by_a_read_waits_for_the_rest(cut):
    first = csv_record("first")
    second = csv_record("multi\nline \"quoted\"\nmessage")
    data = first + second
    sink = Recorder()
    at = len(first) + (cut if cut > 0 else len(second) + cut)
    parsed = csvlog.parse(data[:at], sink)
    assert parsed.consumed == len(first) and parsed.entries == 1
    rest = csvlog.parse(data[parsed.consumed:], sink)
    assert rest.consumed == len(second) and [e[4] for e in sink.entries] == ["first", "multi\nline \"quoted\"\nmessage"]


def test_csvlog_bytes_that_are_not_utf8_are_replaced():
    data = csv_record("café").replace("é".encode(), b"\xe9")  # Latin-1 bytes in a UTF-8 log
    sink = Recorder()
    assert csvlog.parse(data, sink).entries == 1
    assert sink.entries[0][4] == "caf\ufffd"


def test_csvlog_short_records_are_parse_errors():
    sink = Recorder()
    parsed = csvlog.parse(b"not,a,log,line\n" + csv_record("ok"), sink)
    assert (parsed.entries, parsed.errors) == (1, 1)


def test_jsonlog_lines():
    line = {"timestamp": "x", "user": "alice", "dbname": "app", "remote_host": "10.0.0.7", "error_severity": "FATAL",
            "state_code": "28P01", "message": "password authentication failed for user \"alice\""}
    data = (json.dumps(line) + "\n" + "{broken\n" + json.dumps({"error_severity": "LOG", "message": "a\nb"}) + "\n"
            + json.dumps(line)[:20]).encode()
    sink = Recorder()
    parsed = jsonlog.parse(data, sink)
    assert (parsed.entries, parsed.errors) == (2, 1)
    assert parsed.consumed == data.rfind(b"\n") + 1
    assert sink.entries == [("FATAL", "28P01", "alice", "app", line["message"], "10.0.0.7"),
                            ("LOG", None, "", "", "a\nb", "")]


@pytest.mark.parametrize("prefix, line, expected", [
    ("%m [%p] ", "2026-12-07 11:00:00.123 UTC [42] FATAL:  password authentication failed for user \"x\"",
     ("FATAL", None, "", "", 'password authentication failed for user "x"', "")),
    ("%m [%p] %q%u@%d ", "2026-12-07 11:00:00.123 UTC [42] alice@shop ERROR:  boom",
     ("ERROR", None, "alice", "shop", "boom", "")),
    ("%m [%p] %q%u@%d ", "2026-12-07 11:00:00.123 UTC [42] LOG:  checkpoint starting: time",
     ("LOG", None, "", "", "checkpoint starting: time", "")),
    ("%t %e %-10u %r %a ", "2026-12-07 11:00:00 CET 28P01 bob        10.1.2.3(5555) psql FATAL:  x",
     ("FATAL", "28P01", "bob", "", "x", "10.1.2.3")),
    ("%n|%c|%l|%h|%d|%x|%v|%i|%b|%Q|%%|", "1733569200.123|6571a2b3.1092|7|[local]|db|0|3/1|SELECT|client backend|0|%|"
     "LOG:  hi", ("LOG", None, "", "db", "hi", "[local]")),
])
def test_stderr_prefix_from_the_server(prefix, line, expected):
    sink = Recorder()
    parsed = StderrParser(prefix).parse((line + "\n").encode(), sink)
    assert (parsed.entries, parsed.errors) == (1, 0)
    assert sink.entries == [expected]


def test_stderr_continuation_and_secondary_lines_belong_to_the_entry():
    prefix = "%m [%p] "
    data = ("2026-12-07 11:00:00.123 UTC [1] LOG:  automatic vacuum of table \"a.b.c\": index scans: 0\n"
            "\tsystem usage: CPU: user: 0.00 s, system: 0.00 s, elapsed: 1.25 s\n"
            "2026-12-07 11:00:00.123 UTC [1] ERROR:  boom\n"
            "2026-12-07 11:00:00.123 UTC [1] STATEMENT:  ALTER ROLE x PASSWORD 'p'\n"
            "garbage\n").encode()
    sink = Recorder()
    parsed = StderrParser(prefix).parse(data, sink)
    assert (parsed.entries, parsed.errors) == (2, 1)
    assert sink.entries[0][4].endswith("elapsed: 1.25 s") and sink.entries[1][4] == "boom"


def test_stderr_unknown_escape_is_refused():
    with pytest.raises(PrefixError):
        prefix_pattern("%Z ")


def test_stderr_hostile_line_does_not_backtrack_for_long():
    import time
    parser = StderrParser("%m %u@%d %a %u ")
    line = ("x@" * 5000 + "\n").encode()
    started = time.monotonic()
    assert parser.parse(line * 20, Recorder()).errors == 20
    assert time.monotonic() - started < 2
