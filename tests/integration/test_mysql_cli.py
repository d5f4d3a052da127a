"""The mariadb command-line client through a real `querybase serve` (client-compat MY-8).

`-e` with several statements, a batch file on stdin (USE, reads, a held write: output and exit
status), the `status` command (COM_STATISTICS and the client's own queries), and interrupting a
`SELECT SLEEP(30)`: with Ctrl-C (SIGINT: the client opens a second connection and sends
`KILL QUERY <connection id>`) and with an explicit `KILL QUERY` from a second client.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.support.localdb import MariaDBServer
from tests.support.myfront import ITEMS, SCHEMA, SOURCE, Gateway, running_gateway, setup_items

pytestmark = pytest.mark.integration

SLEEP_SQL = "SELECT SLEEP(30)"
SLEEPING = f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE '{SLEEP_SQL}%'"


@pytest.fixture(scope="module")
def gateway(mariadb_server: MariaDBServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    setup_items(mariadb_server)
    with running_gateway(mariadb_server, tmp_path_factory.mktemp("qb-mycli") / "home") as gw:
        yield gw


@pytest.fixture
def no_sleepers(gateway: Gateway) -> Iterator[None]:
    yield
    for tid in gateway.rows(f"SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE '{SLEEP_SQL}%'"):
        gateway.root_sql(f"KILL {int(tid[0])}")


def argv(gw: Gateway, user: str, *extra: str, database: str | None = SOURCE) -> list[str]:
    binary = shutil.which("mariadb") or shutil.which("mysql")
    if binary is None:
        pytest.skip("no mariadb client")
    args = [binary, "--no-defaults", "-h", gw.host, "-P", str(gw.port), "-u", user]
    args += [f"-p{gw.passwords[user]}", "--ssl=0", *extra]
    return [*args, database] if database else args


def run(gw: Gateway, user: str, *extra: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv(gw, user, *extra), input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def sleeping(gw: Gateway) -> int:
    return int(gw.root_sql(SLEEPING).strip())


def wait_for(predicate: object, timeout: float) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


def test_execute_several_statements(gateway: Gateway) -> None:
    done = run(
        gateway, "carol", "--batch", "-e", "select count(*) from items; select @@version; select database()"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:6] == [
        "count(*)",
        str(len(ITEMS)),
        "@@version",
        gateway.server.version,
        "database()",
        SCHEMA,
    ]


BATCH = f"""SELECT 'first' AS marker;
USE {SCHEMA};
SELECT count(*) AS n FROM items;
DELETE FROM items WHERE id = 1;
SELECT 'after' AS marker;
"""


def test_batch_file_on_stdin_stops_at_the_held_write(gateway: Gateway) -> None:
    before = gateway.last_request_id()
    done = run(gateway, "alice", "--batch", stdin=BATCH)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout.split() == ["marker", "first", "n", str(len(ITEMS))]
    assert re.search(
        r"ERROR 9001 \(HY000\) at line 4: write held for approval as change request #\d+", done.stderr
    )
    held = gateway.new_requests(before)
    assert [r["statement_text"] for r in held] == ["DELETE FROM items WHERE id = 1"]
    assert str(held[0]["id"]) in done.stderr
    assert held[0]["session_facts"]["schema"] == SCHEMA
    assert gateway.count() == len(ITEMS)


def test_batch_file_with_force_goes_on(gateway: Gateway) -> None:
    before = gateway.last_request_id()
    done = run(gateway, "alice", "--batch", "--force", stdin=BATCH)
    assert done.returncode == 0, (done.stdout, done.stderr)  # --force: errors do not count
    assert done.stdout.split() == ["marker", "first", "n", str(len(ITEMS)), "marker", "after"]
    assert "ERROR 9001 (HY000) at line 4" in done.stderr
    assert len(gateway.new_requests(before)) == 1


def test_status_command(gateway: Gateway) -> None:
    """`status`: SELECT DATABASE(), USER(), the character set queries and COM_STATISTICS."""
    log_start = len(gateway.serve.log)
    done = run(gateway, "carol", "-e", "status")
    assert done.returncode == 0, done.stderr
    fields = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in done.stdout.splitlines())
        if value
    )
    # QueryBase's own id (the greeting's), the one KILL takes
    assert [int(fields["Connection id"])] == connected_ids(gateway, log_start, "carol")
    assert fields["Current database"] == SCHEMA
    assert fields["Server version"].startswith(gateway.server.version.split("-")[0])
    assert "qb_reader" in fields["Current user"]  # the upstream login QueryBase uses
    assert fields["Server characterset"]
    assert "Uptime" in fields  # from COM_STATISTICS
    assert re.search(r"Threads: \d+\s+Questions: \d+", done.stdout)


def test_ctrl_c_kills_the_running_query(gateway: Gateway, no_sleepers: None) -> None:
    """SIGINT: the client connects again (without a database: carol has one source) and sends
    `KILL QUERY <the connection id from QueryBase's greeting>`; the session goes on."""
    proc = subprocess.Popen(
        argv(gateway, "carol", "--batch", "-e", SLEEP_SQL),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(lambda: sleeping(gateway) == 1, 15), "SLEEP never reached MariaDB"
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - started < 10
    assert "Ctrl-C -- query killed" in stdout, (stdout, stderr)
    assert "ERROR 1317 (70100) at line 1: Query execution was interrupted" in stderr
    assert sleeping(gateway) == 0


def test_kill_query_from_a_second_client(gateway: Gateway, no_sleepers: None) -> None:
    """KILL QUERY from another mariadb client: by QueryBase's connection id (refused to another
    QueryBase user) or by the upstream thread id SHOW PROCESSLIST shows (the user's own session)."""
    log_start = len(gateway.serve.log)
    proc = subprocess.Popen(
        argv(gateway, "carol", "-e", SLEEP_SQL),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(lambda: sleeping(gateway) == 1, 15), "SLEEP never reached MariaDB"
        connected = connected_ids(gateway, log_start, "carol")
        assert len(connected) == 1
        other = run(gateway, "alice", "-e", f"KILL QUERY {connected[0]}")
        assert "ERROR 1094" in other.stderr
        assert sleeping(gateway) == 1
        thread = gateway.rows(f"SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE '{SLEEP_SQL}%'")
        killed = run(gateway, "carol", "-e", f"KILL QUERY {int(thread[0][0])}")
        assert killed.returncode == 0, killed.stderr
        _, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "ERROR 1317 (70100) at line 1: Query execution was interrupted" in stderr
    assert sleeping(gateway) == 0


def connected_ids(gw: Gateway, log_start: int, user: str) -> list[int]:
    """QueryBase connection ids of `user`'s logins since `log_start` in serve's log."""
    events = [json.loads(line) for line in gw.serve.log[log_start:].splitlines() if line.startswith("{")]
    return [e["connection_id"] for e in events if e.get("event") == "connected" and e.get("user") == user]
