"""Connections: how close the server is to max_connections, and sessions that hold or work too long."""
from __future__ import annotations

from exporter.bundle.catalog.spec import BASE, AlertSpec, Case, Scenario, constant, gauge, selector, session_series

GROUP = "pgvigil-connections"


def _connection_utilization(case: Case) -> Scenario:
    # 10000 usable connections (10003 - 3 reserved): fine enough steps for any level above 1 %
    usable, minutes = 10000, case.minutes
    connections = round(case.value * usable)
    active = connections // 2
    series = {
        **session_series("app", "active", active, minutes),
        **session_series("app", "idle", connections - active, minutes),
        selector("pg_settings_max_connections", BASE): constant(usable + 3, minutes),
        selector("pg_settings_superuser_reserved_connections", BASE): constant(3, minutes),
    }
    return Scenario(series, connections / usable, dict(BASE))


def _active_connections(case: Case) -> Scenario:
    value, minutes = case.value, case.minutes
    half = int(value) // 2
    series = {
        **session_series("app", "active", value - half, minutes),
        **session_series("postgres", "active", half, minutes),
        # idle sessions are not active connections: they must not count
        **session_series("app", "idle", 500, minutes),
    }
    return Scenario(series, value, dict(BASE))


ALERTS = (
    AlertSpec(
        name="PostgresConnectionUtilizationHigh",
        threshold="connection_utilization",
        group=GROUP,
        value_expr="pgvigil:connection_utilization:ratio",
        summary="PostgreSQL connections are close to max_connections",
        description="Target {target} uses {value} of its usable connections (alert above {level}).",
        scenario=_connection_utilization,
    ),
    AlertSpec(
        name="PostgresActiveConnectionsHigh",
        threshold="active_connections",
        group=GROUP,
        value_expr="pgvigil:active_connections:count",
        summary="Many PostgreSQL sessions are running statements at once",
        description="Target {target} has {value} active sessions (alert above {level}).",
        scenario=_active_connections,
    ),
    AlertSpec(
        name="PostgresIdleInTransaction",
        threshold="idle_in_transaction",
        group=GROUP,
        value_expr="pg_stat_activity_max_idle_in_transaction_seconds",
        summary="A PostgreSQL session is idle inside an open transaction",
        description="A session in database {datname} on {target} has been idle in transaction for {value} "
                    "(alert above {level}).",
        scenario=gauge("pg_stat_activity_max_idle_in_transaction_seconds", {"datname": "app"}),
    ),
)
