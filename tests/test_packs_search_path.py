"""Every shipped query resolves every name to pg_catalog or to its extension's schema, whatever a
database's users plant on the search_path.

PostgreSQL resolves an unqualified function or operator over the whole search_path and prefers an
exact match of the argument types wherever it finds one: pg_catalog being first wins only where
pg_catalog has the exact signature. pg_catalog.pg_total_relation_size takes a regclass, so a
tenant's `public.pg_total_relation_size(oid)` was chosen for `pg_total_relation_size(c.oid)`.

Here a tenant (the database's owner, with CREATE on public, where the extensions live) plants
look-alikes of every function, aggregate, operator, type and relation the packs name (found in the
pack SQL by PostgreSQL's own parser, pglast) in three schemas: the one named like the monitoring
role ("$user"), public, and one that `ALTER DATABASE ... SET search_path` puts first. Functions and
operators are planted for every argument type that can reach one of pg_catalog's own overloads by an
implicit cast (from the types of the columns, results and casts the packs use, and oid, bigint,
integer, numeric, text, name, "char", double precision, regclass...) and polymorphically; each records
its call (a warning, and pg_notify: the exfiltration channel) and returns a forged value.

Every query of every pack that applies to the server then runs as a pg_monitor role the way pgvigil
runs it (a read-only transaction, RESET ALL, search_path set locally by exporter/scrape/transaction.py's
rule), as a pack query (`pg_catalog, <its extension's schema>, pg_temp`) and as the user's own query
(`pg_catalog, <the role's search_path at connect>, ..., pg_temp`: what a pack query copied into
`queries:` gets), and must call or read none of them, and return the real values. A second check does
not depend on guessing signatures: each query becomes a temporary view, and pg_depend says what it
resolved to (pg_catalog, or a member of the query's extension). Last, pgvigil's own runner scrapes
the database, packs as shipped and copied into `queries:`, with the SQL it wraps around each query.
"""
from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterator

import pglast
import psycopg
import pytest
import yaml
from packs.exposition import find, parse_samples, value
from pglast import ast
from pglast.enums import A_Expr_Kind, SubLinkType
from pglast.visitors import Visitor

from exporter.config import PACKS_DIR, PICKED_PLACEHOLDER, PREVIOUS_RUN_PLACEHOLDER, QuerySpec, parse_config
from exporter.scrape.assembly import scrape_once
from exporter.scrape.transaction import NameScope, search_path

MONITOR = "pgvigil_watch"       # pg_monitor only; a schema of this name is its "$user"
TENANT = "pgvigil_tenant"       # owns the database, hence public (PG 15+) and its search_path
FIRST = "pgvigil_first"         # put first by ALTER DATABASE ... SET search_path
SPY = "pgvigil_spy"             # the tenant's recorder
PLANTED_IN = (MONITOR, "public", FIRST)
DATABASE_PATH = f'{FIRST}, pg_catalog, "$user", public'
MARK = "pgvigil-planted"
EXTENSIONS = ("pg_stat_statements", "pg_buffercache")

# Argument types planted for every function and operator, besides those that reach pg_catalog's.
BASE_TYPES = ("oid", "bigint", "integer", "smallint", "numeric", "real", "double precision", "text",
              "name", '"char"', "regclass", "boolean")
POLYMORPHIC = ("anyelement", "anycompatible")
# A forged value by type (else by type category); NULL where neither applies.
FORGED_BY_TYPE = {"pg_lsn": "42/42424242", "jsonb": '{"forged": 1}', "json": '{"forged": 1}',
                  "inet": "6.6.6.6", "cidr": "6.6.6.0/24", "xid": "4242", "xid8": "4242",
                  "interval": "4242 seconds", '"char"': "F", "regclass": "pg_class"}
FORGED_BY_CATEGORY = {"N": "4242", "S": "FORGED", "B": "true", "D": "1999-09-09 09:09:09+00"}


# -- what the packs name, by PostgreSQL's grammar ----------------------------------------------------

@dataclass
class Names:
    functions: dict[str, set[int]] = field(default_factory=dict)   # name -> arities called (count(*): 0)
    operators: dict[str, set[bool]] = field(default_factory=dict)  # name -> {binary? (else prefix)}
    relations: set[str] = field(default_factory=set)
    types: set[str] = field(default_factory=set)
    unqualified_calls: set[str] = field(default_factory=set)


