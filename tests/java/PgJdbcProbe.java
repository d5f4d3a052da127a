// A pgjdbc client run against QueryBase's PostgreSQL port by tests/integration/test_pg_jdbc.py.
//
// It replays what real JDBC tools send (client-compat.md PG-14, PG-20, PG-21, PG-22): DBeaver's
// connection-time queries and metadata calls, Metabase's session settings and comment-prefixed
// SQL, pgjdbc's switch to named server-side statements after prepareThreshold uses, batches,
// transactions with autocommit off, cursor-style fetching (portal with max rows), and writes
// that QueryBase must hold (QB001) or deny (42501).
//
// Usage: java -cp OUTDIR:/usr/share/java/postgresql.jar PgJdbcProbe URL USER PASSWORD MODE
//   MODE is `propose` (writes must be held, SQLSTATE QB001) or `read` (writes denied, 42501).
//   The database must hold public.jdbc_items(id int primary key, name text) with rows 1, 2, 3.
//
// Output: one line per check, `OK name` or `FAIL name: message`, `INFO name: ...` for details
// that are not checked, then `DONE checks=N failures=F`. Exit status 0 only if nothing failed,
// 1 if a check failed, 2 for a usage error.
//
// Compile: javac -cp /usr/share/java/postgresql.jar -d OUTDIR tests/java/PgJdbcProbe.java

import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Timestamp;
import java.sql.Types;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;
import java.util.Properties;

import org.postgresql.PGStatement;

public final class PgJdbcProbe {
    static final String TABLE = "jdbc_items";
    static final String HELD = "QB001";
    static final String DENIED = "42501";
    static final String METABASE_PREFIX =
        "-- Metabase:: userID: 1 queryType: MBQL queryHash: abc\n";

    @FunctionalInterface
    interface Check {
        void run() throws Exception;
    }

    private final String url;
    private final String user;
    private final String password;
    private final String mode;
    private int checks;
    private int failures;
    private String baseline; // sessionSettings() of the first connection, before any change

    private PgJdbcProbe(String url, String user, String password, String mode) {
        this.url = url;
        this.user = user;
        this.password = password;
        this.mode = mode;
    }

    public static void main(String[] args) {
        if (args.length != 4 || !(args[3].equals("propose") || args[3].equals("read"))) {
            System.err.println("usage: PgJdbcProbe URL USER PASSWORD propose|read");
            System.exit(2);
        }
        PgJdbcProbe probe = new PgJdbcProbe(args[0], args[1], args[2], args[3]);
        probe.runAll();
        System.out.println("DONE checks=" + probe.checks + " failures=" + probe.failures);
        System.out.flush();
        System.exit(probe.failures == 0 ? 0 : 1);
    }

    // ------------------------------------------------------------------------------ helpers

    Connection connect(String... extra) throws SQLException {
        Properties props = new Properties();
        props.setProperty("user", user);
        props.setProperty("password", password);
        // Never hang the test: a stuck exchange becomes a FAIL with a timeout message.
        props.setProperty("connectTimeout", "15");
        props.setProperty("socketTimeout", "30");
        for (int i = 0; i + 1 < extra.length; i += 2) {
            props.setProperty(extra[i], extra[i + 1]);
        }
        return DriverManager.getConnection(url, props);
    }

    void check(String name, Check body) {
        checks++;
        try {
            body.run();
            System.out.println("OK " + name);
        } catch (Throwable t) {
            failures++;
            System.out.println("FAIL " + name + ": " + describe(t));
        }
        System.out.flush();
    }

    static void info(String name, String detail) {
        System.out.println("INFO " + name + ": " + oneLine(detail));
    }

    static String oneLine(String s) {
        return s == null ? "null" : s.replace("\r", "\\r").replace("\n", "\\n");
    }

