"""Service Level Objectives: error budget remaining and burn rate of every objective.

The panels read the objectives' recording rules (`exporter.bundle.slos_rules`), which carry the
objective's name as the `slo` label and the burn windows as `window`, so one dashboard serves any
objectives file: a new objective appears as new series, not new panels.
"""
from __future__ import annotations

from exporter.bundle.dashboards.panels import ANY_IS_BAD, PanelBuilder, PanelFn, T
from exporter.bundle.grafana import CRITICAL, OK, WARNING, Bands, Dashboard, Panel, Query

LEGEND = "{{slo}} {{target}}"
BUDGET = f"pgvigil:slo_budget_remaining:ratio{{{T}}}"
# Spent (below 0) is red; the last quarter of a budget is orange.
BUDGET_BANDS = Bands(((CRITICAL, None), (WARNING, 0.0), (OK, 0.25)))
# The alerts' burn factors (slos_rules.PAGE and TICKET): 6 and 14.4 page, 1 and 3 ticket.
PAGE_BANDS = Bands(((OK, None), (WARNING, 6.0), (CRITICAL, 14.4)))
TICKET_BANDS = Bands(((OK, None), (WARNING, 1.0), (CRITICAL, 3.0)))


def budgets(p: PanelFn) -> tuple[Panel, ...]:
    """How much of each budget is left, now and over time, and which objectives are burning."""
    return (
        p("Error budget remaining", "stat", [Query(BUDGET, LEGEND)], "percentunit",
          "Share of each objective's error budget left over its period: 100 % untouched, 0 % spent, "
          "negative overspent.", width=16, height=6, bands=BUDGET_BANDS),
        p("Objectives burning", "stat",
          [Query('count(ALERTS{alertname=~"Postgres.+BudgetBurn", alertstate="firing"}) or vector(0)', "burning")],
          "none", "Burn-rate alerts firing: a page (fast burn) or a ticket (slow burn).",
          width=8, height=6, bands=ANY_IS_BAD),
        p("Error budget remaining over time", "timeseries", [Query(BUDGET, LEGEND)], "percentunit",
          "The budget left at each moment; a steep fall is a fast burn.", width=24, bands=BUDGET_BANDS),
    )


def burn_rates(p: PanelFn) -> tuple[Panel, ...]:
    """Burn rate over the alerts' long windows, and the error ratio over the period."""
    legend = LEGEND + " over {{window}}"
    return (
        p("Burn rate: page windows", "timeseries",
          [Query(f'pgvigil:slo_burn_rate:ratio{{{T}, burn="page"}}', legend)], "short",
          "Error ratio over the budget's rate, over the fast-burn windows (1h and 6h of a 30-day period): "
          "above 14.4 (1h) or 6 (6h) pages, when the short window agrees.", bands=PAGE_BANDS, minimum=0),
        p("Burn rate: ticket windows", "timeseries",
          [Query(f'pgvigil:slo_burn_rate:ratio{{{T}, burn="ticket"}}', legend)], "short",
          "Error ratio over the budget's rate, over the slow-burn windows (1d and 3d of a 30-day period): "
          "above 3 (1d) or 1 (3d) opens a ticket, when the short window agrees.", bands=TICKET_BANDS, minimum=0),
        p("Error ratio over the period", "timeseries",
          [Query(f"pgvigil:slo_errors:ratio_period{{{T}}}", LEGEND)], "percentunit",
          "Share of bad events (or bad minutes) over each objective's period, against its budget "
          "(0.1 % for 99.9 %).", width=24, minimum=0),
    )


def dashboard(builder: PanelBuilder) -> Dashboard:
    p = builder.panel
    return Dashboard("pgvigil-slos", "PostgreSQL Service Level Objectives",
                     "Error budget remaining and burn rate of every objective of alerts/objectives.yaml.",
                     budgets(p) + burn_rates(p), ("target",))