class _NameCollector(Visitor):
    BETWEEN = {A_Expr_Kind.AEXPR_BETWEEN: ("<=", ">="), A_Expr_Kind.AEXPR_BETWEEN_SYM: ("<=", ">="),
               A_Expr_Kind.AEXPR_NOT_BETWEEN: ("<", ">"), A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM: ("<", ">")}

    def __init__(self, names: Names) -> None:
        super().__init__()
        self.names = names
        self.ctes: set[str] = set()
        self.relations: set[str] = set()

    def operator(self, name: str, binary: bool = True) -> None:
        self.names.operators.setdefault(name, set()).add(binary)

    def visit_FuncCall(self, ancestors, node: ast.FuncCall) -> None:  # noqa: N802 (pglast's naming)
        name = node.funcname[-1].sval
        self.names.functions.setdefault(name, set()).add(0 if node.agg_star else len(node.args or ()))
        if len(node.funcname) == 1:
            self.names.unqualified_calls.add(name)

    def visit_A_Expr(self, ancestors, node: ast.A_Expr) -> None:  # noqa: N802
        if node.kind in self.BETWEEN:
            for name in self.BETWEEN[node.kind]:
                self.operator(name)
        else:  # IN is = or <>, NULLIF and IS DISTINCT FROM are =, LIKE is ~~: the raw tree names them
            self.operator(node.name[-1].sval, binary=node.lexpr is not None)

    def visit_SubLink(self, ancestors, node: ast.SubLink) -> None:  # noqa: N802
        if node.subLinkType in (SubLinkType.ANY_SUBLINK, SubLinkType.ALL_SUBLINK):
            self.operator(node.operName[-1].sval if node.operName else "=")

    def visit_CaseExpr(self, ancestors, node: ast.CaseExpr) -> None:  # noqa: N802
        if node.arg is not None:  # CASE x WHEN y: x = y
            self.operator("=")

    def visit_CommonTableExpr(self, ancestors, node: ast.CommonTableExpr) -> None:  # noqa: N802
        self.ctes.add(node.ctename)

    def visit_RangeVar(self, ancestors, node: ast.RangeVar) -> None:  # noqa: N802
        self.relations.add(node.relname)

    def visit_TypeName(self, ancestors, node: ast.TypeName) -> None:  # noqa: N802
        self.names.types.add(node.names[-1].sval)


def runnable_sql(sql: str, picked: list[int] | tuple[int, ...] = ()) -> str:
    """A query's SQL as pgvigil sends it: the picked ids as prepare_sql writes them."""
    return (sql.replace(PICKED_PLACEHOLDER, "'{" + ",".join(str(int(i)) for i in picked) + "}'")
            .replace(PREVIOUS_RUN_PLACEHOLDER, "pg_catalog.now()"))


def names_in(sqls: list[str]) -> Names:
    names = Names()
    for sql in sqls:
        collector = _NameCollector(names)
        collector(pglast.parse_sql(runnable_sql(sql)))
        names.relations |= collector.relations - collector.ctes
    return names


def shipped_queries() -> tuple[QuerySpec, ...]:
    """Every query of every pack that runs on PostgreSQL (the pgbouncer pack talks to PgBouncer)."""
    packs = ", ".join(sorted(path.stem for path in PACKS_DIR.glob("*.yaml")))
    return tuple(q for q in parse_config(f"collectors: [{packs}]\n").queries if q.kind == "postgres")


QUERIES = shipped_queries()
NAMES = names_in([sql for q in QUERIES for sql in q.sql_texts])


def test_the_packs_name_what_the_report_was_about():
    """The extraction sees the calls and operators of the hostile-input report, and plenty more."""
    assert {"pg_total_relation_size", "pg_relation_size", "format", "count", "sum"} <= set(NAMES.functions)
    assert {"=", "<>", "/", "!~"} <= set(NAMES.operators)
    assert {"pg_stat_database", "pg_stat_activity", "pg_class", "pg_stat_statements"} <= NAMES.relations
    assert len(NAMES.functions) > 40 and len(QUERIES) > 50


# -- the server's catalog: what to plant --------------------------------------------------------------

@dataclass(frozen=True)
class Proc:
    oid: int
    name: str
    kind: str                 # f, a, w
    args: tuple[int, ...]     # input argument types
    variadic: int             # element type of a VARIADIC argument, 0 if none
    result: int
    retset: bool
    result_ddl: str           # pg_get_function_result
    out_args_ddl: str         # OUT arguments (with RETURNS record / SETOF record), '' if none

    def positions(self, arity: int) -> tuple[int, ...] | None:
        """The parameter type at each of `arity` argument positions, None if a call of that arity cannot match."""
        if self.variadic and arity >= len(self.args) - 1:
            return self.args[:-1] + (self.variadic,) * (arity - len(self.args) + 1)
        return self.args if arity == len(self.args) else None


