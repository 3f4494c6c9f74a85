"""stderr (and syslog-like files): `log_line_prefix` + `SEVERITY:  message`, continuation lines begin with a tab.

The prefix is the server's own (read with SHOW, never guessed): each escape becomes a bounded regular
expression, the user, database, client and SQLSTATE ones named groups. Without `%e` there is no
SQLSTATE: the classifier then names the codes of the messages it knows (docs/logs.md).
"""
from __future__ import annotations

import re
from typing import Callable, Pattern

from exporter.serverlog.entry import Parsed, Sink, decode

_TS = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
# Names are at most NAMEDATALEN-1 bytes: a bound keeps a line that does not match from backtracking long.
_NAME = r"[^\n]{0,64}?"
_ESCAPES = {
    "a": _NAME, "u": f"(?P<user>{_NAME})", "d": f"(?P<database>{_NAME})",
    "r": r"(?P<host>[^\s(]{0,255}?)(?:\(\d+\))?", "h": r"(?P<host>[^\s]{0,255}?)", "b": r"[^\n]{0,64}?",
    "p": r"\d+", "P": r"\d*", "t": _TS + r" ?\S{0,32}", "m": _TS + r"\.\d{3} ?\S{0,32}",
    "n": r"\d+\.\d{3}", "i": r"[^\n]{0,64}?", "e": r"(?P<sqlstate>[0-9A-Z]{5})", "c": r"[0-9a-f]+\.[0-9a-f]+",
    "l": r"\d+", "s": _TS + r" ?\S{0,32}", "v": r"[^\s]{0,32}", "x": r"\d+", "Q": r"-?\d+",
}
_SEVERITIES = "DEBUG|LOG|INFO|NOTICE|WARNING|ERROR|FATAL|PANIC|DETAIL|HINT|QUERY|CONTEXT|LOCATION|STATEMENT"
# Lines of an entry that are not entries: they belong to the one before.
SECONDARY = frozenset(("DETAIL", "HINT", "QUERY", "CONTEXT", "LOCATION", "STATEMENT"))


def forgeable(prefix: str) -> bool:
    """Whether the prefix prints a name as the client sent it (`%u`, `%d`): PostgreSQL writes it raw, so a
    client's user or database name holding a newline and a made-up line (even a failed login's) starts a
    line of its own choosing: any severity, any user. csvlog and jsonlog quote every field."""
    return any(escape in "ud" for escape in re.findall(r"%-?\d*(.)", prefix))


class PrefixError(ValueError):
    """A log_line_prefix this parser cannot follow (an unknown escape)."""


def prefix_pattern(prefix: str) -> Pattern[str]:
    """The regular expression of a line: the server's `log_line_prefix`, then the severity and the message."""
    parts: list[str] = []
    used: set[str] = set()
    optional_from: int | None = None
    i = 0
    while i < len(prefix):
        char = prefix[i]
        if char != "%":
            parts.append(re.escape(char))
            i += 1
            continue
        match = re.compile(r"%(-?\d*)(.)").match(prefix, i)
        if match is None:  # a trailing '%': printed as is
            parts.append(re.escape(char))
            break
        padding, escape = match.group(1), match.group(2)
        i = match.end()
        if escape == "%":
            parts.append("%")
        elif escape == "q":  # what follows is printed by session processes only
            optional_from = len(parts)
        elif escape in _ESCAPES:
            expr = _ESCAPES[escape]
            group = re.search(r"\(\?P<(\w+)>", expr)
            if group and group.group(1) in used:  # a name given twice (%r and %h): only the first is captured
                expr = re.sub(r"\(\?P<\w+>", "(?:", expr)
            elif group:
                used.add(group.group(1))
            parts.append(f" *{expr} *" if padding else expr)
        else:
            raise PrefixError(f"log_line_prefix escape %{escape} is not known")
    if optional_from is not None:
        parts[optional_from:] = ["(?:" + "".join(parts[optional_from:]) + ")?"]
    return re.compile("".join(parts) + rf"(?P<severity>{_SEVERITIES}):  (?P<message>.*)")


class StderrParser:
    def __init__(self, prefix: str) -> None:
        self.pattern = prefix_pattern(prefix)
        # Every line the pattern matches holds a severity marker. With three or more free-text escapes it is
        # looked for first: a line without one (lc_messages not English, another program's text) otherwise
        # makes the pattern try every split of the line among the names (`%u %d %a %i %b`: ~1 s a line,
        # under the counters' lock, so a scrape waited). Fewer escapes fail fast; the check costs ~20 %.
        free = sum(escape in "udaibhr" for escape in re.findall(r"%-?\d*(.)", prefix))
        search = re.compile(f"(?:{_SEVERITIES}):  ").search
        self.marker: Callable[[str], object] = search if free >= 3 else bool

    def parse(self, buf: bytes, sink: Sink) -> Parsed:
        end = buf.rfind(b"\n") + 1
        if end == 0:
            return Parsed(0, 0, 0)
        entries = errors = 0
        match, marker = self.pattern.match, self.marker
        pending: tuple[str, str | None, str, str, list[str], str] | None = None
        for line in decode(buf[:end]).split("\n"):
            if line.startswith("\t"):  # the rest of the entry before (a statement, autovacuum's details)
                if pending is not None and len(pending[4]) < 32:
                    pending[4].append(line[1:])
                continue
            if not line:
                continue
            found = match(line) if marker(line) else None
            if found is None:
                errors += 1
                continue
            severity = found.group("severity")
            if severity in SECONDARY:
                continue
            if pending is not None:
                entries += 1
                sink(pending[0], pending[1], pending[2], pending[3], "\n".join(pending[4]), pending[5])
            groups = found.groupdict()
            pending = (severity, groups.get("sqlstate"), groups.get("user") or "", groups.get("database") or "",
                       [found.group("message")], groups.get("host") or "")
        if pending is not None:
            entries += 1
            sink(pending[0], pending[1], pending[2], pending[3], "\n".join(pending[4]), pending[5])
        return Parsed(end, entries, errors)
