"""Command line: parse, call, print, exit codes. Nothing else lives here."""
from __future__ import annotations

import gc
import importlib
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, NoReturn

import click

from exporter import __version__
from exporter import postgres_exporter as pe
from exporter.config import Config, ConfigError, listen_problem, parse_listen
from exporter.logs import LEVELS, loggable, setup_logging
from exporter.redaction import dsn_secrets

if TYPE_CHECKING:
    from exporter.scrape.state import QueryStatus

log = logging.getLogger("pgvigil")

config_option = click.option("--config", "config_path", envvar="PGVIGIL_CONFIG", type=click.Path(dir_okay=False),
                             help="YAML config file (env PGVIGIL_CONFIG). "
                                  "Without it: one target from --dsn or PG* env.")
dsn_option = click.option("--dsn", envvar="PGVIGIL_DSN",
                          help="DSN of the single default target when the config has no targets (env PGVIGIL_DSN).")


class CommandGroup(click.Group):
    """Registered commands, plus the dev tooling's commands loaded only when invoked.

    `pgvigil demo` lives in exporter/dev/, which live code never imports: naming its module here
    keeps the serving process (and the production image's import graph) free of it.
    """

    DEV_COMMANDS = {"demo": ("exporter.dev.demo", "demo")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.DEV_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.DEV_COMMANDS:
            module, attribute = self.DEV_COMMANDS[cmd_name]
            command: click.Command = getattr(importlib.import_module(module), attribute)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=CommandGroup)
@click.version_option(__version__, prog_name="pgvigil")
def main() -> None:
    """pgvigil: PostgreSQL monitoring you can trust at 3 a.m."""


def read_config(config_path: str | None, dsn: str | None) -> Config:
    """The config `serve` would run with the same options and environment (postgres_exporter's
    DATA_SOURCE_NAME and friends included), or exit listing every error: 1 for the config, 2 for
    postgres_exporter settings pgvigil cannot honour."""
    try:
        settings = pe.read_settings([], os.environ)
    except pe.Refused as exc:
        click.echo(f"postgres_exporter settings pgvigil cannot honour ({len(exc.problems)}):", err=True)
        for line in exc.problems:
            click.echo(f"  {line}", err=True)
        sys.exit(2)
    built = build_config(settings, config_path, dsn)
    for warning in built.warnings:
        click.echo(f"warning: {warning}", err=True)
    return built.config


def exit_invalid(exc: ConfigError) -> NoReturn:
    click.echo(f"invalid configuration ({len(exc.errors)} error{'s' if len(exc.errors) != 1 else ''}):", err=True)
    for line in exc.errors:
        click.echo(f"  {line}", err=True)
    sys.exit(1)


# A session thread whose query result has arrived waits for the GIL while a render runs; with the
# default 5 ms switch interval that wait is paid on each of a query's round trips.
GIL_SWITCH_INTERVAL = 0.001


def tune_thread_switching() -> None:
    """Process-wide, so set by the serving process itself rather than by any library object."""
    if sys.getswitchinterval() > GIL_SWITCH_INTERVAL:
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)


def secrets_of(config: Config) -> list[str]:
    return [secret for target in config.targets for secret in dsn_secrets(target.dsn)]


PE_EPILOG = """\b
postgres_exporter's environment and flags work too (docs/postgres_exporter.md):
DATA_SOURCE_NAME (DSNs, comma-separated), DATA_SOURCE_URI[_FILE] with DATA_SOURCE_USER[_FILE] and
DATA_SOURCE_PASS[_FILE]; --web.listen-address, --web.telemetry-path (/metrics only), --web.config.file,
--auto-discover-databases, --include-databases, --exclude-databases, --extend.query-path (queries.yaml,
converted), --disable-default-metrics, --disable-settings-metrics, --[no-]collector.NAME, --constantLabels,
--collection-timeout, --log.level, --log.format, and their PG_EXPORTER_* variables.
pgvigil's own options and variables, and a --config file, win over them."""


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, epilog=PE_EPILOG)
@config_option
@dsn_option
@click.option("--listen", envvar="PGVIGIL_LISTEN",
              help="host:port to listen on (env PGVIGIL_LISTEN; default 127.0.0.1:9187).")
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Log line format (default text).")
@click.option("--log-level", type=click.Choice(LEVELS), help="Lowest level logged (default info).")
@click.option("--web-config", "web_config_path", envvar="PGVIGIL_WEB_CONFIG", type=click.Path(dir_okay=False),
              help="TLS and basic auth in the exporter-toolkit web config format (env PGVIGIL_WEB_CONFIG).")