@dataclass
class Catalog:
    types: dict[int, tuple[str, str, str]]        # oid -> (DDL name, typtype, typcategory)
    implicit: set[tuple[int, int]]                # implicit casts source -> target
    procs: list[Proc]
    operators: list[tuple[str, int, int, int]]    # name, left, right, result (pg_catalog's)
    relations: dict[str, str]                     # name -> schema it is really in
    universe: set[int]                            # argument types worth planting
    base: set[int]
    # relation -> its columns in order, for those with a column of a pseudo-type (anyarray: pg_stats'
    # values, pg_attribute.attmissingval), which a view cannot have: the look-alike shows it as text
    select_lists: dict[str, str] = field(default_factory=dict)

    def ddl(self, oid: int) -> str:
        return self.types[oid][0]

    def pseudo(self, oid: int) -> bool:
        return self.types[oid][1] == "p"

    def sources(self, target: int) -> list[int]:
        """The planted argument types that a parameter of type `target` accepts (by an implicit cast)."""
        if self.pseudo(target):
            return sorted(self.base)
        return sorted(t for t in self.universe if t == target or (t, target) in self.implicit)

    def forged(self, oid: int) -> str:
        name, _, category = self.types[oid]
        literal = FORGED_BY_TYPE.get(name, FORGED_BY_CATEGORY.get(category))
        return "NULL" if literal is None else f"'{literal}'::{name}"


def fetch(conn: psycopg.Connection, sql: str, params: object = None) -> list[tuple]:
    return conn.execute(sql, params).fetchall()


def read_catalog(conn: psycopg.Connection, schemas: list[str]) -> Catalog:
    """What pg_catalog and the extensions' schemas hold under the names the packs use (search_path: pg_catalog)."""
    types = {oid: (ddl, typtype, category) for oid, ddl, typtype, category in fetch(
        conn, "SELECT oid::int8, format_type(oid, NULL), typtype::text, typcategory::text FROM pg_type")}
    implicit = {(s, t) for s, t in fetch(conn, "SELECT castsource::int8, casttarget::int8 FROM pg_cast "
                                               "WHERE castcontext = 'i'")}
    procs = [Proc(oid, name, kind, tuple(args), variadic, result, retset, result_ddl, out_ddl or "")
             for oid, name, kind, args, variadic, result, retset, result_ddl, out_ddl in fetch(conn, """
        SELECT p.oid::int8, p.proname::text, p.prokind::text, p.proargtypes::oid[]::int8[], p.provariadic::int8,
               p.prorettype::int8, p.proretset, pg_get_function_result(p.oid),
               (SELECT string_agg(format('OUT %%I %%s', a.name, format_type(a.type, NULL)), ', ' ORDER BY a.n)
                FROM unnest(p.proallargtypes, p.proargmodes, p.proargnames) WITH ORDINALITY AS a(type, mode, name, n)
                WHERE a.mode = 'o')
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.proname = ANY (%s) AND n.nspname = ANY (%s)
          AND NOT coalesce('b' = ANY (p.proargmodes), false)
        ORDER BY p.oid""", (sorted(NAMES.functions), schemas))]
    operators = fetch(conn, """SELECT oprname::text, oprleft::int8, oprright::int8, oprresult::int8 FROM pg_operator
                               WHERE oprnamespace = 'pg_catalog'::regnamespace AND oprname = ANY (%s)""",
                      (sorted(NAMES.operators),))
    relations = dict(fetch(conn, """SELECT c.relname::text, n.nspname::text FROM pg_class c
                                    JOIN pg_namespace n ON n.oid = c.relnamespace
                                    WHERE c.relname = ANY (%s) AND n.nspname = ANY (%s)""",
                           (sorted(NAMES.relations), schemas)))
    columns = {t for (t,) in fetch(conn, """SELECT DISTINCT a.atttypid::int8 FROM pg_attribute a
                                            JOIN pg_class c ON c.oid = a.attrelid
                                            JOIN pg_namespace n ON n.oid = c.relnamespace
                                            WHERE c.relname = ANY (%s) AND n.nspname = ANY (%s)
                                              AND a.attnum > 0 AND NOT a.attisdropped""",
                                   (sorted(NAMES.relations), schemas))}
    named = {t for (t,) in fetch(conn, "SELECT to_regtype(n)::oid::int8 FROM unnest(%s::text[]) n", (
        sorted(NAMES.types) + list(BASE_TYPES),)) if t is not None}
    base = {t for (t,) in fetch(conn, "SELECT to_regtype(n)::oid::int8 FROM unnest(%s::text[]) n", (list(BASE_TYPES),))}
    universe = {t for t in columns | named | {p.result for p in procs} if types[t][1] != "p"}
    select_lists = dict(fetch(conn, """
        SELECT c.relname::text, string_agg(CASE WHEN t.typtype = 'p' THEN format('r.%%1$I::text AS %%1$I', a.attname)
                                                ELSE format('r.%%I', a.attname) END, ', ' ORDER BY a.attnum)
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_type t ON t.oid = a.atttypid
        WHERE c.relname = ANY (%s) AND n.nspname = ANY (%s) AND a.attnum > 0 AND NOT a.attisdropped
        GROUP BY c.relname HAVING bool_or(t.typtype = 'p')""", (sorted(NAMES.relations), schemas)))
    return Catalog(types, implicit, procs, operators, relations, universe, base, select_lists)


# -- the tenant's plants --------------------------------------------------------------------------------

