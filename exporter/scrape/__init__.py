"""The scrape core: sessions to targets, when queries run, rows to text, self-metrics.

session.py     read-only sessions and SQL preparation (incl. {{previous_run}}, {{picked}}); the Session protocol
console.py     a PgBouncer admin console as a Session (allowed SHOW commands only)
capability.py  what a role may read: queries it cannot run are skipped, not failed
state.py       what pgvigil knows of each target and query between scrapes
discovery.py   `databases:` targets: one target state per database, within a connection budget
runner.py      when queries run: single flight, ttl, deadlines; takes a session factory
picks.py       `pick:` queries: the ids a query reads, chosen again every `pick.every`
topchanged.py  the K rows that grew most since the last run, plus a remainder
render.py      rows -> exposition lines of one query run
exposition.py  the text format: escaping, numbers, HELP/TYPE lines
outcome.py     what one scrape saw
assembly.py    one scrape's text from the runs it includes
selfmetrics.py pgvigil's own metrics of a scrape
"""
