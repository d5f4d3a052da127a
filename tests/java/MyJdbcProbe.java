// A MariaDB Connector/J (Debian's 2.7.x) client run against QueryBase's MySQL port by
// tests/integration/test_mysql_jdbc.py.
//
// It replays what JDBC tools send at connection time (client-compat.md MY-5, MY-6, MY-7): MySQL
// Connector/J's session-variable query and SET NAMES / SET character_set_results / SET autocommit,
// DBeaver's SHOW ENGINES/CHARSET/COLLATION/PLUGINS, SHOW DATABASES, SHOW VARIABLES LIKE and
// information_schema metadata (DatabaseMetaData getTables/getColumns/getPrimaryKeys), then
// server-side prepared statements (useServerPrepStmts=true), batches, transactions with
// autocommit off, Statement.cancel() (KILL QUERY from a second connection), and writes that
// QueryBase must hold (errno 9001, the change request's number in the message) or deny (1142).
//
// Usage: java -cp OUTDIR:/usr/share/java/mariadb-java-client.jar MyJdbcProbe URL USER PASSWORD MODE
//   MODE is `propose` (writes held, errno 9001), `read` (writes denied, errno 1142) or `quick`
//   (a text and a prepared multi-row read, then `THREAD n` with the upstream's CONNECTION_ID()).
//   The database must hold items(id int primary key, name varchar(50)) with rows 1..5.
//
// Output: one line per check, `OK name` or `FAIL name: message`, `INFO name: ...` for details
// that are not checked, `HELD n` for every change request number seen, then
// `DONE checks=N failures=F`. Exit status 0 only if nothing failed, 1 if a check failed, 2 for a
// usage error.

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
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public final class MyJdbcProbe {
    static final String TABLE = "items";
    static final int HELD = 9001;
    static final int DENIED = 1142;
    static final Pattern REQUEST = Pattern.compile("change request #(\\d+)");
    // What MySQL Connector/J 5.1/8.0 sends for a server reporting 5.5.5-…-MariaDB (MY-6).
    static final String CJ_VARIABLES = "/* mysql-connector-java-8.0.33 (Revision: 7d6b0800528b6b25c68b52dc10d6c1c8429c100c) */"
        + "SELECT  @@session.auto_increment_increment AS auto_increment_increment,"
        + " @@character_set_client AS character_set_client,"
        + " @@character_set_connection AS character_set_connection,"
        + " @@character_set_results AS character_set_results,"
        + " @@character_set_server AS character_set_server, @@collation_server AS collation_server,"
        + " @@collation_connection AS collation_connection, @@init_connect AS init_connect,"
        + " @@interactive_timeout AS interactive_timeout, @@license AS license,"
        + " @@lower_case_table_names AS lower_case_table_names,"
        + " @@max_allowed_packet AS max_allowed_packet, @@net_buffer_length AS net_buffer_length,"
        + " @@net_write_timeout AS net_write_timeout, @@performance_schema AS performance_schema,"
        + " @@query_cache_size AS query_cache_size, @@query_cache_type AS query_cache_type,"
        + " @@sql_mode AS sql_mode, @@system_time_zone AS system_time_zone,"
        + " @@time_zone AS time_zone, @@tx_isolation AS transaction_isolation,"
        + " @@wait_timeout AS wait_timeout";

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

    private MyJdbcProbe(String url, String user, String password, String mode) {
        this.url = url;
        this.user = user;
        this.password = password;
        this.mode = mode;
    }

    public static void main(String[] args) {
        if (args.length != 4 || !List.of("propose", "read", "quick").contains(args[3])) {
            System.err.println("usage: MyJdbcProbe URL USER PASSWORD propose|read|quick");
            System.exit(2);
        }
        MyJdbcProbe probe = new MyJdbcProbe(args[0], args[1], args[2], args[3]);
        probe.runAll();
        System.out.println("DONE checks=" + probe.checks + " failures=" + probe.failures);
        System.out.flush();
        System.exit(probe.failures == 0 ? 0 : 1);
    }

    // ------------------------------------------------------------------------------ helpers

    Connection connect() throws SQLException {
        Properties props = new Properties();
        props.setProperty("user", user);
        props.setProperty("password", password);
        // Never hang the test: a stuck exchange becomes a FAIL with a timeout message.
        props.setProperty("connectTimeout", "15000");
        props.setProperty("socketTimeout", "30000");
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
            SQLException e = (SQLException) t;
            sb.append(" [errno ").append(e.getErrorCode()).append(" SQLState ")
                .append(e.getSQLState()).append(']');
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

    /** Run `body`, which must fail with an SQLException carrying MySQL errno `errno`. */
    static SQLException expectErrno(int errno, Check body) throws Exception {
        try {
            body.run();
        } catch (SQLException e) {
            if (e.getErrorCode() != errno) {
                throw new AssertionError("expected errno " + errno + " but got " + describe(e), e);
            }
            return e;
        }
        throw new AssertionError("expected errno " + errno + " but the statement succeeded");
    }

    /** A held write: errno 9001, SQLState HY000, the change request's number in the message. */
    static void expectHeld(Check body) throws Exception {
        SQLException e = expectErrno(HELD, body);
        expectEquals("HY000", e.getSQLState(), "SQLState of the held write");
        Matcher m = REQUEST.matcher(e.getMessage());
        expect(m.find(), "no change request number in: " + e.getMessage());
        System.out.println("HELD " + m.group(1));
    }

    static String scalar(Connection conn, String sql) throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            expect(rs.next(), "no row from: " + sql);
            String value = rs.getString(1);
            expect(!rs.next(), "more than one row from: " + sql);
            return value;
        }
    }

    static List<String> column(Connection conn, String sql, int index) throws SQLException {
        List<String> out = new ArrayList<>();
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            while (rs.next()) {
                out.add(rs.getString(index));
            }
        }
        return out;
    }

    String rowCount(Connection conn) throws SQLException {
        return scalar(conn, "SELECT count(*) FROM " + TABLE);
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
        if (mode.equals("quick")) {
            quick(conn);
            check("close", conn::close);
            return;
        }
        try {
            connectorJ(conn);
            dbeaver(conn);
            metadata(conn);
            prepared(conn);
            batches(conn);
            transactions(conn);
            if (mode.equals("propose")) {
                proposeWrites(conn);
            } else {
                deniedWrites(conn);
            }
            cancel(conn);
        } finally {
            check("close", conn::close);
        }
        sessionReset();
    }

    /** Multi-row reads, text and binary, whose terminators must be what C/J negotiated. */
    void quick(Connection conn) {
        check("quick.text_rows", () -> {
            List<String> names = column(conn, "SELECT name FROM " + TABLE + " ORDER BY id", 1);
            expectEquals(List.of("apple", "banana", "cherry", "date", "elderberry"), names, "names");
        });
        check("quick.prepared_rows", () -> {
            try (PreparedStatement ps = conn.prepareStatement(
                     "SELECT id FROM " + TABLE + " WHERE id > ? ORDER BY id")) {
                ps.setInt(1, 2);
                List<Integer> ids = new ArrayList<>();
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        ids.add(rs.getInt(1));
                    }
                }
                expectEquals(List.of(3, 4, 5), ids, "ids");
            }
        });
        check("quick.thread", () ->
            System.out.println("THREAD " + scalar(conn, "SELECT CONNECTION_ID()")));
    }

    /** MySQL Connector/J's connection-time statements (MY-6), replayed as text. */
    void connectorJ(Connection conn) {
        check("cj.session_variables", () -> {
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(CJ_VARIABLES)) {
                expect(rs.next(), "no row");
                expectEquals("1", rs.getString("auto_increment_increment"), "auto_increment_increment");
                expect(rs.getLong("max_allowed_packet") > 0, "max_allowed_packet");
                expect(rs.getString("transaction_isolation") != null, "tx_isolation is null");
                expect(!rs.next(), "more than one row");
            }
        });
        check("cj.show_variables", () -> {
            int rows = 0;
            boolean sawVersion = false;
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("SHOW VARIABLES")) {
                while (rs.next()) {
                    rows++;
                    sawVersion |= "version".equals(rs.getString(1));
                }
            }
            expect(rows > 100, "SHOW VARIABLES returned " + rows + " rows");
            expect(sawVersion, "no version in SHOW VARIABLES");
        });
        check("cj.set_names", () -> {
            try (Statement st = conn.createStatement()) {
                st.execute("SET NAMES utf8mb4 COLLATE utf8mb4_general_ci");
                st.execute("SET character_set_results = NULL");
                st.execute("SET autocommit=1");
            }
            expectEquals("utf8mb4", scalar(conn, "SELECT @@character_set_client"), "client charset");
            expectEquals(null, scalar(conn, "SELECT @@character_set_results"), "results charset");
            expectEquals("1", scalar(conn, "SELECT @@autocommit"), "autocommit");
            try (Statement st = conn.createStatement()) {
                st.execute("SET character_set_results = utf8mb4");
            }
        });
        check("cj.show_warnings", () -> {
            expectEquals(null, scalar(conn, "SELECT 1/0"), "1/0");
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("SHOW WARNINGS")) {
                expect(rs.next(), "no warning after 1/0");
                expectEquals(1365, rs.getInt("Code"), "warning code");
            }
        });
        check("cj.is_valid", () -> expect(conn.isValid(5), "isValid() is false (COM_PING)"));
        check("cj.isolation", () -> {
            conn.setTransactionIsolation(Connection.TRANSACTION_READ_COMMITTED);
            expectEquals("READ-COMMITTED", scalar(conn, "SELECT @@tx_isolation"), "tx_isolation");
            conn.setTransactionIsolation(Connection.TRANSACTION_REPEATABLE_READ);
            expectEquals(Connection.TRANSACTION_REPEATABLE_READ, conn.getTransactionIsolation(),
                "getTransactionIsolation");
        });
    }

    /** DBeaver's MySQL connection-time queries (MY-7). */
    void dbeaver(Connection conn) {
        check("dbeaver.database", () -> {
            expectEquals("qbtest", scalar(conn, "SELECT DATABASE()"), "DATABASE()");
            expectEquals("qbtest", conn.getCatalog(), "getCatalog()");
        });
        check("dbeaver.show_databases", () -> {
            List<String> names = column(conn, "SHOW DATABASES", 1);
            expect(names.contains("qbtest"), "qbtest not in SHOW DATABASES: " + names);
            expect(names.contains("information_schema"), "no information_schema: " + names);
        });
        check("dbeaver.server_info", () -> {
            expect(!column(conn, "SHOW ENGINES", 1).isEmpty(), "SHOW ENGINES is empty");
            expect(column(conn, "SHOW CHARSET", 1).contains("utf8mb4"), "SHOW CHARSET lacks utf8mb4");
            expect(column(conn, "SHOW COLLATION", 1).contains("utf8mb4_general_ci"),
                "SHOW COLLATION lacks utf8mb4_general_ci");
            expect(!column(conn, "SHOW PLUGINS", 1).isEmpty(), "SHOW PLUGINS is empty");
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery(
                     "SELECT @@GLOBAL.character_set_server,@@GLOBAL.collation_server")) {
                expect(rs.next(), "no row");
                expect(rs.getString(1) != null && rs.getString(2) != null, "null charset");
            }
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("SHOW VARIABLES LIKE 'lower_case_table_names'")) {
                expect(rs.next(), "no lower_case_table_names");
                expectEquals("lower_case_table_names", rs.getString(1), "variable name");
            }
        });
        check("dbeaver.full_tables", () -> {
            List<String> tables = column(conn, "SHOW FULL TABLES FROM `qbtest`", 1);
            expect(tables.contains(TABLE), TABLE + " not in SHOW FULL TABLES: " + tables);
        });
        check("dbeaver.information_schema", () -> {
            String sql = "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS"
                + " WHERE TABLE_SCHEMA=? AND TABLE_NAME=? ORDER BY ORDINAL_POSITION";
            List<String> columns = new ArrayList<>();
            try (PreparedStatement ps = conn.prepareStatement(sql)) {
                ps.setString(1, "qbtest");
                ps.setString(2, TABLE);
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        columns.add(rs.getString(1) + ":" + rs.getString(2));
                    }
                }
            }
            expectEquals(List.of("id:int", "name:varchar"), columns, "columns");
        });
        check("dbeaver.set_catalog", () -> {
            conn.setCatalog("qbtest"); // COM_INIT_DB
            expectEquals("qbtest", scalar(conn, "SELECT DATABASE()"), "DATABASE()");
            expectEquals("5", rowCount(conn), "row count");
        });
    }

    /** DatabaseMetaData, as DBeaver's navigator uses it (information_schema queries). */
    void metadata(Connection conn) {
        check("meta.get_tables", () -> {
            DatabaseMetaData md = conn.getMetaData();
            List<String> names = new ArrayList<>();
            try (ResultSet rs = md.getTables("qbtest", null, "%", new String[] {"TABLE"})) {
                while (rs.next()) {
                    names.add(rs.getString("TABLE_NAME"));
                }
            }
            expect(names.contains(TABLE), TABLE + " not in getTables: " + names);
            info("meta.product", md.getDatabaseProductName() + " " + md.getDatabaseProductVersion());
        });
        check("meta.get_columns", () -> {
            List<String> columns = new ArrayList<>();
            try (ResultSet rs = conn.getMetaData().getColumns("qbtest", null, TABLE, "%")) {
                while (rs.next()) {
                    columns.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME"));
                }
            }
            expectEquals(List.of("id:INT", "name:VARCHAR"), columns, "columns");
        });
        check("meta.get_primary_keys", () -> {
            List<String> keys = new ArrayList<>();
            try (ResultSet rs = conn.getMetaData().getPrimaryKeys("qbtest", null, TABLE)) {
                while (rs.next()) {
                    keys.add(rs.getString("COLUMN_NAME"));
                }
            }
            expectEquals(List.of("id"), keys, "primary key columns");
        });
        check("meta.result_set_metadata", () -> {
            // COM_STMT_PREPARE alone: the prepare response describes the columns and parameters.
            try (PreparedStatement ps = conn.prepareStatement(
                     "SELECT id, name FROM " + TABLE + " WHERE id = ?")) {
                java.sql.ResultSetMetaData md = ps.getMetaData();
                expectEquals(2, md.getColumnCount(), "column count");
                expectEquals("id", md.getColumnName(1), "column 1");
                expectEquals(Types.INTEGER, md.getColumnType(1), "column 1 type");
                expectEquals(1, ps.getParameterMetaData().getParameterCount(), "parameters");
            }
        });
    }

    /** Server-side prepared statements (useServerPrepStmts=true): binary protocol (MY-11). */
    void prepared(Connection conn) {
        check("prepared.reads", () -> {
            try (PreparedStatement ps = conn.prepareStatement(
                     "SELECT name FROM " + TABLE + " WHERE id = ?")) {
                String[] expected = {"apple", "banana", "cherry", "date", "elderberry"};
                for (int i = 1; i <= 5; i++) {
                    ps.setInt(1, i);
                    try (ResultSet rs = ps.executeQuery()) {
                        expect(rs.next(), "no row for id " + i);
                        expectEquals(expected[i - 1], rs.getString(1), "name of id " + i);
                        expect(!rs.next(), "extra row for id " + i);
                    }
                }
            }
        });
        check("prepared.types", () -> {
            String sql = "SELECT ?, ? + 1, ?, ?, ? IS NULL";
            Timestamp ts = Timestamp.valueOf("2024-02-29 12:34:56.789");
            try (PreparedStatement ps = conn.prepareStatement(sql)) {
                for (int i = 0; i < 4; i++) {
                    ps.setString(1, "ünï-" + i);
                    ps.setLong(2, 9_000_000_000L + i);
                    ps.setBigDecimal(3, new java.math.BigDecimal("12345.6789"));
                    ps.setTimestamp(4, ts);
                    ps.setNull(5, Types.INTEGER);
                    try (ResultSet rs = ps.executeQuery()) {
                        expect(rs.next(), "no row");
                        expectEquals("ünï-" + i, rs.getString(1), "text");
                        expectEquals(9_000_000_001L + i, rs.getLong(2), "bigint");
                        expectEquals(0, new java.math.BigDecimal("12345.6789")
                            .compareTo(rs.getBigDecimal(3)), "decimal " + rs.getBigDecimal(3));
                        expectEquals(ts, rs.getTimestamp(4), "timestamp");
                        expectEquals(1, rs.getInt(5), "IS NULL");
                    }
                }
            }
        });
        check("prepared.many_rows", () -> {
            try (PreparedStatement ps = conn.prepareStatement(
                     "SELECT seq, repeat(?, seq % 7) FROM seq_1_to_2000")) {
                ps.setString(1, "x");
                int rows = 0;
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        rows++;
                        expectEquals(rows, rs.getInt(1), "seq");
                    }
                }
                expectEquals(2000, rows, "rows");
            }
        });
    }

    /** Batches: statement batches and prepared batches (MY-5: C/J pipelines them). */
    void batches(Connection conn) {
        check("batch.statement_sets", () -> {
            try (Statement st = conn.createStatement()) {
                st.addBatch("SET @qb_a = 1");
                st.addBatch("SET @qb_b = 'two'");
                st.addBatch("SET SESSION wait_timeout = 2345");
                int[] counts = st.executeBatch();
                expectEquals(3, counts.length, "batch results");
            }
            expectEquals("1two", scalar(conn, "SELECT concat(@qb_a, @qb_b)"), "user variables");
            expectEquals("2345", scalar(conn, "SELECT @@session.wait_timeout"), "wait_timeout");
        });
        check("batch.set_error", () -> {
            try (Statement st = conn.createStatement()) {
                st.addBatch("SET @qb_c = 3");
                st.addBatch("SET SESSION no_such_variable_at_all = 1");
                st.addBatch("SET @qb_d = 4");
                try {
                    st.executeBatch();
                    throw new AssertionError("the batch with an unknown variable succeeded");
                } catch (BatchUpdateException e) {
                    expectEquals(1193, e.getErrorCode(), "errno (" + describe(e) + ")");
                }
            }
            expectEquals("1", scalar(conn, "SELECT 1"), "SELECT 1 after the failed batch");
        });
    }

    /** Autocommit off (MY-9): SET autocommit=0, reads, COMMIT / ROLLBACK. */
    void transactions(Connection conn) {
        check("tx.selects_commit", () -> {
            conn.setAutoCommit(false);
            try {
                expectEquals("0", scalar(conn, "SELECT @@autocommit"), "autocommit");
                expectEquals("5", rowCount(conn), "row count");
                try (PreparedStatement ps = conn.prepareStatement(
                         "SELECT name FROM " + TABLE + " WHERE id = ?")) {
                    ps.setInt(1, 2);
                    try (ResultSet rs = ps.executeQuery()) {
                        expect(rs.next(), "no row for id 2");
                    }
                }
                conn.commit();
                conn.rollback();
            } finally {
                conn.setAutoCommit(true);
            }
            expectEquals("1", scalar(conn, "SELECT @@autocommit"), "autocommit after");
        });
    }

    /** Mode propose: writes are held for approval (9001) and the session carries on. */
    void proposeWrites(Connection conn) {
        String update = "UPDATE " + TABLE + " SET name = ? WHERE id = ?";
        check("propose.prepared_update_held", () -> {
            try (PreparedStatement ps = conn.prepareStatement(update)) {
                ps.setString(1, "changed-by-jdbc");
                ps.setInt(2, 1);
                expectHeld(ps::executeUpdate);
            }
            expectEquals("5", rowCount(conn), "row count after the held UPDATE");
        });
        check("propose.statement_delete_held", () -> {
            try (Statement st = conn.createStatement()) {
                expectHeld(() -> st.executeUpdate("DELETE FROM " + TABLE + " WHERE id = 2"));
            }
            expectEquals("1", scalar(conn, "SELECT 1"), "SELECT 1 afterwards");
        });
        check("propose.batch_update_held", () -> {
            // Each COM_STMT_EXECUTE of the batch is its own statement: each is held.
            try (PreparedStatement ps = conn.prepareStatement(update)) {
                for (int id = 3; id <= 4; id++) {
                    ps.setString(1, "batch-" + id);
                    ps.setInt(2, id);
                    ps.addBatch();
                }
                try {
                    ps.executeBatch();
                    throw new AssertionError("the batch of UPDATEs succeeded");
                } catch (BatchUpdateException e) {
                    expectEquals(HELD, e.getErrorCode(), "errno (" + describe(e) + ")");
                    Matcher m = REQUEST.matcher(e.getMessage());
                    expect(m.find(), "no change request number in " + e.getMessage());
                }
            }
            expectEquals("1", scalar(conn, "SELECT 1"), "SELECT 1 after the held batch");
        });
        check("propose.tx_update_held", () -> {
            conn.setAutoCommit(false);
            try {
                expectEquals("5", rowCount(conn), "row count");
                try (PreparedStatement ps = conn.prepareStatement(update)) {
                    ps.setString(1, "changed-in-tx");
                    ps.setInt(2, 5);
                    expectHeld(ps::executeUpdate);
                }
                // Unlike PostgreSQL, an error does not abort a MySQL transaction.
                expectEquals("1", scalar(conn, "SELECT 1"), "SELECT 1 in the transaction");
                conn.rollback();
            } finally {
                conn.setAutoCommit(true);
            }
        });
    }

    /** Mode read: writes are denied (1142) and the session carries on. */
    void deniedWrites(Connection conn) {
        check("read.delete_denied", () -> {
            try (Statement st = conn.createStatement()) {
                SQLException e = expectErrno(DENIED,
                    () -> st.executeUpdate("DELETE FROM " + TABLE + " WHERE id = 1"));
                info("read.delete_denied", e.getMessage());
            }
        });
        check("read.delete_denied_prepared", () -> {
            try (PreparedStatement ps = conn.prepareStatement(
                     "DELETE FROM " + TABLE + " WHERE id = ?")) {
                ps.setInt(1, 2);
                expectErrno(DENIED, ps::executeUpdate);
            } catch (SQLException e) {
                // Denied at COM_STMT_PREPARE already: that is a denial too.
                expectEquals(DENIED, e.getErrorCode(), "errno (" + describe(e) + ")");
            }
        });
        check("read.after_denied", () -> {
            expectEquals("1", scalar(conn, "SELECT 1"), "SELECT 1 after the denied DELETE");
            expectEquals("5", rowCount(conn), "row count");
        });
    }

    /** Statement.cancel(): C/J opens a second connection and sends KILL QUERY <connection id>. */
    void cancel(Connection conn) {
        check("cancel.kill_query", () -> {
            try (Statement st = conn.createStatement()) {
                long start = System.nanoTime();
                Thread killer = new Thread(() -> {
                    try {
                        Thread.sleep(1000);
                        st.cancel();
                    } catch (Exception e) {
                        System.out.println("INFO cancel.kill_query: cancel() threw " + describe(e));
                    }
                });
                killer.start();
                try (ResultSet rs = st.executeQuery("SELECT SLEEP(30)")) {
                    // MariaDB ends an interrupted SLEEP() with 1 rather than an error.
                    expect(rs.next(), "no row");
                    expectEquals(1, rs.getInt(1), "SLEEP() result");
                } catch (SQLException e) {
                    info("cancel.kill_query", describe(e));
                }
                killer.join();
                double seconds = (System.nanoTime() - start) / 1e9;
                expect(seconds < 15, "SLEEP(30) ran " + seconds + " s despite cancel()");
            }
            expectEquals("1", scalar(conn, "SELECT 1"), "SELECT 1 after the cancel");
        });
    }

    /** Session settings of closed connections must not leak into the next one (MY-14). */
    void sessionReset() {
        check("session_reset", () -> {
            try (Connection conn = connect()) {
                expect(!"2345".equals(scalar(conn, "SELECT @@session.wait_timeout")),
                    "wait_timeout leaked from a closed connection");
                expectEquals(null, scalar(conn, "SELECT @qb_a"), "@qb_a leaked");
                expectEquals("5", rowCount(conn), "row count");
            }
        });
    }
}
