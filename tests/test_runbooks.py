"""`pgvigil bundle --runbook-base`: every alert's runbook link moves to a team's own runbooks, and
the promtool tests, which expect those links, still pass."""
from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml
from click.testing import CliRunner

from exporter.bundle.catalog import RUNBOOK_BASE
from exporter.cli import main

WIKI = "https://wiki.example.com/postgres/runbooks"


def runbook_links(out_dir) -> list[str]:
    """The runbook_url of every rule and of every alert the promtool tests expect."""
    links = []
    for path in sorted((out_dir / "alerts").rglob("pgvigil-*.yml")):
        document = yaml.safe_load(path.read_text())
        for rule in (r for group in document.get("groups", []) for r in group["rules"]):
            links.append(rule.get("annotations", {}).get("runbook_url"))
        for test in document.get("tests", []):
            for case in test.get("alert_rule_test", []):
                links += [alert["exp_annotations"]["runbook_url"] for alert in case["exp_alerts"]]
    return [link for link in links if link is not None]


def test_the_default_is_the_shipped_runbooks(tmp_path):
    result = CliRunner().invoke(main, ["bundle", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    links = runbook_links(tmp_path)
    assert links and all(link.startswith(RUNBOOK_BASE + "#") for link in links)
    assert RUNBOOK_BASE.endswith("docs/runbooks.md")


def test_runbook_base_moves_every_link(tmp_path):
    result = CliRunner().invoke(main, ["bundle", "--runbook-base", WIKI, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    links = runbook_links(tmp_path)
    assert len(links) > 50
    assert [link for link in links if not link.startswith(WIKI + "#")] == []
    assert "#postgresdown" in {link[len(WIKI):] for link in links}
    if shutil.which("promtool"):  # the tests expect the moved links too
        for test_file in sorted((tmp_path / "alerts" / "tests").glob("*.yml")):
            run = subprocess.run(["promtool", "test", "rules", test_file.name], cwd=test_file.parent,
                                 capture_output=True, text=True, timeout=300)
            assert run.returncode == 0, run.stdout + run.stderr


# The base is written into YAML as it is: a relative path starting with a YAML indicator (', *, {) broke
# the rule files or turned a link into a mapping, with exit 0; a quote or a backslash is no URL character.
@pytest.mark.parametrize("base", ["wiki page#top", "https://wiki.example.com/run books", "", "'runbooks", "*runbooks",
                                  "{runbooks}", "[runbooks]", "-runbooks", "https://wiki.example.com/a\"b",
                                  "https://wiki.example.com/o'brien", "https://wiki.example.com/a\\b", "|runbooks",
                                  "https://wiki.example.com/runbooks\n"])
def test_a_base_that_cannot_carry_anchors_is_refused(tmp_path, base):
    result = CliRunner().invoke(main, ["bundle", "--runbook-base", base, "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert f"error: --runbook-base {base!r}: expected an http(s) URL or a relative path" in result.output
    assert not (tmp_path / "alerts").exists(), "a refused base still wrote files"


@pytest.mark.parametrize("base", ["runbooks.html", "../docs/runbooks.md", "/wiki/Postgres_(runbooks)",
                                  "https://wiki.example.com/pages?id=42&view=full%20page",
                                  "https://[2001:db8::1]:8443/runbooks;v=1,2*+!$@~"])
def test_every_base_the_check_lets_through_stays_the_exact_link(tmp_path, base):
    result = CliRunner().invoke(main, ["bundle", "--runbook-base", base, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    links = runbook_links(tmp_path)
    assert len(links) > 50 and all(link.startswith(base + "#") for link in links)
