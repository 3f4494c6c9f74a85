"""Availability: can pgvigil reach PostgreSQL, and can Prometheus reach pgvigil."""
from __future__ import annotations

from exporter.bundle.catalog.spec import BASE, EXPORTER_JOB, AlertSpec, Case, Scenario, constant, flag, selector

GROUP = "pgvigil-availability"


def _exporter_down(case: Case) -> Scenario:
    labels = {"job": EXPORTER_JOB, "instance": BASE["instance"]}
    return Scenario({selector("up", labels): constant(case.value, case.minutes)}, None, labels)


ALERTS = (
    AlertSpec(
        name="PostgresDown",
        threshold="postgres_down",
        group=GROUP,
        value_expr="pg_up",
        summary="PostgreSQL is unreachable",
        description="pgvigil cannot connect to target {target}: every query against it fails.",
        scenario=flag("pg_up"),
    ),
    AlertSpec(
        name="PostgresExporterDown",
        threshold="exporter_down",
        group=GROUP,
        value_expr=f'up{{job="{EXPORTER_JOB}"}}',
        # no target left in the job (a service discovery that lost it) is as blind as a failing one
        guard=f'or absent(up{{{{job="{EXPORTER_JOB}"}}}})',  # doubled: the guard is a format string
        summary="The pgvigil exporter is not being scraped",
        description="Prometheus cannot scrape pgvigil at {instance} (no instance: the job {job} has no target at all): "
                    "no PostgreSQL alert can fire while it is down.",
        scenario=_exporter_down,
    ),
)
