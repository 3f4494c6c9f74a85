"""The scrape core: sessions to targets, when queries run, rows to text, self-metrics.

session.py     read-only sessions and SQL preparation (incl. {{previous_run}}, {{picked}}); the Session protocol
console.py     a PgBouncer admin console as a Session (allowed SHOW commands only)
capability.py  what a role may read: queries it cannot run are skipped, not failed
state.py       one target between scrapes: spec, labels, place among its server's databases, and its parts:
connections.py   its sessions and reachability (what /health reads)
results.py       per query: the latest status and rendered text, what the next run needs
skips.py         queries skipped there and why (refused to the role, extension not installed there)
discovery.py   `databases:` targets: pg_database read as bytes, one target state per database, the DSN's speaking
budget.py      a server's connection budget (discovery and the DSN's database first)
targets.py     the targets a runner scrapes, database lists read in the background
eligibility.py which queries run where (scope, version, `requires_extension` judged where the query runs)
runner.py      the scrape: single flight, the deadline, /health from state; takes a session factory
execution.py   one run of one target: connect, probe, reuse, run, reconnect once, render
freshness.py   what a scrape reports of each target and what it waits for
visits.py      the order and width in which a server's discovered databases are visited
picks.py       `pick:` queries: the ids a query reads, chosen again every `pick.every`
topchanged.py  the K rows that grew most since the last run, plus a remainder
render.py      rows -> exposition lines of one query run
exposition.py  the text format: escaping, numbers, HELP/TYPE lines
outcome.py     what one scrape saw
assembly.py    one scrape's text from the runs it includes
selfmetrics.py pgvigil's own metrics of a scrape
"""