    static String describe(Throwable t) {
        StringBuilder sb = new StringBuilder(t.getClass().getSimpleName());
        if (t instanceof SQLException) {
            sb.append(" [SQLState ").append(((SQLException) t).getSQLState()).append(']');
        }
        sb.append(' ').append(t.getMessage());
        Throwable cause = t.getCause();
        if (cause != null && cause != t) {
            sb.append(" (cause: ").append(cause.getClass().getSimpleName())
                .append(' ').append(cause.getMessage()).append(')');
        }
        return oneLine(sb.toString());
    }

    static void expect(boolean condition, String message) {
        if (!condition) {
            throw new AssertionError(message);
        }
    }

    static void expectEquals(Object expected, Object actual, String what) {
        if (!Objects.equals(expected, actual)) {
            throw new AssertionError(what + ": expected <" + expected + "> but got <" + actual + ">");
        }
    }

    /** Run `body`, which must fail with an SQLException carrying `sqlState`. */
    static SQLException expectSqlState(String sqlState, Check body) throws Exception {
        try {
            body.run();
        } catch (SQLException e) {
            if (!sqlState.equals(e.getSQLState())) {
                throw new AssertionError(
                    "expected SQLState " + sqlState + " but got " + describe(e), e);
            }
            return e;
        }
        throw new AssertionError("expected SQLState " + sqlState + " but the statement succeeded");
    }

