"""Masking SQL text by structure (exporter/sqltext.py): constants and comments never survive,
whatever their quoting, and what is left reads as the statement did."""
from __future__ import annotations

import random
import string
import time

import pytest
from pglast.parser import ParseError, scan

from exporter.config import parse_config
from exporter.sqltext import NOT_SHOWN, QUOTED_TOKENS, dropped_texts, masked_sql, quoted_spans


@pytest.mark.parametrize("text, expected", [
    ("ALTER ROLE app PASSWORD 'hunter2'", "ALTER ROLE app PASSWORD $1"),
    ("SELECT * FROM t WHERE a = $1 /* api_key=XYZ */ AND b = $2", "SELECT * FROM t WHERE a = $1 AND b = $2"),
    ("SELECT $$pw$$, $t$x$t$, E'a\\'b', B'101', X'ff', U&'d\\0061', 1.5e3, 42 -- tail",
     "SELECT $1, $2, $3, $4, $5, $6, $7, $8"),
    ('SELECT a.b::int[], x->>$1 FROM "Q" WHERE c IN ($1, $2)',
     'SELECT a.b::int[], x->>$1 FROM "Q" WHERE c IN ($1, $2)'),
    ("select  é\n\tfrom t", "select é from t"),
    ("COPY t FROM '/tmp/x' WITH (FORMAT csv)", "COPY t FROM $1 WITH (FORMAT csv)"),
    ("<insufficient privilege>", "<insufficient privilege>"),
    ("", ""),
    # cut short by left(query, N): the scanner stops at the open string or comment, so does the text
    ("SELECT 'abc", "SELECT ..."),
    ("SELECT 1 /* cut", "SELECT $1 ..."),
    ("'cut", "..."),
])
def test_constants_become_parameters_and_comments_go(text, expected):
    assert masked_sql(text) == expected


def _secret(rng: random.Random) -> str:
    return "S" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(12))


SHAPES = [
    "ALTER ROLE r PASSWORD '{s}'",
    "CREATE USER MAPPING FOR u SERVER s OPTIONS (user 'u', password '{s}')",
    "SELECT 1 /* {s} */",
    "SELECT 1 -- {s}",
    "SELECT $${s}$$",
    "SELECT $tag${s}$tag$",
    "SELECT E'\\x41{s}'",
    "SELECT U&'{s}'",
    "SELECT '{s}' || 'it''s'",
    "SELECT /* nested /* {s} */ */ 1",
    "DO $do$ BEGIN PERFORM '{s}'; END $do$",
    "SELECT '{s}",      # cut inside the string
    "SELECT 1 /* {s}",  # cut inside the comment
]


@pytest.mark.parametrize("shape", SHAPES)
def test_no_secret_survives_in_any_quoting(shape):
    rng = random.Random(shape)
    for _ in range(50):
        secret = _secret(rng)
        text = shape.format(s=secret)
        assert secret not in masked_sql(text), text
        assert secret[1:6] not in masked_sql(text), text


# -- what PostgreSQL takes as a value: settings, and quotes read with standard_conforming_strings off -------------

@pytest.mark.parametrize("text, expected", [
    ("SET app.api_key = sk_live_51HxYzSecret", "SET app.api_key = $1"),
    ('SET x TO "Qu0ted secret"', "SET x TO $1"),
    ("ALTER ROLE r SET myapp.token = tok_9f8e7d", "ALTER ROLE r SET myapp.token = $1"),
    ("ALTER ROLE r IN DATABASE d SET search_path TO app, \"Sales\", public",
     "ALTER ROLE r IN DATABASE d SET search_path TO $1, $2, $3"),
    ("SET LOCAL app.pin = 4242; SELECT 1", "SET LOCAL app.pin = $1; SELECT $2"),
    ("set session app.key to a.b.c", "set session app.key to $1"),
    ("ALTER SYSTEM SET app.secret = -12.5e3", "ALTER SYSTEM SET app.secret = $1"),
    ("ALTER DATABASE d SET app.key TO DEFAULT", "ALTER DATABASE d SET app.key TO $1"),
    ("CREATE FUNCTION f() RETURNS int SET app.key = k3y AS $$ SELECT 1 $$ LANGUAGE sql",
     "CREATE FUNCTION f() RETURNS int SET app.key = $1"),
    # not a setting: UPDATE's SET names columns, RESET and SET ROLE have no value
    ("UPDATE t SET a = b, c = 1 WHERE id = $1", "UPDATE t SET a = b, c = $2 WHERE id = $1"),
    ("RESET app.api_key", "RESET app.api_key"),
    ("SET ROLE app_reader", "SET ROLE app_reader"),
])
def test_a_settings_value_is_masked_whatever_it_is_written_as(text, expected):
    assert masked_sql(text) == expected


# Texts a client with standard_conforming_strings off may have sent: the backslash escapes the quote there.
TWO_READINGS = [
    "ALTER ROLE r PASSWORD 'abc\\' Leak3dPart'",
    "SELECT 'abc\\' Leak3dPart'",
    "SELECT 'a\\' -- ' Leak3dPart",
    "SELECT 'a\\' || 'Leak3dPart' || '\\'",
    "SELECT N'abc\\' Leak3dPart'",
    "SELECT 'x' /* \\' */ 'abc\\' Leak3dPart'",
    "SELECT 'a'\n  'bc\\' Leak3dPart'",  # a string continued on the next line is the same string
]


