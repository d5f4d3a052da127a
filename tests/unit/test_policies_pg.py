"""PostgreSQL classifier table (policies.pg) and its exact-text cache (policies.cache)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.cache import CachedClassifier, classify_pg_cached
from policies.pg import classify
from policies.types import STRICTNESS, Classification, Kind

R, T, S, W, D, P, U = (
    Kind.READ,
    Kind.TRANSACTION,
    Kind.SESSION,
    Kind.WRITE,
    Kind.DDL,
    Kind.PRIVILEGED,
    Kind.UNKNOWN,
)


@dataclass(frozen=True)
class Expect:
    kind: Kind
    tables: tuple[str, ...] | None = None  # None: not checked
    statements: int = 1
    prepares: str | None = None
    executes: str | None = None
    copy_from_stdin: bool = False
    reason: str | None = None  # substring of the classification's reason; None: not checked


@dataclass(frozen=True)
class Case:
    case_id: str
    sql: str
    expect: Expect


def case(
    case_id: str,
    sql: str,
    kind: Kind,
    *,
    tables: tuple[str, ...] | None = None,
    statements: int = 1,
    prepares: str | None = None,
    executes: str | None = None,
    copy_from_stdin: bool = False,
    reason: str | None = None,
) -> Case:
    expect = Expect(kind, tables, statements, prepares, executes, copy_from_stdin, reason)
    return Case(f"{kind.value}-{case_id}", sql, expect)


PGBENCH_TPCB = """\
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + -2150 WHERE aid = 73318;
SELECT abalance FROM pgbench_accounts WHERE aid = 73318;
UPDATE pgbench_tellers SET tbalance = tbalance + -2150 WHERE tid = 4;
UPDATE pgbench_branches SET bbalance = bbalance + -2150 WHERE bid = 1;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (4, 1, 73318, -2150, CURRENT_TIMESTAMP);
END;
"""

PSQL_DESCRIBE = """\
SELECT c.oid,
  n.nspname,
  c.relname
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname OPERATOR(pg_catalog.~) '^(accounts)$' COLLATE pg_catalog.default
  AND pg_catalog.pg_table_is_visible(c.oid)
ORDER BY 2, 3;"""

PSQL_LIST_TABLES = """\
SELECT n.nspname as "Schema",
  c.relname as "Name",
  CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' END as "Type",
  pg_catalog.pg_get_userbyid(c.relowner) as "Owner"
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam
WHERE c.relkind IN ('r','p','v','m','S','f','')
      AND n.nspname <> 'pg_catalog'
      AND n.nspname !~ '^pg_toast'
      AND n.nspname <> 'information_schema'
  AND pg_catalog.pg_table_is_visible(c.oid)
