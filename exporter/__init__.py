"""pgvigil: PostgreSQL monitoring as a Prometheus exporter for SQL."""

__version__ = "0.1.0"
