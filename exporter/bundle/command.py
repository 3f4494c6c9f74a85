"""`pgvigil bundle`: regenerate rules, promtool tests, Alertmanager config and dashboards."""
from __future__ import annotations

from pathlib import Path

import click

from exporter.bundle import fleet, kubernetes, load_inputs, mixin, write_bundle
from exporter.bundle.catalog import RUNBOOK_BASE
from exporter.bundle.profiles import profile_names
from exporter.bundle.rules import BundleError
from exporter.bundle.slos import ObjectiveError
from exporter.bundle.thresholds import ThresholdError


def clone_root() -> Path | None:
    """The repository this pgvigil runs from (a clone, or `pip install -e` of one), else None (an installed
    package): the root holding pyproject.toml and alerts/thresholds.yaml, where the committed bundle lives."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "pyproject.toml").is_file() and (here / "alerts" / "thresholds.yaml").is_file() else None


def _default_out() -> Path:
    """--out when not given: the clone's root, said on stderr; an installed pgvigil has no such place."""
    root = clone_root()
    if root is None:
        raise click.UsageError("give --out DIR, the directory to write alerts/ and dashboards/ into: this pgvigil "
                               "is an installed package, and only in a clone of the repository does bundle "
                               "default to the clone's root")
    click.echo(f"no --out: writing into the clone of the repository at {root}", err=True)
    return root


@click.command("bundle")
@click.option("--thresholds", "thresholds_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Thresholds YAML (default: the shipped alerts/thresholds.yaml).")
@click.option("--objectives", "objectives_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Service level objectives YAML (default: the shipped alerts/objectives.yaml; see docs/slos.md).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory to write alerts/ and dashboards/ into. Required for an installed pgvigil; "
                   "run from a clone of the repository it defaults to the clone's root (its committed files).")
@click.option("--with-examples", is_flag=True, default=False,
              help="Also write the alert group of the application examples (examples/alerts/app-rules.yml) "
                   "as alerts/pgvigil-examples-rules.yml, with its promtool tests.")
@click.option("--runbook-base", default=RUNBOOK_BASE, show_default=True, metavar="URL",
              help="Where the alerts' runbook_url links point (each alert adds #<its name in lower case>): "
                   "your wiki's copy of docs/runbooks.md, for example.")
@click.option("--profile", type=click.Choice(profile_names()), default=None,
              help="Apply a thresholds profile (exporter/bundle/profiles/; `demo`: short waits, as "
                   "`pgvigil demo` runs). Needs --out: the repository's files stay the production ones.")
@click.option("--kubernetes", "kubernetes_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="DIR", help="Instead of alerts/ and dashboards/, write Kubernetes manifests into DIR: a "
                                  "PrometheusRule with the same rule groups, a ServiceMonitor, a PodMonitor and "
                                  "the exporter's ConfigMap, Deployment and Service (docs/kubernetes.md).")
@click.option("--cluster-label", default=None, metavar="NAME",
              help="With --kubernetes or --fleet: add the label NAME (e.g. cluster) to every by (...) and on (...) "
                   "of the rules, so aggregations never merge two clusters' series in a global view (Thanos, "
                   "Mimir, VictoriaMetrics).")
@click.option("--fleet", "fleet_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="DIR", help="Instead of alerts/ and dashboards/, write the fleet topology into DIR: Prometheus "
                                  "shards splitting pgvigil's /sd targets, remote write to VictoriaMetrics, vmagent, "
                                  "vmalert and the Alertmanager pair (docs/fleet.md).")
@click.option("--shards", type=click.IntRange(1, fleet.MAX_SHARDS), default=2, show_default=True,
              help="With --fleet: how many Prometheus shards (or vmagent members) split the targets.")
@click.option("--mixin", "mixin_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="DIR", help="Instead of alerts/ and dashboards/, write the jsonnet monitoring mixin into DIR "
                                  "(mixin.libsonnet: _config, prometheusRules, prometheusAlerts, grafanaDashboards).")
def bundle(thresholds_path: Path | None, objectives_path: Path | None, out_dir: Path | None,
           with_examples: bool, runbook_base: str, profile: str | None, kubernetes_dir: Path | None,
           cluster_label: str | None, fleet_dir: Path | None, shards: int, mixin_dir: Path | None) -> None:
    """Generate alert rules, objectives' burn-rate alerts, their promtool tests, the Alertmanager
    config and dashboards (or, with --kubernetes, the manifests for the Prometheus Operator; with
    --fleet, the sharded topology on VictoriaMetrics)."""
    _check_fleet_options(out_dir, with_examples, kubernetes_dir, fleet_dir, shards)
    if mixin_dir is not None and (out_dir or with_examples or kubernetes_dir or fleet_dir or cluster_label):
        raise click.UsageError("--mixin DIR writes only the mixin, into DIR (its _config sets group labels): drop "
                               "--out, --with-examples, --kubernetes, --fleet and --cluster-label")
    if fleet_dir is None and mixin_dir is None:
        _check_options(out_dir, with_examples, profile, kubernetes_dir, cluster_label)
    try:
        if mixin_dir is not None:
            written = mixin.write(load_inputs(thresholds_path, objectives_path, profile), mixin_dir, runbook_base)
        elif fleet_dir is not None:
            inputs = load_inputs(thresholds_path, objectives_path, profile)
            written, removed = fleet.write(inputs, fleet_dir,
                                           fleet.Topology(shards=shards, cluster_label=cluster_label), runbook_base)
            for path in removed:
                click.echo(f"removed {path} (not part of this topology)", err=True)
        elif kubernetes_dir is not None:
            inputs = load_inputs(thresholds_path, objectives_path, profile)
            written = kubernetes.write(inputs, kubernetes_dir, cluster_label, runbook_base)
        else:
            written = write_bundle(thresholds_path, out_dir or _default_out(), with_examples=with_examples,
                                   objectives_path=objectives_path, profile=profile, runbook_base=runbook_base)
    except (ThresholdError, ObjectiveError) as exc:
        for line in exc.errors:
            click.echo(f"error: {line}", err=True)
        raise SystemExit(1) from None
    except BundleError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    for path in written:
        click.echo(str(path))


def _check_options(out_dir: Path | None, with_examples: bool, profile: str | None, kubernetes_dir: Path | None,
                   cluster_label: str | None) -> None:
    if kubernetes_dir is not None:
        if out_dir is not None or with_examples:
            raise click.UsageError("--kubernetes DIR writes only the manifests, into DIR: drop --out and "
                                   "--with-examples")
        return
    if cluster_label is not None:
        raise click.UsageError("--cluster-label changes the rules of the Kubernetes manifests: give --kubernetes DIR")
    if profile is not None and out_dir is None:
        raise click.UsageError("--profile writes a variant of the bundle: give --out DIR, so the files in "
                               "alerts/ and dashboards/ stay the production ones")


def _check_fleet_options(out_dir: Path | None, with_examples: bool, kubernetes_dir: Path | None,
                         fleet_dir: Path | None, shards: int) -> None:
    if fleet_dir is None:
        if shards != 2:
            raise click.UsageError("--shards sets the fleet topology: give --fleet DIR")
        return
    if out_dir is not None or with_examples or kubernetes_dir is not None:
        raise click.UsageError("--fleet DIR writes only the fleet topology, into DIR: drop --out, --with-examples "
                               "and --kubernetes")
