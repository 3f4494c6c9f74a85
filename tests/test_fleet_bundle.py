"""The fleet topology (`pgvigil bundle --fleet DIR`): the committed deploy/fleet/ is the generator's output,
every Prometheus shard config passes `promtool check config`, the fleet alerts pass their promtool tests,
and the options fail with clear messages. tests/e2e/test_fleet.py runs the topology itself."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from exporter.bundle import load_inputs
from exporter.bundle.fleet import ALERTS_FILE, TESTS_FILE, Topology, render, shard_config
from exporter.bundle.rules import BundleError
from exporter.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "fleet"
needs_promtool = pytest.mark.skipif(not shutil.which("promtool"), reason="promtool not installed "
                                    "(scripts/test.sh installs it)")


def test_committed_fleet_is_the_generator_output():
    rendered = render(load_inputs(None, None), Topology())
    committed = sorted(str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*") if p.is_file())
    assert committed == sorted(rendered), "regenerate with `pgvigil bundle --fleet deploy/fleet`"
    stale = [name for name, text in rendered.items() if (DEPLOY / name).read_text() != text]
    assert not stale, f"regenerate with `pgvigil bundle --fleet deploy/fleet`: {', '.join(stale)} differ"


@needs_promtool
def test_every_shard_config_is_valid_prometheus_configuration(tmp_path):
    files = render(load_inputs(None, None), Topology(shards=3))
    for index in range(3):
        path = tmp_path / f"prometheus-shard-{index}.yml"
        path.write_text(files[path.name])
        answer = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True,
                                timeout=60)
        assert answer.returncode == 0, answer.stdout + answer.stderr


def test_shards_split_by_hash_and_watch_each_other():
    topology = Topology(shards=3)
    for index in range(3):
        config = shard_config(topology, index)
        job, monitoring, peers = config["scrape_configs"]
        # the /sd targets, and the paging path's programs, each scraped by the one shard their hash names
        for split in (job, monitoring):
            assert split["relabel_configs"] == [
                {"source_labels": ["__address__", "__param_target"], "modulus": 3, "target_label": "__tmp_hash",
                 "action": "hashmod"},
                {"source_labels": ["__tmp_hash"], "regex": str(index), "action": "keep"}]
        assert monitoring["static_configs"][0]["targets"] == [
            "vmalert:8880", "alertmanager-0:9093", "alertmanager-1:9093", "victoria-metrics:8428"]
        assert peers["static_configs"][0]["targets"] == [f"prometheus-shard-{i}:9090" for i in range(3) if i != index]
        assert config["global"]["external_labels"] == {"shard": str(index)}
        assert config["remote_write"] == [{"url": "http://victoria-metrics:8428/api/v1/write"}]
    # one shard has no peer to watch it: no peers job
    assert [job["job_name"] for job in shard_config(Topology(shards=1), 0)["scrape_configs"]] == [
        "pgvigil", "monitoring"]


@needs_promtool
def test_fleet_alerts_pass_their_promtool_tests(tmp_path):
    files = render(load_inputs(None, None), Topology())
    (tmp_path / "tests").mkdir()
    for name in (ALERTS_FILE, TESTS_FILE):
        (tmp_path / name).write_text(files[name])
    answer = subprocess.run(["promtool", "test", "rules", str(tmp_path / TESTS_FILE)], capture_output=True,
                            text=True, timeout=60)
    assert answer.returncode == 0, answer.stdout + answer.stderr


def test_vmalert_and_alertmanager_flags_name_both_alertmanagers():
    files = render(load_inputs(None, None), Topology())
    vmalert = [line for line in files["vmalert.args"].splitlines() if not line.startswith("#")]
    assert [a for a in vmalert if a.startswith("-notifier.url=")] == [
        "-notifier.url=http://alertmanager-0:9093", "-notifier.url=http://alertmanager-1:9093"]
    assert "-rule=/etc/pgvigil/alerts/pgvigil-fleet-alerts.yml" in vmalert
    assert "--cluster.peer=alertmanager-1:9094" in files["alertmanager-0.args"]
    assert "--cluster.peer=alertmanager-0:9094" in files["alertmanager-1.args"]
    assert "-promscrape.cluster.memberNum=1" in files["vmagent-1.args"]


def test_cluster_label_reaches_every_grouping_of_the_fleet_rules(tmp_path):
    result = CliRunner().invoke(main, ["bundle", "--fleet", str(tmp_path / "f"), "--cluster-label", "cluster",
                                       "--shards", "4"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "f" / "prometheus-shard-3.yml").is_file()
    assert not (tmp_path / "f" / "prometheus-shard-4.yml").exists()
    fleet_rules = yaml.safe_load((tmp_path / "f" / ALERTS_FILE).read_text())["groups"][0]["rules"]
    assert "count by (shard, cluster) (max_over_time" in fleet_rules[1]["expr"]
    alerts = yaml.safe_load((tmp_path / "f" / "rules" / "pgvigil-alerts.yml").read_text())
    exprs = [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]
    assert exprs and all("cluster" in part for expr in exprs for part in expr.split("by (")[1:])


@pytest.mark.parametrize(("argv", "message"), [
    (["--shards", "3"], "give --fleet DIR"),
    (["--fleet", "f", "--out", "x"], "drop --out"),
    (["--fleet", "f", "--kubernetes", "k"], "drop --out, --with-examples and --kubernetes"),
    (["--fleet", "f", "--shards", "0"], "0 is not in the range 1<=x<=64"),
    (["--fleet", "f", "--cluster-label", "9x"], "expected a Prometheus label name"),
])
def test_bad_fleet_options_are_refused_with_a_reason(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["bundle", *argv])
    assert result.exit_code != 0 and message in result.output, result.output
    assert not (tmp_path / "f").exists()


def test_topology_refuses_what_cannot_be_deployed():
    with pytest.raises(BundleError, match="1 shard addresses for 2 shards"):
        Topology(shard_addresses=("a:1",))
    with pytest.raises(BundleError, match="share_window '1 hour'"):
        Topology(share_window="1 hour")


def fleet_files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


def test_regenerating_a_smaller_fleet_removes_what_the_larger_one_wrote(tmp_path):
    """Four shards, then two: shards 2 and 3 (modulus 4) would still scrape beside the new 0 and 1 (modulus 2),
    scraping part of the targets twice, if their files stayed. Files pgvigil did not generate stay."""
    out = tmp_path / "fleet"
    out.mkdir()
    (out / "prometheus-shard-7.yml").write_text("# my own shard\n")
    (out / "notes.txt").write_text("mine\n")
    runner = CliRunner()
    first = runner.invoke(main, ["bundle", "--fleet", str(out), "--shards", "4", "--cluster-label", "cluster"])
    assert first.exit_code == 0, first.output
    assert {"prometheus-shard-3.yml", "vmagent-3.args", "rules/pgvigil-alerts.yml"} <= fleet_files(out)
    second = runner.invoke(main, ["bundle", "--fleet", str(out), "--shards", "2"])
    assert second.exit_code == 0, second.output
    expected = set(render(load_inputs(None, None), Topology(shards=2)))
    assert fleet_files(out) == expected | {"prometheus-shard-7.yml", "notes.txt"}
    assert not (out / "rules").exists()
    for name in ("prometheus-shard-2.yml", "prometheus-shard-3.yml", "vmagent-2.args", "vmagent-3.args",
                 "rules/pgvigil-alerts.yml"):
        assert f"removed {out / name} (not part of this topology)" in second.output


@pytest.mark.parametrize("option", ["--fleet", "--mixin"])
def test_output_directory_that_is_a_dangling_link_is_named_as_such(tmp_path, option):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    result = CliRunner().invoke(main, ["bundle", option, str(link)])
    assert result.exit_code == 1
    assert (f"error: cannot write into {link}: it is a symbolic link to {tmp_path / 'gone'}, which does not exist"
            in result.output), result.output
    assert "Traceback" not in result.output and not (tmp_path / "gone").exists()
