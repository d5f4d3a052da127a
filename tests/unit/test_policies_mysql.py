"""MySQL/MariaDB classifier table (policies.mysql) and its exact-text cache (policies.cache)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.cache import classify_mysql_cached
from policies.decide import as_decided, decide
from policies.mysql import classify
from policies.types import STRICTNESS, Action, Classification, Kind, Level, SourcePolicy

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
    reason: str | None = None,
) -> Case:
    return Case(f"{kind.value}-{case_id}", sql, Expect(kind, tables, statements, prepares, executes, reason))


CONNECTOR_J_INIT = (
    "/* mysql-connector-j-8.0.33 (Revision: 7d6b0800528b6b25c68b52dc10d6c1c8429c100c) */"
    "SELECT  @@session.auto_increment_increment AS auto_increment_increment, "
    "@@character_set_client AS character_set_client, @@character_set_connection AS character_set_connection, "
    "@@character_set_results AS character_set_results, @@character_set_server AS character_set_server, "
    "@@collation_server AS collation_server, @@collation_connection AS collation_connection, "
    "@@init_connect AS init_connect, @@interactive_timeout AS interactive_timeout, "
    "@@license AS license, @@lower_case_table_names AS lower_case_table_names, "
    "@@max_allowed_packet AS max_allowed_packet, @@net_write_timeout AS net_write_timeout, "
    "@@performance_schema AS performance_schema, @@sql_mode AS sql_mode, "
    "@@system_time_zone AS system_time_zone, @@time_zone AS time_zone, "
    "@@transaction_isolation AS transaction_isolation, @@wait_timeout AS wait_timeout"
)

MYSQLDUMP_HEADER = """\
/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;
/*!40101 SET @OLD_CHARACTER_SET_RESULTS=@@CHARACTER_SET_RESULTS */;
/*!50503 SET NAMES utf8mb4 */;
/*!40103 SET @OLD_TIME_ZONE=@@TIME_ZONE */;
/*!40103 SET TIME_ZONE='+00:00' */;
/*!40014 SET @OLD_UNIQUE_CHECKS=@@UNIQUE_CHECKS, UNIQUE_CHECKS=0 */;
/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */;
/*!40111 SET @OLD_SQL_NOTES=@@SQL_NOTES, SQL_NOTES=0 */;
"""

MYSQLDUMP_DATA = """\
LOCK TABLES `orders` WRITE;
/*!40000 ALTER TABLE `orders` DISABLE KEYS */;
INSERT INTO `orders` VALUES (1,'a'),(2,'b');
/*!40000 ALTER TABLE `orders` ENABLE KEYS */;
UNLOCK TABLES;
"""

SYSBENCH_TX = """\
BEGIN;
SELECT c FROM sbtest1 WHERE id=5012;
UPDATE sbtest1 SET k=k+1 WHERE id=5013;
DELETE FROM sbtest1 WHERE id=5014;
INSERT INTO sbtest1 (id, k, c, pad) VALUES (5014, 4990, 'x', 'y');
COMMIT"""

INFO_SCHEMA = (
    "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES t "
    "JOIN information_schema.COLUMNS c USING (TABLE_SCHEMA, TABLE_NAME) WHERE t.TABLE_SCHEMA = 'shop'"
)

CASES = [
    # --- reads: benchmarks, drivers, BI tools, the CLI ----------------------------------------------
    case("sysbench-point", "SELECT k FROM sbtest1 WHERE id = 42", R, tables=("sbtest1",)),
    case(
        "sysbench-range",
        "SELECT c FROM sbtest1 WHERE id BETWEEN 1 AND 100 ORDER BY c",
        R,
        tables=("sbtest1",),
    ),
    case("sysbench-sum", "SELECT SUM(k) FROM sbtest1 WHERE id BETWEEN 1 AND 100", R, tables=("sbtest1",)),
    case("select-1", "SELECT 1", R, tables=()),
    case("cli-version-comment", "select @@version_comment limit 1", R, tables=()),
    case("cli-database", "SELECT DATABASE()", R),
    case("cli-show-databases", "show databases", R),
    case("cli-show-tables", "show tables", R),
    case("connector-j-init", CONNECTOR_J_INIT, R, tables=()),
    case(
        "mariadb-cj-variables",
        "SELECT @@max_allowed_packet,@@system_time_zone,@@time_zone,@@auto_increment_increment",
        R,
    ),
    case("go-max-allowed-packet", "SELECT @@max_allowed_packet", R),
    case("dbeaver-engines", "SHOW ENGINES", R),
    case("dbeaver-charset", "SHOW CHARSET", R),
    case("dbeaver-collation", "SHOW COLLATION", R),
    case("dbeaver-plugins", "SHOW PLUGINS", R),
    case("dbeaver-global-charset", "SELECT @@GLOBAL.character_set_server,@@GLOBAL.collation_server", R),
    case("dbeaver-lower-case", "SHOW VARIABLES LIKE 'lower_case_table_names'", R),
    case("show-full-tables", "SHOW FULL TABLES FROM shop LIKE 'o%'", R),
    case("show-create-table", "SHOW CREATE TABLE orders", R),
    case("show-grants", "SHOW GRANTS", R),
    # Every QueryBase user shares the read login: the process list shows the others' statements.
    case("show-processlist", "SHOW PROCESSLIST", P),
    case("show-full-processlist", "show full processlist", P),
    case("processlist-table", "SELECT INFO FROM information_schema.PROCESSLIST", P),
    case("performance-schema", "SELECT SQL_TEXT FROM performance_schema.events_statements_current", P),
    case("show-status", "SHOW SESSION STATUS LIKE 'Threads%'", R),
    case("show-warnings", "SHOW WARNINGS", R),
    case("show-master-status", "SHOW MASTER STATUS", R),
    case(
        "information-schema",
        INFO_SCHEMA,
        R,
        tables=("information_schema.COLUMNS", "information_schema.TABLES"),
    ),
    case("describe", "DESCRIBE orders", R, tables=("orders",)),
    case("desc-qualified", "DESC shop.orders", R, tables=("shop.orders",)),
    case("describe-column", "DESCRIBE orders id", R),
    case("explain-select", "EXPLAIN SELECT * FROM orders WHERE id = 1", R, tables=("orders",)),
    case("explain-delete", "EXPLAIN DELETE FROM orders", R, tables=("orders",)),
    case("explain-format-json-update", "EXPLAIN FORMAT=JSON UPDATE orders SET a = 1", R, tables=("orders",)),
    case("explain-analyze-select", "EXPLAIN ANALYZE SELECT * FROM orders", R, tables=("orders",)),
    case("describe-select", "DESCRIBE SELECT * FROM t", R, tables=("t",)),
    case("mariadb-analyze-select", "ANALYZE SELECT * FROM orders", R, tables=("orders",)),
    case("help", "HELP 'contents'", R),
    case("help-bare", "HELP contents", R),
    case("sleep", "SELECT SLEEP(1)", R),
    case("last-insert-id", "SELECT LAST_INSERT_ID()", R),
    case("found-rows", "SELECT FOUND_ROWS()", R),
    case("is-free-lock", "SELECT IS_FREE_LOCK('x')", R),
    case("connection-id", "SELECT CONNECTION_ID(), USER(), CURRENT_USER(), VERSION()", R),
    case("now", "SELECT NOW(), UUID(), RAND()", R),
    case("join", "SELECT * FROM a JOIN b ON a.id = b.a_id LEFT JOIN c USING (id)", R, tables=("a", "b", "c")),
    case("subquery", "SELECT * FROM (SELECT * FROM a) s WHERE x IN (SELECT y FROM b)", R, tables=("a", "b")),
    case("union", "SELECT a FROM x UNION ALL SELECT b FROM y", R, tables=("x", "y")),
    case("paren-union", "(SELECT 1) UNION (SELECT 2 FROM t)", R, tables=("t",)),
    case("cte", "WITH recent AS (SELECT * FROM orders) SELECT * FROM recent", R, tables=("orders",)),
    case("cte-and-table", "WITH d AS (SELECT 1) SELECT * FROM d, e", R, tables=("e",)),
    case(
        "cte-recursive",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5) SELECT * FROM n",
        R,
        tables=(),
    ),
    case("table-statement", "TABLE orders", R, tables=("orders",)),
    case("values-row", "VALUES ROW(1, 2), ROW(3, 4)", R),
    case("backticks", "SELECT * FROM `db`.`My Table`", R, tables=("db.My Table",)),
    case("mixed-case", "SeLeCt * FrOm Orders", R, tables=("Orders",)),
    case("window", "SELECT RANK() OVER (ORDER BY total) FROM orders", R, tables=("orders",)),
    case("string-with-sql", "SELECT 'DROP TABLE x; DELETE FROM y'", R, tables=()),
    case("double-quoted-string", 'SELECT "a; DELETE FROM t"', R, tables=()),
    case("escaped-quote", "SELECT 'it\\'s; DELETE FROM t'", R, tables=()),
    case("doubled-quote", "SELECT 'it''s; DELETE FROM t'", R, tables=()),
    case("string-for-update", "SELECT * FROM t WHERE note = 'FOR UPDATE'", R, tables=("t",)),
    case("string-load-file", "SELECT 'LOAD_FILE(x)' FROM t", R, tables=("t",)),
    case("connector-comment", "/* mysql-connector-j-8.0 */ SELECT 1", R),
    case("line-comment", "-- x\nSELECT 1", R),
    case("hash-comment", "# x\nSELECT 1", R),
    case("trailing-hash-comment", "SELECT 1 # ; DELETE FROM t", R, tables=()),
    case("trailing-dash-comment", "SELECT 1 -- ; DELETE FROM t", R, tables=()),
    case("block-comment-with-sql", "/* DELETE FROM t; */ SELECT 1", R, tables=()),
    case("optimizer-hint", "SELECT /*+ MAX_EXECUTION_TIME(1000) */ * FROM t", R, tables=("t",)),
    case("executable-comment-select", "SELECT 1 /*!40100 , 2 */", R),
    case("whitespace", "  \n\t  select\n\t1  \n ", R),
    case("hex-and-bits", "SELECT 0x1F, b'01', _utf8mb4'x', N'y'", R),
    case("checksum-table", "CHECKSUM TABLE orders", R, tables=("orders",)),
    case("prepare-select", "PREPARE s1 FROM 'SELECT * FROM t WHERE id = ?'", R, prepares="s1", tables=("t",)),
    case("sleep-in-where", "SELECT * FROM t WHERE SLEEP(0) = 0", R, tables=("t",)),
    # --- writes --------------------------------------------------------------------------------------
    case("sysbench-update", "UPDATE sbtest1 SET k=k+1 WHERE id=42", W, tables=("sbtest1",)),
    case("sysbench-delete", "DELETE FROM sbtest1 WHERE id=42", W, tables=("sbtest1",)),
    case(
        "sysbench-insert",
        "INSERT INTO sbtest1 (id, k, c, pad) VALUES (42, 1, 'c', 'p')",
        W,
        tables=("sbtest1",),
    ),
    case("sysbench-tx", SYSBENCH_TX, W, statements=6, tables=("sbtest1",)),
    case("insert-select", "INSERT INTO t SELECT * FROM u", W, tables=("t", "u")),
    case("insert-on-duplicate", "INSERT INTO t (a) VALUES (1) ON DUPLICATE KEY UPDATE a = a + 1", W),
    case("insert-ignore", "INSERT IGNORE INTO t VALUES (1)", W, tables=("t",)),
    case("insert-set", "INSERT INTO t SET a = 1, b = 2", W, tables=("t",)),
    case("replace", "REPLACE INTO t VALUES (1)", W, tables=("t",), reason="REPLACE"),
    case("replace-select", "REPLACE INTO t SELECT * FROM u", W, tables=("t", "u")),
    case("update-multi-table", "UPDATE a JOIN b ON a.id = b.id SET a.x = b.x", W, tables=("a", "b")),
    case("update-comma-join", "UPDATE a, b SET a.x = b.x WHERE a.id = b.id", W, tables=("a", "b")),
    case("delete-multi-table", "DELETE a FROM a JOIN b ON a.id = b.id", W, tables=("a", "b")),
    case("delete-using", "DELETE FROM a USING a JOIN b ON a.id = b.id", W, tables=("a", "b")),
    case("delete-order-limit", "DELETE FROM t ORDER BY id LIMIT 10", W, tables=("t",)),
    case("cte-update", "WITH d AS (SELECT 1 AS id) UPDATE t JOIN d ON t.id = d.id SET t.a = 1", W),
    case("for-update", "SELECT * FROM t WHERE id = 1 FOR UPDATE", W, tables=("t",), reason="row locks"),
    case("for-share", "SELECT * FROM t FOR SHARE", W),
    case("lock-in-share-mode", "SELECT * FROM t LOCK IN SHARE MODE", W),
    case("for-update-in-union", "SELECT 1 UNION SELECT a FROM t FOR UPDATE", W),
    case(
        "load-data-local", "LOAD DATA LOCAL INFILE '/tmp/x.csv' INTO TABLE db.t (a, b)", W, tables=("db.t",)
    ),
    case(
        "load-data-local-options",
        "LOAD DATA LOCAL INFILE 'x' REPLACE INTO TABLE t FIELDS TERMINATED BY ',' LINES TERMINATED BY '\\n'",
        W,
        tables=("t",),
    ),
    case("load-xml-local", "LOAD XML LOCAL INFILE 'x.xml' INTO TABLE t", W, tables=("t",)),
    case("handler-open", "HANDLER t OPEN", W, tables=("t",), reason="HANDLER"),
    case("handler-read", "HANDLER t READ FIRST", W),
    case("handler-close", "HANDLER t CLOSE", W),
    case("call", "CALL refresh_totals(1)", W, reason="CALL"),
    case("call-no-args", "CALL p", W),
    case("do", "DO SLEEP(1)", W, reason="DO"),
    case("truncate", "TRUNCATE TABLE t", W, tables=("t",)),
    case("truncate-short", "TRUNCATE t", W, tables=("t",)),
    case("lock-tables", "LOCK TABLES t READ, db.u AS x WRITE", W, tables=("db.u", "t")),
    case("lock-table-singular", "LOCK TABLE t WRITE", W, tables=("t",)),
    case("optimize", "OPTIMIZE TABLE t, u", W, tables=("t", "u")),
    case("analyze-table", "ANALYZE TABLE t", W, tables=("t",)),
    case("analyze-local-table", "ANALYZE LOCAL TABLE t", W, tables=("t",)),
    case("repair", "REPAIR TABLE t QUICK", W, tables=("t",)),
    case("check", "CHECK TABLE t", W, tables=("t",)),
    case("xa-start", "XA START 'x'", W, reason="XA"),
    case("xa-end", "XA END 'x'", W),
    case("xa-prepare", "XA PREPARE 'x'", W),
    case("xa-commit", "XA COMMIT 'x'", W),
    case("xa-recover", "XA RECOVER", W),
    case("explain-analyze-delete", "EXPLAIN ANALYZE DELETE FROM t", W, tables=("t",)),
    case("mariadb-analyze-delete", "ANALYZE DELETE FROM t WHERE id = 1", W, tables=("t",)),
    case("prepare-delete", "PREPARE s2 FROM 'DELETE FROM t WHERE id = ?'", W, prepares="s2", tables=("t",)),
    case("prepare-double-quoted", 'PREPARE s3 FROM "UPDATE t SET a = 1"', W, prepares="s3"),
    case("mysqldump-data", MYSQLDUMP_DATA, D, statements=5, tables=("orders",)),
    case("select-then-delete", "SELECT 1; DELETE FROM t", W, statements=2, tables=("t",)),
    case("executable-comment-hides-delete", "/*!40101 SET @OLD=@@X */; DELETE FROM t", W, statements=2),
    case("executable-comment-delete", "SELECT 1; /*!50000 DELETE FROM t */", W, statements=2),
    case("mariadb-executable-comment", "/*M!100100 DELETE FROM t */", W),
    case("nextval", "SELECT NEXTVAL(s)", W),
    # --- ddl -----------------------------------------------------------------------------------------
    case("create-table", "CREATE TABLE t (id INT PRIMARY KEY, a VARCHAR(10))", D, tables=("t",)),
    case("create-temporary-table", "CREATE TEMPORARY TABLE tmp (a INT)", D),
    case("create-table-select", "CREATE TABLE t2 AS SELECT * FROM t", D, tables=("t", "t2")),
    case("create-table-like", "CREATE TABLE t2 LIKE t", D),
    case("alter-table", "ALTER TABLE t ADD COLUMN b INT", D, tables=("t",)),
    case("alter-disable-keys", "/*!40000 ALTER TABLE `t` DISABLE KEYS */", D),
    case("drop-table", "DROP TABLE IF EXISTS a, b", D, tables=("a", "b")),
    case("create-view", "CREATE VIEW v AS SELECT * FROM t", D, tables=("t", "v")),
    case("create-or-replace-view", "CREATE OR REPLACE VIEW v AS SELECT 1", D),
    case("create-definer-view", "CREATE DEFINER=`user`@`%` VIEW v AS SELECT * FROM t", D),
    case("create-index", "CREATE INDEX i ON t (a)", D, tables=("t",)),
    case("create-unique-index", "CREATE UNIQUE INDEX i ON t (a)", D),
    case("drop-index", "DROP INDEX i ON t", D),
    case("create-database", "CREATE DATABASE shop", D),
    case("create-schema", "CREATE SCHEMA IF NOT EXISTS shop", D),
    case("drop-database", "DROP DATABASE shop", D),
    case("alter-database", "ALTER DATABASE shop CHARACTER SET utf8mb4", D),
    case("create-procedure", "CREATE PROCEDURE p() SELECT 1", D, reason="CREATE PROCEDURE"),
    case("create-definer-procedure", "CREATE DEFINER=root@localhost PROCEDURE p() SELECT 1", D),
    case("create-function", "CREATE FUNCTION f() RETURNS INT DETERMINISTIC RETURN 1", D),
    case("drop-procedure", "DROP PROCEDURE IF EXISTS p", D),
    case("create-trigger", "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET NEW.a = 1", D),
    case("drop-trigger", "DROP TRIGGER tr", D),
    case("create-event", "CREATE EVENT e ON SCHEDULE EVERY 1 DAY DO DELETE FROM t", D),
    case("alter-event", "ALTER EVENT e DISABLE", D),
    case("rename-table", "RENAME TABLE a TO b, c TO d", D, tables=("a", "b", "c", "d")),
    case("alter-view", "ALTER VIEW v AS SELECT 2", D),
    case("create-sequence", "CREATE SEQUENCE s", D),
    # --- privileged ----------------------------------------------------------------------------------
    case("into-outfile", "SELECT * FROM t INTO OUTFILE '/tmp/x'", P, tables=("t",), reason="OUTFILE"),
    case("into-outfile-before-from", "SELECT a INTO OUTFILE '/tmp/x' FROM t", P),
    case("into-dumpfile", "SELECT 1 INTO DUMPFILE '/tmp/x'", P, reason="DUMPFILE"),
    case("load-file", "SELECT LOAD_FILE('/etc/passwd')", P, reason="LOAD_FILE"),
    case("load-file-lowercase-in-where", "SELECT * FROM t WHERE a = load_file('/x')", P, tables=("t",)),
    case("load-file-in-insert", "INSERT INTO t VALUES (LOAD_FILE('/etc/passwd'))", P, tables=("t",)),
    case("load-file-in-set", "SET @x = LOAD_FILE('/etc/passwd')", P),
    case("load-file-in-do", "DO LOAD_FILE('/x')", P),
    case("load-file-in-call", "CALL p(LOAD_FILE('/x'))", P),
    case("explain-load-file", "EXPLAIN SELECT LOAD_FILE('x')", P),
    case("create-table-load-file", "CREATE TABLE t2 AS SELECT LOAD_FILE('x')", P),
    case("load-data-server-file", "LOAD DATA INFILE '/etc/passwd' INTO TABLE t", P, tables=("t",)),
    case("grant", "GRANT SELECT ON db.* TO bob", P, reason="GRANT"),
    case("revoke", "REVOKE ALL ON *.* FROM bob", P),
    case("grant-role", "GRANT admin TO bob", P),
    case("create-user", "CREATE USER bob IDENTIFIED BY 'x'", P, reason="user"),
    case("drop-user", "DROP USER bob", P),
    case("alter-user", "ALTER USER bob IDENTIFIED BY 'y'", P),
    case("rename-user", "RENAME USER bob TO alice", P),
    case("create-role", "CREATE ROLE r", P),
    case("create-server", "CREATE SERVER s FOREIGN DATA WRAPPER mysql OPTIONS (HOST 'h')", P),
    case("alter-instance", "ALTER INSTANCE ROTATE INNODB MASTER KEY", P),
    case("create-function-soname", "CREATE FUNCTION sys_exec RETURNS INT SONAME 'lib_mysqludf_sys.so'", P),
    case("set-password", "SET PASSWORD = 'x'", P),
    case("set-password-for", "SET PASSWORD FOR bob = 'x'", P),
    case("set-role", "SET ROLE ALL", P, reason="SET ROLE"),
    # MariaDB SET STATEMENT … FOR: the stricter of the assignments and the inner statement.
    case("set-statement-for-select", "SET STATEMENT max_statement_time=1 FOR SELECT 1", S),
    case("set-statement-for-update", "SET STATEMENT max_statement_time=1 FOR UPDATE t SET a = 1", W),
    case("set-statement-lifts-read-only", "SET STATEMENT transaction_read_only=0 FOR SELECT 1", P),
    case("set-statement-log-bin", "SET STATEMENT sql_log_bin=0 FOR SELECT 1", P),
    case("set-default-role", "SET DEFAULT ROLE r TO bob", P),
    case("set-session-transaction-read-write", "SET SESSION TRANSACTION READ WRITE", P, reason="READ WRITE"),
    case("set-transaction-read-write", "SET TRANSACTION READ WRITE", P),
    case(
        "set-transaction-read-write-isolation", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE", P
    ),
    case("set-global-transaction", "SET GLOBAL TRANSACTION READ ONLY", P),
    case("transaction-read-only-0", "SET @@session.transaction_read_only = 0", P),
    case("tx-read-only-session-0", "SET SESSION tx_read_only = 0", P),
    case("tx-read-only-at-0", "SET @@tx_read_only = 0", P),
    case("transaction-read-only-off", "SET transaction_read_only = OFF", P),
    case("transaction-read-only-false", "SET transaction_read_only = FALSE", P),
    case("transaction-read-only-string-off", "SET transaction_read_only = 'OFF'", P),
    case("transaction-read-only-default", "SET transaction_read_only = DEFAULT", P),
    case("transaction-read-only-variable", "SET transaction_read_only = @x", P),
    case("transaction-read-only-in-multi", "SET NAMES utf8, transaction_read_only = 0", P),
    case("transaction-read-only-local", "SET @@local.transaction_read_only = 0", P),
    case("start-transaction-read-write", "START TRANSACTION READ WRITE", P),
    case(
        "start-transaction-snapshot-read-write", "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ WRITE", P
    ),
    case("set-global", "SET GLOBAL max_connections = 10", P, reason="GLOBAL"),
    case("set-at-global", "SET @@global.max_connections = 10", P),
    case("set-persist", "SET PERSIST max_connections = 10", P),
    case("set-persist-only", "SET @@persist_only.max_connections = 10", P),
    case("set-sql-log-bin", "SET sql_log_bin = 0", P),
    case("set-session-sql-log-bin", "SET @@SESSION.SQL_LOG_BIN = 0", P),
    case("set-gtid-purged", "SET @@GLOBAL.GTID_PURGED = '+abc:1-2'", P),
    case("flush", "FLUSH PRIVILEGES", P),
    case("flush-tables", "FLUSH TABLES WITH READ LOCK", P),
    case("shutdown", "SHUTDOWN", P),
    case("restart", "RESTART", P),
    case("install-plugin", "INSTALL PLUGIN x SONAME 'y.so'", P),
    case("uninstall-plugin", "UNINSTALL PLUGIN x", P),
    case("change-master", "CHANGE MASTER TO MASTER_HOST='h'", P),
    case("change-replication-source", "CHANGE REPLICATION SOURCE TO SOURCE_HOST='h'", P),
    case("reset-master", "RESET MASTER", P),
    case("purge-logs", "PURGE BINARY LOGS TO 'mysql-bin.000010'", P),
    case("start-replica", "START REPLICA", P),
    case("stop-slave", "STOP SLAVE", P),
    case("lock-instance", "LOCK INSTANCE FOR BACKUP", P),
    case("hidden-grant", "SELECT 1; GRANT ALL ON *.* TO bob", P, statements=2),
    case("executable-comment-grant", "/*!50000 GRANT ALL ON *.* TO bob */", P),
    # --- transaction ---------------------------------------------------------------------------------
    case("begin", "BEGIN", T),
    case("begin-work", "BEGIN WORK", T),
    case("start-transaction", "START TRANSACTION", T),
    case("start-transaction-read-only", "START TRANSACTION READ ONLY", T),
    case("start-transaction-snapshot", "START TRANSACTION WITH CONSISTENT SNAPSHOT", T),
    case("commit", "COMMIT", T),
    case("commit-work", "COMMIT WORK AND NO CHAIN", T),
    case("rollback", "ROLLBACK", T),
    case("rollback-to", "ROLLBACK TO SAVEPOINT s1", T),
    case("rollback-to-short", "ROLLBACK TO s1", T),
    case("savepoint", "SAVEPOINT s1", T),
    case("release-savepoint", "RELEASE SAVEPOINT s1", T),
    case("pymysql-autocommit", "SET AUTOCOMMIT = 0", T, reason="autocommit"),
    case("autocommit-1", "SET autocommit=1", T),
    case("connector-python-autocommit", "SET @@session.autocommit = OFF", T),
    # --- session -------------------------------------------------------------------------------------
    case("set-names", "SET NAMES utf8mb4", S),
    case("set-names-collate", "SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci", S),
    case("set-character-set", "SET CHARACTER SET utf8", S),
    case("set-user-variable", "SET @a = 1", S),
    case("set-user-variables", "SET @a := 1, @b = 2", S),
    case("set-sql-mode", "SET SESSION sql_mode = 'ANSI'", S),
    case("set-at-session-sql-mode", "SET @@SESSION.sql_mode = 'TRADITIONAL'", S),
    case("connector-j-results-null", "SET character_set_results = NULL", S),
    case("session-track", "SET session_track_system_variables = '*'", S),
    case("isolation", "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED", S),
    case("connector-j-read-only", "SET SESSION TRANSACTION READ ONLY", S),
    case("transaction-read-only-on", "SET transaction_read_only = ON", S),
    case("tx-read-only-1", "SET @@tx_read_only = 1", S),
    case("transaction-read-only-string-on", "SET SESSION transaction_read_only = 'ON'", S),
    case("use", "USE shop", S),
    case("use-backticks", "USE `my shop`", S),
    case("multi-assignment", "SET a = 1, b = 2", S),
    case(
        "mariadb-cj-2-set",
        "set autocommit=1, sql_mode = concat(@@sql_mode,',STRICT_TRANS_TABLES')",
        S,
    ),
    case("sql-mode-concat", "SET sql_mode = concat(@@sql_mode, ',STRICT_TRANS_TABLES')", S),
    case(
        "mariadb-cj-3-set",
        "SET autocommit=1, sql_mode='STRICT_TRANS_TABLES', "
        "session_track_system_variables='auto_increment_increment', NAMES utf8mb4",
        S,
    ),
    case(
        "mariadb-cj-pipeline",
        "set autocommit=1, sql_mode = concat(@@sql_mode,',STRICT_TRANS_TABLES');"
        "SELECT @@max_allowed_packet,@@system_time_zone,@@time_zone,@@auto_increment_increment",
        S,
        statements=2,
    ),
    case("set-local", "SET LOCAL sql_mode = ''", S),
    case("select-into-var", "SELECT a INTO @v FROM t", S, tables=("t",), reason="INTO @var"),
    case("select-into-var-after-from", "SELECT a, b FROM t INTO @v, @w", S, tables=("t",)),
    case("select-assign", "SELECT @a := 1", S),
    case("get-lock", "SELECT GET_LOCK('x', 10)", S, reason="GET_LOCK"),
    case("release-lock", "SELECT RELEASE_LOCK('x')", S),
    case("release-all-locks", "SELECT RELEASE_ALL_LOCKS()", S),
    case("unlock-tables", "UNLOCK TABLES", S),
    case("deallocate", "DEALLOCATE PREPARE s1", S),
    case("drop-prepare", "DROP PREPARE s1", S),
    case("kill", "KILL 5", S),
    case("kill-query", "KILL QUERY 5", S, reason="KILL"),
    case("kill-connection", "KILL CONNECTION 5", S),
    case("mysqldump-header", MYSQLDUMP_HEADER, S, statements=8),
    case("executable-comment-set-names", "/*!40101 SET NAMES utf8 */", S),
    case("prepare-set", "PREPARE s4 FROM 'SET @a = 1'", S, prepares="s4"),
    # --- PREPARE / EXECUTE and unknown ---------------------------------------------------------------
    case("execute", "EXECUTE s1", U, executes="s1"),
    case("execute-using", "EXECUTE s1 USING @a, @b", U, executes="s1"),
    case("prepare-from-variable", "PREPARE s5 FROM @q", U, prepares="s5", reason="variable"),
    case("prepare-two-statements", "PREPARE s6 FROM 'SELECT 1; DELETE FROM t'", U, prepares="s6"),
    case("prepare-and-execute", "PREPARE a FROM 'SELECT 1'; EXECUTE a", U, statements=2),
    case("typo", "SELEC 1", U, reason="unrecognised"),
    case("unterminated-string", "SELECT 'abc", U),
    case("truncated", "SELECT * FROM", U),
    case("bad-select", "SELECT FROM WHERE", U, reason="Expected table name"),
    case("delete-where-nothing", "DELETE FROM t WHERE", U),
    case("error-after-select", "SELECT 1; DELETE FROM", U, statements=2),
    case("prose", "hello world", U),
    case("pg-copy", "COPY t FROM STDIN", U),
    case("pg-listen", "LISTEN x", U),
    case("nul-byte", "SELECT 1\x00; DELETE FROM t", U, reason="NUL"),
    case("compound-statement", "BEGIN NOT ATOMIC SELECT 1; END", U, statements=2),
    case("set-statement-no-for", "SET STATEMENT max_statement_time=1", U),
    # FOR is found as a word, never inside a string.
    case("set-statement-quoted-for", "SET STATEMENT x='a FOR b' FOR SELECT 1", S),
    # --- empty ---------------------------------------------------------------------------------------
    case("empty", "", R, statements=0, tables=()),
    case("blank", "  \n\t ", R, statements=0),
    case("comment-only", "-- just a comment", R, statements=0),
    case("hash-only", "# nothing", R, statements=0),
    case("semicolons-only", ";;;", R, statements=0),
]


@pytest.mark.parametrize(("sql", "expect"), [pytest.param(c.sql, c.expect, id=c.case_id) for c in CASES])
def test_classify(sql: str, expect: Expect) -> None:
    c = classify(sql)
    assert c.kind is expect.kind, c
    assert c.statements == expect.statements, c
    assert c.prepares == expect.prepares, c
    assert c.executes == expect.executes, c
    assert c.copy_from_stdin is False
    if expect.tables is not None:
        assert c.tables == expect.tables, c
    if expect.reason is not None:
        assert expect.reason in c.reason, c


def test_table_is_big_and_ids_are_unique() -> None:
    ids = [c.case_id for c in CASES]
    assert len(ids) >= 170
    assert len(set(ids)) == len(ids)


def test_every_kind_is_covered() -> None:
    assert {c.expect.kind for c in CASES} == set(Kind)


def test_non_read_has_a_reason_and_tables_are_sorted_unique() -> None:
    for each in CASES:
        c = classify(each.sql)
        assert list(c.tables) == sorted(set(c.tables))
        if c.kind is not Kind.READ and c.statements:
            assert c.reason, each


def test_parse_error_reason_is_first_line_of_parser_message() -> None:
    c = classify("SELECT 1;\nSELECT * FROM WHERE x")
    assert c.kind is Kind.UNKNOWN
    assert c.reason.startswith("Expected table name")
    assert "\n" not in c.reason


def test_tokenizer_error_is_unknown_with_reason() -> None:
    c = classify("SELECT 'abc")
    assert c.kind is Kind.UNKNOWN
    assert "unterminated" in c.reason


def test_deep_nesting_does_not_raise() -> None:
    deep = "SELECT " + "(" * 3000 + "1" + ")" * 3000
    assert isinstance(classify(deep), Classification)
    nested = "SELECT * FROM " + "(SELECT * FROM " * 200 + "t" + ") s" * 200
    assert classify(nested).kind in (Kind.READ, Kind.UNKNOWN)


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
            '"',
            "`",
            "--",
            "#",
            "/*",
            "/*!",
            "*/",
            "SET",
            "@@",
            "@",
            "=",
            "INTO",
            "OUTFILE",
            "PREPARE",
            "EXECUTE",
            "LOCK TABLES",
            "EXPLAIN",
            "ANALYZE",
            "LOAD_FILE",
            ",",
            "1",
            "\n",
            "\\",
        ]
    ),
    max_size=20,
).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(SQLISH)
def test_classify_never_raises_on_sqlish_text(sql: str) -> None:
    assert isinstance(classify(sql), Classification)


# Statements that parse on their own (a lexer error poisons the whole message).
SINGLE_STATEMENTS = [
    each.sql
    for each in CASES
    if each.expect.statements == 1 and "\x00" not in each.sql and "'abc" not in each.sql
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
    if c.kind is not Kind.UNKNOWN:  # parser messages carry line/column, which joining moves
        assert c.reason in {s.reason for s in singles if STRICTNESS[s.kind] == STRICTNESS[c.kind]}
    if len(parts) > 1:
        assert c.prepares is None
        assert c.executes is None


# --- cache and cost --------------------------------------------------------------------------------


def test_cached_returns_same_object_and_counts_a_hit() -> None:
    sql = f"SELECT k FROM sbtest1 WHERE id = 42 -- {uuid.uuid4()}"
    before = classify_mysql_cached.cache_info()
    first = classify_mysql_cached(sql)
    middle = classify_mysql_cached.cache_info()
    second = classify_mysql_cached(sql)
    after = classify_mysql_cached.cache_info()
    assert first is second
    assert first == classify(sql)
    assert middle.misses == before.misses + 1
    assert after.hits == middle.hits + 1


def test_uncached_cost_is_reported() -> None:
    # Not an assertion on absolute time (DESIGN.md §8): it prints µs/call for the record (-s to see).
    sql = "SELECT k FROM sbtest1 WHERE id = 42"
    runs = 500
    start = time.perf_counter()
    for _ in range(runs):
        classify(sql)
    per_call = (time.perf_counter() - start) / runs * 1e6
    print(f"\nmysql.classify uncached: {per_call:.1f} µs/call")
    assert classify(sql).kind is Kind.READ


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("UPDATE t SET a = 1", False),
        ("UPDATE t SET a = 1; COMMIT", True),
        ("START TRANSACTION; DELETE FROM t", True),
        ("BEGIN WORK", True),
        ("ROLLBACK TO SAVEPOINT s", True),
        ("SET autocommit = 0; DELETE FROM t", True),
        ("SET @@autocommit = 1", True),
        ("LOCK TABLES t WRITE", True),
        ("UNLOCK TABLES", True),
        ("XA START 'x'", True),
        ("/*!40000 COMMIT */", True),
        ("INSERT INTO t VALUES ('COMMIT')", False),
        ("SELECT 'unterminated", False),
    ],
)
def test_controls_transactions(sql: str, expected: bool) -> None:
    from policies.mysql import controls_transactions

    assert controls_transactions(sql) is expected


# --- issue 10: special statements from the parse, lexing like the server, scope, functions ----------

from policies.mysql import SqlMode, canonical  # noqa: E402
from policies.types import KillTarget  # noqa: E402


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("KILL 5", KillTarget(5, False, "KILL")),
        ("KILL QUERY 5", KillTarget(5, True, "KILL QUERY")),
        ("/* x */ KILL QUERY 5", KillTarget(5, True, "KILL QUERY")),
        ("kill query 5 -- c", KillTarget(5, True, "KILL QUERY")),
        ("kill query 5 # c", KillTarget(5, True, "KILL QUERY")),
        ("/*!50000 KILL QUERY 5 */", KillTarget(5, True, "KILL QUERY")),
        ("/*M!100000 KILL QUERY 5 */", KillTarget(5, True, "KILL QUERY")),
        ("KiLl\tQuErY\n5", KillTarget(5, True, "KILL QUERY")),
        ("KILL CONNECTION 5;", KillTarget(5, False, "KILL CONNECTION")),
        ("KILL HARD QUERY 5", KillTarget(5, True, "KILL HARD QUERY")),
        ("KILL SOFT CONNECTION 5", KillTarget(5, False, "KILL SOFT CONNECTION")),
        ("KILL QUERY ID 5", KillTarget(None, True, "KILL QUERY ID")),
        ("KILL USER qb_reader", KillTarget(None, False, "KILL USER")),
        ("KILL HARD USER 'x'@'%'", KillTarget(None, False, "KILL HARD USER")),
        ("KILL (5)", KillTarget(None, False, "KILL")),
        ("KILL 5 + 0", KillTarget(None, False, "KILL")),
        ("KILL CONNECTION_ID()", KillTarget(None, False, "KILL")),
        ("KILL 0x5", KillTarget(None, False, "KILL")),
        ("EXECUTE IMMEDIATE 'KILL QUERY 5'", KillTarget(5, True, "KILL QUERY")),
        ("SET STATEMENT max_statement_time=1 FOR KILL 5", KillTarget(5, False, "KILL")),
    ],
)
def test_kill_is_a_parsed_fact(sql: str, expected: KillTarget) -> None:
    c = classify(sql)
    assert c.kill == expected, c


@pytest.mark.parametrize(
    "sql",
    ["SELECT 1; KILL 5", "PREPARE k FROM 'KILL 5'", "DO 1; /*!50000 KILL QUERY 5 */"],
)
def test_kill_inside_other_statements_is_reported(sql: str) -> None:
    """The session refuses a KILL that is not a statement of its own: it must see it."""
    c = classify(sql)
    assert c.kill is not None, c
    assert c.statements > 1 or c.prepares is not None, c


@pytest.mark.parametrize(
    ("sql", "uses"),
    [
        ("USE qbtest", "qbtest"),
        ("use `other db`", "other db"),
        ("/*!40000 USE x */", "x"),
        ("USE a; SELECT 1", "a"),
    ],
)
def test_use_is_a_parsed_fact(sql: str, uses: str) -> None:
    c = classify(sql)
    assert c.uses == uses
    assert uses in c.schemas


@pytest.mark.parametrize(
    ("sql", "sets"),
    [
        ("SET NAMES utf8mb4", (("character_set_client", "utf8mb4"),)),
        ("SET NAMES 'sjis' COLLATE sjis_bin", (("character_set_client", "sjis"),)),
        ("SET CHARACTER SET gbk", (("character_set_client", "gbk"),)),
        ("/*!40101 SET character_set_client = big5 */", (("character_set_client", "big5"),)),
        ("SET NAMES DEFAULT", (("character_set_client", None),)),
        ("SET @@session.sql_mode = 'ANSI_QUOTES'", (("sql_mode", "ANSI_QUOTES"),)),
        ("SET sql_mode = CONCAT(@@sql_mode, ',X')", (("sql_mode", None),)),
        ("SET LOCAL sql_mode = @old", (("sql_mode", None),)),
        ("SET STATEMENT sql_mode='' FOR SELECT 1", (("sql_mode", ""),)),
        ("PREPARE s FROM 'SET sql_mode = ?'", (("sql_mode", None),)),
        ("SET autocommit = 1", ()),
        ("CALL p()", (("character_set_client", None), ("sql_mode", None))),
        ("EXECUTE IMMEDIATE @q", (("character_set_client", None), ("sql_mode", None))),
        ("EXECUTE IMMEDIATE 'SELECT 1'", ()),
    ],
)
def test_lexing_settings_are_parsed_facts(sql: str, sets: tuple[tuple[str, str | None], ...]) -> None:
    assert classify(sql).sets == sets


NBE = SqlMode(no_backslash_escapes=True)
ANSI = SqlMode(ansi_quotes=True)


@pytest.mark.parametrize(
    ("sql", "mode", "kind", "statements"),
    [
        # NO_BACKSLASH_ESCAPES: the backslash no longer escapes the quote, so the string ends there.
        ("SELECT 'a\\' ; DELETE FROM items; -- '", NBE, W, 2),
        ("SELECT 'a\\' ; DELETE FROM items; -- '", SqlMode(), R, 1),
        ('SELECT "a\\" ; DELETE FROM items; -- "', NBE, W, 2),
        # ANSI_QUOTES: "…" is an identifier, in which a backslash is an ordinary character.
        ('SELECT 1 AS "x\\"; DELETE FROM items; -- "', ANSI, W, 2),
        ('SELECT 1 AS "x\\"; DELETE FROM items; -- "', SqlMode(), R, 1),
        ('SELECT "a""b" FROM items', ANSI, R, 1),
        # `--` is a comment only before whitespace or a control character.
        ("SELECT 1 --1; DELETE FROM items", SqlMode(), W, 2),
        ("SELECT 1 --\x01; DELETE FROM items", SqlMode(), R, 1),
        ("SELECT 1 ---\t; DELETE FROM items", SqlMode(), U, 1),  # `SELECT 1 -`: as on the server
        ("SELECT 1 --\u00a0 FROM (SELECT 2 AS `\u00a0`) t; DELETE FROM items", SqlMode(), U, 1),
        ("SELECT 1\u00a0; DELETE FROM items", SqlMode(), U, 1),
        # An executable comment must end at its first `*/`, run or not.
        ("/*M!999999 '*/ ; DELETE FROM items; -- '*/", SqlMode(), U, 1),
        ("/*!50000 SELECT 1 */; SELECT 2", SqlMode(), R, 2),
        ("/*!50000 DELETE FROM items */", SqlMode(), W, 1),
        ("SELECT 1 /* ' */; DELETE FROM items", SqlMode(), W, 2),
        ("SELECT 1 # '\n; DELETE FROM items", SqlMode(), W, 2),
        # U+FFFD stands for bytes invalid in the client character set (a _binary literal's data).
        ("INSERT INTO t VALUES (_binary'\ufffd\\'\ufffd')", SqlMode(), W, 1),
        ("SELECT _binary'\ufffd\\\\'; DELETE FROM items", SqlMode(), W, 2),
        # A NUL byte inside a literal is data (mysql-connector sends it raw); outside, refused.
        ("SELECT _binary'\x00\\'\x00' FROM items", SqlMode(), R, 1),
        ("SELECT '\x00'; DELETE FROM items", SqlMode(), W, 2),
        ("SELECT 1 \x00; DELETE FROM items", SqlMode(), U, 1),
    ],
)
def test_lexing_follows_the_server(sql: str, mode: SqlMode, kind: Kind, statements: int) -> None:
    c = classify(sql, mode)
    assert (c.kind, c.statements) == (kind, statements), c


def test_set_sql_mode_then_more_statements_is_classified_under_every_mode() -> None:
    c = classify("SET sql_mode = 'NO_BACKSLASH_ESCAPES'; SELECT 'a\\'; DELETE FROM items; -- '")
    assert c.kind is U or c.kind is W, c
    plain = classify("set autocommit=1, sql_mode = concat(@@sql_mode,',STRICT_TRANS_TABLES');SELECT @@x")
    assert plain.kind is S


def test_canonical_text_is_what_sqlglot_reads_the_same() -> None:
    assert canonical("SELECT 1 --1") == "SELECT 1 - -1"
    assert canonical("SELECT /*+ hint */ 1 # c") == "SELECT   1  "
    assert canonical("SELECT 'a\\'", NBE) == "SELECT 'a\\\\'"
    assert canonical('SELECT "a`b"', ANSI) == "SELECT `a``b`"


@pytest.mark.parametrize(
    ("sql", "tables", "schemas"),
    [
        ("SELECT * FROM mysql.user", ("mysql.user",), ()),
        ("SELECT (SELECT max(User) FROM mysql.user)", ("mysql.user",), ()),
        ("SELECT * FROM items JOIN qbother.secrets USING (id)", ("items", "qbother.secrets"), ()),
        ("SHOW DATABASES", (), ("*",)),
        ("SHOW SCHEMAS LIKE 'q%'", (), ("*",)),
        ("SHOW FUNCTION STATUS", (), ("*",)),
        ("SHOW TABLES FROM qbother", (), ("qbother",)),
        ("SHOW FULL TABLES IN `qbother` LIKE 's%'", (), ("qbother",)),
        ("SHOW COLUMNS FROM user FROM mysql", ("user",), ("mysql",)),
        ("SHOW INDEX FROM mysql.user", ("mysql.user",), ()),
        ("SHOW CREATE TABLE mysql.user", ("mysql.user",), ()),
        ("SHOW CREATE DATABASE qbother", (), ("qbother",)),
        ("SHOW TABLES WHERE EXISTS (SELECT 1 FROM mysql.user)", ("mysql.user",), ()),
        ("DESC mysql.user", ("mysql.user",), ()),
        ("TABLE mysql.user", ("mysql.user",), ()),
        ("CHECKSUM TABLE qbother.secrets", ("qbother.secrets",), ()),
        ("SELECT * FROM information_schema.TABLES", ("information_schema.TABLES",), ()),
        ("CALL mysql.some_proc(1)", (), ("mysql",)),
        ("SELECT qbother.f(1) FROM items", ("items",), ("qbother",)),
    ],
)
def test_scope_facts(sql: str, tables: tuple[str, ...], schemas: tuple[str, ...]) -> None:
    c = classify(sql)
    assert (c.tables, c.schemas) == (tables, schemas), c


@pytest.mark.parametrize(
    ("sql", "kind", "named"),
    [
        ("SELECT qb_wipe_fn()", U, "qb_wipe_fn"),
        ("SELECT qbtest.now()", U, "qbtest.now"),
        ("SELECT `now`()", U, "now"),
        ("SELECT BENCHMARK(1000000, MD5('x'))", U, "BENCHMARK"),
        ("SELECT MASTER_POS_WAIT('f', 4)", U, "MASTER_POS_WAIT"),
        ("SELECT nvl2(1, 2, 3), my_fn(1)", U, "my_fn"),
        ("SET @a = my_fn(1)", U, "my_fn"),
        ("SHOW TABLES WHERE my_fn(1)", U, "my_fn"),
        ("SELECT LOAD_FILE('/etc/passwd')", P, None),
        ("SELECT GET_LOCK('x', 1)", S, None),
        ("SELECT SLEEP(1), NOW(), COUNT(*), IFNULL(a, 1), JSON_EXTRACT(j, '$.a'), ST_X(p) FROM t", R, None),
        ("SELECT CAST(a AS CHAR(3)), CONVERT(b, SIGNED), DATE_ADD(NOW(), INTERVAL 1 DAY) FROM t", R, None),
        ("WITH c (a) AS (SELECT 1) SELECT * FROM c", R, None),
        # A CTE named like a stored function does not make the call a column list.
        ("WITH qb_adv_fn AS (SELECT 1) SELECT qb_adv_fn() FROM qb_adv_fn", U, "qb_adv_fn"),
        ("WITH c (a) AS (SELECT 1), d (b) AS (SELECT 2) SELECT * FROM c, d", R, None),
        ("SELECT * FROM (SELECT 1, 2) AS d (a, b)", R, None),
        # Keywords before "(" must be vetted built-ins, types or grammar.
        ("SELECT merge(1) FROM t", U, None),
        ("SELECT list(1), struct(2) FROM t", U, None),
        ("SELECT CAST(a AS DECIMAL(10, 2)), CONVERT(b, CHAR(3)), LEFT(c, 1), DATE(d) FROM t", R, None),
        ("SELECT a FROM t WHERE a IN (1) AND EXISTS (SELECT 1) AND NOT (a = 1) OR (a < 2)", R, None),
        ("SELECT a FROM t USE INDEX (i) JOIN u USING (a) WHERE (a) IN (SELECT 1) LIMIT 1", R, None),
        ("SELECT MATCH (a) AGAINST ('x') FROM t", R, None),
        ("EXECUTE IMMEDIATE 'DELETE FROM items'", W, None),
        ("EXECUTE IMMEDIATE @sql", U, None),
        ("PREPARE immediate FROM 'SELECT 1'", U, "IMMEDIATE"),
        ("EXECUTE immediate", U, None),
    ],
)
def test_functions_are_allowlisted(sql: str, kind: Kind, named: str | None) -> None:
    """User and stored functions are listed as unvetted; decide() then fails the read closed unless
    the source trusts them (the kind here is the one a propose user's statement is held or run as)."""
    c = classify(sql)
    decided = as_decided(c, decide(c, Level.PROPOSE, SourcePolicy()))
    assert decided.kind is kind, c
    if named is not None:
        assert named.lower() in decided.reason.lower(), decided


@pytest.mark.parametrize(
    ("sql", "trusted"),
    [
        ("SELECT qb_wipe_fn()", "qb_wipe_fn"),
        ("SELECT QB_Wipe_Fn()", "qb_wipe_fn"),
        ("SELECT qbtest.report(1)", "qbtest.report"),
        ("SELECT `qbtest`.`report`(1)", "qbtest.report"),
    ],
)
def test_a_source_may_trust_a_stored_function(sql: str, trusted: str) -> None:
    c = classify(sql)
    assert c.unvetted == (trusted,)
    policy = SourcePolicy(trusted_functions=frozenset({trusted}))
    assert decide(c, Level.READ, policy).action is Action.FORWARD
    assert decide(c, Level.READ, SourcePolicy()).action is Action.DENY


def test_statement_names_are_case_insensitive() -> None:
    assert classify("PREPARE S1 FROM 'SELECT 1'").prepares == "s1"
    assert classify("EXECUTE s1").executes == classify("EXECUTE S1").executes == "s1"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("'\"`\\-#/*!;M 1\n\u00a0ab")), max_size=40))
def test_canonical_never_hides_a_statement_sqlglot_sees(text: str) -> None:
    """Whatever the text, classification never raises, and a DELETE appended after it is either
    seen or the whole message is unknown/unreadable (never a plain read)."""
    for mode in (SqlMode(), NBE, ANSI):
        c = classify(text + "\n; DELETE FROM items", mode)
        assert c.kind is not R or c.statements == 0, (text, mode, c)