@click.pass_context
def serve(ctx: click.Context, config_path: str | None, dsn: str | None, listen: str | None, log_format: str | None,
          log_level: str | None, web_config_path: str | None) -> None:
    """Serve /metrics, /probe, /health and a landing page until SIGTERM; SIGHUP reloads the config."""
    from exporter.server import Exporter, extra_collectors, make_server
    from exporter.webconfig import load_web_config

    settings = postgres_exporter_settings(ctx)
    own = {"log.level": log_level, "log.format": log_format, "web.config.file": web_config_path}
    log_level = log_level or settings.log_level or "info"
    log_format = log_format or settings.log_format or "text"
    web_config_path = web_config_path or settings.web_config
    setup_logging(log_level, log_format, settings.secrets)
    built = build_config(settings, config_path, dsn)
    config = built.config
    try:
        web = load_web_config(web_config_path) if web_config_path else None
    except ConfigError as exc:
        click.echo(f"invalid web config ({len(exc.errors)} error{'s' if len(exc.errors) != 1 else ''}):", err=True)
        for line in exc.errors:
            click.echo(f"  {line}", err=True)
        sys.exit(1)
    setup_logging(log_level, log_format, secrets_of(config) + settings.secrets)
    for warning in config.warnings + built.warnings:
        log.warning("%s", warning)
    exporter = Exporter(config, extra_collectors(config))
    address, given_as = listen_address(listen, config_path, config, settings)
    if parse_listen(address) is None:  # the config's own listen was checked with the config
        click.echo(f"invalid {given_as}: {listen_problem(address)}", err=True)
        sys.exit(2)
    try:
        server = make_server(exporter, address, web.wrap_socket() if web else None, web.authorizer() if web else None)
    except OSError as exc:
        click.echo(f"cannot listen on {address}: {exc.strerror}", err=True)
        sys.exit(1)
    own["web.listen-address"] = None if given_as == settings.given.get("web.listen-address") else given_as
    log_postgres_exporter_settings(built, settings, own, address)

    def reload_config() -> None:
        try:
            # postgres_exporter's settings read again: DATA_SOURCE_PASS_FILE or queries.yaml may have changed
            new = pe.build_config(pe.read_settings(ctx.args, os.environ), config_path, dsn).config
        except (ConfigError, pe.Refused) as exc:
            problems = exc.errors if isinstance(exc, ConfigError) else exc.problems
            log.error("config reload rejected, still serving the previous config:\n  %s", "\n  ".join(problems))
            exporter.stats.reloaded(False)
            return
        exporter.stats.reloaded(True)
        if not exporter.reload(new, extra_collectors(new)):
            log.info("config reloaded: unchanged")
            return
        log.info("config reloaded: %s, %s", counted(len(new.targets), "target"),
                 counted(len(new.queries), "query", "queries"))

    # One reloader thread: a burst of SIGHUPs becomes one or two reloads, never a thread each.
    reload_wanted = threading.Event()

    def reloader() -> None:
        while True:
            reload_wanted.wait()
            reload_wanted.clear()
            reload_config()

    threading.Thread(target=reloader, name="pgvigil-reload", daemon=True).start()
    signal.signal(signal.SIGHUP, lambda *_: reload_wanted.set())
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    log.info("pgvigil %s listening on %s with %s and %s", __version__, address,
             counted(len(config.targets), "target"), counted(len(config.queries), "query", "queries"))
    # What is loaded by now lives as long as the process: keep it out of the full collections
    # of the cyclic GC, which large scrapes trigger every few runs (11 ms -> 5 ms on 5,000 tables).
    gc.collect()
    gc.freeze()
    tune_thread_switching()
    try:
        server.serve_forever()
    finally:
        server.server_close()
        exporter.close()
        log.info("pgvigil stopped; database sessions closed")


def postgres_exporter_settings(ctx: click.Context) -> pe.Settings:
    """postgres_exporter's flags (the words pgvigil's options left) and environment; exit 2 on what
    pgvigil cannot honour, as click does for its own options."""
    try:
        return pe.read_settings(ctx.args, os.environ)
    except pe.UnknownOption as exc:
        if not exc.option.startswith("-"):
            raise click.UsageError(f"Got unexpected extra argument ({exc.option})", ctx) from None
        hint = f" (Possible options: --{exc.hint})" if exc.hint else ""
        raise click.UsageError(f"No such option: {exc.option}{hint}", ctx) from None
    except pe.Refused as exc:
        click.echo(f"postgres_exporter settings pgvigil cannot honour ({len(exc.problems)}):", err=True)
        for line in exc.problems:
            click.echo(f"  {line}", err=True)
        sys.exit(2)


def build_config(settings: pe.Settings, config_path: str | None, dsn: str | None) -> pe.Built:
    """The config to serve, or exit 1 listing every error (those of queries.yaml at their lines)."""
    try:
        return pe.build_config(settings, config_path, dsn)
    except ConfigError as exc:
        exit_invalid(exc)


def listen_address(listen: str | None, config_path: str | None, config: Config,
                   settings: pe.Settings) -> tuple[str, str]:
    """The address and what gave it: --listen (PGVIGIL_LISTEN), the config's `listen:`,
    postgres_exporter's --web.listen-address, else pgvigil's default ("default")."""
    if listen:
        return listen, "--listen (or PGVIGIL_LISTEN)"
    if config_path and pe.file_sets_listen(config_path):
        return config.listen, "listen"
    if settings.listen:
        return settings.listen, settings.given["web.listen-address"]
    return config.listen, "default"


