"""The `log:` section of a target: every problem located, the defaults documented."""
from __future__ import annotations

import pytest

from exporter.config import ConfigError, parse_config
from exporter.serverlog.spec import DEFAULT_BUDGET, DEFAULT_INTERVAL


def errors(log: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"collectors: []\ntargets:\n  db:\n    dsn: host=x\n    log: {log}\n", source="c.yaml")
    return caught.value.errors


@pytest.mark.parametrize("log, expected", [
    ("{source: fil, path: /x}", "c.yaml:5: targets.db.log.source: expected one of file, sql, got the string 'fil'; "
                                "did you mean 'file'?"),
    ("{source: file}", "c.yaml:5: targets.db.log: missing required key 'path': the log file or directory "
                       "(with source: file)"),
    ("{path: /x}", "c.yaml:5: targets.db.log: missing required key 'source'"),
    ("{}", "c.yaml:5: targets.db.log: missing required key 'source'"),
    ("{source: sql, path: /x}", "c.yaml:5: targets.db.log.path: source: sql reads the server's log_directory; "
                                "path is for source: file"),
    ("{source: sql, budget: 10}", "c.yaml:5: targets.db.log.budget: expected a size of at least 64KiB such as "
                                  "16MiB, got the number 10"),
    ("{source: sql, interval: 100ms}", "c.yaml:5: targets.db.log.interval: expected a duration of at least 1s"),
    ("{source: sql, format: xml}", "c.yaml:5: targets.db.log.format: expected one of auto, csvlog, jsonlog, stderr, "
                                   "got the string 'xml'"),
    ("{source: sql, budgt: 1MiB}", "c.yaml:5: targets.db.log.budgt: unknown key 'budgt'; did you mean 'budget'?"),
    ("yes", "c.yaml:5: targets.db.log: expected a mapping, got a boolean"),
])
def test_located_errors(log, expected):
    assert expected in errors(log)


def test_defaults():
    config = parse_config("collectors: []\ntargets:\n  db:\n    dsn: host=x\n    log: {source: sql}\n")
    spec = config.targets[0].log
    assert spec is not None
    assert (spec.format, spec.budget, spec.interval) == ("auto", DEFAULT_BUDGET, DEFAULT_INTERVAL)
    assert spec.state_file is None
    assert DEFAULT_BUDGET == 16 * 1024 * 1024 and DEFAULT_INTERVAL == 15.0


def test_pgbouncer_has_no_server_log():
    with pytest.raises(ConfigError) as caught:
        parse_config("collectors: []\ntargets:\n  pool:\n    dsn: dbname=pgbouncer\n    kind: pgbouncer\n"
                     "    log: {source: sql}\n", source="c.yaml")
    assert caught.value.errors == ["c.yaml:6: targets.pool.log: a pgbouncer target has no PostgreSQL server log "
                                   "to read"]
