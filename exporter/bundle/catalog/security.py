"""Security: tables exposed without row-level security, superuser roles that appear."""
from __future__ import annotations

from exporter.bundle.catalog.spec import BASE, AlertSpec, Case, Scenario, gauge, number, selector

GROUP = "pgvigil-security"


def _superuser_created(case: Case) -> Scenario:
    # two superusers until minute 5, then `value` more
    notation = f"2+0x4 {number(2 + case.value)}+0x{case.minutes - 5}"
    return Scenario({selector("pg_roles_superuser_count", BASE): notation}, case.value, dict(BASE))


ALERTS = (
    AlertSpec(
        name="PostgresTablesWithoutRls",
        threshold="tables_without_rls",
        group=GROUP,
        value_expr="pg_security_tables_without_rls",
        summary="PostgreSQL tables lack row-level security",
        description="Schema {schemaname} of database {datname} on {target} has {value} tables without "
                    "row-level security (alert above {level}).",
        scenario=gauge("pg_security_tables_without_rls", {"datname": "app", "schemaname": "public"}),
    ),
    AlertSpec(
        name="PostgresNewSuperuser",
        threshold="superuser_created",
        group=GROUP,
        value_expr="(pg_roles_superuser_count - min_over_time(pg_roles_superuser_count[1h]))",
        summary="A new PostgreSQL superuser role appeared",
        description="Target {target} has {value} more superuser roles than at any time in the last hour.",
        scenario=_superuser_created,
        starts_at=5,
    ),
)