def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Planter:
    """The DDL of the look-alikes, each function recording its call through pgvigil_spy.seen(tag)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.statements: list[str] = []
        self.count = itertools.count()
        self.planted: dict[str, int] = {}

    def body(self, tag: str, ret: str) -> str:
        return (f"LANGUAGE plpgsql SET search_path = pg_catalog AS $planted$ BEGIN "
                f"PERFORM {SPY}.seen({literal(tag)}); {ret} END $planted$")

    def add(self, kind: str, sql: str) -> None:
        self.statements.append(sql)
        self.planted[kind] = self.planted.get(kind, 0) + 1

    def function(self, schema: str, proc: Proc, args: tuple[str, ...], polymorphic: bool) -> None:
        tag = f"{schema}.{proc.name}({', '.join(args)})"
        signature = ", ".join([*args, *([proc.out_args_ddl] if proc.out_args_ddl else [])])
        target = f"{quoted(schema)}.{quoted(proc.name)}"
        if proc.kind == "a":
            if polymorphic or self.catalog.pseudo(proc.result):
                return
            state = self.catalog.ddl(proc.result)
            step = f"{SPY}.{quoted(f'step_{next(self.count)}')}"
            final = f"{SPY}.{quoted(f'final_{next(self.count)}')}"
            self.add("helper", f"CREATE FUNCTION {step}({', '.join([state, *args])}) RETURNS {state} "
                               f"LANGUAGE sql AS 'SELECT $1'")
            self.add("helper", f"CREATE FUNCTION {final}({state}) RETURNS {state} "
                               + self.body(tag, f"RETURN {self.catalog.forged(proc.result)};"))
            self.add("aggregate", f"CREATE AGGREGATE {target}({', '.join(args) or '*'}) "
                                  f"(SFUNC = {step}, STYPE = {state}, FINALFUNC = {final})")
            return
        if proc.retset or proc.out_args_ddl:
            result, ret = proc.result_ddl, "RETURN;"
        elif self.catalog.pseudo(proc.result):
            if self.catalog.ddl(proc.result) == "void":
                result, ret = "void", "RETURN;"
            elif polymorphic and self.catalog.ddl(proc.result) in POLYMORPHIC:
                result, ret = args[0], "RETURN $1;"
            else:
                return  # record without OUT arguments, or a polymorphic result of concrete arguments
        else:
            result, ret = self.catalog.ddl(proc.result), f"RETURN {self.catalog.forged(proc.result)};"
        self.add("function", f"CREATE FUNCTION {target}({signature}) RETURNS {result} " + self.body(tag, ret))

    def functions(self, schema: str, existing: set[tuple[str, tuple[int, ...]]]) -> None:
        for name, arities in sorted(NAMES.functions.items()):
            for arity in sorted(arities):
                seen: set[tuple] = set()
                for proc in (p for p in self.catalog.procs if p.name == name):
                    positions = proc.positions(arity)
                    if positions is None:
                        continue
                    for args in itertools.product(*(self.catalog.sources(t) for t in positions)):
                        if args in seen or (name, args) in existing:
                            continue
                        seen.add(args)
                        self.function(schema, proc, tuple(self.catalog.ddl(t) for t in args), polymorphic=False)
                    for poly in POLYMORPHIC if arity else ():
                        if ("poly", poly) not in seen:
                            seen.add(("poly", poly))
                            self.function(schema, proc, (poly,) * arity, polymorphic=True)

    def operators(self, schema: str) -> None:
        """Binary operators over every pair of planted types that reaches one of pg_catalog's operators
        of that name (and (t, t): an untyped literal takes the other side's type), prefix ones likewise."""
        planted: dict[tuple[str, int, int], int] = {}
        for name, left, right, result in self.catalog.operators:
            if not (NAMES.operators.get(name, set()) & {left != 0}) or self.catalog.pseudo(result):
                continue
            rights = self.catalog.sources(right)
            if left == 0:
                operands = [(0, t) for t in rights]
            else:
                lefts = self.catalog.sources(left)
                operands = [*itertools.product(lefts, rights), *((t, t) for t in {*lefts, *rights})]
            for operand in operands:
                planted.setdefault((name, *operand), result)
        for (name, left, right), result in sorted(planted.items()):
            self.operator(schema, name, self.catalog.ddl(left) if left else None, self.catalog.ddl(right),
                          self.catalog.ddl(result), f"RETURN {self.catalog.forged(result)};")
        for name, arities in sorted(NAMES.operators.items()):
            if True in arities and any(n == name and self.catalog.ddl(r) == "boolean"
                                       for n, _, _, r in self.catalog.operators):
                for poly in POLYMORPHIC:
                    self.operator(schema, name, poly, poly, "boolean", "RETURN true;")

    def operator(self, schema: str, name: str, left: str | None, right: str, result: str, ret: str) -> None:
        fn = f"{SPY}.{quoted(f'op_{next(self.count)}')}"
        operands = [right] if left is None else [left, right]
        tag = f"{schema}.{name}({', '.join(operands)})"
        self.add("helper", f"CREATE FUNCTION {fn}({', '.join(operands)}) RETURNS {result} " + self.body(tag, ret))
        sides = f"RIGHTARG = {right}" if left is None else f"LEFTARG = {left}, RIGHTARG = {right}"
        self.add("operator", f"CREATE OPERATOR {quoted(schema)}.{name} ({sides}, FUNCTION = {fn})")

    def types(self, schema: str) -> None:
        for name in sorted(NAMES.types):
            real = f"pg_catalog.{quoted(name)}"
            tag = f"{schema}.{name}"
            domain = f"CREATE DOMAIN {quoted(schema)}.{quoted(name)} AS {real} CHECK ({SPY}.seen({literal(tag)}))"
            self.add("type", f"DO $do$ BEGIN IF to_regtype({literal(real)}) IS NOT NULL THEN "
                             f"EXECUTE {literal(domain)}; END IF; END $do$")

    def relations(self, schema: str, existing: set[str]) -> None:
        for name in sorted(NAMES.relations - existing):
            tag = f"{schema}.{name}"
            real = self.catalog.relations.get(name)
            select = self.catalog.select_lists.get(name, "r.*")
            query = (f"SELECT {select} FROM {quoted(real)}.{quoted(name)} r WHERE {SPY}.seen({literal(tag)})" if real
                     else f"SELECT {SPY}.seen({literal(tag)}) AS seen")
            self.add("view", f"CREATE VIEW {quoted(schema)}.{quoted(name)} AS {query}")
            self.add("grant", f"GRANT SELECT ON {quoted(schema)}.{quoted(name)} TO PUBLIC")


SEEN = f"""
CREATE SCHEMA {SPY};
CREATE FUNCTION {SPY}.seen(tag text) RETURNS boolean LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
BEGIN
  RAISE WARNING '{MARK}: %', tag;
  PERFORM pg_catalog.pg_notify('{MARK}', tag);
  RETURN true;
END $$;
"""


@dataclass
class Hostile:
    cluster: object
    dbname: str
    version: int
    extensions: dict[str, str]     # extension -> schema
    planted: dict[str, int]

    def connect(self, user: str = "postgres", **kwargs) -> psycopg.Connection:
        return psycopg.connect(self.cluster.dsn(self.dbname, user=user), autocommit=True, **kwargs)

    def superuser(self) -> psycopg.Connection:
        return self.connect(options="-c search_path=pg_catalog")


SAMPLE = """
CREATE SCHEMA app;
CREATE TABLE app.orders (id int PRIMARY KEY, note text, at timestamptz DEFAULT now());
INSERT INTO app.orders (id, note) SELECT g, repeat('x', 300) FROM generate_series(1, 4000) g;
DELETE FROM app.orders WHERE id % 7 = 0;
CREATE INDEX orders_note ON app.orders (note);
CREATE TABLE public.accounts (id bigint PRIMARY KEY, name text);
INSERT INTO public.accounts SELECT g, 'a' || g FROM generate_series(1, 500) g;
"""


@pytest.fixture(scope="module")
def hostile(major_cluster) -> Iterator[Hostile]:
    cluster = major_cluster
    dbname = "search_path_" + uuid.uuid4().hex[:8]
    cluster.execute(f"""DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{MONITOR}') THEN CREATE ROLE {MONITOR} LOGIN; END IF;
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{TENANT}') THEN CREATE ROLE {TENANT} LOGIN; END IF;
        END $$; GRANT pg_monitor TO {MONITOR}""")
    cluster.execute(f"CREATE DATABASE {dbname} OWNER {TENANT}")
    try:
        with psycopg.connect(cluster.dsn(dbname), autocommit=True) as su:
            available = {n for (n,) in fetch(su, "SELECT name FROM pg_available_extensions")}
            for extension in EXTENSIONS:
                if extension in available:
                    su.execute(f"CREATE EXTENSION {extension} SCHEMA public")
            su.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")  # the default up to PG 14
            extensions = dict(fetch(su, "SELECT e.extname::text, n.nspname::text FROM pg_extension e "
                                        "JOIN pg_namespace n ON n.oid = e.extnamespace"))
            version = int(fetch(su, "SHOW server_version_num")[0][0])
        tenant_dsn = cluster.dsn(dbname, user=TENANT)
        with psycopg.connect(tenant_dsn, autocommit=True, options="-c search_path=pg_catalog") as tenant:
            tenant.execute(SAMPLE)
            tenant.execute("VACUUM ANALYZE")
            catalog = read_catalog(tenant, ["pg_catalog", *sorted(set(extensions.values()))])
            existing_functions = {(name, tuple(args)) for name, args in fetch(
                tenant, "SELECT p.proname::text, p.proargtypes::oid[]::int8[] FROM pg_proc p "
                        "WHERE p.pronamespace = 'public'::regnamespace")}
            existing_relations = {n for (n,) in fetch(
                tenant, "SELECT relname::text FROM pg_class WHERE relnamespace = 'public'::regnamespace")}
            planter = Planter(catalog)
            for schema in PLANTED_IN:
                if schema != "public":
                    planter.add("schema", f"CREATE SCHEMA {quoted(schema)}")
                planter.add("grant", f"GRANT USAGE ON SCHEMA {quoted(schema)} TO PUBLIC")
                planter.types(schema)
            for schema in PLANTED_IN:
                in_public = schema == "public"
                planter.functions(schema, existing_functions if in_public else set())
                planter.operators(schema)
                planter.relations(schema, existing_relations if in_public else set())
            with tenant.transaction():
                tenant.execute(SEEN + f"GRANT USAGE ON SCHEMA {SPY} TO PUBLIC;")
                for start in range(0, len(planter.statements), 500):
                    tenant.execute(";\n".join(planter.statements[start:start + 500]))
            tenant.execute(f"ALTER DATABASE {dbname} SET search_path = {DATABASE_PATH}")
        yield Hostile(cluster, dbname, version, extensions, planter.planted)
    finally:
        cluster.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}' "
                        f"AND pid <> pg_backend_pid()")
        cluster.execute(f"DROP DATABASE IF EXISTS {dbname}")


