"""`pgvigil bundle`: regenerate rules, promtool tests, Alertmanager config and dashboards."""
from __future__ import annotations

from pathlib import Path

import click

from exporter.bundle import write_bundle
from exporter.bundle.rules import BundleError
from exporter.bundle.thresholds import ThresholdError


def _default_out() -> Path:
    # Inside a clone the bundle belongs at the repository root, next to alerts/thresholds.yaml.
    here = Path(__file__).resolve().parents[2]
    return here if (here / "alerts").is_dir() else Path.cwd()


@click.command("bundle")
@click.option("--thresholds", "thresholds_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Thresholds YAML (default: the shipped alerts/thresholds.yaml).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory to write alerts/ and dashboards/ into (default: the repository root).")
@click.option("--with-examples", is_flag=True, default=False,
              help="Also write the alert group of the application examples (examples/alerts/app-rules.yml) "
                   "as alerts/pgvigil-examples-rules.yml, with its promtool tests.")
def bundle(thresholds_path: Path | None, out_dir: Path | None, with_examples: bool) -> None:
    """Generate alert rules, their promtool tests, the Alertmanager config and dashboards."""
    try:
        written = write_bundle(thresholds_path, out_dir or _default_out(), with_examples=with_examples)
    except ThresholdError as exc:
        for line in exc.errors:
            click.echo(f"error: {line}", err=True)
        raise SystemExit(1) from None
    except BundleError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    for path in written:
        click.echo(str(path))
