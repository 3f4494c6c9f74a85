"""PostgreSQL's server log turned into counters (docs/logs.md).

One module per idea: `spec` (the target's `log:` section), `source` (where the bytes come from: a file
or directory, or SQL), `positions` (the state file: where each file was read up to), `entry` and the
parsers `csvlog`, `jsonlog`, `stderr` (bytes -> entries), `classify` (an entry -> counter increments,
never text), `counters` (the bounded counter store and its families), `reader` (one read cycle:
rotation, budget, backlog), `collector` (a thread per target and the Prometheus collector).
"""
