"""MariaDB Connector/J (Debian's 2.7.x) through a real `querybase serve`: what JDBC tools send must work.

`tests/java/MyJdbcProbe.java` is compiled once per session and run as a separate JVM against one
QueryBase (module fixture `gateway`) in front of the session's MariaDB. It replays MySQL
Connector/J's and DBeaver's connection-time SQL and metadata calls (client-compat MY-5..MY-7),
server-side prepared statements (`useServerPrepStmts=true`), batches, autocommit-off
transactions, Statement.cancel() (KILL QUERY on a second connection) and writes that must be held
(errno 9001) or denied (1142), with TLS on and off. Every check prints `OK name` or
`FAIL name: message`; the tests below require every expected `OK` line.

Needs `javac`/`java` and /usr/share/java/mariadb-java-client.jar (Debian: libmariadb-java);
without them the tests skip.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest

from proxy.wire.mysql import protocol as my
from tests.support.localdb import MariaDBServer, log_tail
from tests.support.myfront import ITEMS, SOURCE, Gateway, add_tiny_source, running_gateway, setup_items

pytestmark = pytest.mark.integration

MARIADB_JAR = Path("/usr/share/java/mariadb-java-client.jar")
PROBE_SOURCE = Path(__file__).resolve().parents[1] / "java" / "MyJdbcProbe.java"
PROBE_TIMEOUT = 180.0

COMMON_CHECKS = [
    "connect",
    "cj.session_variables",
    "cj.show_variables",
    "cj.set_names",
    "cj.show_warnings",
    "cj.is_valid",
    "cj.isolation",
    "dbeaver.database",
    "dbeaver.show_databases",
    "dbeaver.server_info",
    "dbeaver.full_tables",
    "dbeaver.information_schema",
    "dbeaver.set_catalog",
    "meta.get_tables",
    "meta.get_columns",
    "meta.get_primary_keys",
    "meta.result_set_metadata",
    "prepared.reads",
    "prepared.types",
    "prepared.many_rows",
    "batch.statement_sets",
    "batch.set_error",
    "tx.selects_commit",
    "cancel.kill_query",
    "close",
    "session_reset",
]
MODE_CHECKS = {
    "propose": [
        "propose.prepared_update_held",
        "propose.statement_delete_held",
        "propose.batch_update_held",
        "propose.tx_update_held",
    ],
    "read": ["read.delete_denied", "read.delete_denied_prepared", "read.after_denied"],
}
# Change requests one propose run creates: the prepared UPDATE, the DELETE, each of the two
# UPDATEs of the batch (every COM_STMT_EXECUTE is its own statement), the UPDATE in the transaction.
HELD_PER_PROPOSE_RUN = 5
HELD_UPDATE = "UPDATE items SET name = ? WHERE id = ?"
TINY = "tiny_my"  # a pool of one upstream connection
QUICK_CHECKS = ["connect", "quick.text_rows", "quick.prepared_rows", "quick.thread", "close"]


@dataclass
class ProbeRun:
    returncode: int
    output: str
    log: str  # what serve logged during the run

    def lines(self, prefix: str) -> list[str]:
        return [line for line in self.output.splitlines() if line.startswith(prefix)]

    def events(self, name: str) -> list[dict[str, Any]]:
        events = [json.loads(line) for line in self.log.splitlines() if line.startswith("{")]
        return [e for e in events if e.get("event") == name]


@pytest.fixture(scope="session")
def probe_classpath(tmp_path_factory: pytest.TempPathFactory) -> str:
    """MyJdbcProbe compiled into a temp dir; the classpath that runs it."""
    javac = shutil.which("javac")
    if javac is None or shutil.which("java") is None:
        pytest.skip("javac/java not installed (Debian: default-jdk-headless)")
    if not MARIADB_JAR.is_file():
        pytest.skip(f"{MARIADB_JAR} missing (Debian: libmariadb-java)")
    out = tmp_path_factory.mktemp("myjdbc-probe")
    argv = [javac, "-encoding", "UTF-8", "-cp", str(MARIADB_JAR), "-d", str(out), str(PROBE_SOURCE)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"javac failed:\n{result.stdout}\n{result.stderr}"
    return f"{out}:{MARIADB_JAR}"


@pytest.fixture(scope="module")
def gateway(mariadb_server: MariaDBServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    setup_items(mariadb_server)
    with running_gateway(mariadb_server, tmp_path_factory.mktemp("qb-myjdbc") / "home") as gw:
        add_tiny_source(gw.config, mariadb_server, TINY)
        yield gw


def jdbc_url(gw: Gateway, tls: bool) -> str:
    tls_params = "useSsl=true&trustServerCertificate=true" if tls else "useSsl=false"
    return f"jdbc:mariadb://{gw.host}:{gw.port}/{SOURCE}?useServerPrepStmts=true&{tls_params}"


def run_probe(classpath: str, gw: Gateway, url: str, user: str, mode: str) -> ProbeRun:
    log_start = len(gw.serve.log)
    result = subprocess.run(
        ["java", "-cp", classpath, "MyJdbcProbe", url, user, gw.passwords[user], mode],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT,
        check=False,
    )
    output = result.stdout + (f"\n--- stderr ---\n{result.stderr}" if result.stderr.strip() else "")
    return ProbeRun(result.returncode, output, gw.serve.log[log_start:])


def assert_probe_passed(run: ProbeRun, mode: str, gw: Gateway) -> None:
    missing = [name for name in COMMON_CHECKS + MODE_CHECKS[mode] if f"OK {name}" not in run.lines("OK ")]
    failed = run.lines("FAIL ")
    if run.returncode != 0 or missing or failed:
        pytest.fail(
            f"MyJdbcProbe ({mode}) exited {run.returncode}; failed: {failed}; missing OK: {missing}\n"
            f"--- probe output ---\n{run.output}\n"
            f"--- serve log (last lines) ---\n{log_tail(gw.serve.log_path, 60)}",
            pytrace=False,
        )


def table_rows(gw: Gateway) -> list[list[str]]:
    return gw.rows("SELECT id, name FROM items ORDER BY id")


EXPECTED_ROWS = [[str(i), name] for i, name in ITEMS]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_connector_j_propose_user(probe_classpath: str, gateway: Gateway, tls: bool) -> None:
    before = gateway.last_request_id()
    run = run_probe(probe_classpath, gateway, jdbc_url(gateway, tls), "alice", "propose")
    assert_probe_passed(run, "propose", gateway)

    connected = run.events("connected")
    assert connected, run.log
    assert {(e["user"], e["tls"]) for e in connected} == {("alice", tls)}
    # The held writes never reached the table; each is one pending change request, and the
    # numbers the probe saw in the error messages are those requests.
    assert table_rows(gateway) == EXPECTED_ROWS
    held = gateway.new_requests(before)
    assert len(held) == HELD_PER_PROPOSE_RUN, held
    assert {r["status"] for r in held} == {"pending"}
    seen = {int(line.split()[1]) for line in run.lines("HELD ")}
    assert seen <= {r["id"] for r in held}
    assert len(seen) == 3  # the prepared UPDATE, the DELETE, the UPDATE in the transaction
    first = held[0]
    assert first["statement_text"] == HELD_UPDATE
    assert first["session_facts"]["tls"] is tls
    name, key = first["parameters"]
    values = [
        my.decode_binary_value(my.ColumnType(p["type"]), p["unsigned"], base64.b64decode(p["value_b64"]))
        for p in (name, key)
    ]
    assert values == [b"changed-by-jdbc", 1]
    batch = [r for r in held if r["statement_text"] == HELD_UPDATE][1:3]
    assert [base64.b64decode(r["parameters"][0]["value_b64"])[1:] for r in batch] == [b"batch-3", b"batch-4"]


def test_connector_j_read_user(probe_classpath: str, gateway: Gateway) -> None:
    before = gateway.last_request_id()
    run = run_probe(probe_classpath, gateway, jdbc_url(gateway, False), "carol", "read")
    assert_probe_passed(run, "read", gateway)
    assert table_rows(gateway) == EXPECTED_ROWS
    assert gateway.new_requests(before) == []
    denied = run.events("statement_denied")
    # The plain DELETE, the prepared one refused at COM_STMT_PREPARE, and that DELETE again as
    # text: C/J falls back to a client-side prepared statement when the server-side prepare fails.
    assert len(denied) == 3, run.log
    assert {e["user"] for e in denied} == {"carol"}


def test_connector_j_and_pymysql_share_a_pool(probe_classpath: str, gateway: Gateway) -> None:
    """C/J negotiates CLIENT_DEPRECATE_EOF, PyMySQL does not; on a pool of one connection they
    take turns, and each reads its rows (C/J fails on an EOF it did not ask for, PyMySQL on a
    0xFE OK). The upstream connection is not shared between the two kinds (keyed pool)."""

    def pymysql_thread() -> int:
        conn = pymysql.connect(**gateway.connect_args("carol", TINY), ssl_disabled=True)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT id, name FROM items ORDER BY id")
            assert list(cur.fetchall()) == ITEMS
            cur.execute("SELECT CONNECTION_ID()")
            return int(cur.fetchall()[0][0])

    url = f"jdbc:mariadb://{gateway.host}:{gateway.port}/{TINY}?useServerPrepStmts=true&useSsl=false"
    first = pymysql_thread()
    threads = []
    for _ in range(2):
        run = run_probe(probe_classpath, gateway, url, "carol", "quick")
        missing = [c for c in QUICK_CHECKS if f"OK {c}" not in run.lines("OK ")]
        assert run.returncode == 0, run.output
        assert not missing, run.output
        threads.append(int(run.lines("THREAD ")[0].split()[1]))
    assert threads[0] == threads[1]  # C/J after C/J: the pooled connection is reused
    assert first not in threads
    assert pymysql_thread() not in threads
