"""A bound, on our side, on the bytes one answer of a server may make pgvigil hold.

The SQL around a query caps its rows and label sizes, but only a server that runs it honestly keeps
to that: a hostile or broken server (or PgBouncer console) can send 5,000,000 rows whatever the
LIMIT, one 300 MB label, or a 50 MB error message, and libpq buffers each message whole before the
driver sees it. `BoundedConnection` counts the bytes libpq takes off the socket during one wait
for the server (one pipeline, one FETCH, one console command) and gives up past `ANSWER_BYTES`:
the connection is closed (`AnswerTooLarge`), so nothing more is read and what was read is freed.

Counting: over TCP, the kernel's own count of bytes received on the socket (TCP_INFO) minus those
still waiting in its buffer (FIONREAD) is what libpq took, exactly. A Unix socket has no such
count; there each read is measured by the drop in waiting bytes around it, which can only
undercount what a local server sends while libpq reads (the local server is the host's own).
"""
from __future__ import annotations

import fcntl
import socket
import struct
import termios
import threading
import time
from typing import Any, Generator

import psycopg

# Bytes one answer may take: twice the largest answer pgvigil's own bounds let an honest server send
# (session.BATCH_BYTES of rows per round trip), far below what would threaten the process.
ANSWER_BYTES = 32 * 1024 * 1024
_TCP_INFO_BYTES_RECEIVED = 128  # offset of tcpi_bytes_received (u64) in Linux's struct tcp_info


class AnswerTooLarge(psycopg.OperationalError):
    """The server's answer passed ANSWER_BYTES: the connection was closed."""


class BoundedConnection(psycopg.Connection):
    """A psycopg connection that reads at most ANSWER_BYTES per wait for the server."""

    answer_bytes = ANSWER_BYTES
    # Why the connection was closed on our side: the driver's own error from the pipeline it was in the middle
    # of ("cannot exit pipeline mode while busy") may reach the caller instead of AnswerTooLarge.
    exceeded: str | None = None

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        counter = _ByteCounter(self.pgconn.socket)
        if counter.tcp:
            _WATCH.add(counter, self.answer_bytes)
        try:
            return super().wait(_bounded(gen, counter, self.answer_bytes), interval, timeout)
        except AnswerTooLarge as exc:
            self.exceeded = str(exc)
            self.pgconn.finish()  # nothing more is read; libpq frees what it buffered
            raise
        except psycopg.Error:
            if counter.cut:  # the watcher cut the socket under libpq's read loop
                self.exceeded = _too_large(self.answer_bytes)
                self.pgconn.finish()
            raise
        finally:
            if counter.tcp:
                _WATCH.remove(counter)


class _ByteCounter:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.cut = False  # set by the watcher
        self.tcp = _received(fd) is not None
        self.start = _received(fd) - _waiting(fd) if self.tcp else 0  # type: ignore[operator]
        self.counted = 0

    def taken(self, waiting_before: int) -> int:
        """Bytes libpq has taken off the socket since the counter started."""
        if self.tcp:
            return _received(self.fd) - _waiting(self.fd) - self.start  # type: ignore[operator]
        self.counted += max(0, waiting_before - _waiting(self.fd))
        return self.counted


def _bounded(gen: Generator[Any, Any, Any], counter: _ByteCounter, limit: int) -> Generator[Any, Any, Any]:
    """`gen` (a psycopg wait generator), failing once libpq has read more than `limit` bytes."""
    try:
        wait = next(gen)
        while True:
            ready = yield wait
            before = 0 if counter.tcp else _waiting(counter.fd)
            wait = gen.send(ready)
            if counter.taken(before) > limit:
                raise AnswerTooLarge(_too_large(limit))
    except StopIteration as done:
        return done.value


def _too_large(limit: int) -> str:
    return (f"the server's answer passed {limit // (1024 * 1024)} MB; "
            "connection closed (a server or pooler that ignores pgvigil's bounds)")


class _Watcher:
    """Checks every WATCH_SECONDS the TCP sockets being read: libpq reads in a loop while bytes keep coming
    (its buffer grown to a huge message's announced size), so a fast sender on a near network outruns the
    count between the driver's steps. Past the bound, the socket is shut down under libpq's read loop."""

    WATCH_SECONDS = 0.005

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._watched: dict[_ByteCounter, int] = {}
        self._thread: threading.Thread | None = None

    def add(self, counter: _ByteCounter, limit: int) -> None:
        with self._lock:
            self._watched[counter] = limit
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pgvigil-answer-bound", daemon=True)
                self._thread.start()
            self._lock.notify()

    def remove(self, counter: _ByteCounter) -> None:
        with self._lock:
            self._watched.pop(counter, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._watched:
                    self._lock.wait()
                watched = list(self._watched.items())
            for counter, limit in watched:
                received = _received(counter.fd)
                if received is not None and received - counter.start > limit + (1 << 20) and not counter.cut:
                    counter.cut = True
                    _shutdown(counter.fd)
            time.sleep(self.WATCH_SECONDS)


def _shutdown(fd: int) -> None:
    try:
        sock = socket.socket(fileno=fd)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.detach()
    except OSError:
        pass


_WATCH = _Watcher()


def _received(fd: int) -> int | None:
    try:
        info = socket.socket(fileno=fd)
        try:
            raw = info.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_BYTES_RECEIVED + 8)
        finally:
            info.detach()
    except OSError:
        return None  # not TCP
    if len(raw) < _TCP_INFO_BYTES_RECEIVED + 8:
        return None  # a kernel older than 4.1
    return int(struct.unpack_from("Q", raw, _TCP_INFO_BYTES_RECEIVED)[0])


def _waiting(fd: int) -> int:
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])
    except OSError:
        return 0
