"""Generators of the alerting bundle (rules, promtool tests, Alertmanager config, dashboards) from the thresholds file."""