# -- running a query the way pgvigil does ---------------------------------------------------------------

@dataclass
class Run:
    columns: list[str]
    rows: list[tuple]
    error: str | None
    planted: list[str]      # tags of the look-alikes it called or read


class Monitor:
    """A pg_monitor session that runs each query in a read-only transaction after RESET ALL, with
    search_path set locally (pgvigil's session contract), and hears the planted objects."""

    def __init__(self, hostile: Hostile) -> None:
        self.conn = hostile.connect(MONITOR)
        self.heard: list[str] = []
        self.conn.add_notice_handler(lambda d: self.heard.append(d.message_primary or ""))
        self.conn.add_notify_handler(lambda n: self.heard.append(f"{MARK}: {n.payload}"))
        self.conn.execute(f'LISTEN "{MARK}"')
        self.connect_path = fetch(self.conn, "SHOW search_path")[0][0]

    def close(self) -> None:
        self.conn.close()

    def path(self, mode: str, query: QuerySpec, hostile: Hostile) -> str:
        """pgvigil's search_path for the query (exporter/scrape/transaction.py): as a pack query, or as
        the user's own (the role's search_path at connect after pg_catalog)."""
        scope = NameScope(extension=query.requires_extension) if mode == "pack" else NameScope(role_path=True)
        return search_path(scope, self.connect_path, hostile.extensions)

    def begin(self, path: str, read_only: bool = True) -> None:
        self.heard.clear()
        self.conn.execute("BEGIN READ ONLY" if read_only else "BEGIN")
        self.conn.execute("RESET ALL")
        self.conn.execute("SELECT pg_catalog.set_config('search_path', %s, true), "
                          "pg_catalog.set_config('statement_timeout', '30s', true)", (path,))

    def run(self, sql: str, path: str) -> Run:
        columns: list[str] = []
        rows: list[tuple] = []
        error = None
        try:
            self.begin(path)
            cur = self.conn.execute(sql)
            columns, rows = [d.name for d in cur.description or ()], cur.fetchall()
            self.conn.execute("COMMIT")
        except psycopg.Error as exc:
            error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.conn.execute("ROLLBACK")
        self.conn.execute("SELECT 1")  # notifications of the commit
        return Run(columns, rows, error, sorted({m.split(": ", 1)[1] for m in self.heard if m.startswith(MARK)}))

    def resolved(self, sql: str, path: str) -> list[tuple[str, str, str, str]]:
        """(kind, identity, schema, extension it belongs to) of every object a view of `sql` depends
        on (pinned ones are not recorded), read with search_path pg_catalog; PostgreSQL's error if
        the view cannot be made."""
        self.begin(path, read_only=False)
        try:
            self.conn.execute(f"CREATE TEMP VIEW pgvigil_resolved AS {sql}")
            self.conn.execute("SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true)")
            return fetch(self.conn, """
                WITH v AS (SELECT 'pg_temp.pgvigil_resolved'::regclass::oid AS oid)
                SELECT DISTINCT o.type, o.identity, coalesce(o.schema, ''),
                       coalesce((SELECT e.extname::text FROM pg_depend m JOIN pg_extension e ON e.oid = m.refobjid
                                 WHERE m.classid = d.refclassid AND m.objid = d.refobjid AND m.deptype = 'e'), '')
                FROM pg_depend d CROSS JOIN v
                CROSS JOIN LATERAL pg_identify_object(d.refclassid, d.refobjid, 0) o
                WHERE (d.classid = 'pg_rewrite'::regclass::oid
                       AND d.objid IN (SELECT r.oid FROM pg_rewrite r WHERE r.ev_class = v.oid)
                    OR d.classid = 'pg_class'::regclass::oid AND d.objid = v.oid)
                  AND d.refobjid <> v.oid
                  AND d.refclassid <> 'pg_namespace'::regclass::oid  -- the view's own schema, pg_temp
                ORDER BY 1, 2""")
        except psycopg.Error as exc:
            return [("error", str(exc).splitlines()[0], "", "")]
        finally:
            self.conn.execute("ROLLBACK")


