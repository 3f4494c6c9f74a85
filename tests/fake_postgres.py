"""A PostgreSQL server that lies: it speaks enough of the wire protocol for libpq and psycopg
(startup, the extended and the simple query protocol), and answers each statement with what the
test's `answer(sql)` returns, whatever bounds the SQL asked for. For tests of hostile servers only:
everything about real behaviour is tested against real PostgreSQL."""
from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

TEXT, INT4 = 25, 23


@dataclass
class Answer:
    """Columns (name, type oid), then rows sent in chunks (each an iterable of rows of str|None), or an error."""

    columns: list[tuple[str, int]] = field(default_factory=list)
    chunks: Iterable[Iterable[tuple]] = ()
    error: str | None = None
    tag: str = "SELECT"
    raw: Iterable[bytes] = ()  # sent as they are, after the rows (one huge message, in pieces)


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def row_description(columns: list[tuple[str, int]]) -> bytes:
    body = struct.pack("!h", len(columns))
    for name, oid in columns:
        body += _cstr(name) + struct.pack("!ihihih", 0, 0, oid, -1, -1, 0)
    return _message(b"T", body)


def data_row(values: tuple) -> bytes:
    body = struct.pack("!h", len(values))
    for value in values:
        if value is None:
            body += struct.pack("!i", -1)
        else:
            raw = value if isinstance(value, bytes) else str(value).encode()
            body += struct.pack("!i", len(raw)) + raw
    return _message(b"D", body)


def error(message: str, code: str = "XX000") -> bytes:
    return _message(b"E", b"SERROR\0" + b"C" + _cstr(code) + b"M" + message.encode() + b"\0\0")


def facts_answer(sql: str) -> Answer | None:
    """What pgvigil's own connect-time statements get: a PostgreSQL 15 with no extensions."""
    if "server_version_num" in sql:
        return Answer([("v", INT4), ("d", TEXT), ("a", TEXT), ("s", TEXT), ("p", TEXT)],
                      [[("150000", "fake", "fake:5432", "2026-01-01 00:00:00+00", '"$user", public')]])
    if "pg_control_system" in sql:
        return Answer([("s", TEXT)], [[("42",)]])
    if "pg_extension" in sql or "AS why" in sql:
        return Answer([("a", TEXT), ("b", TEXT)], [])
    if sql.strip().upper().startswith(("RESET", "BEGIN", "COMMIT", "ROLLBACK")):
        return Answer(tag=sql.split()[0].upper())
    if "set_config('transaction_read_only'" in sql:
        return Answer([(f"c{i}", TEXT) for i in range(6)], [[("on", "1s", "1s", "pg_catalog", "", "")]])
    return None


class FakePostgres:
    """Listens on 127.0.0.1; `answer(sql)` decides each reply. Use as a context manager."""

    def __init__(self, answer: Callable[[str], Answer]) -> None:
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.stopping = False

    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=fake dbname=fake sslmode=disable gssencmode=disable"

    def __enter__(self) -> "FakePostgres":
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self.threads.append(accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping = True
        self.listener.close()
        for thread in self.threads:
            thread.join(10)

    def _accept(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            serve = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            serve.start()
            self.threads.append(serve)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                self._startup(conn)
                self._statements(conn)
            except (OSError, ConnectionError, EOFError):
                return

    @staticmethod
    def _read(conn: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _startup(self, conn: socket.socket) -> None:
        while True:
            length = struct.unpack("!i", self._read(conn, 4))[0]
            body = self._read(conn, length - 4)
            if struct.unpack("!i", body[:4])[0] in (80877103, 80877104):  # SSL or GSS encryption request
                conn.sendall(b"N")
                continue
            break
        out = _message(b"R", struct.pack("!i", 0))
        for name, value in (("server_version", "15.0"), ("client_encoding", "UTF8"), ("server_encoding", "UTF8"),
                            ("standard_conforming_strings", "on"), ("integer_datetimes", "on"),
                            ("DateStyle", "ISO, MDY")):
            out += _message(b"S", _cstr(name) + _cstr(value))
        out += _message(b"K", struct.pack("!ii", 4242, 1)) + _message(b"Z", b"I")
        conn.sendall(out)

    def _statements(self, conn: socket.socket) -> None:
        current: Answer | None = None
        failed = False
        while True:
            kind = self._read(conn, 1)
            body = self._read(conn, struct.unpack("!i", self._read(conn, 4))[0] - 4)
            if kind == b"X":
                return
            if kind == b"S":
                failed = False
                conn.sendall(_message(b"Z", b"I"))
            elif failed:
                continue
            elif kind == b"P":
                sql = body.split(b"\0")[1].decode()
                current = facts_answer(sql) or self.answer(sql)
                conn.sendall(_message(b"1", b""))
            elif kind == b"B":
                conn.sendall(_message(b"2", b""))
            elif kind == b"D" and current is not None:
                conn.sendall(row_description(current.columns) if current.columns else _message(b"n", b""))
            elif kind == b"E" and current is not None:
                failed = self._execute(conn, current)
            elif kind == b"Q":
                sql = body.rstrip(b"\0").decode()
                answer = facts_answer(sql) or self.answer(sql)
                if answer.columns:
                    conn.sendall(row_description(answer.columns))
                self._execute(conn, answer)
                conn.sendall(_message(b"Z", b"I"))

    @staticmethod
    def _execute(conn: socket.socket, answer: Answer) -> bool:
        """Send the answer's rows and its end; True when it was an error."""
        for chunk in answer.chunks:
            conn.sendall(b"".join(data_row(row) for row in chunk))
        for piece in answer.raw:
            conn.sendall(piece)
        if answer.error is not None:
            conn.sendall(error(answer.error))
            return True
        conn.sendall(_message(b"C", _cstr(answer.tag)))
        return False


def repeated(row: tuple, rows: int, chunk: int = 10000) -> Iterator[list[tuple]]:
    """`rows` copies of one row, in chunks (what a server ignoring LIMIT sends)."""
    for start in range(0, rows, chunk):
        yield [row] * min(chunk, rows - start)


def huge_value_row(size: int, piece: int = 1 << 20) -> Iterator[bytes]:
    """A DataRow of one column `size` bytes long, sent in pieces (never held whole here)."""
    yield b"D" + struct.pack("!ihi", 4 + 2 + 4 + size, 1, size)
    for start in range(0, size, piece):
        yield b"x" * min(piece, size - start)


def huge_error(size: int, piece: int = 1 << 20) -> Iterator[bytes]:
    """An ErrorResponse whose message is `size` bytes long, sent in pieces; a CommandComplete is not sent."""
    head = b"SERROR\0CXX000\0M"
    yield b"E" + struct.pack("!i", 4 + len(head) + size + 2) + head
    for start in range(0, size, piece):
        yield b"y" * min(piece, size - start)
    yield b"\0\0"
