"""Change requests end to end on MariaDB, through a real `querybase serve`.

The mariadb CLI and mysql-connector-python (prepared=True, COM_STMT_EXECUTE) hold writes, `bob`
approves over the admin API, the executor runs them exactly once in an XA transaction on the
write login with exactly the held parameters, and a real HTTP receiver gets the webhook events.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from tests.integration.test_mysql_frontend import _mariadb_cli, connector
from tests.support.changes import Api, held_id
from tests.support.localdb import MariaDBServer
from tests.support.myfront import Gateway, provision, setup_items
from tests.support.pgfront import listen_port
from tests.support.querybase import init_home, start_serve
from tests.support.webhook import WebhookReceiver

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as hook:
        yield hook


@pytest.fixture(scope="module")
def gateway(
    mariadb_server: MariaDBServer, tmp_path_factory: pytest.TempPathFactory, receiver: WebhookReceiver
) -> Iterator[Gateway]:
    target = f'{{ name = "test", kind = "json", url = "{receiver.url}" }}'
    config = init_home(
        tmp_path_factory.mktemp("changes-my"),
        tls_mode="disable",
        extra=f"[notify]\ntargets = [{target}]\nbackoff_seconds = 0.1\n",
    )
    provision(config, mariadb_server)
    serve = start_serve(config)
    try:
        yield Gateway(config, serve, mariadb_server, port=listen_port(config, "mysql"))
    finally:
        if serve.stop() != 0:
            serve.kill()


@pytest.fixture
def items(gateway: Gateway) -> None:
    setup_items(gateway.server)


def bob(gw: Gateway) -> Api:
    return Api(gw.serve.admin_url, "bob", gw.passwords["bob"])


def test_mariadb_cli_update_approved_runs_exactly_once(
    gateway: Gateway, items: None, receiver: WebhookReceiver
) -> None:
    held = _mariadb_cli(gateway, "alice", "UPDATE items SET name = CONCAT(name, '!') WHERE id = 2")
    assert held.returncode != 0
    assert "9001" in held.stderr, held.stderr
    request_id = held_id(held.stderr)
    assert gateway.rows("SELECT name FROM qbtest.items WHERE id = 2") == [["banana"]]
    approver = bob(gateway)
    approver.ok("POST", f"/requests/{request_id}/approve")
    final = approver.wait_final(request_id)
    assert final["status"] == "succeeded", final
    assert final["execution"]["rows_affected"]["total"] == 1
    assert final["execution"]["upstream_xid"].startswith(f"querybase-{request_id}-")
    assert gateway.rows("SELECT name FROM qbtest.items WHERE id = 2") == [["banana!"]]
    assert approver.call("POST", f"/requests/{request_id}/approve").status_code == 409
    assert gateway.rows("SELECT name FROM qbtest.items WHERE id = 2") == [["banana!"]]
    assert gateway.root_sql("XA RECOVER").strip() == ""
    events = receiver.wait_for(request_id, ["created", "approved", "executed"])
    assert events[:3] == ["created", "approved", "executed"], events


def test_prepared_statement_parameters_run_with_the_exact_values(gateway: Gateway, items: None) -> None:
    conn = connector(gateway, "alice")
    try:
        cur = conn.cursor(prepared=True)
        with pytest.raises(Exception) as caught:  # noqa: PT011 - the connector's error class varies
            cur.execute("UPDATE items SET name = %s WHERE id = %s", ("naïve ✓ 'quoted'", 3))
        request_id = held_id(str(caught.value))
    finally:
        conn.close()
    approver = bob(gateway)
    held = approver.ok("GET", f"/requests/{request_id}")
    assert held["parameters"] is not None
    assert len(held["parameters"]) == 2
    approver.ok("POST", f"/requests/{request_id}/approve")
    assert approver.wait_final(request_id)["status"] == "succeeded"
    assert gateway.rows("SELECT name FROM qbtest.items WHERE id = 3") == [["naïve ✓ 'quoted'"]]


def test_failed_execution_is_recorded_and_rolled_back(gateway: Gateway, items: None) -> None:
    # Submitted as one script (the mariadb CLI would split it into two statements itself).
    alice = Api(gateway.serve.admin_url, "alice", gateway.passwords["alice"])
    script = "UPDATE items SET name = 'x' WHERE id = 1; INSERT INTO items VALUES (2, 'dup')"
    request_id = alice.ok("POST", "/requests", {"source": "shop_my", "sql": script})["id"]
    approver = bob(gateway)
    approver.ok("POST", f"/requests/{request_id}/approve")
    final = approver.wait_final(request_id)
    assert final["status"] == "failed", final
    assert final["execution"]["mysql_errno"] == 1062
    assert "Duplicate" in final["execution"]["error_message"]
    assert gateway.rows("SELECT name FROM qbtest.items WHERE id = 1") == [
        ["apple"]
    ]  # the whole XA rolled back
    assert gateway.root_sql("XA RECOVER").strip() == ""


def test_submitted_script_runs_on_mysql(gateway: Gateway, items: None) -> None:
    alice = Api(gateway.serve.admin_url, "alice", gateway.passwords["alice"])
    created = alice.ok(
        "POST",
        "/requests",
        {"source": "shop_my", "sql": "DELETE FROM items WHERE id = 5; UPDATE items SET name='z' WHERE id=4"},
    )
    approver = bob(gateway)
    approver.ok("POST", f"/requests/{created['id']}/approve")
    final = approver.wait_final(created["id"])
    assert final["status"] == "succeeded", final
    assert final["execution"]["rows_affected"]["total"] == 2
    assert gateway.count() == 4


# ------------------------------------------------------------------------------ waiting mode


@contextlib.contextmanager
def hold_wait(gw: Gateway, seconds: int) -> Iterator[None]:
    admin = Api.admin(gw.serve.admin_url)
    admin.ok("PATCH", "/sources/shop_my", {"hold_wait_seconds": seconds})
    try:
        yield
    finally:
        admin.ok("PATCH", "/sources/shop_my", {"hold_wait_seconds": 0})


def _decide_when_pending(gw: Gateway, decision: str, body: Any = None) -> threading.Thread:
    approver = bob(gw)

    def run() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pending = approver.ok("GET", "/requests", status="pending", source="shop_my")["items"]
            if pending:
                approver.ok("POST", f"/requests/{pending[0]['id']}/{decision}", body)
                return
            time.sleep(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_waiting_mode_pymysql_gets_the_rows_affected(gateway: Gateway, items: None) -> None:
    with hold_wait(gateway, 20):
        conn = pymysql.connect(**gateway.connect_args("alice"))
        try:
            thread = _decide_when_pending(gateway, "approve")
            with conn.cursor() as cur:
                affected = cur.execute("UPDATE items SET name = 'waited' WHERE id <= 3")
            thread.join(5)
            assert affected == 3
            with conn.cursor() as cur:  # the session goes on
                cur.execute("SELECT count(*) FROM items WHERE name = 'waited'")
                assert cur.fetchone() == (3,)
        finally:
            conn.close()


def test_waiting_mode_rejection_and_kill_query(gateway: Gateway, items: None) -> None:
    with hold_wait(gateway, 20):
        conn = pymysql.connect(**gateway.connect_args("alice"))
        try:
            thread = _decide_when_pending(gateway, "reject", {"comment": "no"})
            with pytest.raises(pymysql.err.MySQLError) as caught:
                conn.cursor().execute("DELETE FROM items")
            thread.join(5)
            assert caught.value.args[0] == 9001
            assert "rejected" in caught.value.args[1]
            # KILL QUERY from a second connection of the same user withdraws the waiting request.
            other = pymysql.connect(**gateway.connect_args("alice"))
            connection_id = conn.thread_id()
            result: list[BaseException] = []

            def run() -> None:
                try:
                    conn.cursor().execute("DELETE FROM items WHERE id = 1")
                except pymysql.err.MySQLError as exc:
                    result.append(exc)

            waiting = threading.Thread(target=run)
            waiting.start()
            time.sleep(1.0)
            other.cursor().execute(f"KILL QUERY {connection_id}")
            waiting.join(10)
            other.close()
            assert result, "the waiting statement did not end"
            assert result[0].args[0] == 1317
            request_id = held_id(result[0].args[1])
            assert bob(gateway).ok("GET", f"/requests/{request_id}")["status"] == "cancelled"
        finally:
            conn.close()
    assert gateway.count() == 5


def test_admin_lists_and_terminates_mysql_sessions(gateway: Gateway, items: None) -> None:
    conn = pymysql.connect(**gateway.connect_args("carol"))
    try:
        admin = Api.admin(gateway.serve.admin_url)
        mine = [s for s in admin.ok("GET", "/sessions") if s["user"] == "carol" and s["protocol"] == "mysql"]
        assert len(mine) == 1
        assert mine[0]["source"] == "shop_my"
        admin.ok("DELETE", f"/sessions/{mine[0]['id']}")
        with pytest.raises(pymysql.err.MySQLError):
            conn.cursor().execute("SELECT 1")
    finally:
        with contextlib.suppress(Exception):
            conn.close()
