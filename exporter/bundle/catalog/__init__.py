"""Every pgvigil alert: its PromQL, its wording, and the test series that provoke it.

One module per area declares that area's alerts as data (`ALERTS`, one `AlertSpec` each);
`spec.py` holds what they are made of. To add an alert: add an `AlertSpec` to its area (or a new
area module, listed in AREAS), an entry to alerts/thresholds.yaml, a runbook section, and run
`pgvigil bundle`.

The numbers are not here: each spec names its entry in the thresholds file, and the generator
emits one rule per severity that entry defines. Each spec also knows how to build promtool input
series whose alert value is any chosen number (`scenario`), so the generated tests can place the
value just above and just below every level.
"""
from __future__ import annotations

from exporter.bundle.catalog import (
    availability,
    backups,
    bloat,
    blocking,
    connections,
    exporter_health,
    monitoring,
    pgbouncer,
    queries,
    replication,
    security,
    server_log,
    storage,
    vector,
)
from exporter.bundle.catalog.recording import RECORDING_RULES
from exporter.bundle.catalog.spec import (
    APP_TABLE,
    BASE,
    EXPORTER_JOB,
    RUNBOOK_BASE,
    AlertSpec,
    Case,
    Scenario,
    ValueKind,
    constant,
    counter,
    number,
    selector,
    session_series,
)

# In this order in pgvigil-alerts.yml: each area is one rule group.
AREAS = (availability, connections, queries, storage, replication, security, vector, pgbouncer, exporter_health,
         backups, monitoring, blocking, bloat, server_log)

# Labels that tell two alerts of the same name apart (the inhibit rules compare them).
IDENTIFYING_LABELS = [
    "alertname", "target", "instance", "datname", "schemaname", "relname", "indexrelname",
    "slot_name", "database", "user", "query", "subname",
]


def catalog() -> list[AlertSpec]:
    """All alerts, area by area."""
    return [spec for area in AREAS for spec in area.ALERTS]


__all__ = [
    "APP_TABLE", "BASE", "EXPORTER_JOB", "IDENTIFYING_LABELS", "RECORDING_RULES", "RUNBOOK_BASE", "AlertSpec",
    "Case", "Scenario", "ValueKind", "catalog", "constant", "counter", "number", "selector", "session_series",
]
