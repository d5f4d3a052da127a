"""Change requests end to end on PostgreSQL, through a real `querybase serve`.

psql and asyncpg hold writes (QB001), approvers decide over the admin API, the executor runs the
request exactly once on the write login, and a real HTTP receiver gets the webhook events.
Refusals are checked with their HTTP status and stable error code.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from proxy.wire.pg import protocol as pgp
from tests.integration.test_pg_clients import psql
from tests.support.changes import Api, held_id
from tests.support.localdb import PostgresCluster
from tests.support.pgfront import (
    SOURCE,
    TINY_SOURCE,
    Gateway,
    RawPg,
    cli,
    listen_port,
    provision,
    setup_items,
    store_path,
)
from tests.support.querybase import init_home, start_serve
from tests.support.webhook import WebhookReceiver

pytestmark = pytest.mark.integration

EXTRA_USERS = {
    # pia proposes and approves on shop: she must not approve her own requests.
    "pia": ["analysts", "approvers"],
    # olga approves on tiny only.
    "olga": ["tiny_approvers"],
    # pat is a second approver on shop (for approvals_required = 2).
    "pat": ["approvers"],
}


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as hook:
        yield hook


@pytest.fixture(scope="module")
def gateway(
    pg_server: PostgresCluster, tmp_path_factory: pytest.TempPathFactory, receiver: WebhookReceiver
) -> Iterator[Gateway]:
    home = tmp_path_factory.mktemp("changes-pg")
    target = f'{{ name = "test", kind = "json", url = "{receiver.url}" }}'
    notify = f"[notify]\ntargets = [{target}]\nbackoff_seconds = 0.1\n"
    config = init_home(home, tls_mode="disable", extra=notify)
    provision(config, pg_server)
    cli(config, "group", "add", "tiny_approvers")
    cli(config, "grant", "tiny_approvers", TINY_SOURCE, "approve")
    gw = Gateway(config, None, pg_server, port=listen_port(config))  # type: ignore[arg-type]
    for user, groups in EXTRA_USERS.items():
        password = f"{user}-Secret-pw-42"
        gw.passwords[user] = password
        cli(config, "user", "add", user, "--password-env", "PW", env={"PW": password})
        for group in groups:
            cli(config, "group", "member", "add", group, user)
    gw.serve = start_serve(config)
    try:
        yield gw
    finally:
        if gw.serve.stop() != 0:
            gw.serve.kill()


@pytest.fixture
def items(gateway: Gateway) -> None:
    setup_items(gateway.pg)


def api(gw: Gateway, user: str) -> Api:
    if user == "admin":
        return Api.admin(gw.serve.admin_url)
    return Api(gw.serve.admin_url, user, gw.passwords[user])


def hold_with_psql(gw: Gateway, user: str, sql: str) -> int:
    result = psql(gw, user, "-c", sql)
    assert result.returncode != 0, result.stdout
    assert "QB001" in result.stderr, result.stderr
    return held_id(result.stderr)


def test_psql_update_approved_runs_exactly_once_and_notifies(
    gateway: Gateway, items: None, receiver: WebhookReceiver
) -> None:
    request_id = hold_with_psql(gateway, "alice", "UPDATE items SET name = name || '!' WHERE id = 2")
    assert gateway.rows("SELECT name FROM items WHERE id = 2") == [["banana"]]  # not run yet
    bob = api(gateway, "bob")
    shown = bob.ok("GET", f"/requests/{request_id}")
    assert shown["status"] == "pending"
    assert shown["statement"] == "UPDATE items SET name = name || '!' WHERE id = 2"
    assert shown["requester"] == "alice"
    decided = bob.ok("POST", f"/requests/{request_id}/approve", {"comment": "fine"})
    assert decided["status"] in ("approved", "executing", "succeeded")
    final = bob.wait_final(request_id)
    assert final["status"] == "succeeded", final
    assert final["execution"]["rows_affected"]["total"] == 1
    assert final["execution"]["rows_affected"]["statements"] == [{"tag": "UPDATE 1", "rows": 1}]
    assert gateway.rows("SELECT name FROM items WHERE id = 2") == [["banana!"]]  # exactly once
    # Approving again is refused, and nothing runs twice.
    again = bob.call("POST", f"/requests/{request_id}/approve")
    assert again.status_code == 409
    assert again.json()["code"] == "state_conflict"
    assert gateway.rows("SELECT name FROM items WHERE id = 2") == [["banana!"]]
    events = receiver.wait_for(request_id, ["created", "approved", "executed"])
    assert events[:3] == ["created", "approved", "executed"], events
    # The audit chain holds the whole story and still verifies.
    audit = api(gateway, "admin").ok("GET", "/audit", subject=str(request_id), limit=500)
    kinds = [e["kind"] for e in audit["events"]]
    for kind in ("request.created", "request.approved", "request.executing", "request.succeeded"):
        assert kind in kinds, kinds
    assert api(gateway, "admin").ok("GET", "/audit/verify")["ok"] is True


def test_returning_rows_and_failure_are_recorded(
    gateway: Gateway, items: None, receiver: WebhookReceiver
) -> None:
    bob = api(gateway, "bob")
    ok_id = hold_with_psql(gateway, "alice", "DELETE FROM items WHERE id >= 4 RETURNING id, name")
    bob.ok("POST", f"/requests/{ok_id}/approve")
    done = bob.wait_final(ok_id)
    assert done["status"] == "succeeded"
    assert done["execution"]["returning_rows"] == [
        {"id": "4", "name": "date"},
        {"id": "5", "name": "elderberry"},
    ]
    assert gateway.count() == 3
    bad_id = hold_with_psql(gateway, "alice", "INSERT INTO items VALUES (1, 'duplicate')")
    bob.ok("POST", f"/requests/{bad_id}/approve")
    failed = bob.wait_final(bad_id)
    assert failed["status"] == "failed"
    assert failed["execution"]["sqlstate"] == "23505"
    assert "duplicate key" in failed["execution"]["error_message"]
    assert gateway.count() == 3
    assert "failed" in receiver.wait_for(bad_id, ["failed"])


async def _asyncpg_hold(gw: Gateway, sql: str, *args: Any) -> int:
    conn = await asyncpg.connect(
        host=gw.host, port=gw.port, user="alice", password=gw.passwords["alice"], database=SOURCE, ssl=False
    )
    try:
        with pytest.raises(asyncpg.PostgresError) as caught:
            await conn.execute(sql, *args)
        assert caught.value.sqlstate == "QB001"
        return held_id(str(caught.value))
    finally:
        await conn.close()


def test_asyncpg_binary_parameters_run_with_the_exact_values(gateway: Gateway, items: None) -> None:
    gateway.admin_sql(
        "ALTER TABLE items ADD COLUMN IF NOT EXISTS blob bytea, ADD COLUMN IF NOT EXISTS price numeric"
    )
    payload = bytes(range(256))
    request_id = asyncio.run(
        _asyncpg_hold(gateway, "UPDATE items SET blob = $1, price = $2, name = $3 WHERE id = $4",
                      payload, 12.5, "naïve ✓", 3)
    )  # fmt: skip
    bob = api(gateway, "bob")
    held = bob.ok("GET", f"/requests/{request_id}")
    assert [p["format"] for p in held["parameters"]] == [1, 1, 1, 1]  # asyncpg sends binary
    bob.ok("POST", f"/requests/{request_id}/approve")
    assert bob.wait_final(request_id)["status"] == "succeeded"
    rows = gateway.rows("SELECT encode(blob, 'hex'), price, name FROM items WHERE id = 3")
    assert rows == [[payload.hex(), "12.5", "naïve ✓"]]


def test_refusals_have_the_right_status_and_code(
    gateway: Gateway, items: None, receiver: WebhookReceiver
) -> None:
    mine = hold_with_psql(gateway, "pia", "UPDATE items SET name = 'p' WHERE id = 1")
    pia, olga, carol, alice, bob = (api(gateway, u) for u in ("pia", "olga", "carol", "alice", "bob"))

    def refused(client: Api, path: str, status: int, code: str, body: Any = None) -> None:
        answer = client.call("POST", path, body)
        assert answer.status_code == status, answer.text
        assert answer.json()["code"] == code

    refused(pia, f"/requests/{mine}/approve", 403, "forbidden")  # self-approval
    refused(olga, f"/requests/{mine}/approve", 404, "not_found")  # approver of another source: invisible
    own = hold_with_psql(gateway, "alice", "UPDATE items SET name = 'a' WHERE id = 1")
    refused(alice, f"/requests/{own}/approve", 403, "forbidden")  # a requester without approve
    refused(bob, f"/requests/{own}/cancel", 403, "forbidden")  # an approver is not the requester
    assert olga.call("GET", f"/requests/{mine}").status_code == 404  # cannot see it either
    refused(bob, f"/requests/{mine}/reject", 422, "invalid", {"comment": ""})  # reject needs a comment
    refused(carol, "/requests", 403, "forbidden", {"source": SOURCE, "sql": "DELETE FROM items"})  # read user
    refused(alice, "/users", 403, "forbidden", {"name": "mallory", "password": "x" * 12})  # not an admin
    refused(alice, f"/requests/{mine}/cancel", 404, "not_found")  # not hers, and invisible to her
    alice.ok("POST", f"/requests/{own}/cancel")
    # Rejected, cancelled and expired requests cannot be approved.
    bob.ok("POST", f"/requests/{mine}/reject", {"comment": "not today"})
    assert "rejected" in receiver.wait_for(mine, ["rejected"])
    refused(bob, f"/requests/{mine}/approve", 409, "state_conflict")
    cancelled = hold_with_psql(gateway, "alice", "UPDATE items SET name = 'c' WHERE id = 1")
    assert alice.ok("POST", f"/requests/{cancelled}/cancel")["status"] == "cancelled"
    refused(bob, f"/requests/{cancelled}/approve", 409, "state_conflict")
    expired = hold_with_psql(gateway, "alice", "UPDATE items SET name = 'e' WHERE id = 1")
    with contextlib.closing(sqlite3.connect(store_path(gateway.config))) as db, db:
        db.execute("UPDATE change_requests SET expires_at = '2000-01-01 00:00:00' WHERE id = ?", (expired,))
    refused(bob, f"/requests/{expired}/approve", 409, "state_conflict")
    assert bob.ok("GET", f"/requests/{expired}")["status"] == "expired"
    assert gateway.rows("SELECT name FROM items WHERE id = 1") == [["apple"]]
    # Visibility: alice sees only her own; bob (approver of shop) sees pia's too.
    alice_ids = {r["id"] for r in alice.ok("GET", "/requests", limit=500)["items"]}
    assert mine not in alice_ids
    assert {cancelled, expired} <= alice_ids
    assert mine in {r["id"] for r in bob.ok("GET", "/requests", status="rejected")["items"]}


def test_expiry_by_the_sweeper_notifies(gateway: Gateway, items: None, receiver: WebhookReceiver) -> None:
    request_id = hold_with_psql(gateway, "alice", "UPDATE items SET name = 'late' WHERE id = 1")
    with contextlib.closing(sqlite3.connect(store_path(gateway.config))) as db, db:
        db.execute(
            "UPDATE change_requests SET expires_at = '2000-01-01 00:00:00' WHERE id = ?", (request_id,)
        )
    alice = api(gateway, "alice")
    deadline = time.monotonic() + 15  # serve sweeps every 5 s
    while alice.ok("GET", f"/requests/{request_id}")["status"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alice.ok("GET", f"/requests/{request_id}")["status"] == "expired"
    assert "expired" in receiver.wait_for(request_id, ["expired"])
    assert gateway.rows("SELECT name FROM items WHERE id = 1") == [["apple"]]


def test_two_approvals_required(gateway: Gateway, items: None) -> None:
    admin = api(gateway, "admin")
    admin.ok("PATCH", f"/sources/{SOURCE}", {"approvals_required": 2})
    try:
        request_id = hold_with_psql(gateway, "alice", "UPDATE items SET name = 'two' WHERE id = 5")
        bob, pat = api(gateway, "bob"), api(gateway, "pat")
        first = bob.ok("POST", f"/requests/{request_id}/approve")
        assert first["status"] == "pending"
        assert first["approvals"] == 1
        assert first["approvals_required"] == 2
        time.sleep(0.3)
        assert gateway.rows("SELECT name FROM items WHERE id = 5") == [["elderberry"]]
        again = bob.call("POST", f"/requests/{request_id}/approve")
        assert again.status_code == 409  # the same approver cannot count twice
        pat.ok("POST", f"/requests/{request_id}/approve")
        assert pat.wait_final(request_id)["status"] == "succeeded"
        assert gateway.rows("SELECT name FROM items WHERE id = 5") == [["two"]]
    finally:
        admin.ok("PATCH", f"/sources/{SOURCE}", {"approvals_required": 1})


def test_submit_script_over_the_api(gateway: Gateway, items: None) -> None:
    alice, bob = api(gateway, "alice"), api(gateway, "bob")
    script = "UPDATE items SET name = 'one' WHERE id = 1;\nDELETE FROM items WHERE id = 5;"
    created = alice.ok("POST", "/requests", {"source": SOURCE, "sql": script})
    assert created["status"] == "pending"
    assert created["session_facts"]["protocol"] == "api"
    reads = alice.call("POST", "/requests", {"source": SOURCE, "sql": "SELECT 1"})
    assert reads.status_code == 422
    bob.ok("POST", f"/requests/{created['id']}/approve")
    final = bob.wait_final(created["id"])
    assert final["status"] == "succeeded"
    assert final["execution"]["rows_affected"]["total"] == 2
    assert gateway.rows("SELECT name FROM items WHERE id = 1") == [["one"]]
    assert gateway.count() == 4


# ------------------------------------------------------------------------------ waiting mode


def _approve_when_pending(gw: Gateway, approver: str, decision: str, body: Any = None) -> threading.Thread:
    client = api(gw, approver)
    alice = api(gw, "alice")

    def run() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pending = alice.ok("GET", "/requests", status="pending", source=SOURCE)["items"]
            if pending:
                client.ok("POST", f"/requests/{pending[0]['id']}/{decision}", body)
                return
            time.sleep(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def hold_wait(gw: Gateway, seconds: int) -> Iterator[None]:
    admin = api(gw, "admin")
    admin.ok("PATCH", f"/sources/{SOURCE}", {"hold_wait_seconds": seconds})
    try:
        yield
    finally:
        admin.ok("PATCH", f"/sources/{SOURCE}", {"hold_wait_seconds": 0})


def test_waiting_mode_client_gets_the_real_result(gateway: Gateway, items: None) -> None:
    with hold_wait(gateway, 20):
        thread = _approve_when_pending(gateway, "bob", "approve")
        result = psql(gateway, "alice", "-c", "UPDATE items SET name = 'waited' WHERE id <= 2")
        thread.join(5)
    assert result.returncode == 0, result.stderr
    assert "UPDATE 2" in result.stdout
    assert "waiting up to 20s" in result.stderr  # the NOTICE came first
    assert gateway.rows("SELECT count(*) FROM items WHERE name = 'waited'") == [["2"]]


def test_waiting_mode_rejection_and_timeout(gateway: Gateway, items: None) -> None:
    with hold_wait(gateway, 20):
        thread = _approve_when_pending(gateway, "bob", "reject", {"comment": "no"})
        rejected = psql(gateway, "alice", "-c", "DELETE FROM items")
        thread.join(5)
    assert rejected.returncode != 0
    assert "QB001" in rejected.stderr
    assert "rejected" in rejected.stderr
    with hold_wait(gateway, 1):
        timed_out = psql(gateway, "alice", "-c", "DELETE FROM items WHERE id = 1")
    assert "QB001" in timed_out.stderr
    assert "still pending" in timed_out.stderr
    assert gateway.count() == 5


async def _cancel_while_waiting(gw: Gateway) -> None:
    conn = await asyncpg.connect(
        host=gw.host, port=gw.port, user="alice", password=gw.passwords["alice"], database=SOURCE, ssl=False
    )
    try:
        # asyncpg sends a CancelRequest when the timeout expires, then raises TimeoutError.
        with pytest.raises((asyncpg.PostgresError, TimeoutError)):
            await conn.execute("DELETE FROM items WHERE id = 2", timeout=1.5)
        assert await conn.fetchval("SELECT count(*) FROM items") == 5  # the session goes on
    finally:
        await conn.close()


def test_waiting_mode_cancel_withdraws_the_request(gateway: Gateway, items: None) -> None:
    before = {r["id"] for r in api(gateway, "alice").ok("GET", "/requests", limit=500)["items"]}
    with hold_wait(gateway, 20):
        asyncio.run(_cancel_while_waiting(gateway))
    alice = api(gateway, "alice")
    new = [r for r in alice.ok("GET", "/requests", limit=500)["items"] if r["id"] not in before]
    assert len(new) == 1
    deadline = time.monotonic() + 10
    while (
        alice.ok("GET", f"/requests/{new[0]['id']}")["status"] != "cancelled" and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert alice.ok("GET", f"/requests/{new[0]['id']}")["status"] == "cancelled"
    assert gateway.count() == 5


# ----------------------------------------------------------------------------- live sessions


async def _session_listed_then_terminated(gw: Gateway) -> None:
    conn = await asyncpg.connect(
        host=gw.host, port=gw.port, user="carol", password=gw.passwords["carol"], database=SOURCE, ssl=False
    )
    try:
        admin = api(gw, "admin")
        listed = await asyncio.to_thread(admin.ok, "GET", "/sessions")
        mine = [s for s in listed if s["user"] == "carol" and s["protocol"] == "postgresql"]
        assert len(mine) == 1, listed
        assert mine[0]["source"] == SOURCE
        assert mine[0]["state"] == "idle"
        await asyncio.to_thread(admin.ok, "DELETE", f"/sessions/{mine[0]['id']}")
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)):
            await conn.fetchval("SELECT 1")
        listed = await asyncio.to_thread(admin.ok, "GET", "/sessions")
        assert not [s for s in listed if s["id"] == mine[0]["id"]]
    finally:
        await conn.close()


def test_admin_lists_and_terminates_live_sessions(gateway: Gateway, items: None) -> None:
    asyncio.run(_session_listed_then_terminated(gateway))


def test_execution_connection_killed_mid_statement_is_resolved_from_the_database(
    gateway: Gateway, items: None
) -> None:
    request_id = hold_with_psql(
        gateway, "alice", "UPDATE items SET name = name || pg_sleep(30)::text || '!' WHERE id = 1"
    )
    bob = api(gateway, "bob")
    bob.ok("POST", f"/requests/{request_id}/approve")
    deadline = time.monotonic() + 15
    killed = ""
    while time.monotonic() < deadline and killed.strip() != "t":
        time.sleep(0.2)
        killed = gateway.admin_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE application_name = 'querybase request {request_id}' AND state = 'active'"
        )
    assert killed.strip() == "t", "the executor's statement never showed up in pg_stat_activity"
    final = bob.wait_final(request_id)
    assert final["status"] == "failed", final
    assert "rolled the transaction back" in final["execution"]["error_message"]
    assert gateway.rows("SELECT name FROM items WHERE id = 1") == [["apple"]]


def test_text_that_controls_transactions_is_not_run(gateway: Gateway, items: None) -> None:
    # Held over the wire with a COMMIT inside: the executor refuses to run it (its own
    # transaction is what makes the request exactly once), and records why.
    request_id = hold_with_psql(gateway, "alice", "UPDATE items SET name = 'x' WHERE id = 1; COMMIT")
    bob = api(gateway, "bob")
    bob.ok("POST", f"/requests/{request_id}/approve")
    final = bob.wait_final(request_id)
    assert final["status"] == "failed", final
    assert "controls transactions itself" in final["execution"]["error_message"]
    assert gateway.rows("SELECT name FROM items WHERE id = 1") == [["apple"]]
    # A submitted script with BEGIN/COMMIT is refused up front.
    answer = api(gateway, "alice").call(
        "POST", "/requests", {"source": SOURCE, "sql": "BEGIN; DELETE FROM items; COMMIT"}
    )
    assert answer.status_code == 422
    assert "controls transactions" in answer.json()["message"]


async def _leave_while_waiting(gw: Gateway) -> None:
    conn = await asyncpg.connect(
        host=gw.host, port=gw.port, user="alice", password=gw.passwords["alice"], database=SOURCE, ssl=False
    )
    waiting = asyncio.ensure_future(conn.execute("DELETE FROM items WHERE id = 3"))
    await asyncio.sleep(1.0)
    conn.terminate()  # the client goes away while it waits
    with contextlib.suppress(Exception):
        await waiting


def test_waiting_client_that_leaves_keeps_its_request_pending(gateway: Gateway, items: None) -> None:
    before = gateway.serve.log
    alice = api(gateway, "alice")
    known = {r["id"] for r in alice.ok("GET", "/requests", limit=500)["items"]}
    with hold_wait(gateway, 20):
        asyncio.run(_leave_while_waiting(gateway))
        time.sleep(1.5)  # longer than the store poll of a wait that would still be running
    new = [r for r in alice.ok("GET", "/requests", limit=500)["items"] if r["id"] not in known]
    assert [(r["statement"], r["status"]) for r in new] == [("DELETE FROM items WHERE id = 3", "pending")]
    alice.ok("POST", f"/requests/{new[0]['id']}/cancel")
    new_log = gateway.serve.log[len(before) :]
    assert "held_wait_failed" not in new_log
    assert "exception was never retrieved" not in new_log
    assert "Traceback" not in new_log
    assert gateway.count() == 5


def test_a_latin1_client_is_held_and_executed_byte_for_byte(gateway: Gateway, items: None) -> None:
    """Issue 10: a client whose client_encoding is not UTF8 works the same way. Its statement text
    and its text-format parameter arrive as LATIN1 bytes (é is the single byte 0xE9, not UTF-8);
    the held request runs with that encoding and the database stores exactly 'café' and 'naïf'."""
    with RawPg(gateway.host, gateway.port) as raw:
        raw.login("alice", gateway.passwords["alice"], extra={"client_encoding": "LATIN1"})
        raw.send(pgp.message(b"Q", b"INSERT INTO items VALUES (60, 'caf\xe9')\x00"))
        simple = _until_ready(raw)
        raw.send(
            pgp.make_parse(b"", b"INSERT INTO items VALUES (61, $1)", [0])
            + pgp.make_bind(b"", b"", [0], [b"na\xeff"], [])
            + pgp.make_execute(b"")
            + pgp.SYNC
        )
        extended = _until_ready(raw)
    ids = []
    for messages in (simple, extended):
        fields = pgp.parse_error_fields(next(body for t, body in messages if t == b"E"))
        assert fields["C"] == "QB001", fields
        ids.append(held_id(fields["M"]))
    bob = api(gateway, "bob")
    for request_id in ids:
        bob.ok("POST", f"/requests/{request_id}/approve")
        assert bob.wait_final(request_id)["status"] == "succeeded"
    assert gateway.rows("SELECT name FROM items WHERE id IN (60, 61) ORDER BY id") == [["café"], ["naïf"]]


def _until_ready(raw: RawPg) -> list[tuple[bytes, bytes]]:
    seen = []
    while (msg := raw.read_message()) is not None:
        seen.append(msg)
        if msg[0] == b"Z":
            return seen
    raise AssertionError(f"connection closed: {seen}")