@pytest.mark.parametrize("text", TWO_READINGS)
def test_text_whose_quotes_read_two_ways_is_not_shown_and_counted(text):
    before = dropped_texts()
    assert masked_sql(text) == NOT_SHOWN
    assert dropped_texts() == before + 1


# Quoting both modes read the same way: shown, masked.
@pytest.mark.parametrize("text, expected", [
    ("SELECT E'abc\\' Leak3dPart'", "SELECT $1"),
    ("SELECT e'a\\\\' || 'Leak3dPart'", "SELECT $1 || $2"),
    ("SELECT 'a\\\\' || 'Leak3dPart'", "SELECT $1 || $2"),  # an escaped backslash: one string either way
    ("SELECT $$abc\\' Leak3dPart$$", "SELECT $1"),
    ("SELECT $tag$ it's \\' Leak3dPart $tag$", "SELECT $1"),
    ("SELECT U&'d\\0061t\\+000061 Leak3dPart'", "SELECT $1"),
    ("SELECT U&\"col\\0061\" FROM t", 'SELECT U&"col\\0061" FROM t'),
    ("SELECT B'1010', X'fF'", "SELECT $1, $2"),
    ("SELECT 1 /* a /* 'b\\' */ c' Leak3dPart */", "SELECT $1"),
    ("SELECT \"we\\ird\" FROM t -- 'Leak3dPart\\'", 'SELECT "we\\ird" FROM t'),
    ("SELECT 'it''s' || E'x\\\\y'", "SELECT $1 || $2"),
])
def test_text_whose_quotes_read_one_way_is_shown(text, expected):
    assert masked_sql(text) == expected


SCS_OFF_SHAPES = [
    "ALTER ROLE r PASSWORD 'x\\' {s}'",
    "SELECT 'x\\' {s} ''",
    "SELECT 'x\\' || {s} || '\\''",
    "SELECT N'\\'{s}'",
    "SET app.key = '\\' {s}'",
    "SET app.key = {s}",
    "SET app.key TO \"{s}\"",
    "ALTER ROLE r SET app.key = {s}",
    "SELECT 'a\\\\' || '{s}'",
    "SELECT E'\\' {s}'",
]


@pytest.mark.parametrize("shape", SCS_OFF_SHAPES)
def test_no_secret_survives_either_reading(shape):
    rng = random.Random(shape)
    for _ in range(50):
        secret = _secret(rng)
        masked = masked_sql(shape.format(s=secret))
        assert secret not in masked and secret[1:6] not in masked, (shape, masked)


FRAGMENTS = ["'", "''", "\\", "\\'", "E'", "e'", "N'", "B'", "X'", "U&'", 'U&"', '"', '"a"', "$$", "$a$", "$1", "$",
             "--", "/*", "*/", "\n", "\r", " ", "\t", "x", "E", "abc", "1", "é", "a$b", ";", ",", "(", "=", "-", "*",
             "/", "::", "SET", "TO", "\\\\", "&", "u", "\f", "\v"]


def test_the_second_reading_finds_what_the_scanner_finds_when_the_modes_agree():
    """quoted_spans with standard_conforming_strings on is libpg_query's reading: random texts of quotes,
    escapes, comments and dollar quotes, whole or cut inside a token, scanned both ways."""
    rng = random.Random(7)
    compared = 0
    for _ in range(20000):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 12)))
        try:
            spans = [(t.start, t.end + 1) for t in scan(text)
                     if t.name in QUOTED_TOKENS or (t.name == "IDENT" and text[t.start] == '"')]
        except ParseError as exc:
            if not exc.args[0].startswith("unterminated"):
                continue  # junk after a number, an empty "": texts PostgreSQL refuses (shown as NOT_SHOWN)
            cut = exc.args[1]
            spans = [(t.start, t.end + 1) for t in scan(text[:cut])
                     if t.name in QUOTED_TOKENS or (t.name == "IDENT" and text[t.start] == '"')] + [(cut, len(text))]
        assert quoted_spans(text, standard_conforming_strings=True) == spans, text
        compared += 1
    assert compared > 15000


def test_the_packs_sql_is_shown():
    """Every shipped query reads the same in both modes (a dropped text would be a lexing bug)."""
    texts = [query.sql for query in parse_config("collectors: [default, statement_texts, pgbouncer, vector]\n").queries]
    assert len(texts) > 50
    for text in texts:
        assert masked_sql(text) != NOT_SHOWN, text


@pytest.mark.parametrize("filler", [" ", "-", " \n", "--\n", "\\", "/*", "$a", "'a'\n"])
def test_the_second_reading_of_long_runs_costs_one_pass(filler):
    text = "SELECT 'a'" + filler * 100_000 + " 'b"
    started = time.monotonic()
    for mode in (True, False):
        quoted_spans(text, standard_conforming_strings=mode)
    assert time.monotonic() - started < 2