@pytest.fixture(scope="module")
def monitor(hostile) -> Iterator[Monitor]:
    session = Monitor(hostile)
    yield session
    session.close()


def applicable(hostile: Hostile, mode: str) -> list[QuerySpec]:
    """The queries pgvigil would run on this server; a query copied into `queries:` names its
    extension's objects unqualified, so in "user" mode only queries without an extension apply."""
    extensions = () if mode == "user" else tuple(hostile.extensions)
    return [q for q in QUERIES if q.runs_on_version(hostile.version) and q.requires_extension in (None, *extensions)]


def picked(monitor: Monitor, query: QuerySpec, path: str, problems: list[str], mode: str) -> list[int]:
    if query.pick is None:
        return []
    run = monitor.run(query.pick.sql, path)
    report(problems, f"{query.name} (pick)", mode, run)
    return [row[0] for row in run.rows]


def report(problems: list[str], name: str, mode: str, run: Run) -> None:
    if run.error:
        problems.append(f"{name} [{mode}]: {run.error}")
    problems.extend(f"{name} [{mode}]: called {tag}" for tag in run.planted)


# -- the tests -----------------------------------------------------------------------------------------

def test_the_plants_are_in_place_and_bite(hostile, monitor):
    """Not vacuous: the three schemas are on the user-query path, and an unqualified call of the
    kind the packs used to make is answered by a plant there."""
    assert hostile.planted["function"] > 1000 and hostile.planted["operator"] > 500, hostile.planted
    assert hostile.planted["aggregate"] > 50 and hostile.planted["view"] > 40 and hostile.planted["type"] > 3
    path = search_path(NameScope(role_path=True), monitor.connect_path, hostile.extensions)
    monitor.begin(path)
    schemas = fetch(monitor.conn, "SELECT pg_catalog.current_schemas(false)::text[]")[0][0]
    monitor.conn.execute("COMMIT")
    assert schemas[:2] == ["pg_catalog", FIRST] and {MONITOR, "public"} <= set(schemas)
    run = monitor.run("SELECT pg_total_relation_size(c.oid) AS size FROM pg_class c "
                      "WHERE c.oid = 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid", path)
    assert run.rows == [(4242,)] and run.planted == [f"{FIRST}.pg_total_relation_size(oid)"], run
    run = monitor.run("SELECT sum(total_exec_time) / 1000.0 AS seconds FROM pg_stat_statements(false)",
                      search_path(NameScope(extension="pg_stat_statements"), "", hostile.extensions))
    assert run.rows == [(4242,)] and run.planted == ["public./(double precision, numeric)"], run


