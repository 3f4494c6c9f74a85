"""The scrape core: sessions to targets, when queries run, rows to text, self-metrics.

session.py    read-only sessions and SQL preparation (incl. {{previous_run}})
state.py      what pgvigil knows of each target and query between scrapes
runner.py     when queries run: single flight, ttl, deadlines; takes a session factory
render.py     rows -> exposition lines of one query run
exposition.py the text format: escaping, numbers, HELP/TYPE lines
assembly.py   one scrape's text from the runs it includes
selfmetrics.py pgvigil's own metrics of a scrape
"""
