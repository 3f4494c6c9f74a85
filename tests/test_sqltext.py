"""Masking SQL text by structure (exporter/sqltext.py): constants and comments never survive,
whatever their quoting, and what is left reads as the statement did."""
from __future__ import annotations

import random
import string

import pytest

from exporter.sqltext import masked_sql


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