ORDER BY 1,2;"""

PGJDBC_TYPES = (
    "SELECT t.typname,t.oid FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON "
    "(t.typnamespace = n.oid) WHERE n.nspname  != 'pg_toast' AND (t.typrelid = 0 OR "
    "(SELECT c.relkind = 'c' FROM pg_catalog.pg_class c WHERE c.oid = t.typrelid))"
)

CATALOG = ("pg_catalog.pg_class", "pg_catalog.pg_namespace")

CASES = [
    # --- reads: pgbench, drivers, BI tools, psql -----------------------------------------------------
    case(
        "pgbench-select",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
        R,
        tables=("pgbench_accounts",),
    ),
    case(
        "pgbench-select-param",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        R,
        tables=("pgbench_accounts",),
    ),
    case("pgbench-count", "select count(*) from pgbench_branches", R, tables=("pgbench_branches",)),
    case("select-1", "SELECT 1", R, tables=()),
    case("values", "VALUES (1, 'a'), (2, 'b')", R),
    case("table", "TABLE accounts", R, tables=("accounts",)),
    case("show", "SHOW search_path", R),
    case("show-all", "SHOW ALL", R),
    case("show-read-only", "SHOW transaction_read_only", R),
    case("version", "SELECT version()", R),
    case("dbeaver-current-database", "SELECT current_database()", R),
    case("dbeaver-schema-user", "SELECT current_schema(),session_user", R),
    case(
        "dbeaver-pg-database",
        "SELECT db.oid,db.* FROM pg_catalog.pg_database db WHERE datname=$1",
        R,
        tables=("pg_catalog.pg_database",),
    ),
    case("psql-describe", PSQL_DESCRIBE, R, tables=CATALOG),
    case("psql-list-tables", PSQL_LIST_TABLES, R, tables=("pg_catalog.pg_am", *CATALOG)),
    case(
        "pgjdbc-types",
        PGJDBC_TYPES,
        R,
        tables=("pg_catalog.pg_class", "pg_catalog.pg_namespace", "pg_catalog.pg_type"),
    ),
    case(
        "pgjdbc-keywords",
        "select string_agg(word, ',') from pg_catalog.pg_get_keywords() "
        "where word <> ALL ('{a,abs,absolute}'::text[])",
        R,
        tables=(),
    ),
    case("current-setting", "SELECT current_setting('search_path')", R),
    case("pg-sleep", "SELECT pg_sleep(0.1)", R),
    case("backend-pid", "SELECT pg_backend_pid(), pg_catalog.pg_is_in_recovery()", R),
    case("lo-get", "SELECT lo_get(16409)", R),
    case("generate-series", "SELECT * FROM generate_series(1, 10) g", R, tables=()),
    case("window", "SELECT rank() OVER (ORDER BY total) FROM orders", R, tables=("orders",)),
    case("tablesample", "SELECT * FROM orders TABLESAMPLE SYSTEM (10)", R, tables=("orders",)),
    case("column-named-nextval", "SELECT nextval FROM counters", R, tables=("counters",)),
    case("any-array-param", "SELECT * FROM t WHERE id = ANY($1::int[])", R, tables=("t",)),
    case(
        "metabase-comment",
        "-- Metabase:: userID: 1 queryType: native queryHash: 9f2c\nSELECT * FROM orders LIMIT 10",
        R,
        tables=("orders",),
    ),
    case("block-comment", "/* DELETE FROM t; */ SELECT 1", R, tables=()),
    case("trailing-comment", "SELECT 1 -- ; DELETE FROM t", R, tables=()),
    case("inline-comment", "SELECT /* ; DROP TABLE t */ 1", R),
    case("whitespace", "  \n\t  select\n\t1  \n ", R),
    case("mixed-case", "SeLeCt * FrOm Orders", R, tables=("orders",)),
    case("quoted-identifiers", 'SELECT * FROM "Orders"', R, tables=("Orders",)),
    case(
        "schema-qualified",
        'SELECT * FROM public.orders o JOIN "Sales"."Items" i ON i.order_id = o.id',
        R,
        tables=("Sales.Items", "public.orders"),
    ),
    case("catalog-qualified", "SELECT * FROM shop.public.orders", R, tables=("shop.public.orders",)),
    case("dollar-quote", "SELECT $$DELETE FROM t$$", R, tables=()),
    case("tagged-dollar-quote", "SELECT $tag$ ; DROP TABLE t; $tag$ AS x", R, tables=()),
    case("string-with-sql", "SELECT 'DROP TABLE x; DELETE FROM y'", R, tables=()),
    case("escape-string", "SELECT E'a\\'; DELETE FROM t'", R, tables=()),
    case("string-for-update", "SELECT * FROM t WHERE note = 'FOR UPDATE'", R, tables=("t",)),
    case("cte", "WITH recent AS (SELECT * FROM orders) SELECT * FROM recent", R, tables=("orders",)),
    case(
        "cte-recursive",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5) SELECT * FROM n",
        R,
        tables=(),
    ),
    case("cte-shadows-only-unqualified", "WITH t AS (SELECT 1) SELECT * FROM t, s.t", R, tables=("s.t",)),
    case(
        "subqueries", "SELECT * FROM (SELECT * FROM a) s WHERE x IN (SELECT y FROM b)", R, tables=("a", "b")
    ),
    case("union", "SELECT a FROM x UNION ALL SELECT b FROM y", R, tables=("x", "y")),
    case("lateral", "SELECT * FROM a, LATERAL (SELECT * FROM b WHERE b.id = a.id) l", R, tables=("a", "b")),
    case("explain", "EXPLAIN SELECT * FROM t", R, tables=("t",)),
    case("explain-analyze-select", "EXPLAIN ANALYZE SELECT * FROM t", R, tables=("t",)),
    case("explain-delete", "EXPLAIN DELETE FROM t", R, tables=("t",)),
    case("explain-analyze-false", "EXPLAIN (ANALYZE false) DELETE FROM t", R, tables=("t",)),
    case("explain-analyze-off", "EXPLAIN (ANALYZE off, COSTS) UPDATE t SET a = 1", R, tables=("t",)),
    case("explain-analyze-0", "EXPLAIN (ANALYZE 0) INSERT INTO t VALUES (1)", R, tables=("t",)),
    case(
        "explain-modifying-cte",
        "EXPLAIN WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        R,
        tables=("t",),
    ),
    case("explain-execute", "EXPLAIN EXECUTE s1(1)", R),
    case("copy-to-stdout", "COPY t TO STDOUT", R, tables=("t",)),
    case("copy-query-to-stdout", "COPY (SELECT 1) TO STDOUT", R, tables=()),
    case(
        "copy-join-csv",
        "COPY (SELECT * FROM a JOIN b USING (id)) TO STDOUT WITH (FORMAT csv, HEADER)",
        R,
        tables=("a", "b"),
    ),
    case("copy-columns-to-stdout", "COPY public.t (a, b) TO STDOUT", R, tables=("public.t",)),
    case("declare", "DECLARE c CURSOR FOR SELECT * FROM t", R, tables=("t",)),
    case("declare-with-hold", "DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT 1", R),
    case("fetch", "FETCH 100 FROM c", R),
    case("fetch-all", "FETCH ALL IN c", R),
    case("move", "MOVE NEXT IN c", R),
    case("close", "CLOSE c", R),
    case("multi-reads", "SELECT * FROM a; SELECT * FROM b", R, tables=("a", "b"), statements=2),
    # --- session -------------------------------------------------------------------------------------
    case("pgjdbc-extra-float-digits", "SET extra_float_digits = 3", S),
    case("pgjdbc-application-name", "SET application_name = 'PostgreSQL JDBC Driver'", S),
    case("pgjdbc-read-only", "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", S),
    case(
        "metabase-isolation", "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ UNCOMMITTED", S
    ),
    case("metabase-role-none", "SET ROLE NONE", S),
    case("role-none-quoted-identifier", 'SET ROLE "none"', S),
    case("reset-role", "RESET ROLE", S),
    case("session-authorization-default", "SET SESSION AUTHORIZATION DEFAULT", S),
    case("reset-session-authorization", "RESET SESSION AUTHORIZATION", S),
    case("dbeaver-search-path", 'SET search_path = public, "$user"', S),
    case("search-path-default", "SET search_path TO DEFAULT", S),
    case("psycopg2-datestyle", "SET DATESTYLE TO 'ISO'", S),
    case("time-zone", "SET TIME ZONE 'UTC'", S),
    case("names", "SET NAMES 'UTF8'", S),
    case("client-encoding", "SET client_encoding = 'LATIN1'", S),
    case("set-names-utf8", "SET NAMES 'UTF-8'", S),
    case("client-encoding-default", "SET client_encoding TO DEFAULT", S),
    case("standard-strings-on", "SET standard_conforming_strings = on", S),
    case("set-config-client-encoding", "SELECT set_config('client_encoding', 'WIN1252', false)", S),
    case("local-statement-timeout", "SET LOCAL statement_timeout = '5s'", S),
    case("from-current", "SET work_mem FROM CURRENT", S),
    case("read-only-on", "SET default_transaction_read_only = on", S),
    case("read-only-to-on-string", "SET default_transaction_read_only TO 'on'", S),
    case("read-only-yes-prefix", "SET default_transaction_read_only = 'ye'", S),
    case("tx-read-only-true", "SET transaction_read_only = true", S),
    case("tx-read-only-local-1", "SET LOCAL transaction_read_only = 1", S),
    case("reset-all", "RESET ALL", S),
    case("reset-search-path", "RESET search_path", S),
    case("discard-all", "DISCARD ALL", S),
    case("discard-plans", "DISCARD PLANS", S),
    case("deallocate-all", "DEALLOCATE ALL", S),
    case("deallocate-name", "DEALLOCATE PREPARE s1", S),
    case("listen", "LISTEN orders_changed", S),
    case("unlisten-all", "UNLISTEN *", S),
    case("unlisten", "UNLISTEN orders_changed", S),
    case("close-all", "CLOSE ALL", S),
    case(
        "asyncpg-pool-reset",
        "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;",
        S,
        statements=4,
        tables=(),
    ),
    case("advisory-unlock-all", "SELECT pg_advisory_unlock_all()", S, reason="pg_advisory_unlock_all()"),
    case("advisory-lock", "SELECT pg_advisory_lock(42)", S),
    case("advisory-xact-lock", "SELECT pg_catalog.pg_advisory_xact_lock(1, 2)", S),
    case("try-advisory-lock", "SELECT pg_try_advisory_lock(7)", S),
    case(
        "pg-dump-set-config",
        "SELECT pg_catalog.set_config('search_path', '', false);",
        S,
        reason="set_config(search_path)",
    ),
    case("set-config-application-name", "SELECT set_config('application_name', 'x', false)", S),
    case("set-config-read-only-on", "SELECT set_config('default_transaction_read_only', 'on', false)", S),
    case("set-config-tx-read-only-true", "SELECT set_config('transaction_read_only', 'true'::text, true)", S),
    # --- transaction ---------------------------------------------------------------------------------
    case("psycopg2-begin", "BEGIN", T),
    case("begin-semicolon-lower", "begin;", T),
    case("begin-work", "BEGIN WORK", T),
    case("start", "START TRANSACTION", T),
    case("begin-read-only", "BEGIN READ ONLY", T),
    case("begin-transaction-read-only", "BEGIN TRANSACTION READ ONLY", T),
    case("begin-isolation", "BEGIN ISOLATION LEVEL REPEATABLE READ", T),
    case(
        "start-serializable-deferrable",
        "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
        T,
    ),
    case("commit", "COMMIT", T),
    case("commit-and-chain", "COMMIT AND CHAIN", T),
    case("end", "END", T),
    case("rollback", "ROLLBACK", T),
    case("abort", "ABORT", T),
    case("pgjdbc-savepoint", "SAVEPOINT PGJDBC_AUTOSAVE", T),
    case("pgjdbc-release", "RELEASE SAVEPOINT PGJDBC_AUTOSAVE", T),
    case("pgjdbc-rollback-to", "ROLLBACK TO SAVEPOINT PGJDBC_AUTOSAVE", T),
    case("set-transaction-isolation", "SET TRANSACTION ISOLATION LEVEL READ COMMITTED", T),
    case("set-transaction-read-only", "SET TRANSACTION READ ONLY", T),
    case("set-transaction-snapshot", "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", T),
    case("set-constraints", "SET CONSTRAINTS ALL DEFERRED", T),
    case("begin-then-select", "BEGIN; SELECT 1", T, statements=2),
    # --- writes --------------------------------------------------------------------------------------
    case("insert", "INSERT INTO t VALUES (1)", W, tables=("t",), reason="INSERT"),
    case("insert-select", "INSERT INTO t SELECT * FROM s", W, tables=("s", "t")),
    case(
        "insert-on-conflict",
        "INSERT INTO t (id, n) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET n = excluded.n",
        W,
        tables=("t",),
    ),
    case(
        "update-returning", "UPDATE t SET a = 1 WHERE id = $1 RETURNING *", W, tables=("t",), reason="UPDATE"
    ),
    case("update-subquery", "UPDATE t SET a = (SELECT max(b) FROM u)", W, tables=("t", "u")),
    case("delete", "DELETE FROM t", W, tables=("t",), reason="DELETE"),
    case("delete-using", "DELETE FROM t USING u WHERE t.id = u.id", W, tables=("t", "u")),
    case(
        "merge",
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
        W,
        tables=("s", "t"),
        reason="MERGE",
    ),
    case(
        "pgbench-update",
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;",
        W,
        tables=("pgbench_accounts",),
    ),
    case(
        "pgbench-insert",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
        "VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);",
        W,
        tables=("pgbench_history",),
    ),
    case(
        "pgbench-tpcb-script",
        PGBENCH_TPCB,
        W,
        statements=7,
        tables=("pgbench_accounts", "pgbench_branches", "pgbench_history", "pgbench_tellers"),
    ),
    case("pgbench-truncate", "truncate pgbench_history", W, reason="TRUNCATE"),
    case("pgbench-vacuum", "vacuum pgbench_branches", W, reason="VACUUM"),
    case("select-into", "SELECT * INTO new_t FROM t", W, tables=("new_t", "t"), reason="SELECT INTO"),
    case("select-into-temp", "SELECT * INTO TEMP x FROM t", W, tables=("t", "x")),
    case("for-update", "SELECT * FROM t WHERE id = 1 FOR UPDATE", W, tables=("t",), reason="FOR UPDATE"),
    case("for-share", "SELECT * FROM t FOR SHARE", W, reason="FOR SHARE"),
    case("for-no-key-update-skip-locked", "SELECT * FROM t FOR NO KEY UPDATE OF t SKIP LOCKED", W),
    case("for-key-share-nowait", "SELECT * FROM t FOR KEY SHARE NOWAIT", W),
    case("for-update-in-subquery", "SELECT * FROM (SELECT * FROM t FOR UPDATE) s", W, tables=("t",)),
    case("declare-for-update", "DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE", W, tables=("t",)),
    case(
        "modifying-cte-delete",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        W,
        tables=("t",),
        reason="data-modifying CTE",
    ),
    case(
        "modifying-cte-second",
        "WITH a AS (SELECT 1), b AS (INSERT INTO log VALUES (1) RETURNING 1) SELECT * FROM a",
        W,
        tables=("log",),
    ),
    case(
        "modifying-cte-in-subquery",
        "SELECT * FROM (WITH u AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM u) s",
        W,
        tables=("t",),
    ),
    case(
        "modifying-cte-deep",
        "SELECT (SELECT count(*) FROM (WITH x AS (DELETE FROM t RETURNING 1) SELECT * FROM x) y) AS n",
        W,
        tables=("t",),
    ),
    case(
        "modifying-cte-merge",
        "WITH m AS (MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE "
        "RETURNING t.*) SELECT * FROM m",
        W,
    ),
    case("explain-analyze-delete", "EXPLAIN ANALYZE DELETE FROM t", W, reason="EXPLAIN ANALYZE DELETE"),
    case(
        "explain-analyze-buffers-delete",
        "EXPLAIN (ANALYZE, BUFFERS) DELETE FROM t WHERE id = 1",
        W,
        tables=("t",),
    ),
    case("explain-analyze-true-update", "EXPLAIN (ANALYZE true) UPDATE t SET a = 1", W),
    case("explain-analyze-on-json-insert", "EXPLAIN (ANALYZE on, FORMAT json) INSERT INTO t VALUES (1)", W),
    case("explain-analyze-1", "EXPLAIN (ANALYZE 1) DELETE FROM t", W),
    case(
        "explain-analyze-modifying-cte",
        "EXPLAIN ANALYZE WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        W,
        tables=("t",),
    ),
    case("explain-analyze-for-update", "EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE", W),
    case("explain-analyze-nextval", "EXPLAIN ANALYZE SELECT nextval('s')", W),
    case("nextval", "SELECT nextval('orders_id_seq')", W, reason="nextval()"),
    case("nextval-qualified-cast", "SELECT pg_catalog.nextval('s'::regclass)", W),
    case("nextval-in-from", "SELECT * FROM nextval('s')", W),
    case("nextval-upper", "SELECT NEXTVAL('s')", W),
    case("setval", "SELECT setval('s', 1)", W),
    case("pg-notify", "SELECT pg_notify('ch', 'x')", W),
    case("notify", "NOTIFY ch, 'payload'", W, reason="NOTIFY"),
    case("lo-from-bytea", "SELECT lo_from_bytea(0, '\\x41')", W),
    case("lo-put", "SELECT lo_put(16409, 0, 'x')", W),
    case("lo-unlink", "SELECT lo_unlink(16409)", W),
    case("copy-from-stdin", "COPY t FROM STDIN", W, tables=("t",), copy_from_stdin=True, reason="COPY FROM"),
    case("copy-from-stdin-csv", "COPY t (a, b) FROM STDIN WITH (FORMAT csv)", W, copy_from_stdin=True),
    case(
        "pgbench-init-copy",
        "copy pgbench_accounts from stdin with (freeze on)",
        W,
        tables=("pgbench_accounts",),
        copy_from_stdin=True,
    ),
    case("copy-delete-returning", "COPY (DELETE FROM t RETURNING *) TO STDOUT", W, tables=("t",)),
    case("copy-modifying-cte", "COPY (WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d) TO STDOUT", W),
    case("call", "CALL do_things(1)", W, reason="CALL"),
    case("do", "DO $$BEGIN DELETE FROM t; END$$", W, reason="DO"),
    case("do-language", "DO LANGUAGE plpgsql $body$ BEGIN PERFORM 1; END $body$", W),
    case("truncate-many", "TRUNCATE TABLE a, b CASCADE", W, tables=("a", "b")),
    case("lock", "LOCK TABLE t IN ACCESS EXCLUSIVE MODE", W, tables=("t",), reason="LOCK"),
    case("vacuum-all", "VACUUM", W),
    case("vacuum-options", "VACUUM (VERBOSE, ANALYZE) t", W, tables=("t",)),
    case("analyze", "ANALYZE t", W, reason="ANALYZE"),
    case("cluster", "CLUSTER t USING t_idx", W),
    case("reindex", "REINDEX TABLE t", W),
    case("refresh", "REFRESH MATERIALIZED VIEW mv", W),
    case("refresh-concurrently", "REFRESH MATERIALIZED VIEW CONCURRENTLY mv", W),
    case("prepare-transaction", "PREPARE TRANSACTION 'gx'", W, reason="two-phase"),
    case("commit-prepared", "COMMIT PREPARED 'gx'", W),
    case("rollback-prepared", "ROLLBACK PREPARED 'gx'", W),
    case("hidden-after-select", "SELECT 1; DELETE FROM t", W, statements=2, tables=("t",), reason="DELETE"),
    case("hidden-in-the-middle", "SELECT 1; SELECT 2; UPDATE t SET a = 1; SELECT 3", W, statements=4),
    case(
        "hidden-after-comments",
        "-- Metabase\nSELECT 1;\n/* hidden */ INSERT INTO t VALUES (1);",
        W,
        statements=2,
    ),
    case("write-then-reads", "INSERT INTO t VALUES (1); SELECT * FROM u", W, statements=2, tables=("t", "u")),
    # --- ddl -----------------------------------------------------------------------------------------
    case("create-table", "CREATE TABLE t (id int PRIMARY KEY)", D, tables=("t",), reason="CREATE TABLE"),
    case("create-temp-table", "CREATE TEMP TABLE tmp (x int)", D),
    case("create-unlogged-like", "CREATE UNLOGGED TABLE t (LIKE s INCLUDING ALL)", D, tables=("s", "t")),
    case("create-table-default-nextval", "CREATE TABLE t (id int DEFAULT nextval('s'))", D),
    case("ctas", "CREATE TABLE t AS SELECT * FROM s", D, tables=("s", "t"), reason="CREATE TABLE AS"),
    case("ctas-execute", "CREATE TABLE t AS EXECUTE p", D, tables=("t",)),
    case("matview", "CREATE MATERIALIZED VIEW mv AS SELECT 1", D, reason="CREATE MATERIALIZED VIEW"),
    case("view", "CREATE VIEW v AS SELECT * FROM t", D, tables=("t", "v")),
    case("index", "CREATE INDEX CONCURRENTLY i ON t (a)", D, tables=("t",)),
    case("alter-table", "ALTER TABLE t ADD COLUMN c int", D, reason="ALTER TABLE"),
    case("alter-table-owner", "ALTER TABLE t OWNER TO bob", D),
    case("rename-table", "ALTER TABLE t RENAME TO u", D),
    case("rename-index", "ALTER INDEX i RENAME TO j", D),
    case("drop-table", "DROP TABLE IF EXISTS t CASCADE", D, reason="DROP TABLE"),
    case("drop-schema", "DROP SCHEMA s", D),
    case("drop-extension", "DROP EXTENSION dblink", D),
    case("comment", "COMMENT ON TABLE t IS 'x'", D, reason="COMMENT"),
    case(
        "security-label", "SECURITY LABEL FOR selinux ON TABLE t IS 'system_u:object_r:sepgsql_table_t:s0'", D
    ),
    case("create-schema", "CREATE SCHEMA s", D),
    case("create-sequence", "CREATE SEQUENCE s", D),
    case("alter-sequence", "ALTER SEQUENCE s RESTART", D),
    case("create-function", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$", D),
    case(
        "create-function-atomic",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC DELETE FROM t; SELECT 1; END",
        D,
    ),
    case("create-function-return", "CREATE FUNCTION f() RETURNS int RETURN 1", D),
    case("create-procedure", "CREATE OR REPLACE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN END $$", D),
    case("create-trigger", "CREATE TRIGGER trg AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", D),
    case("create-rule", "CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTIFY ch", D),
    case("create-enum", "CREATE TYPE mood AS ENUM ('sad', 'ok')", D),
    case("alter-enum", "ALTER TYPE mood ADD VALUE 'happy'", D),
    case("create-domain", "CREATE DOMAIN posint AS int CHECK (VALUE > 0)", D),
    case("create-database", "CREATE DATABASE db", D),
    case("drop-database", "DROP DATABASE db", D),
    case("alter-database-set", "ALTER DATABASE d SET search_path = a", D),
    case("create-policy", "CREATE POLICY p ON t USING (true)", D),
    case("create-publication", "CREATE PUBLICATION pub FOR TABLE t", D),
    case("import-foreign-schema", "IMPORT FOREIGN SCHEMA s FROM SERVER srv INTO local", D),
    case("create-foreign-table", "CREATE FOREIGN TABLE ft (a int) SERVER srv", D),
    # --- privileged ----------------------------------------------------------------------------------
    case("set-role", "SET ROLE admin", P, reason="SET ROLE"),
    case("set-role-quoted-upper-none", "SET ROLE 'NONE'", P),
    case("set-local-role", "SET LOCAL ROLE admin", P),
    case("set-session-role", "SET SESSION ROLE admin", P),
    case("session-authorization", "SET SESSION AUTHORIZATION bob", P),
    case("session-authorization-string", "SET SESSION AUTHORIZATION 'bob'", P),
    case("read-only-off", "SET default_transaction_read_only = off", P),
    case("read-only-to-off-string", "SET default_transaction_read_only TO 'off'", P),
    case("read-only-false", "SET default_transaction_read_only = false", P),
    case("read-only-0", "SET default_transaction_read_only = 0", P),
    case("read-only-no", "SET default_transaction_read_only TO no", P),
    case("read-only-of-prefix", "SET default_transaction_read_only = 'of'", P),
    case("session-read-only-upper-false", "SET SESSION default_transaction_read_only = 'FALSE'", P),
    case("local-tx-read-only-false", "SET LOCAL transaction_read_only = false", P),
    case("tx-read-only-f", "SET transaction_read_only TO f", P),
    case("read-only-quoted-mixed-case-name", 'SET "Default_Transaction_Read_Only" = off', P),
    case("read-only-upper-name", "set DEFAULT_TRANSACTION_READ_ONLY=off", P),
    # Inside a transaction these restore the built-in default (off), not the startup value (issue 10
    # class 5; tests/adversarial/test_adv_pg_backstop.py shows PostgreSQL 15 doing it).
    case("reset-read-only", "RESET default_transaction_read_only", P),
    case("reset-tx-read-only", "RESET transaction_read_only", P),
    case("reset-tx-read-only-quoted", 'reset "TRANSACTION_READ_ONLY"', P),
    case("read-only-to-default", "SET default_transaction_read_only TO DEFAULT", P),
    case("tx-read-only-local-default", "SET LOCAL transaction_read_only TO DEFAULT", P),
    case("tx-read-only-from-current", "SET transaction_read_only FROM CURRENT", P),
    # Settings that change how the server reads text (class 4).
    case("client-encoding-sjis", "SET client_encoding = 'SJIS'", P),
    case("set-names-gbk", "SET NAMES 'gbk'", P),
    case("client-encoding-big5-alias", "SET client_encoding TO 'win950'", P),
    case("client-encoding-not-constant", "SET client_encoding TO 'x' || 'y'", U),
    case("standard-strings-off", "SET standard_conforming_strings = off", P),
    case("standard-strings-local-off", "SET LOCAL standard_conforming_strings TO false", P),
    case("set-config-standard-strings", "SELECT set_config('standard_conforming_strings', 'off', false)", P),
    case("set-config-client-encoding-sjis", "SELECT set_config('client_encoding', 'sjis', false)", P),
    case("read-only-garbage", "SET default_transaction_read_only = 'nonsense'", P),
    case("read-only-list", "SET transaction_read_only = on, off", P),
    case("session-characteristics-read-write", "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", P),
    case("set-transaction-read-write", "SET TRANSACTION READ WRITE", P),
    case(
        "set-transaction-isolation-read-write", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE READ WRITE", P
    ),
    case("begin-read-write", "BEGIN READ WRITE", P),
    case("begin-isolation-read-write", "BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE", P),
    case("start-read-write", "START TRANSACTION READ WRITE", P),
    case(
        "set-config-read-only-off",
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        P,
        reason="set_config(default_transaction_read_only)",
    ),
    case(
        "set-config-tx-read-only-in-select",
        "SELECT 1, set_config('transaction_read_only', 'false', true) FROM t",
        P,
        tables=("t",),
    ),
    case(
        "set-config-param-value",
        "SELECT pg_catalog.set_config('default_transaction_read_only', $1, false)",
        P,
    ),
    case("set-config-upper-name", "SELECT set_config('DEFAULT_TRANSACTION_READ_ONLY', 'off', false)", P),
    case("set-config-column-name", "SELECT set_config(name, 'on', false) FROM settings", P),
    case(
        "set-config-named-args",
        "SELECT set_config(setting_name => 'search_path', new_value => 'x', is_local => false)",
        P,
    ),
    case(
        "set-config-cast-to-other-type",
        "SELECT set_config('default_transaction_read_only', 'on'::flip::text, false)",
        P,
    ),
    case("set-config-role", "SELECT set_config('role', 'admin', false)", P),
    case("set-config-session-authorization", "SELECT set_config('session_authorization', 'bob', false)", P),
    case(
        "set-config-in-cte",
        "WITH x AS (SELECT set_config('default_transaction_read_only', 'off', false)) SELECT * FROM x",
        P,
    ),
    case("grant", "GRANT SELECT ON t TO bob", P, reason="GRANT"),
    case("revoke", "REVOKE ALL ON t FROM bob", P, reason="REVOKE"),
    case("grant-role", "GRANT admin TO bob", P),
    case("default-privileges", "ALTER DEFAULT PRIVILEGES IN SCHEMA s GRANT SELECT ON TABLES TO bob", P),
    case("alter-system", "ALTER SYSTEM SET work_mem = '1GB'", P),
    case("alter-system-reset", "ALTER SYSTEM RESET ALL", P),
    case("create-role", "CREATE ROLE r LOGIN", P),
    case("create-user", "CREATE USER u PASSWORD 'x'", P),
    case("alter-role", "ALTER ROLE r SUPERUSER", P),
    case("alter-user-set", "ALTER USER u SET search_path = a", P),
    case("drop-role", "DROP ROLE r", P),
    case("drop-user", "DROP USER IF EXISTS u", P),
    case("reassign-owned", "REASSIGN OWNED BY a TO b", P),
    case("drop-owned", "DROP OWNED BY a", P),
    case("pg-read-file", "SELECT pg_read_file('/etc/passwd')", P, reason="pg_read_file()"),
    case("pg-read-binary-file", "SELECT pg_read_binary_file('global/pg_control')", P),
    case("pg-ls-dir", "SELECT * FROM pg_ls_dir('.')", P),
    case("pg-stat-file", "SELECT pg_stat_file('postgresql.conf')", P),
    case("pg-ls-logdir", "SELECT * FROM pg_ls_logdir()", P),
    case("pg-ls-waldir", "SELECT * FROM pg_catalog.pg_ls_waldir()", P),
    case("lo-import", "SELECT lo_import('/etc/passwd')", P),
    case("lo-export", "SELECT lo_export(16409, '/tmp/x')", P),
    case("terminate-backend", "SELECT pg_terminate_backend(123)", P),
    case(
        "cancel-backend",
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity",
        P,
        tables=("pg_stat_activity",),
    ),
    # Every QueryBase user shares the read login: these show the others' statements.
    case("stat-activity", "SELECT query FROM pg_stat_activity", P, tables=("pg_stat_activity",)),
    case("stat-activity-qualified", "SELECT * FROM pg_catalog.pg_stat_activity", P),
    case("stat-get-activity", "SELECT * FROM pg_stat_get_activity(NULL)", P),
    case("stat-statements", "SELECT query FROM public.pg_stat_statements", P),
    case("reload-conf", "SELECT pg_reload_conf()", P),
    case("rotate-logfile", "SELECT pg_rotate_logfile()", P),
    case("promote", "SELECT pg_promote()", P),
    case("switch-wal", "SELECT pg_switch_wal()", P),
    case("stat-reset", "SELECT pg_stat_reset()", P),
    case("stat-statements-reset", "SELECT pg_stat_statements_reset()", P),
    # Issue 10 class 6 (interim: named here until the function allowlist replaces the list).
    case("ts-stat-runs-sql-text", "SELECT * FROM ts_stat('DELETE FROM items RETURNING ''a''::tsvector')", U),
    case("ts-rewrite-runs-sql-text", "SELECT ts_rewrite('a'::tsquery, 'SELECT 1')", U),
    case("brin-summarize", "SELECT brin_summarize_new_values('items_brin')", W),
    case("brin-summarize-range", "SELECT pg_catalog.brin_summarize_range('i', 0)", W),
    case("gin-cleanup", "SELECT gin_clean_pending_list('items_gin'::regclass)", W),
    case("dblink", "SELECT * FROM dblink('host=x', 'select 1') AS t(a int)", P),
    case("dblink-exec", "SELECT dblink_exec('host=x', 'DELETE FROM t')", P),
    case("dblink-connect", "SELECT dblink_connect('c', 'host=x')", P),
    case(
        "function-deep-in-where",
        "SELECT * FROM t WHERE a = (SELECT max(x) FROM u WHERE length(pg_read_file('x')) > 0)",
        P,
        tables=("t", "u"),
    ),
    case("copy-to-program", "COPY t TO PROGRAM 'gzip > /tmp/x'", P, reason="PROGRAM"),
    case("copy-from-program", "COPY t FROM PROGRAM 'curl http://x'", P),
    case("copy-from-file", "COPY t FROM '/etc/passwd'", P, reason="server file"),
    case("copy-to-file", "COPY t TO '/tmp/out.csv'", P),
    case("copy-query-to-file", "COPY (SELECT 1) TO '/tmp/x'", P),
    case("load", "LOAD 'auto_explain'", P),
    case("create-extension", "CREATE EXTENSION dblink", P, reason="CREATE EXTENSION"),
    case("create-extension-schema", "CREATE EXTENSION IF NOT EXISTS pgcrypto SCHEMA s", P),
    case("alter-extension", "ALTER EXTENSION dblink UPDATE", P),
    case("checkpoint", "CHECKPOINT", P),
    case("create-tablespace", "CREATE TABLESPACE ts LOCATION '/data'", P),
    case("create-schema-with-grant", "CREATE SCHEMA s CREATE TABLE x (a int) GRANT SELECT ON x TO bob", P),
    case("explain-privileged-function", "EXPLAIN SELECT pg_read_file('x')", P),
    case("alter-database-read-only-off", "ALTER DATABASE d SET default_transaction_read_only = off", P),
    case("alter-role-read-only", "ALTER ROLE bob SET default_transaction_read_only = on", P),
    case("hidden-set-role", "SELECT 1; SET ROLE admin", P, statements=2),
    case(
        "write-then-privileged",
        "DELETE FROM t; SELECT pg_read_file('x'); INSERT INTO u VALUES (1)",
        P,
        statements=3,
        tables=("t", "u"),
        reason="pg_read_file()",
    ),
    # --- PREPARE / EXECUTE ---------------------------------------------------------------------------
    case("prepare-select", "PREPARE s1 AS SELECT * FROM t WHERE id = $1", R, prepares="s1", tables=("t",)),
    case("prepare-update", "PREPARE s2 (int) AS UPDATE t SET a = $1", W, prepares="s2", tables=("t",)),
    case(
        "prepare-modifying-cte",
        "PREPARE s3 AS WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        W,
        prepares="s3",
    ),
    case("prepare-privileged", "PREPARE s4 AS SELECT set_config('role', 'x', false)", P, prepares="s4"),
    case(
        "prepare-set-config", "PREPARE s5 AS SELECT set_config('search_path', 'x', false)", S, prepares="s5"
    ),
    case("execute", "EXECUTE s1(1)", U, executes="s1"),
    case("execute-no-args", "EXECUTE s1", U, executes="s1"),
    case("execute-privileged-arg", "EXECUTE s1(pg_read_file('x'))", P, executes="s1"),
    case("explain-analyze-execute", "EXPLAIN ANALYZE EXECUTE s1(1)", U, executes="s1"),
    case("prepare-and-execute", "PREPARE a AS SELECT 1; EXECUTE a", U, statements=2),
    # --- unknown -------------------------------------------------------------------------------------
    case("typo", "SELEC 1", U, reason='syntax error at or near "SELEC"'),
    case("unterminated-string", "SELECT 'abc", U, reason="unterminated quoted string"),
    case("truncated", "SELECT * FROM", U, reason="syntax error at end of input"),
    case("delete-where-nothing", "DELETE FROM t WHERE", U),
    case("error-after-select", "SELECT 1; DELETE FRM t", U),
    case("prose", "hello world", U),
    case("mysql-use", "USE shop", U),
    case("mysql-replace", "REPLACE INTO t VALUES (1)", U),
    case("psql-meta", "\\d accounts", U),
    case("nul-byte", "SELECT 1\x00; DELETE FROM t", U, reason="NUL"),
    case("lone-surrogate", "SELECT '\ud800'", U),
    case("query-to-xml", "SELECT query_to_xml('DELETE FROM t RETURNING 1', true, false, '')", U),
    # --- empty ---------------------------------------------------------------------------------------
    case("empty", "", R, statements=0, tables=()),
    case("blank", "  \n\t ", R, statements=0),
    case("line-comment-only", "-- just a comment", R, statements=0),
    case("block-comment-only", "/* nothing */", R, statements=0),
    case("semicolons-only", ";;;", R, statements=0),
]


@pytest.mark.parametrize(("sql", "expect"), [pytest.param(c.sql, c.expect, id=c.case_id) for c in CASES])
def test_classify(sql: str, expect: Expect) -> None:
    c = classify(sql)
    assert c.kind is expect.kind, c
    assert c.statements == expect.statements, c
    assert c.prepares == expect.prepares, c
    assert c.executes == expect.executes, c
    assert c.copy_from_stdin is expect.copy_from_stdin, c
    if expect.tables is not None:
        assert c.tables == expect.tables, c
    if expect.reason is not None:
        assert expect.reason in c.reason, c


def test_table_is_big_and_ids_are_unique() -> None:
    ids = [c.case_id for c in CASES]
    assert len(ids) >= 170
    assert len(set(ids)) == len(ids)


def test_every_kind_is_covered() -> None:
    kinds = {c.expect.kind for c in CASES}
    assert kinds == set(Kind)


def test_non_read_has_a_reason_and_tables_are_sorted_unique() -> None:
    for each in CASES:
        c = classify(each.sql)
        assert list(c.tables) == sorted(set(c.tables))
        if c.kind is not Kind.READ and c.statements:
            assert c.reason, each


def test_parse_error_reason_is_first_line_of_parser_message() -> None:
    c = classify("SELECT 1;\nSELECT (\n")
    assert c.kind is Kind.UNKNOWN
    assert c.reason == "syntax error at end of input"


def test_deep_nesting_does_not_raise() -> None:
    deep = "SELECT " + "(" * 3000 + "1" + ")" * 3000
    assert isinstance(classify(deep), Classification)
    nested = "SELECT * FROM " + "(SELECT * FROM " * 200 + "t" + ") s" * 200
    c = classify(nested)
    assert c.kind in (Kind.READ, Kind.UNKNOWN)


# --- properties ------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_classify_never_raises(sql: str) -> None:
    c = classify(sql)
    assert isinstance(c, Classification)
    assert isinstance(c.kind, Kind)
    assert c.statements >= 0


SQLISH = st.lists(
    st.sampled_from(
        [
            "SELECT",
            "DELETE",
            "FROM",
            "t",
            "(",
            ")",
            ";",
            "'",
            "$$",
            "--",
            "/*",
            "*/",
            "WITH",
            "AS",
            "SET",
            "ROLE",
            "COPY",
            "EXPLAIN",
            "ANALYZE",
            "nextval",
            "set_config",
            ",",
            "1",
            "\n",
            "INTO",
            "FOR UPDATE",
        ]
    ),
    max_size=20,
).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(SQLISH)
def test_classify_never_raises_on_sqlish_text(sql: str) -> None:
    assert isinstance(classify(sql), Classification)


# Statements that parse on their own (parse errors and NUL bytes poison a whole message).
SINGLE_STATEMENTS = [
    each.sql
    for each in CASES
    if each.expect.statements == 1 and (each.expect.kind is not Kind.UNKNOWN or each.expect.executes)
]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(SINGLE_STATEMENTS), min_size=1, max_size=6))
def test_strictest_statement_wins(parts: list[str]) -> None:
    # A newline before each ';' ends any trailing line comment, so every part stays one statement.
    c = classify("\n;\n".join(parts))
    singles = [classify(sql) for sql in parts]
    assert c.statements == len(parts)
    assert STRICTNESS[c.kind] == max(STRICTNESS[s.kind] for s in singles)
    assert set(c.tables) == set().union(*(s.tables for s in singles))
    assert c.reason in {s.reason for s in singles if STRICTNESS[s.kind] == STRICTNESS[c.kind]}
    if len(parts) > 1:
        assert c.prepares is None
        assert c.executes is None


# --- cache -----------------------------------------------------------------------------------------


def test_cached_returns_same_object_and_counts_a_hit() -> None:
    # A fresh text, so the first call is a miss whatever ran before; it is classified, never executed.
    sql = f"SELECT abalance FROM pgbench_accounts WHERE aid = 1 -- {uuid.uuid4()}"
    before = classify_pg_cached.cache_info()
    first = classify_pg_cached(sql)
    middle = classify_pg_cached.cache_info()
    second = classify_pg_cached(sql)
    after = classify_pg_cached.cache_info()
    assert first is second
    assert first == classify(sql)
    assert middle.misses == before.misses + 1
    assert after.hits == middle.hits + 1
    assert after.maxsize == 10_000


def test_cache_is_bounded_and_skips_long_texts() -> None:
    calls: list[str] = []

    def counting(sql: str) -> Classification:
        calls.append(sql)
        return classify(sql)

    cached = CachedClassifier(counting, maxsize=2, max_text=20)
    for sql in ("SELECT 1", "SELECT 2", "SELECT 3", "SELECT 1"):
        cached(sql)
    assert cached.cache_info().currsize == 2
    assert calls == ["SELECT 1", "SELECT 2", "SELECT 3", "SELECT 1"]  # "SELECT 1" was evicted
    long_sql = "SELECT 1 /* " + "x" * 40 + " */"
    assert cached(long_sql) == cached(long_sql)
    assert calls.count(long_sql) == 2
    cached.cache_clear()
    assert cached.cache_info().currsize == 0


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("UPDATE t SET a = 1", False),
        ("UPDATE t SET a = 1; COMMIT", True),
        ("BEGIN; DELETE FROM t", True),
        ("SAVEPOINT s", True),
        ("PREPARE TRANSACTION 'x'", True),
        ("INSERT INTO t VALUES ('COMMIT')", False),
        ("DO $$BEGIN NULL; END$$", False),
        ("not sql at all", False),
    ],
)
def test_controls_transactions(sql: str, expected: bool) -> None:
    from policies.pg import controls_transactions

    assert controls_transactions(sql) is expected


@pytest.mark.parametrize(
    ("sql", "unvetted"),
    [
        ("SELECT lower(name), now(), count(*) FROM items GROUP BY 1", ()),
        ("SELECT pg_catalog.format_type(23, -1), random(), pg_sleep(0)", ()),
        ("SELECT my_func(1)", ("my_func",)),
        ("SELECT public.lower('A')", ("public.lower",)),
        ("SELECT \"Lower\"('A')", ("Lower",)),
        ("SELECT * FROM items WHERE id = (SELECT audit.log_read(1))", ("audit.log_read",)),
        ("SELECT dblink('x', 'y')", ("dblink",)),  # also privileged by its guard
        ("SELECT table_to_xml('items', true, false, '')", ("table_to_xml",)),
        ("SELECT a FROM generate_series(1, 3) a, LATERAL unnest_me(a)", ("unnest_me",)),
        ("SELECT 1; SELECT f2(); SELECT f1()", ("f1", "f2")),
        ("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;", ()),  # asyncpg pool reset
        ("SELECT pg_try_advisory_lock(1), set_config('application_name', 'x', false)", ()),
        ("SELECT evil.pg_advisory_lock(1)", ("evil.pg_advisory_lock",)),
        ("SELECT nextval('s')", ()),  # a write by its guard, whatever else
    ],
)
def test_functions_outside_the_allowlist_are_listed(sql: str, unvetted: tuple[str, ...]) -> None:
    """Issue 10 class 6: the classifier names every function that is not a vetted built-in."""
    assert classify(sql).unvetted == unvetted


@pytest.mark.parametrize(
    ("sql", "pins"),
    [
        ("SELECT * FROM items", ()),
        ("LISTEN orders_changed", ("LISTEN",)),
        ("UNLISTEN *", ()),
        ("CREATE TEMP TABLE t (a int)", ("a temporary table, view or sequence",)),
        ("CREATE TEMPORARY VIEW v AS SELECT 1", ("a temporary table, view or sequence",)),
        ("CREATE TEMP SEQUENCE s", ("a temporary table, view or sequence",)),
        ("SELECT 1 INTO TEMP t", ("a temporary table, view or sequence",)),
        ("CREATE TEMP TABLE t AS SELECT 1", ("a temporary table, view or sequence",)),
        ("CREATE TABLE pg_temp.t (a int)", ("the pg_temp schema",)),
        ("CREATE TABLE t (a int)", ()),
        ("EXPLAIN CREATE TEMP TABLE t AS SELECT 1", ()),  # not run
        ("EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1", ("a temporary table, view or sequence",)),
        ("SELECT pg_advisory_lock(1)", ("a session-level advisory lock",)),
        ("SELECT pg_try_advisory_lock_shared(1, 2)", ("a session-level advisory lock",)),
        ("SELECT x FROM (SELECT pg_try_advisory_lock(3) x) s", ("a session-level advisory lock",)),
        ("SELECT pg_advisory_xact_lock(1)", ()),
        ("SELECT pg_advisory_unlock(1)", ()),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", ("a WITH HOLD cursor",)),
        ("DECLARE c CURSOR FOR SELECT 1", ()),
        ("PREPARE p AS SELECT 1", ("a SQL prepared statement",)),
        ("DO $$BEGIN NULL; END$$", ("a DO block (it can change anything in the session)",)),
        ("LOAD 'auto_explain'", ("LOAD",)),
        ("SELECT 1; LISTEN a; SELECT pg_advisory_lock(2)", ("LISTEN", "a session-level advisory lock")),
        ("SET search_path TO a", ()),  # settings are carried, not pinned
    ],
)
def test_session_state_that_pins_a_pooled_client(sql: str, pins: tuple[str, ...]) -> None:
    """Issue 11: what a statement leaves on its server connection that transaction pooling cannot
    carry to another one."""
    assert classify(sql).pins == pins


@pytest.mark.parametrize(
    ("sql", "changes_settings"),
    [
        ("SELECT 1", False),
        ("SET work_mem = '1MB'", True),
        ("RESET ALL", True),
        ("DISCARD PLANS", True),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE", True),
        ("SELECT set_config('work_mem', '1MB', false)", True),
        # a write hiding a setting change: its kind is write, the settings must still be read back
        ("WITH s AS (SELECT set_config('work_mem', '2MB', false)) INSERT INTO t SELECT 1 FROM s", True),
        ("SELECT * FROM items FOR UPDATE", False),
    ],
)
def test_statements_that_change_session_settings_say_so(sql: str, changes_settings: bool) -> None:
    from policies.pg import SETTINGS

    assert (SETTINGS in classify(sql).names) is changes_settings
