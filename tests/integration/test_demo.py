"""deploy/demo/demo.py end to end: set up twice (the second run reuses everything), check the
catalog through the CLI and the shop data through the upstream logins, then `--down`."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pymysql
import pytest

from tests.support.localdb import (
    DATABASE,
    HOST,
    MARIADB_PASSWORDS,
    PG_PASSWORDS,
    MariaDBServer,
    PostgresCluster,
    free_port,
)

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO = REPO_ROOT / "deploy" / "demo" / "demo.py"
DEMO_TIMEOUT = 240  # seconds for one demo run: a first run initialises both servers

EXPECTED_GRANTS = sorted(
    (group, source, level)
    for source in ("shop_pg", "shop_mysql")
    for group, level in (("analysts", "propose"), ("approvers", "approve"), ("readers", "read"))
)


def _distinct_free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEMO), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=DEMO_TIMEOUT,
        check=False,
    )


def _querybase(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


def _accepts_connections(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=2):
        return True
    return False


def _shop_customers(pg_port: int, mysql_port: int) -> tuple[int, int]:
    """Customers in the shop data, counted through each database's read login."""
    with psycopg.connect(
        host=HOST, port=pg_port, dbname=DATABASE, user="qb_reader", password=PG_PASSWORDS["qb_reader"]
    ) as conn:
        row = conn.execute("SELECT count(*) FROM customers").fetchone()
        assert row is not None
        pg_count = int(row[0])
    conn_my = pymysql.connect(
        host=HOST,
        port=mysql_port,
        user="qb_reader",
        password=MARIADB_PASSWORDS["qb_reader"],
        database=DATABASE,
    )
    try:
        with conn_my.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM customers")
            mysql_count = int(cursor.fetchone()[0])
    finally:
        conn_my.close()
    return pg_count, mysql_count


@pytest.mark.timeout(3 * DEMO_TIMEOUT)
def test_demo_sets_up_twice_and_comes_down(localdb_dir: Path) -> None:
    demo_dir = localdb_dir
    pg_port, mysql_port, qb_pg, qb_mysql, qb_admin = _distinct_free_ports(5)
    where = ["--dir", str(demo_dir)]
    setup = [
        "--setup-only",
        *where,
        *("--pg-port", str(pg_port), "--mysql-port", str(mysql_port)),
        *("--listen-postgres", f"{HOST}:{qb_pg}", "--listen-mysql", f"{HOST}:{qb_mysql}"),
        *("--listen-admin", f"{HOST}:{qb_admin}"),
    ]
    config = demo_dir / "querybase.toml"
    try:
        first = _demo(*setup)
        assert first.returncode == 0, _output(first)
        second = _demo(*setup)
        assert second.returncode == 0, _output(second)

        for run in (first, second):
            assert "shop_pg" in run.stdout
            assert "shop_mysql" in run.stdout
            assert f'psql "host={HOST} port={qb_pg} dbname=shop_pg user=alice"' in run.stdout
            assert f"mariadb -h {HOST} -P {qb_mysql} -u alice -p shop_mysql" in run.stdout
            assert f"http://{HOST}:{qb_admin}" in run.stdout
            for password in ("admin-demo-pw", "alice-demo-pw", "bob-demo-pw", "carol-demo-pw"):
                assert password in run.stdout
            assert "held for approval" in run.stdout
        assert "started on" in first.stdout
        # The second run adopted both servers and found the whole catalog in place.
        assert second.stdout.count("already running on") == 2, _output(second)
        assert "all present" in second.stdout, _output(second)
        assert "created" not in second.stdout, _output(second)

        grants = _querybase(config, "grant", "list", "--json")
        assert grants.returncode == 0, _output(grants)
        listed = sorted((g["group"], g["source"], g["level"]) for g in json.loads(grants.stdout))
        assert listed == EXPECTED_GRANTS

        users = _querybase(config, "user", "list", "--json")
        assert users.returncode == 0, _output(users)
        groups_of = {u["name"]: u["groups"] for u in json.loads(users.stdout)}
        assert groups_of == {
            "admin": [],
            "alice": ["analysts"],
            "bob": ["approvers"],
            "carol": ["readers"],
        }

        for source in ("shop_pg", "shop_mysql"):
            tested = _querybase(config, "source", "test", source)
            assert tested.returncode == 0, _output(tested)
            assert tested.stdout.count(": ok: ") == 2, _output(tested)  # read and write login

        pg_customers, mysql_customers = _shop_customers(pg_port, mysql_port)
        assert pg_customers > 0
        assert mysql_customers > 0
    finally:
        try:
            down = _demo("--down", *where)
        finally:
            still_running = [
                server
                for server in (PostgresCluster(demo_dir / "pg"), MariaDBServer(demo_dir / "mariadb"))
                if server.is_running()
            ]
            for server in still_running:  # never leave a server behind, whatever failed
                with contextlib.suppress(Exception):
                    server.stop()
    assert down.returncode == 0, _output(down)
    assert still_running == []
    assert not _accepts_connections(pg_port)
    assert not _accepts_connections(mysql_port)