def log_postgres_exporter_settings(built: pe.Built, settings: pe.Settings, own: dict[str, str | None],
                                   address: str) -> None:
    """One line naming the postgres_exporter settings taken, one per setting set aside. `own`: pgvigil's
    own option where one was given for a setting both have (it wins)."""
    taken = list(built.taken)
    notes = list(built.notes)
    values = {"web.listen-address": address, "web.config.file": settings.web_config,
              "log.level": settings.log_level, "log.format": settings.log_format}
    for name, value in values.items():
        if name not in settings.given:
            continue
        if own.get(name):
            notes.append(f"{settings.given[name]}: not used (pgvigil's own setting wins)")
        else:
            taken.append(f"{settings.given[name]} ({value})")
    if taken:
        log.info("postgres_exporter settings taken: %s", "; ".join(taken))
    for note in notes:
        log.info("postgres_exporter settings: %s", note)
    host = address.rpartition(":")[0].strip("[]")
    if (settings.dsns or not settings.empty) and own["web.listen-address"] == "default" \
            and host in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s only (pgvigil's default); postgres_exporter listened on every interface "
                    "(:9187): if Prometheus scrapes from another host, set --web.listen-address=:9187 "
                    "(or --listen 0.0.0.0:9187)", address)


def counted(number: int, noun: str, plural: str = "") -> str:
    """'1 target', '2 targets': how a person writes a count."""
    return f"{number} {noun if number == 1 else (plural or noun + 's')}"


@main.command()
@config_option
@dsn_option
@click.option("--connect", is_flag=True, help="Also run every query once and print a table of the results.")
def check(config_path: str | None, dsn: str | None, connect: bool) -> None:
    """Validate the config (exit 1 listing every error); with --connect, run each query once."""
    config = read_config(config_path, dsn)
    for warning in config.warnings:
        click.echo(f"warning: {warning}", err=True)
    packs = ", ".join(config.collectors) or "none"
    click.echo(f"config OK: {counted(len(config.targets), 'target')}, "
               f"{counted(len(config.queries), 'query', 'queries')} (packs: {packs})")
    if connect:
        sys.exit(0 if print_connect_table(config) else 1)


# Rows a query returned that pgvigil could not export: the query "works" but Prometheus misses series.
ROW_PROBLEMS = ("invalid_value", "duplicate", "cardinality")


@main.command()
@config_option
@dsn_option
def grants(config_path: str | None, dsn: str | None) -> None:
    """Print, per target, the GRANTs that give the configured queries what they need, and what is missing today.

    Exits 1 when a target cannot be reached. See docs/platforms.md."""
    from exporter.grants import grants_text

    text, reachable = grants_text(read_config(config_path, dsn))
    click.echo(text, nl=False)
    sys.exit(0 if reachable else 1)


def row_problems(status: QueryStatus) -> str:
    """'2 invalid_value, 1 duplicate: <the first messages>' for a query's run, or ''."""
    counts = [f"{status.errors[reason]} {reason}" for reason in ROW_PROBLEMS if status.errors.get(reason)]
    if not counts:
        return ""
    messages = status.result.problems.messages if status.result is not None else []
    return ", ".join(counts) + (f": {'; '.join(messages)}" if messages else "")


def print_connect_table(config: Config) -> bool:
    from exporter.scrape.runner import Runner

    setup_logging("error", "text", secrets_of(config))
    runner = Runner(config)
    try:
        scrape = runner.scrape(config.defaults.scrape_timeout)
    finally:
        runner.close()
    rows = [("target", "query", "rows", "series", "duration", "error")]
    ok = True
    for state in scrape.targets:
        if not state.up:
            ok = False
            rows.append((state.spec.name, "-", "-", "-", "-", f"unreachable: {state.error}"))
    for outcome in scrape.outcomes:
        status = outcome.status
        problems = row_problems(status)
        error = "timed out" if outcome.timed_out else (status.error or problems)
        ok = ok and outcome.included and not problems
        rows.append((outcome.target.spec.name, outcome.query.name, str(status.rows), str(status.series),
                     f"{status.duration * 1000:.1f}ms", error))
    # A discovered target's name holds its database's, any character but NUL: a newline would print a row of
    # its own, an escape sequence would reach the terminal. So would a server's message. Escaped, as in logs.
    cells = [[loggable(cell) for cell in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(5)]
    for row in cells:
        click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5])) + "  " + row[5])
    return ok


# subcommands owned by other modules

from exporter.backup.cli import backup  # noqa: E402  (the backup commands live with the backup package)

main.add_command(backup)

from exporter.bundle.command import bundle  # noqa: E402  (the generators live in exporter/bundle/)

main.add_command(bundle)

from exporter.bundle.metrics_doc import metrics_doc  # noqa: E402  (docs/metrics.md is generated with the bundle)

main.add_command(metrics_doc)
