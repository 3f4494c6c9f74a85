"""Backups that prove they can be restored: dump, verify, prune, off-site copies, state and metrics.

Every backup this package makes is recorded in a state file next to the backups
(``pgvigil-backup-state.json``); verification, retention and the exporter's
metrics all read that file, so a file the state does not list is never treated
as a backup and never deleted.
"""
