"""The latency objective's log source: each execution slower than the bound, from the server log, over all
calls of pg_stat_statements; its burn-rate alerts pass their generated promtool tests."""
from __future__ import annotations

import shutil
import subprocess

import pytest
from click.testing import CliRunner

from exporter.bundle import ALERT_FILES
from exporter.bundle.slos import ObjectiveError, parse_objectives
from exporter.cli import main

LOG_OBJECTIVE = """\
query_latency_log:
  kind: latency
  objective: 0.95
  bound: 200ms
  source: log
  period: 30d
  description: 95 % of executions take at most 200 ms, each slow one counted from the server log.
"""


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (scripts/test.sh installs it)")
def test_log_source_rules_and_their_promtool_tests(tmp_path):
    mine = tmp_path / "objectives.yaml"
    mine.write_text(LOG_OBJECTIVE)
    result = CliRunner().invoke(main, ["bundle", "--objectives", str(mine), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    rules = (tmp_path / "out" / ALERT_FILES["slos"]).read_text()
    assert 'pg_log_statement_duration_seconds_bucket{le="0.2"}' in rules
    assert "pg_stat_statements_calls_total" in rules
    tested = subprocess.run(["promtool", "test", "rules", ALERT_FILES["slo_tests"].name], capture_output=True,
                            text=True, timeout=600, cwd=tmp_path / "out" / "alerts" / "tests")
    assert tested.returncode == 0, tested.stdout[-4000:] + tested.stderr[-4000:]


def test_log_source_bound_must_be_a_bucket():
    with pytest.raises(ObjectiveError) as caught:
        parse_objectives(LOG_OBJECTIVE.replace("200ms", "180ms"), "o.yaml")
    assert caught.value.errors == [
        "o.yaml:4: query_latency_log.bound: source log reads pg_log_statement_duration_seconds at the bound: expected "
        "one of its buckets, 0.005s, 0.01s, 0.025s, 0.05s, 0.1s, 0.15s, 0.2s, 0.25s, 0.3s, 0.5s, 1s, 2.5s, 5s, 10s, "
        "30s, 60s"]