@pytest.mark.parametrize("mode", ["pack", "user"])
def test_no_planted_object_is_called_or_read(hostile, monitor, mode):
    problems: list[str] = []
    results: dict[str, Run] = {}
    queries = applicable(hostile, mode)
    for query in queries:
        path = monitor.path(mode, query, hostile)
        sql = runnable_sql(query.sql, picked(monitor, query, path, problems, mode))
        results[query.name] = run = monitor.run(sql, path)
        report(problems, query.name, mode, run)
    assert not problems, "\n".join(problems)
    assert len(queries) > 30
    check_real_values(hostile, results)


def check_real_values(hostile: Hostile, results: dict[str, Run]) -> None:
    """The values the report's plants forged, against pg_catalog's own, computed by the superuser."""
    with hostile.superuser() as su:
        sizes = dict(((s, r), size) for s, r, size in fetch(su, """
            SELECT n.nspname::text, c.relname::text, pg_catalog.pg_total_relation_size(c.oid)
            FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'r' AND n.nspname IN ('app', 'public')"""))
        index_sizes = dict(((s, r), size) for s, r, size in fetch(su, """
            SELECT n.nspname::text, c.relname::text, pg_catalog.pg_relation_size(c.oid)
            FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'i' AND n.nspname IN ('app', 'public')"""))
    table = rows_by(results["pg_stat_user_tables_sizes"], ("schemaname", "relname"), "size_bytes")
    assert table == sizes and sizes[("app", "orders")] > 1_000_000
    index = rows_by(results["pg_stat_user_indexes"], ("schemaname", "indexrelname"), "size_bytes")
    assert index == index_sizes and index[("app", "orders_note")] > 16384
    version = rows_by(results["pg_static"], ("short_version",), "info")
    assert version == {(f"{hostile.version // 10000}.{hostile.version % 100}.0",): 1}


