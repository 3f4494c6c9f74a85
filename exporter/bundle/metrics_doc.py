"""docs/metrics.md, generated from the shipped query packs.

Every metric is listed with its type, labels, meaning, source views and the PostgreSQL
versions it exists on, read from the same QuerySpecs the exporter runs, so the document
cannot drift from the packs. The series count of a default scrape on a 5,000-table database
is measured by `python -m exporter.dev.measure` and kept in MEASURED below.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import click
import yaml

from exporter.config import MetricSpec, MetricType, QuerySpec, available_packs, parse_config
from exporter.files import CONFIG_LIMIT, read_text
from exporter.scrape import sampler
from exporter.serverlog import metrics as serverlog_metrics

# The majors the test suite runs every pack on, live (exporter.dev.servers.SUPPORTED_MAJORS;
# tests/test_servers.py keeps the two equal). The PostgreSQL column lists the ones a metric exists on.
SUPPORTED_MAJORS = (13, 14, 15, 16, 17, 18)
# Generated setting metrics end their help with the majors that have the setting, found on live
# servers by exporter.dev.settings_pack: "(PG 16+)", "(PG 13-16)".
_HELP_MAJORS = re.compile(r"\(PG (\d+)(\+|-(\d+))\)$")
# Measured with `python -m exporter.dev.measure` (PostgreSQL 15, one target, default packs,
# pg_stat_statements installed): a database of 5,000 tables, each with a primary key.
MEASURED = {
    "tables": 5000,
    "series": 6921,
    "per_table_series": 5500,
    "tables_reported": 150,
}
# A name may be qualified: the packs call pg_catalog.fn(...) (tests/test_packs_search_path.py), and
# `extract(epoch FROM pg_catalog.now() - x)` names no relation.
_QUALIFIED = r"(?:pg_catalog\.)?"
_RELATION = re.compile(rf"\b(?:FROM|JOIN)\s+{_QUALIFIED}(pg_[a-z_]+)\b(?!\s*[.(])", re.IGNORECASE)
_FUNCTION = re.compile(r"\b(pg_[a-z_]+)\s*\(", re.IGNORECASE)
# A set-returning function read as a relation: `FROM pg_stat_statements(false) s`.
_TABLE_FUNCTION = re.compile(rf"\b(?:FROM|JOIN)\s+{_QUALIFIED}(pg_[a-z_]+)\s*\(", re.IGNORECASE)


@dataclass(frozen=True)
class MetricRow:
    name: str
    type: MetricType
    labels: tuple[str, ...]
    help: str
    sources: tuple[str, ...]
    majors: tuple[int, ...]
    versions: str


@dataclass(frozen=True)
class PackDoc:
    name: str
    description: str
    default: bool
    rows: tuple[MetricRow, ...]
    kind: str = "postgres"  # the kind of target its queries run on


def source_views(sql: str) -> tuple[str, ...]:
    """The pg_* views a query reads; queries without a FROM name the functions they call."""
    relations = _RELATION.findall(sql)
    found = relations + _TABLE_FUNCTION.findall(sql) if relations else _FUNCTION.findall(sql)
    ordered = list(dict.fromkeys(name.lower() for name in found))
    # the statistics view a metric comes from first, catalogs used for joins and guards after
    ordered.sort(key=lambda name: not name.startswith(("pg_stat", "pg_statio")))
    return tuple(ordered)


def _runs_on(query: QuerySpec, major: int) -> bool:
    low, high = query.min_server_version, query.max_server_version
    return (low is None or major * 10000 >= low) and (high is None or major * 10000 <= high)


def metric_majors(queries: Iterable[QuerySpec], help_text: str = "") -> tuple[int, ...]:
    """The supported majors a metric exists on: a query producing it runs there (and the setting exists)."""
    queries = list(queries)
    majors = [m for m in SUPPORTED_MAJORS if any(_runs_on(q, m) for q in queries)]
    match = _HELP_MAJORS.search(help_text)
    if match:
        low, high = int(match.group(1)), int(match.group(3) or SUPPORTED_MAJORS[-1])
        majors = [m for m in majors if low <= m <= high]
    return tuple(majors)


def version_range(queries: Iterable[QuerySpec], help_text: str = "") -> str:
    """The supported majors as ranges ('13-18', '14-18', '13, 17-18'), noting per-version SQL."""
    queries = list(queries)
    majors = metric_majors(queries, help_text)
    runs: list[list[int]] = []
    for major in majors:
        if runs and major == runs[-1][-1] + 1:
            runs[-1].append(major)
        else:
            runs.append([major])
    text = ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs) or "none"
    variants = [q for q in queries if any(_runs_on(q, m) for m in SUPPORTED_MAJORS)]
    return text + (" (per-version SQL)" if len(variants) > 1 else "")


def _metric_rows(queries: list[QuerySpec]) -> list[MetricRow]:
    producers: dict[str, list[tuple[QuerySpec, MetricSpec]]] = {}
    for query in queries:
        for metric in query.metrics:
            producers.setdefault(metric.name, []).append((query, metric))
    rows = []
    for name, pairs in producers.items():
        query, metric = pairs[0]
        labels = ("target", *query.labels)
        if metric.type.is_histogram:
            labels += ("le",)
        producing = [q for q, _ in pairs]
        if query.kind == "pgbouncer":  # a console command, on any PgBouncer: no PostgreSQL version applies
            rows.append(MetricRow(name, metric.type, labels, metric.help, (query.sql.strip(),), (), ""))
            continue
        sources = tuple(dict.fromkeys(v for q, _ in pairs for sql in q.sql_texts for v in source_views(sql)))
        rows.append(MetricRow(name, metric.type, labels, metric.help, sources,
                              metric_majors(producing, metric.help), version_range(producing, metric.help)))
    return rows


def pack_docs() -> list[PackDoc]:
    docs = []
    for pack, path in available_packs().items():
        raw = yaml.safe_load(read_text(path, CONFIG_LIMIT, "query pack")) or {}
        queries = list(parse_config(f"collectors: [{pack}]\n").queries)
        kind = queries[0].kind if queries else "postgres"
        docs.append(PackDoc(pack, str(raw.get("description", "")).strip(), raw.get("default", True) is not False,
                            tuple(_metric_rows(queries)), kind))
    return docs


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _type_cell(mtype: MetricType) -> str:
    if mtype is MetricType.GAUGE_HISTOGRAM:
        return "gauge histogram (`_bucket`, `_gcount`, `_gsum`)"
    return mtype.value


def render_packs_table(docs: list[PackDoc]) -> list[str]:
    lines = ["| Pack | In `default` | Metrics | What it watches |", "| --- | --- | --- | --- |"]
    for doc in docs:
        lines.append(f"| [`{doc.name}`](#pack-{doc.name}) | {'yes' if doc.default else 'no'} | {len(doc.rows)} | "
                     f"{_cell(doc.description)} |")
    return lines


def render_pack(doc: PackDoc) -> list[str]:
    if doc.kind == "pgbouncer":
        return render_console_pack(doc)
    lines = [f"## Pack: {doc.name}", "", f"{doc.description} SQL: [`exporter/packs/{doc.name}.yaml`]"
             f"(../exporter/packs/{doc.name}.yaml).", "",
             "| Metric | Type | Labels | Meaning | Source | PostgreSQL |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in doc.rows:
        lines.append(f"| `{row.name}` | {_type_cell(row.type)} | {', '.join(row.labels)} | {_cell(row.help)} | "
                     f"{', '.join(row.sources)} | {row.versions} |")
    return lines + [""]


def render_console_pack(doc: PackDoc) -> list[str]:
    """A pack of a PgBouncer admin console: its rows name the SHOW command instead of views and majors."""
    lines = [f"## Pack: {doc.name}", "", f"{doc.description} Commands: [`exporter/packs/{doc.name}.yaml`]"
             f"(../exporter/packs/{doc.name}.yaml); targets, names and version differences:"
             " [pgbouncer.md](pgbouncer.md). `pgbouncer_up` (gauge, target) says whether the console could be"
             " reached.", "",
             "| Metric | Type | Labels | Meaning | Console command |",
             "| --- | --- | --- | --- | --- |"]
    for row in doc.rows:
        lines.append(f"| `{row.name}` | {_type_cell(row.type)} | {', '.join(row.labels)} | {_cell(row.help)} | "
                     f"`{row.sources[0]}` |")
    return lines + [""]


def render_sizing() -> list[str]:
    m = MEASURED
    return [
        "## Series count and limiting per-table packs",
        "",
        f"Measured: a default scrape of one target whose database has {m['tables']:,} tables (each with a",
        f"primary key; PostgreSQL 15, pg_stat_statements installed) returns **{m['series']:,} series** in total,",
        f"of which {m['per_table_series']:,} come from the per-table and per-index queries; they reported",
        f"{m['tables_reported']} of the {m['tables']:,} tables (the largest; none had dead tuples). Where dead tuples",
        "sit in other tables, up to 50 more tables appear: at most 200 tables x 30 table series. The count",
        "does not grow with the number of tables, because every per-object query is bounded",
        "(re-measure with `python -m exporter.dev.measure`):",
        "",
        "| Query | Bound |",
        "| --- | --- |",
        "| `pg_stat_user_tables` (also the `pg_statio_user_tables_*` series) | "
        "the 150 largest tables plus the 50 with most dead tuples (<= 200 tables) |",
        "| `pg_stat_user_indexes` | the 200 largest indexes |",
        "| `pg_index` | 500 unused or invalid indexes |",
        "| `pg_security_table` | 200 tables without RLS (`pg_security_tables_without_rls` still counts all) |",
        "| `pg_stat_statements` | top 100 statements by total time "
        "(the mean-time histogram is one series set) |",
        "| `pg_stat_activity_by_client` | 200 busiest client addresses |",
        "| `pg_vector_index` | 1000 HNSW/IVFFlat indexes |",
        "",
        "Each of these queries also sets `max_series`, so a changed limit cannot run away: rows beyond it",
        "are dropped and counted in `pgvigil_query_errors_total{reason=\"cardinality\"}`.",
        "",
        "To watch fewer (or other) tables:",
        "",
        "1. **Choose packs**: `collectors: [activity, connections, database, locks, settings]` leaves the",
        "   per-table packs (`tables`, `indexes`, `security`, `vector`) out; `collectors: []` turns all",
        "   packs off.",
        "2. **Copy a pack and filter by schema**: copy `exporter/packs/tables.yaml` into your config's",
        "   `queries:` (rename each query, e.g. `app_tables`, and keep the `name:` of each metric if you",
        "   want the standard metric names), add `WHERE schemaname IN ('public', 'app')` to its SQL and",
        "   drop `tables` from `collectors`.",
        "3. **Change top-N**: in the copied query, change the `LIMIT`s of the `picked` CTE.",
        "4. **Cap the series**: `max_series:` on the query, or `defaults: {max_series: N}` for all.",
        "5. **Scrape less often**: `ttl: 5m` on the copied query caches its result between scrapes.",
        "",
    ]


def render_sampled() -> list[str]:
    """The sampler's series (exporter/scrape/sampler.py): not a pack, so listed from the sampler's own tables."""
    rows = [(sampler.WAITS, "counter", ("target", *sampler.WAIT_LABELS), sampler.HELP[sampler.WAITS]),
            (sampler.STATEMENTS, "counter", ("target", *sampler.STATEMENT_LABELS), sampler.HELP[sampler.STATEMENTS]),
            *((name, mtype, ("target", *sampler.SELF_METRIC_LABELS.get(name, ())), help_text)
              for name, (mtype, help_text) in sampler.SELF_METRICS.items())]
    return [
        "## Sessions sampled between scrapes",
        "",
        "Not a pack: one sampler per server reads `pg_stat_activity` every `sample_interval` (default 1s,",
        "`0` or `off` switches it off) on a connection of its own and adds the interval's seconds to the",
        "label set of every session that is not idle. `rate()` of the first counter is the average number",
        "of active sessions by wait event (`wait_event_type=\"CPU\"`: active with no wait event). At most",
        "`sample_top` (default 100) label sets are exported as themselves; the rest add up in rows whose",
        "database, user and application (or queryid) read `other`, so sums stay exact. The statement",
        "counter's `datname` and `queryid` match the `pg_stat_statements` and `statement_texts` packs",
        "(PostgreSQL 14+, `compute_query_id` on or auto with pg_stat_statements). See",
        "[diagnosis.md](diagnosis.md).",
        "",
        "| Metric | Type | Labels | Meaning |",
        "| --- | --- | --- | --- |",
        *(f"| `{name}` | {mtype} | {', '.join(f'`{label}`' for label in labels)} | {_cell(help_text)} |"
          for name, mtype, labels, help_text in rows),
        "",
    ]


def render(docs: list[PackDoc] | None = None) -> str:
    docs = pack_docs() if docs is None else docs
    lines = [
        "# Metrics",
        "",
        "<!-- Generated by `pgvigil metrics-doc --out docs/metrics.md` from exporter/packs/*.yaml; do not edit. -->",
        "",
        "pgvigil ships its PostgreSQL metrics as query packs: YAML files in `exporter/packs/`, written in",
        "the same format as your own `queries:`. `collectors: [default]` (the default) turns on every pack",
        "marked default, `collectors: []` turns them off, and names select packs by file name.",
        "Every series postgres_exporter exports by default is exported under the same name, labels and",
        "type, so its dashboards and alert rules keep working; the few deliberate differences (and names",
        "kept from before a rename) are listed in [postgres_exporter.md](postgres_exporter.md) and checked",
        "against postgres_exporter by `tests/test_dropin.py`. Every series also carries `target` and the target's",
        "constant labels. Cluster-wide queries run once per server even when several targets share it;",
        "per-database ones (tables, indexes, security, vector) run on every target. The `pgbouncer` pack",
        "runs only on `kind: pgbouncer` targets (PgBouncer's admin console) under prometheus-community",
        "pgbouncer_exporter's names, and the PostgreSQL packs never run there ([pgbouncer.md](pgbouncer.md)).",
        "",
        "Counters keep postgres_exporter's names verbatim (some without `_total`). Timestamps are epoch",
        "seconds; durations are seconds unless the meaning says otherwise. The metrics of",
        "`pg_stat_statements` appear only where that extension is installed in the target's database.",
        "",
        "Supported servers: PostgreSQL " + ", ".join(map(str, SUPPORTED_MAJORS)) + ". The test suite runs",
        "every pack on each of them, as a superuser and as a `pg_monitor`-only role, and reads the metrics",
        "it provokes back (tests/test_packs.py); the PostgreSQL column lists the majors each metric exists",
        "on, and \"per-version SQL\" marks metrics read by different SQL on different majors.",
        "",
        *render_packs_table(docs),
        "",
        *render_sizing(),
        *render_sampled(),
    ]
    for doc in docs:
        lines += render_pack(doc)
    lines += serverlog_metrics.markdown()
    return "\n".join(lines).rstrip() + "\n"


@click.command("metrics-doc")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the document here (default: print it).")
def metrics_doc(out: Path | None) -> None:
    """Generate docs/metrics.md from the shipped query packs."""
    text = render()
    if out is None:
        click.echo(text, nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        click.echo(f"wrote {out}")
