"""pgjdbc (Debian's 42.5.x) through a real `querybase serve`: what JDBC tools send must just work.

`tests/java/PgJdbcProbe.java` is compiled once per session and run as a separate JVM against one
QueryBase (module fixture `gateway`) in front of the session's PostgreSQL. It replays DBeaver's
and Metabase's connection-time SQL and metadata calls (client-compat PG-20..22), pgjdbc's named
statements after five uses, batches, autocommit-off transactions and fetchSize portals (PG-14),
and writes that must be held (QB001) or denied (42501). Every check prints `OK name` or
`FAIL name: message`; the tests below require every expected `OK` line.

Needs `javac`/`java` (Debian: default-jdk-headless) and /usr/share/java/postgresql.jar
(libpostgresql-jdbc-java); without them the tests skip.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.localdb import PG_PASSWORDS, PostgresCluster, log_tail
from tests.support.querybase import ServeProcess, init_home, run_cli_in_process, start_serve

pytestmark = pytest.mark.integration

PGJDBC_JAR = Path("/usr/share/java/postgresql.jar")
PROBE_SOURCE = Path(__file__).resolve().parents[1] / "java" / "PgJdbcProbe.java"
PROBE_TIMEOUT = 180.0

SOURCE = "shop"
TABLE = "jdbc_items"
ROWS = "1|alpha\n2|beta\n3|gamma"
TABLE_SQL = f"""
DROP TABLE IF EXISTS {TABLE};
CREATE TABLE {TABLE} (id int PRIMARY KEY, name text);
INSERT INTO {TABLE} VALUES (1, 'alpha'), (2, 'beta'), (3, 'gamma');
GRANT SELECT ON {TABLE} TO qb_reader;
GRANT ALL ON {TABLE} TO qb_scram;
"""

# QueryBase user → (group, level on shop)
USERS = {"jdbc_proposer": ("jdbc_proposers", "propose"), "jdbc_reader": ("jdbc_readers", "read")}
PASSWORDS = {name: f"{name}-Pw-42-secret" for name in USERS}

COMMON_CHECKS = [
    "connect",
    "session_baseline",
    "dbeaver.current_database",
    "dbeaver.pg_database",
    "dbeaver.version",
    "dbeaver.current_schema",
    "dbeaver.show_search_path",
    "dbeaver.set_search_path",
    "meta.get_tables",
    "meta.get_columns",
    "meta.get_primary_keys",
    "meta.result_set_metadata",
    "client_info.application_name",
    "prepared.threshold",
    "prepared.server_statement_visible",
    "prepared.types",
    "batch.prepared_reads",
    "batch.read_error",
    "batch.statement_sets",
    "batch.set_error",
    "tx.selects_commit",
    "tx.fetch_size",
    "tx.fetch_size_prepared",
    "tx.read_only_transaction",
    "tx.rollback",
    "close",
    "metabase.isolation_read_uncommitted",
    "metabase.set_role_none",
    "metabase.comment_prefixed_query",
    "metabase.close",
    "read_only.session_characteristics",
    "session_reset",
]
MODE_CHECKS = {
    "propose": [
        "propose.update_held",
        "propose.after_held",
        "propose.comment_update_held",
        "propose.batch_update_held",
        "propose.tx_update_held",
    ],
    "read": [
        "read.delete_denied",
        "read.delete_denied_prepared",
        "read.batch_delete_denied",
        "read.after_denied",
    ],
}
# Change requests one propose run creates: UPDATE, the comment-prefixed UPDATE, the first
# UPDATE of the batch (the rest of the batch is skipped), the UPDATE inside a transaction.
HELD_PER_PROPOSE_RUN = 4
HELD_UPDATE = f"UPDATE {TABLE} SET name = $1 WHERE id = $2"


@dataclass
class Gateway:
    config: Path
    serve: ServeProcess
    pg: PostgresCluster
    port: int

    def url(self, **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"jdbc:postgresql://127.0.0.1:{self.port}/{SOURCE}" + (f"?{query}" if query else "")

    def table_rows(self) -> str:
        return self.pg.execute_sql(f"SELECT id, name FROM {TABLE} ORDER BY id").strip()

    def change_requests(self, after: int = 0) -> list[dict[str, Any]]:
        with contextlib.closing(sqlite3.connect(self.config.parent / "querybase.db")) as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "SELECT id, status, statement_text, parameters, session_facts FROM change_requests"
                " WHERE id > ? ORDER BY id",
                (after,),
            ).fetchall()
        out = []
        for row in rows:
            record = dict(row)
            for key in ("parameters", "session_facts"):
                record[key] = json.loads(record[key]) if record[key] is not None else None
            out.append(record)
        return out

    def last_request_id(self) -> int:
        requests = self.change_requests()
        return requests[-1]["id"] if requests else 0


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


def _listen_port(config: Path) -> int:
    section = config.read_text(encoding="utf-8").split("[postgres]", 1)[1]
    return int(section.split('listen = "', 1)[1].split('"', 1)[0].rpartition(":")[2])


def _cli(config: Path, *args: str, env: dict[str, str] | None = None) -> None:
    result = run_cli_in_process(config, *args, env=env)
    assert result.returncode == 0, f"querybase {' '.join(args)} failed: {result.stderr}"


@pytest.fixture(scope="session")
def probe_classpath(tmp_path_factory: pytest.TempPathFactory) -> str:
    """PgJdbcProbe compiled into a temp dir; the classpath that runs it."""
    javac = shutil.which("javac")
    if javac is None or shutil.which("java") is None:
        pytest.skip("javac/java not installed (Debian: default-jdk-headless)")
    if not PGJDBC_JAR.is_file():
        pytest.skip(f"{PGJDBC_JAR} missing (Debian: libpostgresql-jdbc-java)")
    out = tmp_path_factory.mktemp("pgjdbc-probe")
    argv = [javac, "-encoding", "UTF-8", "-cp", str(PGJDBC_JAR), "-d", str(out), str(PROBE_SOURCE)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"javac failed:\n{result.stdout}\n{result.stderr}"
    return f"{out}:{PGJDBC_JAR}"


@pytest.fixture(scope="module")
def gateway(pg_server: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """QueryBase (TLS allowed, self-signed certificate) with source shop and the USERS."""
    pg_server.execute_sql(TABLE_SQL)
    config = init_home(tmp_path_factory.mktemp("qb-jdbc"))
    env = {
        "READ_PW": PG_PASSWORDS["qb_reader"],
        "WRITE_PW": PG_PASSWORDS["qb_scram"],
        **{f"PW_{name.upper()}": pw for name, pw in PASSWORDS.items()},
    }
    _cli(
        config,
        *("source", "add", SOURCE, "--engine", "postgresql"),
        *("--host", pg_server.host, "--port", str(pg_server.port), "--database", "qbtest"),
        *("--user", "qb_reader", "--password-env", "READ_PW"),
        *("--write-user", "qb_scram", "--write-password-env", "WRITE_PW", "--tls", "disable"),
        env=env,
    )
    for user, (group, level) in USERS.items():
        _cli(config, "user", "add", user, "--password-env", f"PW_{user.upper()}", env=env)
        _cli(config, "group", "add", group)
        _cli(config, "group", "member", "add", group, user)
        _cli(config, "grant", group, SOURCE, level)
    serve = start_serve(config)
    try:
        yield Gateway(config, serve, pg_server, _listen_port(config))
    finally:
        if serve.stop() != 0:
            serve.kill()


def run_probe(classpath: str, gw: Gateway, url: str, user: str, mode: str) -> ProbeRun:
    log_start = len(gw.serve.log)
    result = subprocess.run(
        ["java", "-cp", classpath, "PgJdbcProbe", url, user, PASSWORDS[user], mode],
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
            f"PgJdbcProbe ({mode}) exited {run.returncode}; failed: {failed}; missing OK: {missing}\n"
            f"--- probe output ---\n{run.output}\n"
            f"--- serve log (last lines) ---\n{log_tail(gw.serve.log_path, 60)}",
            pytrace=False,
        )


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_pgjdbc_propose_user(probe_classpath: str, gateway: Gateway, tls: bool) -> None:
    params = {"sslmode": "require", "ssl": "true"} if tls else {"sslmode": "disable"}
    before = gateway.last_request_id()
    run = run_probe(probe_classpath, gateway, gateway.url(**params), "jdbc_proposer", "propose")
    assert_probe_passed(run, "propose", gateway)

    connected = run.events("connected")
    assert connected, run.log
    assert {(e["user"], e["tls"]) for e in connected} == {("jdbc_proposer", tls)}
    # The held writes never reached the table; each is one pending change request.
    assert gateway.table_rows() == ROWS
    held = gateway.change_requests(after=before)
    assert len(held) == HELD_PER_PROPOSE_RUN, held
    assert {r["status"] for r in held} == {"pending"}
    first = held[0]
    assert first["statement_text"] == HELD_UPDATE
    assert first["session_facts"]["tls"] is tls
    name, key = first["parameters"]
    assert (name["format"], base64.b64decode(name["value_b64"])) == (0, b"changed-by-jdbc")
    assert key["type_oid"] == 23  # int4; pgjdbc sends it in binary
    assert int.from_bytes(base64.b64decode(key["value_b64"]), "big", signed=True) == 1


def test_pgjdbc_read_user(probe_classpath: str, gateway: Gateway) -> None:
    before = gateway.last_request_id()
    run = run_probe(probe_classpath, gateway, gateway.url(), "jdbc_reader", "read")
    assert_probe_passed(run, "read", gateway)
    assert gateway.table_rows() == ROWS
    assert gateway.change_requests(after=before) == []
    denied = run.events("statement_denied")
    assert len(denied) == 3, run.log  # plain DELETE, prepared DELETE, first DELETE of the batch
    assert {e["user"] for e in denied} == {"jdbc_reader"}


def test_held_write_records_the_application_name_the_client_set(
    probe_classpath: str, gateway: Gateway
) -> None:
    before = gateway.last_request_id()
    run = run_probe(probe_classpath, gateway, gateway.url(), "jdbc_proposer", "propose")
    assert run.returncode == 0, run.output
    held = gateway.change_requests(after=before)
    assert held, run.output
    # The probe's setClientInfo("ApplicationName", ...) ran before its first held UPDATE.
    assert held[0]["session_facts"]["application_name"] == "QueryBase JDBC probe"
