"""PgBouncer: is the pooler reachable, do clients wait for a server connection, and how full are its pools.

These read `kind: pgbouncer` targets (pgbouncer_exporter's names). A pool is one (database, user)
pair of SHOW POOLS, where `database` is PgBouncer's name for the database, the `name` of SHOW
DATABASES: the utilization divides a pool's busy server connections by that database's pool_size.
"""
from __future__ import annotations

from exporter.bundle.catalog.spec import BASE, AlertSpec, Case, Scenario, constant, flag, gauge, selector

GROUP = "pgvigil-pgbouncer"
POOL = {"database": "app", "user": "app"}
_DATABASE = {"name": "app", "host": "db", "port": "5432", "database": "app_production", "force_user": "",
             "pool_mode": "transaction"}

# Busy server connections of each pool over its database's pool_size (0 is "no pool": not judged).
POOL_UTILIZATION = (
    "pgbouncer_pools_server_active_connections"
    " / on (job, instance, target, database) group_left"
    # label_join with one source copies SHOW DATABASES' `name` into `database`, the pool's key
    ' max by (job, instance, target, database) (label_join(pgbouncer_databases_pool_size > 0,'
    ' "database", "", "name"))'
)


def _pool_utilization(case: Case) -> Scenario:
    # a pool of 1000: fine enough steps for any level above 0.1 %
    size, minutes = 1000, case.minutes
    active = round(case.value * size)
    pool = {**BASE, **POOL}
    series = {
        selector("pgbouncer_pools_server_active_connections", pool): constant(active, minutes),
        # idle server connections are open but serve nobody: they must not count
        selector("pgbouncer_pools_server_idle_connections", pool): constant(500, minutes),
        selector("pgbouncer_databases_pool_size", {**BASE, **_DATABASE}): constant(size, minutes),
    }
    return Scenario(series, active / size, pool)


ALERTS = (
    AlertSpec(
        name="PostgresPgBouncerDown",
        threshold="pgbouncer_down",
        group=GROUP,
        value_expr="pgbouncer_up",
        summary="PgBouncer's admin console is unreachable",
        description="pgvigil cannot connect to the admin console of PgBouncer {target}: its pools are not watched, "
                    "and clients may not reach PostgreSQL either.",
        scenario=flag("pgbouncer_up"),
    ),
    AlertSpec(
        name="PostgresPgBouncerClientsWaiting",
        threshold="pgbouncer_clients_waiting",
        group=GROUP,
        value_expr="pgbouncer_pools_client_waiting_connections",
        summary="Clients wait for a PgBouncer server connection",
        description="{value} clients of pool {database}/{user} on PgBouncer {target} wait for a server connection "
                    "(alert above {level}).",
        scenario=gauge("pgbouncer_pools_client_waiting_connections", POOL),
    ),
    AlertSpec(
        name="PostgresPgBouncerMaxWaitHigh",
        threshold="pgbouncer_max_wait",
        group=GROUP,
        value_expr="pgbouncer_pools_client_maxwait_seconds",
        summary="A PgBouncer client has waited long for a server connection",
        description="The oldest waiting client of pool {database}/{user} on PgBouncer {target} has waited {value} "
                    "(alert above {level}).",
        scenario=gauge("pgbouncer_pools_client_maxwait_seconds", POOL),
    ),
    AlertSpec(
        name="PostgresPgBouncerPoolUtilizationHigh",
        threshold="pgbouncer_pool_utilization",
        group=GROUP,
        value_expr=POOL_UTILIZATION,
        summary="A PgBouncer pool is nearly full",
        description="Pool {database}/{user} on PgBouncer {target} uses {value} of its server connections "
                    "(alert above {level}).",
        scenario=_pool_utilization,
    ),
)
