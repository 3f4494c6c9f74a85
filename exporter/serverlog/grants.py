"""What a role needs to read the server log through SQL (`log: source: sql`), for `pgvigil grants`.

Two functions, granted directly (least privilege, rather than all of pg_monitor): `pg_ls_logdir()` lists the
log directory, `pg_read_binary_file(text, bigint, bigint)` reads a byte range of a file (bytes: a line that is
not valid in the database's encoding is no error); and pg_read_all_settings, as `log_directory` (where the
files are) is shown to superusers and its members only. PostgreSQL lets a non-superuser with the second read any
file of the data directory and the log directory, not only the log: docs/logs.md says so.
"""
from __future__ import annotations

FUNCTIONS = ("pg_catalog.pg_ls_logdir()", "pg_catalog.pg_read_binary_file(text, bigint, bigint)")
# The role's EXECUTE on each function, in FUNCTIONS order (a membership such as pg_monitor counts).
PRIVILEGES_SQL = ("SELECT " + ", ".join(f"pg_catalog.has_function_privilege('{f}', 'EXECUTE')" for f in FUNCTIONS)
                  + ", pg_catalog.pg_has_role('pg_read_all_settings', 'USAGE')")


def log_grants(granted: tuple[bool, ...], grantee: str) -> tuple[list[str], list[str], list[str]]:
    """(what is missing, the GRANTs on this database's functions, the GRANTs to the role) from PRIVILEGES_SQL's row."""
    missing, statements, role_statements = [], [], []
    for function, has in zip(FUNCTIONS, granted):
        if not has:
            missing.append(f"log (source: sql): EXECUTE on {function}")
            statements.append(f"GRANT EXECUTE ON FUNCTION {function} TO {grantee};")
    if not granted[len(FUNCTIONS)]:
        missing.append("log (source: sql): the log_directory setting (pg_read_all_settings)")
        role_statements.append(f"GRANT pg_read_all_settings TO {grantee};")
    return missing, statements, role_statements