def rows_by(run: Run, keys: tuple[str, ...], value: str) -> dict[tuple, object]:
    at = {name: i for i, name in enumerate(run.columns)}
    return {tuple(row[at[k]] for k in keys): row[at[value]] for row in run.rows}


@pytest.mark.parametrize("mode", ["pack", "user"])
def test_every_dependency_is_pg_catalogs_or_the_extensions_own(hostile, monitor, mode):
    """pg_depend of a view of each query, no signature guessed: every object it resolved to is in
    pg_catalog or is a member of the query's extension (not merely in the extension's schema, where
    the tenant may create objects too)."""
    outside: dict[str, list] = {}
    members = 0
    for query in applicable(hostile, mode):
        path = monitor.path(mode, query, hostile)
        texts = {"sql": runnable_sql(query.sql, [0]), **({"pick": query.pick.sql} if query.pick else {})}
        for part, sql in texts.items():
            resolved = monitor.resolved(sql, path)
            members += sum(extension == query.requires_extension for *_, extension in resolved)
            wrong = [(kind, identity) for kind, identity, schema, extension in resolved
                     if schema != "pg_catalog" and (extension != query.requires_extension or not extension)]
            if wrong:
                outside[f"{query.name} ({part}) [{mode}]"] = wrong
    assert not outside, "\n".join(f"{name}: {wrong}" for name, wrong in outside.items())
    assert members > 0 or mode == "user"  # the extensions' own objects are recorded: the check sees


def test_every_unqualified_call_is_the_extensions(hostile):
    """Calls of pg_catalog's functions are written pg_catalog.fn(...) (a call the grammar makes,
    such as EXTRACT, already is); unqualified names are the extensions' own functions."""
    with hostile.superuser() as su:
        in_catalog = {n for (n,) in fetch(su, "SELECT DISTINCT proname::text FROM pg_catalog.pg_proc "
                                              "WHERE pronamespace = 'pg_catalog'::pg_catalog.regnamespace "
                                              "AND proname = ANY (%s)", (sorted(NAMES.unqualified_calls),))}
    assert not in_catalog, sorted(in_catalog)


# -- pgvigil itself: its runner, session and the SQL around each query --------------------------------

def copied_into_queries() -> str:
    """Every pack query without an extension as the user's own `queries:` (docs: copy a pack to change
    it); a query naming its extension's objects unqualified resolves them through the role's path."""
    items = [item for path in sorted(PACKS_DIR.glob("*.yaml"))
             for item in yaml.safe_load(path.read_text(encoding="utf-8"))["queries"]
             if item.get("kind", "postgres") == "postgres" and "requires_extension" not in item]
    return yaml.safe_dump({"collectors": [], "queries": items}, sort_keys=False)


@pytest.mark.parametrize("copied", [False, True], ids=["packs", "copied"])
def test_pgvigil_scrapes_calling_no_planted_object(hostile, copied):
    """One scrape by pgvigil's own runner as the pg_monitor role: every query succeeds, the tenant's
    listener hears no planted object, and the sizes and the version are pg_catalog's."""
    packs = ", ".join(sorted(path.stem for path in PACKS_DIR.glob("*.yaml")))
    body = copied_into_queries() if copied else f"collectors: [{packs}]\n"
    config = parse_config(f"targets:\n  app:\n    dsn: {hostile.cluster.dsn(hostile.dbname, user=MONITOR)}\n{body}")
    with hostile.superuser() as listener:
        heard: set[str] = set()
        listener.add_notify_handler(lambda n: heard.add(n.payload))
        listener.execute(f'LISTEN "{MARK}"')
        text = scrape_once(config, timeout=60)
        time.sleep(0.5)
        listener.execute("SELECT 1")  # reads the notifications of every committed run
        sizes = dict(fetch(listener, """SELECT c.relname::text, pg_catalog.pg_total_relation_size(c.oid)
                                        FROM pg_catalog.pg_class c WHERE c.relname IN ('orders', 'accounts')"""))
        index = fetch(listener, "SELECT pg_catalog.pg_relation_size('app.orders_note'::pg_catalog.regclass)")[0][0]
    samples = parse_samples(text)
    failed = sorted((s.labels["query"], s.value) for s in find(samples, "pgvigil_query_success") if s.value != 1)
    skipped = sorted(s.labels["query"] for s in find(samples, "pgvigil_query_skipped") if s.value)
    assert (sorted(heard), failed, skipped) == ([], [], [])
    assert len(find(samples, "pgvigil_query_success")) > 30
    for relname, size in sizes.items():
        assert value(samples, "pg_stat_user_tables_size_bytes", relname=relname) == size
    assert value(samples, "pg_stat_user_indexes_size_bytes", indexrelname="orders_note") == index
    short = f"{hostile.version // 10000}.{hostile.version % 100}.0"
    assert value(samples, "pg_static", short_version=short) == 1
