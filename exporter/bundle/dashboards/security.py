"""PostgreSQL Security: row-level security coverage, privileged roles, who connects from where."""
from __future__ import annotations

from exporter.bundle.dashboards.panels import ANY_IS_NOTABLE, TABLE_LEGEND, TD, PanelBuilder, PanelFn, T
from exporter.bundle.grafana import Dashboard, Panel, Query


def headline(p: PanelFn) -> tuple[Panel, ...]:
    """One row of stats: tables without RLS, superuser and login roles, connected users."""
    return (
        p("Tables without row-level security", "stat",
          [Query(f"sum by (target) (pg_security_tables_without_rls{{{TD}}})", "{{target}}")], "short",
          "Tables in user schemas with row-level security disabled.", width=6, height=4, bands=ANY_IS_NOTABLE),
        p("Superuser roles", "stat", [Query(f"pg_roles_superuser_count{{{T}}}", "{{target}}")], "short",
          "Roles with SUPERUSER.", width=6, height=4),
        p("Login roles", "stat", [Query(f"pg_roles_login_count{{{T}}}", "{{target}}")], "short",
          "Roles that can log in.", width=6, height=4),
        p("Connected users", "stat",
          [Query(f"count by (target) (pg_stat_activity_by_user_count{{{T}}} > 0)", "{{target}}")], "short",
          "Distinct users with an open connection.", width=6, height=4),
    )


def row_level_security(p: PanelFn) -> tuple[Panel, ...]:
    """Tables without row-level security, one by one and per schema."""
    return (
        p("Tables with row-level security disabled", "table",
          [Query(f"pg_security_table_rls_disabled{{{TD}}} == 1", TABLE_LEGEND)], "none",
          "Each table in a user schema without RLS: fine for internal tables, a leak for exposed ones.",
          height=9),
        p("Tables without RLS by schema", "table",
          [Query(f"pg_security_tables_without_rls{{{TD}}}", "{{datname}}.{{schemaname}}")], "short",
          "Count of tables without row-level security per schema.", height=9),
    )


def connections(p: PanelFn) -> tuple[Panel, ...]:
    """Connections per user and client address, role counts, rolled back transactions."""
    return (
        p("Connections per user", "timeseries", [Query(
            f"sum by (target, usename) (pg_stat_activity_by_user_count{{{T}}})", "{{target}} {{usename}}")],
          "short", "Connections per role; an unexpected role or a surge stands out.", minimum=0),
        p("Connections per client address", "timeseries", [Query(
            f"sum by (target, client_addr) (pg_stat_activity_by_client_count{{{T}}})",
            "{{target}} {{client_addr}}")], "short", "Connections per client address.", minimum=0),
        p("Superuser and login roles", "timeseries", [
            Query(f"pg_roles_superuser_count{{{T}}}", "{{target}} superusers"),
            Query(f"pg_roles_login_count{{{T}}}", "{{target}} login roles"),
        ], "short", "A new superuser or login role outside a deployment is worth a question.", minimum=0),
        p("Rolled back transactions per second", "timeseries", [Query(
            f"sum by (target, datname) (rate(pg_stat_database_xact_rollback{{{TD}}}[$__rate_interval]))",
            "{{target}} {{datname}}")], "ops", "Failed transactions, e.g. permission errors or probing.",
          minimum=0),
    )


def server_log(p: PanelFn) -> tuple[Panel, ...]:
    """Failed logins and errors by code, from the server log (a target's `log:` section, docs/logs.md)."""
    return (
        p("Failed logins per user (server log)", "timeseries", [Query(
            f"sum by (target, user) (increase(pg_log_authentication_failures_total{{{T}}}[$__rate_interval]))",
            "{{target}} {{user}}")], "short", "Failed logins per interval; `unknown` is every name the server "
                                             "does not have. More than 5 in 15 minutes for one user alerts.",
          minimum=0),
        p("Errors by SQLSTATE (server log)", "timeseries", [Query(
            f'sum by (target, severity, sqlstate) (rate(pg_log_messages_total{{{T}, severity=~"ERROR|FATAL|PANIC"}}'
            "[$__rate_interval]))", "{{target}} {{severity}} {{sqlstate}}")], "ops",
          "ERROR, FATAL and PANIC entries per second by code: 28P01 failed password, 40P01 deadlock, "
          "53300 too many connections.", minimum=0),
    )


def dashboard(builder: PanelBuilder) -> Dashboard:
    """The dashboard, its bands from the thresholds `builder` holds."""
    p = builder.panel
    panels = headline(p) + row_level_security(p) + connections(p)
    panels += server_log(p)
    return Dashboard("pgvigil-security", "PostgreSQL Security",
                     "Row-level security coverage, privileged roles, who is connected from where.",
                     panels, ("target", "datname"))