    static String scalar(Connection conn, String sql) throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            expect(rs.next(), "no row from: " + sql);
            String value = rs.getString(1);
            expect(!rs.next(), "more than one row from: " + sql);
            return value;
        }
    }

    // ------------------------------------------------------------------------------- checks

    void runAll() {
        Connection conn;
        try {
            conn = connect();
            checks++;
            System.out.println("OK connect");
        } catch (Throwable t) {
            checks++;
            failures++;
            System.out.println("FAIL connect: " + describe(t));
            return;
        }
        check("session_baseline", () -> {
            baseline = sessionSettings(conn);
            info("session_baseline", baseline);
        });
        try {
            dbeaver(conn);
            metadata(conn);
            clientSettings(conn);
            prepared(conn);
            batches(conn);
            transactions(conn);
            if (mode.equals("propose")) {
                proposeWrites(conn);
            } else {
                deniedWrites(conn);
            }
        } finally {
            check("close", conn::close);
        }
        metabase();
        readOnlyAlways();
        sessionReset();
    }

    /** DBeaver's connection-time queries (PG-21). */
    void dbeaver(Connection conn) {
        String[] database = new String[1];
        check("dbeaver.current_database", () -> {
            database[0] = scalar(conn, "SELECT current_database()");
            expect(database[0] != null && !database[0].isEmpty(), "empty current_database()");
            info("dbeaver.current_database", database[0]);
        });
        check("dbeaver.pg_database", () -> {
            String sql = "SELECT db.oid,db.* FROM pg_catalog.pg_database db WHERE datname=?";
            try (PreparedStatement ps = conn.prepareStatement(sql)) {
                ps.setString(1, database[0]);
                try (ResultSet rs = ps.executeQuery()) {
                    expect(rs.next(), "no pg_database row for " + database[0]);
                    expect(rs.getLong("oid") > 0, "oid is not positive");
                    expectEquals(database[0], rs.getString("datname"), "datname");
                    expect(!rs.next(), "more than one pg_database row");
                }
            }
        });
        check("dbeaver.version", () -> {
            String version = scalar(conn, "SELECT version()");
            expect(version.startsWith("PostgreSQL "), "unexpected version(): " + version);
            info("dbeaver.version", version);
            info("server_version", conn.getMetaData().getDatabaseProductVersion());
        });
        check("dbeaver.current_schema", () -> {
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("SELECT current_schema(),session_user")) {
                expect(rs.next(), "no row");
                expectEquals("public", rs.getString(1), "current_schema()");
                expect(rs.getString(2) != null && !rs.getString(2).isEmpty(), "empty session_user");
                info("dbeaver.current_schema", "session_user=" + rs.getString(2));
            }
        });
        check("dbeaver.show_search_path", () -> {
            String path = scalar(conn, "SHOW search_path");
            expect(path != null && path.contains("public"), "search_path without public: " + path);
        });
        check("dbeaver.set_search_path", () -> {
            try (Statement st = conn.createStatement()) {
                st.execute("SET search_path = \"$user\", public");
            }
            expectEquals("\"$user\", public", scalar(conn, "SHOW search_path"), "search_path");
        });
    }

    /** DatabaseMetaData, as DBeaver's navigator uses it (pg_catalog queries, PG-21). */
    void metadata(Connection conn) {
        check("meta.get_tables", () -> {
            DatabaseMetaData md = conn.getMetaData();
            List<String> names = new ArrayList<>();
            try (ResultSet rs = md.getTables(null, "public", "%", new String[] {"TABLE"})) {
                while (rs.next()) {
                    names.add(rs.getString("TABLE_NAME"));
                }
            }
            expect(names.contains(TABLE), TABLE + " not in getTables: " + names);
        });
        check("meta.get_columns", () -> {
            List<String> columns = new ArrayList<>();
            try (ResultSet rs = conn.getMetaData().getColumns(null, "public", TABLE, "%")) {
                while (rs.next()) {
                    columns.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME"));
                }
            }
            expectEquals(List.of("id:int4", "name:text"), columns, "columns");
        });
        check("meta.get_primary_keys", () -> {
            List<String> keys = new ArrayList<>();
            try (ResultSet rs = conn.getMetaData().getPrimaryKeys(null, "public", TABLE)) {
                while (rs.next()) {
                    keys.add(rs.getString("COLUMN_NAME"));
                }
            }
            expectEquals(List.of("id"), keys, "primary key columns");
        });
        check("meta.result_set_metadata", () -> {
            // A standalone Describe of a prepared statement (no Execute): getMetaData() before
            // executing, as tools do to show result columns (PG-14).
            String sql = "SELECT id, name FROM " + TABLE + " WHERE id = ?";
            try (PreparedStatement ps = conn.prepareStatement(sql)) {
                java.sql.ResultSetMetaData md = ps.getMetaData();
                expectEquals(2, md.getColumnCount(), "column count");
                expectEquals("id", md.getColumnName(1), "column 1");
                expectEquals(Types.INTEGER, md.getColumnType(1), "column 1 type");
                expectEquals(1, ps.getParameterMetaData().getParameterCount(), "parameters");
            }
        });
    }

    /** pgjdbc's own session statements: setClientInfo → SET application_name (PG-11, PG-20). */
    void clientSettings(Connection conn) {
        check("client_info.application_name", () -> {
            conn.setClientInfo("ApplicationName", "QueryBase JDBC probe");
            expectEquals("QueryBase JDBC probe", conn.getClientInfo("ApplicationName"),
                "getClientInfo");
            expectEquals("QueryBase JDBC probe", scalar(conn, "SHOW application_name"),
                "application_name");
        });
    }

    /** Unnamed, then named (S_n) server-side statements; binary parameters (PG-14). */
    void prepared(Connection conn) {
        check("prepared.threshold", () -> {
            try (PreparedStatement ps = conn.prepareStatement("SELECT ?::int + 1")) {
                for (int i = 0; i < 10; i++) {
                    ps.setInt(1, i * 7);
                    try (ResultSet rs = ps.executeQuery()) {
                        expect(rs.next(), "no row at execution " + (i + 1));
                        expectEquals(i * 7 + 1, rs.getInt(1), "result of execution " + (i + 1));
                        expect(!rs.next(), "extra row at execution " + (i + 1));
                    }
                }
                expect(ps.unwrap(PGStatement.class).isUseServerPrepare(),
                    "pgjdbc did not switch to a named server-side statement");
            }
        });
        check("prepared.server_statement_visible", () -> {
            // Informational: where the named statement lives on the upstream.
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery(
                     "SELECT name, statement FROM pg_prepared_statements ORDER BY name")) {
                StringBuilder sb = new StringBuilder();
                while (rs.next()) {
                    sb.append(rs.getString(1)).append('=').append(rs.getString(2)).append("; ");
                }
                info("prepared.server_statement_visible", sb.toString());
            }
        });
        check("prepared.types", () -> {
            String sql = "SELECT ?::text, ?::bigint, ?::bool, ?::numeric, ?::timestamp, ?::int IS NULL";
            Timestamp ts = Timestamp.valueOf("2024-02-29 12:34:56.789");
            try (PreparedStatement ps = conn.prepareStatement(sql)) {
                for (int i = 0; i < 7; i++) {
                    ps.setString(1, "ünï-" + i);
                    ps.setLong(2, 9_000_000_000L + i);
                    ps.setBoolean(3, i % 2 == 0);
                    ps.setBigDecimal(4, new java.math.BigDecimal("12345.6789"));
                    ps.setTimestamp(5, ts);
                    ps.setNull(6, Types.INTEGER);
                    try (ResultSet rs = ps.executeQuery()) {
                        expect(rs.next(), "no row");
                        expectEquals("ünï-" + i, rs.getString(1), "text");
                        expectEquals(9_000_000_000L + i, rs.getLong(2), "bigint");
                        expectEquals(i % 2 == 0, rs.getBoolean(3), "bool");
                        expectEquals(new java.math.BigDecimal("12345.6789"), rs.getBigDecimal(4),
                            "numeric");
                        expectEquals(ts, rs.getTimestamp(5), "timestamp");
                        expectEquals(true, rs.getBoolean(6), "IS NULL");
                    }
                }
            }
        });
    }

    /** Batches pipeline many Parse/Bind/Execute before one Sync (PG-14). */
    void batches(Connection conn) {
        check("batch.prepared_reads", () -> {
            // 20 Parse/Bind/Execute of a SELECT before one Sync. pgjdbc discards the rows of a
            // batch (it asks for at most one row per Execute, so each portal is suspended).
            try (PreparedStatement ps = conn.prepareStatement("SELECT ?::int * 2 AS doubled")) {
                for (int i = 0; i < 20; i++) {
                    ps.setInt(1, i);
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                expectEquals(20, counts.length, "batch results");
                for (int count : counts) {
                    expect(count != Statement.EXECUTE_FAILED, "a batch entry failed");
                }
            }
            expectEquals("1", scalar(conn, "SELECT 1"), "SELECT 1 after the batch");
        });
        check("batch.read_error", () -> {
            // A failing entry (division by zero at i = 15) fails the whole batch, one implicit
            // transaction; the connection stays usable.
            try (PreparedStatement ps = conn.prepareStatement("SELECT 100 / (?::int - 15)")) {
                for (int i = 0; i < 20; i++) {
                    ps.setInt(1, i);
                    ps.addBatch();
                }
                try {
                    ps.executeBatch();
                    throw new AssertionError("the batch with a division by zero succeeded");
                } catch (BatchUpdateException e) {
                    expectEquals("22012", e.getSQLState(), "SQLState");
                }
            }
            expectEquals("1", scalar(conn, "SELECT 1"), "SELECT 1 after the failed batch");
        });
        check("batch.statement_sets", () -> {
            try (Statement st = conn.createStatement()) {
                st.addBatch("SET statement_timeout = '25s'");
                st.addBatch("SET lock_timeout = '7s'");
                st.addBatch("SET TIME ZONE 'UTC'");
                int[] counts = st.executeBatch();
                expectEquals(3, counts.length, "batch results");
            }
            expectEquals("25s", scalar(conn, "SHOW statement_timeout"), "statement_timeout");
            expectEquals("7s", scalar(conn, "SHOW lock_timeout"), "lock_timeout");
            try (Statement st = conn.createStatement()) {
                st.execute("RESET statement_timeout; RESET lock_timeout");
            }
        });
        check("batch.set_error", () -> {
            // An unknown setting in the middle of a batch: the rest is skipped until Sync and
            // the connection stays usable.
            try (Statement st = conn.createStatement()) {
                st.addBatch("SET lock_timeout = '3s'");
                st.addBatch("SET no_such_setting_at_all = 1");
                st.addBatch("SET lock_timeout = '4s'");
                try {
                    st.executeBatch();
                    throw new AssertionError("the batch with an unknown setting succeeded");
                } catch (BatchUpdateException e) {
                    expectEquals("42704", e.getSQLState(), "SQLState");
                }
            }
            expectEquals("1", scalar(conn, "SELECT 1"), "SELECT 1 after the failed batch");
            try (Statement st = conn.createStatement()) {
                st.execute("RESET lock_timeout");
            }
        });
    }

    /** Autocommit off: BEGIN piggybacked on the first statement, portals with max rows (PG-14). */
    void transactions(Connection conn) {
        check("tx.selects_commit", () -> {
            conn.setAutoCommit(false);
            try {
                String first = scalar(conn, "SELECT now()::text");
                expectEquals("3", scalar(conn, "SELECT count(*) FROM " + TABLE), "row count");
                try (PreparedStatement ps = conn.prepareStatement(
                         "SELECT name FROM " + TABLE + " WHERE id = ?")) {
                    ps.setInt(1, 2);
                    try (ResultSet rs = ps.executeQuery()) {
                        expect(rs.next(), "no row for id 2");
                    }
                }
                // now() is the transaction's start: the same in every statement of one txn.
                expectEquals(first, scalar(conn, "SELECT now()::text"), "now() within the txn");
                conn.commit();
                expect(!first.equals(scalar(conn, "SELECT now()::text")), "no new transaction");
                conn.commit();
            } finally {
                conn.setAutoCommit(true);
            }
        });
        check("tx.fetch_size", () -> {
            conn.setAutoCommit(false);
            try (Statement st = conn.createStatement()) {
                st.setFetchSize(10);
                int rows = 0;
                long sum = 0;
                try (ResultSet rs = st.executeQuery("SELECT g FROM generate_series(1, 100) g")) {
                    while (rs.next()) {
                        rows++;
                        sum += rs.getInt(1);
                    }
                }
                expectEquals(100, rows, "rows");
                expectEquals(5050L, sum, "sum");
                conn.commit();
            } finally {
                conn.setAutoCommit(true);
            }
        });
        check("tx.fetch_size_prepared", () -> {
            conn.setAutoCommit(false);
            try (PreparedStatement ps = conn.prepareStatement(
                     "SELECT g, repeat(?, g % 5) FROM generate_series(1, ?) g")) {
                ps.setFetchSize(7);
                for (int round = 0; round < 6; round++) {
                    ps.setString(1, "x");
                    ps.setInt(2, 100);
                    int rows = 0;
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next()) {
                            rows++;
                            expectEquals(rows, rs.getInt(1), "g");
                        }
                    }
                    expectEquals(100, rows, "rows in round " + round);
                }
                conn.commit();
            } finally {
                conn.setAutoCommit(true);
            }
        });
        check("tx.read_only_transaction", () -> {
            // readOnlyMode=transaction (the default): setReadOnly + autocommit off → BEGIN READ ONLY.
            // (QueryBase's read upstreams default to read-only anyway: compare with before.)
            String before = scalar(conn, "SHOW transaction_read_only");
            conn.setAutoCommit(false);
            conn.setReadOnly(true);
            try {
                expectEquals("on", scalar(conn, "SHOW transaction_read_only"),
                    "transaction_read_only");
                conn.commit();
            } finally {
                conn.setReadOnly(false);
                conn.setAutoCommit(true);
            }
            expectEquals(before, scalar(conn, "SHOW transaction_read_only"),
                "transaction_read_only after");
        });
        check("tx.rollback", () -> {
            conn.setAutoCommit(false);
            try {
                expectEquals("1", scalar(conn, "SELECT 1"), "SELECT 1");
                conn.rollback();
                expectEquals("2", scalar(conn, "SELECT 2"), "SELECT 2 after rollback");
                conn.commit();
            } finally {
                conn.setAutoCommit(true);
            }
        });
    }

    /** Mode propose: writes are held for approval (QB001) and the session carries on. */
    void proposeWrites(Connection conn) {
        String update = "UPDATE " + TABLE + " SET name = ? WHERE id = ?";
        check("propose.update_held", () -> {
            try (PreparedStatement ps = conn.prepareStatement(update)) {
                ps.setString(1, "changed-by-jdbc");
                ps.setInt(2, 1);
                SQLException e = expectSqlState(HELD, ps::executeUpdate);
                info("propose.update_held", e.getMessage());
            }
        });
        check("propose.after_held", () ->
            expectEquals("1", scalar(conn, "SELECT 1"), "SELECT 1 after the held UPDATE"));
        check("propose.comment_update_held", () -> {
            // A write behind a Metabase-style comment is still a write.
            try (Statement st = conn.createStatement()) {
                expectSqlState(HELD, () -> st.executeUpdate(
                    METABASE_PREFIX + "UPDATE " + TABLE + " SET name = 'comment' WHERE id = 2"));
            }
            expectEquals("1", scalar(conn, "SELECT 1"), "SELECT 1 afterwards");
        });
        check("propose.batch_update_held", () -> {
            // A pipelined batch of three UPDATEs: the first Execute is held, the rest of the
            // batch is skipped until Sync, pgjdbc reports the batch as failed with QB001.
            try (PreparedStatement ps = conn.prepareStatement(update)) {
                for (int id = 1; id <= 3; id++) {
                    ps.setString(1, "batch-" + id);
                    ps.setInt(2, id);
                    ps.addBatch();
                }
                try {
                    ps.executeBatch();
                    throw new AssertionError("the batch of UPDATEs succeeded");
                } catch (BatchUpdateException e) {
                    expectEquals(HELD, e.getSQLState(), "SQLState (" + describe(e) + ")");
                }
            }
            expectEquals("1", scalar(conn, "SELECT 1"), "SELECT 1 after the held batch");
        });
        check("propose.tx_update_held", () -> {
            conn.setAutoCommit(false);
            try {
                expectEquals("3", scalar(conn, "SELECT count(*) FROM " + TABLE), "row count");
                try (PreparedStatement ps = conn.prepareStatement(update)) {
                    ps.setString(1, "changed-in-tx");
                    ps.setInt(2, 3);
                    expectSqlState(HELD, ps::executeUpdate);
                }
                // As after any error in PostgreSQL, the transaction is aborted until rollback.
                expectSqlState("25P02", () -> scalar(conn, "SELECT 1"));
                conn.rollback();
                expectEquals("1", scalar(conn, "SELECT 1"), "SELECT 1 after rollback");
                conn.commit();
            } finally {
                conn.setAutoCommit(true);
            }
            expectEquals("1", scalar(conn, "SELECT 1"), "SELECT 1 in autocommit");
        });
    }

    /** Mode read: writes are denied (42501) and the session carries on. */
    void deniedWrites(Connection conn) {
        check("read.delete_denied", () -> {
            try (Statement st = conn.createStatement()) {
                SQLException e = expectSqlState(DENIED,
                    () -> st.executeUpdate("DELETE FROM " + TABLE + " WHERE id = 1"));
                info("read.delete_denied", e.getMessage());
            }
        });
        check("read.delete_denied_prepared", () -> {
            try (PreparedStatement ps = conn.prepareStatement(
                     "DELETE FROM " + TABLE + " WHERE id = ?")) {
                ps.setInt(1, 2);
                expectSqlState(DENIED, ps::executeUpdate);
            }
        });
        check("read.batch_delete_denied", () -> {
            try (PreparedStatement ps = conn.prepareStatement(
                     "DELETE FROM " + TABLE + " WHERE id = ?")) {
                for (int id = 1; id <= 3; id++) {
                    ps.setInt(1, id);
                    ps.addBatch();
                }
                try {
                    ps.executeBatch();
                    throw new AssertionError("the batch of DELETEs succeeded");
                } catch (BatchUpdateException e) {
                    expectEquals(DENIED, e.getSQLState(), "SQLState (" + describe(e) + ")");
                }
            }
        });
        check("read.after_denied", () -> {
            expectEquals("1", scalar(conn, "SELECT 1"), "SELECT 1 after the denied DELETE");
            expectEquals("3", scalar(conn, "SELECT count(*) FROM " + TABLE), "row count");
        });
    }

    /** Metabase's session settings and comment-prefixed SQL (PG-22), on its own connection. */
    void metabase() {
        Connection conn;
        try {
            conn = connect("ApplicationName", "Metabase probe");
        } catch (SQLException e) {
            check("metabase.connect", () -> {
                throw e;
            });
            return;
        }
        try {
            check("metabase.isolation_read_uncommitted", () -> {
                try (Statement st = conn.createStatement()) {
                    st.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ UNCOMMITTED");
                }
                expectEquals("read uncommitted", scalar(conn, "SHOW transaction_isolation"),
                    "transaction_isolation");
                // The JDBC API sends the same statement.
                conn.setTransactionIsolation(Connection.TRANSACTION_SERIALIZABLE);
                expectEquals("serializable", scalar(conn, "SHOW transaction_isolation"),
                    "transaction_isolation after setTransactionIsolation");
                conn.setTransactionIsolation(Connection.TRANSACTION_READ_UNCOMMITTED);
            });
            check("metabase.set_role_none", () -> {
                try (Statement st = conn.createStatement()) {
                    st.execute("SET ROLE NONE");
                }
            });
            check("metabase.comment_prefixed_query", () -> {
                expectEquals("1", scalar(conn, METABASE_PREFIX + "SELECT 1"), "SELECT 1");
                expectEquals("3", scalar(conn, METABASE_PREFIX + "SELECT count(*) FROM " + TABLE),
                    "row count");
            });
        } finally {
            check("metabase.close", conn::close);
        }
    }

    /** DBeaver read-only connection: readOnlyMode=always → SET SESSION CHARACTERISTICS (PG-20/21). */
    void readOnlyAlways() {
        check("read_only.session_characteristics", () -> {
            try (Connection conn = connect("readOnlyMode", "always")) {
                conn.setReadOnly(true);
                expect(conn.isReadOnly(), "isReadOnly() is false");
                expectEquals("on", scalar(conn, "SHOW default_transaction_read_only"),
                    "default_transaction_read_only");
                expectEquals("on", scalar(conn, "SHOW transaction_read_only"),
                    "transaction_read_only");
                expectEquals("3", scalar(conn, "SELECT count(*) FROM " + TABLE), "row count");
            }
        });
    }

    static final String SETTINGS_SQL = "SELECT current_setting('default_transaction_read_only'),"
        + " current_setting('default_transaction_isolation'), current_setting('application_name'),"
        + " current_setting('search_path'), current_setting('statement_timeout'),"
        + " current_setting('lock_timeout'), current_setting('TimeZone'), current_user";

    /** The session settings a probe connection changes, as one line. */
    static String sessionSettings(Connection conn) throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(SETTINGS_SQL)) {
            expect(rs.next(), "no row");
            StringBuilder sb = new StringBuilder();
            int columns = rs.getMetaData().getColumnCount();
            for (int i = 1; i <= columns; i++) {
                sb.append(i > 1 ? " | " : "").append(rs.getString(i));
            }
            return sb.toString();
        }
    }

    /** Session settings of closed connections must not leak into the next one (PG-11, PG-25). */
    void sessionReset() {
        check("session_reset", () -> {
            expect(baseline != null, "no baseline (the first check failed)");
            try (Connection conn = connect()) {
                expectEquals(baseline, sessionSettings(conn), "settings of a fresh connection");
            }
        });
    }
}
