"""``pgvigil backup run|verify|prune|status``: parse flags, read the config, call, print, exit codes.

Flags override the config's ``backup:`` section; the DSN comes from ``--dsn`` or from the
config's target of that name. Failures print one line (never a traceback, never a password)
and exit 1.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from exporter.backup.pgclient import BackupError, Conninfo
from exporter.logs import loggable


@dataclass(frozen=True)
class Settings:
    dir: Path
    target: str | None
    dsn: str | None
    backup: Any  # exporter.config.BackupConfig or None
    spec: Any = None  # the config's exporter.config.TargetSpec of `target`, when there is one

    @property
    def cluster(self) -> bool:
        """A `databases:` target: every database it names is backed up, and the globals (cluster.py)."""
        return self.spec is not None and bool(self.spec.databases)


def _load_config(path: str | None) -> Any:
    if not path:
        return None
    from exporter.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        raise click.ClickException("invalid config:\n  " + "\n  ".join(exc.errors)) from None


def resolve(config_path: str | None, directory: str | None, target: str | None, dsn: str | None) -> Settings:
    """Merge flags over the config; flags win."""
    config = _load_config(config_path)
    backup = getattr(config, "backup", None)
    chosen_dir = Path(directory) if directory else (backup.dir if backup else None)
    if chosen_dir is None:
        raise click.UsageError("give --dir, or --config with a backup: section that sets dir")
    names = [spec.name for spec in config.targets] if config else []
    target = target or (backup.target if backup else None) or (names[0] if len(names) == 1 else None)
    spec = config.target(target) if config is not None and target in names else None
    if dsn is None and config is not None and target is not None:
        if spec is None:
            raise click.UsageError(f"target '{target}' is not in the config (targets: {', '.join(names) or 'none'})")
        if spec.kind != "postgres":
            raise click.UsageError(f"target '{target}' is a {spec.kind} admin console, which "
                                   "pg_dump cannot dump; name a postgres target")
        dsn = spec.dsn
    return Settings(chosen_dir, target, dsn, backup, spec)


def _fail(exc: BackupError) -> click.ClickException:
    return click.ClickException(str(exc))


def existing_dir(settings: Settings) -> Path:
    """The backup directory of a command that reads backups: a missing one is a mistake, not 'no backups'."""
    if not settings.dir.is_dir():
        raise click.ClickException(f"backup directory {settings.dir} does not exist "
                                   "(give the --dir or backup.dir that `pgvigil backup run` writes to)")
    return settings.dir


def with_common(target_help: str) -> Any:
    """--config, --dir and --target; commands with --dsn and commands without word --target differently."""
    options = [
        click.option("--config", "config_path", envvar="PGVIGIL_CONFIG", type=click.Path(dir_okay=False),
                     help="pgvigil config file (env PGVIGIL_CONFIG)"),
        click.option("--dir", "directory", type=click.Path(file_okay=False),
                     help="backup directory (overrides config)"),
        click.option("--target", help=target_help),
    ]

    def decorate(func: Any) -> Any:
        for option in reversed(options):
            func = option(func)
        return func
    return decorate


WITH_DSN = "target name (a config target, or a label for the database --dsn names)"
FILTER = "only this target's backups"


@click.group()
def backup() -> None:
    """Backups that prove they can be restored (see docs/backups.md)."""


@backup.command()
@with_common(WITH_DSN)
@click.option("--dsn", help="connection string of the database to dump (default: the config target's)")
@click.option("--offsite-dir", type=click.Path(file_okay=False), help="also copy the backup here (off-site mount)")
@click.option("--progress/--no-progress", default=None, help="progress line (default: when stderr is a terminal)")
def run(config_path: str | None, directory: str | None, target: str | None, dsn: str | None,
        offsite_dir: str | None, progress: bool | None) -> None:
    """Dump a database (pg_dump -Fc) with a checksum and a manifest."""
    from exporter.backup.dump import run_backup
    from exporter.backup.offsite import offsite_places
    from exporter.backup.sizes import human_size

    settings = resolve(config_path, directory, target, dsn)
    if settings.dsn is None:
        raise click.UsageError("give --dsn, or --config and --target naming one of its targets")
    backup_cfg = settings.backup
    if settings.cluster:
        _run_cluster(settings, offsite_dir, progress)
        return
    try:
        target = settings.target or Conninfo.parse(settings.dsn).dbname or "default"
        places = offsite_places(Path(offsite_dir) if offsite_dir else getattr(backup_cfg, "offsite_dir", None),
                                getattr(backup_cfg, "s3", None))
        entry = run_backup(settings.dsn, target, settings.dir, progress=progress, offsite=places)
    except BackupError as exc:
        raise _fail(exc) from None
    seconds = entry["finished"] - entry["started"]
    click.echo(f"backup {entry['name']}: {human_size(entry['size_bytes'])} in {seconds:.1f}s, "
               f"sha256 {entry['sha256']} ({settings.dir / entry['files']['dump']})")
    for copy in entry["offsite"]:
        click.echo(f"  copied to {copy['location']}")


def _run_cluster(settings: Settings, offsite_dir: str | None, progress: bool | None) -> None:
    """Every database of a `databases:` target and the globals: one line each, exit 1 when one failed."""
    from exporter.backup.cluster import run_cluster_backup
    from exporter.backup.offsite import offsite_places
    from exporter.backup.sizes import human_size

    assert settings.dsn is not None and settings.target is not None  # resolved from the config's target
    backup_cfg = settings.backup
    try:
        places = offsite_places(Path(offsite_dir) if offsite_dir else getattr(backup_cfg, "offsite_dir", None),
                                getattr(backup_cfg, "s3", None))
        result = run_cluster_backup(settings.dsn, settings.target, settings.spec.databases,
                                    settings.spec.exclude_databases, settings.dir, progress=progress, offsite=places)
    except BackupError as exc:
        raise _fail(exc) from None
    for outcome in result.outcomes:
        entry = outcome.entry
        if outcome.error is not None:
            click.echo(f"FAILED {loggable(outcome.target)}: {outcome.error}")  # the target holds a datname
            continue
        assert entry is not None
        what = "roles and tablespaces, " if entry.get("kind") == "globals" else ""
        click.echo(f"backup {entry['name']}: {what}{human_size(entry['size_bytes'])} in "
                   f"{entry['finished'] - entry['started']:.1f}s, sha256 {entry['sha256']} "
                   f"({settings.dir / entry['files']['dump']})")
        if outcome.note:
            click.echo(f"  note: {outcome.note}")
        for copy in entry["offsite"]:
            click.echo(f"  copied to {copy['location']}")
    for datname, why in result.left_out:
        click.echo(f"not backed up: database {datname}: {why}")
    done = sum(o.error is None for o in result.databases)
    click.echo(f"{settings.target}: {done} of {len(result.databases)} databases backed up, globals "
               f"{'backed up' if result.globals and result.globals.error is None else 'NOT backed up'}")
    if not result.success:
        raise SystemExit(1)


@backup.command()
@with_common(WITH_DSN)
@click.argument("name", required=False)
@click.option("--dsn", help="server to restore into with --restore (default: the config target's)")
@click.option("--restore", is_flag=True, help="restore into a scratch database and compare row counts")
@click.option("--sanity-query", help="SQL run in the restored database; its first value must be true")
def verify(config_path: str | None, directory: str | None, target: str | None, name: str | None,
           dsn: str | None, restore: bool, sanity_query: str | None) -> None:
    """Verify a backup (default: the newest): checksum, archive, optionally a real restore."""
    from exporter.backup.verify import verify_backup, verify_cluster

    settings = resolve(config_path, directory, target, dsn)
    sanity_query = sanity_query or getattr(settings.backup, "sanity_query", None)
    try:
        if settings.cluster and not name:
            assert settings.target is not None
            home = Conninfo.parse(settings.spec.dsn).dbname
            results = verify_cluster(existing_dir(settings), settings.target, restore=restore, dsn=settings.dsn,
                                     sanity_query=sanity_query, home=home,
                                     progress=lambda step: click.echo(f"  ...     {step}", err=True))
        else:
            results = [verify_backup(existing_dir(settings), name=name,
                                     target=settings.target if not name else None, restore=restore,
                                     dsn=settings.dsn, sanity_query=sanity_query,
                                     progress=lambda step: click.echo(f"  ...     {step}", err=True))]
    except BackupError as exc:
        raise _fail(exc) from None
    for result in results:
        click.echo(f"backup {result.backup}:")
        for check in result.checks:
            click.echo(f"  ok      {check}")
        for note in result.notes:
            click.echo(f"  note    {note}")
        if not result.success:
            click.echo(f"  FAILED  {result.failure}")
    if not all(result.success for result in results):
        raise SystemExit(1)


@backup.command()
@with_common(FILTER)
@click.option("--keep-days", type=click.FloatRange(min=0), help="keep backups younger than this many days")
@click.option("--keep-last", type=click.IntRange(min=1), help="keep this many newest backups per target")
@click.option("--dry-run", is_flag=True, help="print what would be deleted, delete nothing")
def prune(config_path: str | None, directory: str | None, target: str | None, keep_days: float | None,
          keep_last: int | None, dry_run: bool) -> None:
    """Delete backups beyond retention; keeps the newest and newest verified, ignores foreign files."""
    from exporter.backup.prune import prune as apply_prune

    settings = resolve(config_path, directory, None, None)
    keep_days = keep_days if keep_days is not None else getattr(settings.backup, "keep_days", None)
    keep_last = keep_last if keep_last is not None else getattr(settings.backup, "keep_last", None)
    try:
        decisions = apply_prune(existing_dir(settings), keep_days, keep_last, target=target, dry_run=dry_run)
    except BackupError as exc:
        raise _fail(exc) from None
    deleted = "would delete" if dry_run else "deleted"
    for d in decisions:
        click.echo(f"{'kept' if d.keep else deleted:<12}  {d.backup}  ({d.reason})")
    if not decisions:
        click.echo("no backups recorded")


@backup.command()
@with_common(FILTER)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(config_path: str | None, directory: str | None, target: str | None, as_json: bool) -> None:
    """Show recorded backups and their verification state."""
    from exporter.backup.status import backup_statuses, render_table

    settings = resolve(config_path, directory, None, None)
    try:
        rows = backup_statuses(existing_dir(settings), target=target)
    except BackupError as exc:
        raise _fail(exc) from None
    if as_json:
        click.echo(json.dumps([row.as_dict() for row in rows], indent=2))
    elif rows:
        click.echo(render_table(rows))
    else:
        click.echo(f"no backups recorded in {settings.dir}")


if __name__ == "__main__":
    backup()
