"""GET /metrics of a real `querybase serve` before and after real traffic, compared sample by sample.

One serve fronts the test PostgreSQL (`shop`) and MariaDB (`shop_my`). psql, psycopg and PyMySQL
read, get denied, get held; an approver approves one held write and rejects another over the
admin API; the executor runs the approved one; webhooks go to a real receiver. The test then
asserts exactly how far each sample moved, and what the serve log says (and never says).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pymysql
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_pg_clients import psql
from tests.support.changes import Api, held_id
from tests.support.localdb import MARIADB_PASSWORDS, PG_PASSWORDS, MariaDBServer, PostgresCluster
from tests.support.myfront import SCHEMA
from tests.support.myfront import setup_items as setup_my_items
from tests.support.pgfront import SOURCE, Gateway, cli, listen_port, provision
from tests.support.pgfront import setup_items as setup_pg_items
from tests.support.querybase import init_home, start_serve
from tests.support.webhook import WebhookReceiver

pytestmark = pytest.mark.integration

MY_SOURCE = "shop_my"
HOOK = "metrics-hook"
PARAM_SECRET = "param-value-never-logged-7f3a"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(admin_url: str) -> Samples:
    answer = httpx.get(f"{admin_url}/metrics", timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return get(after, name, **labels) - get(before, name, **labels)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as hook:
        yield hook


@pytest.fixture(scope="module")
def gateway(
    pg_server: PostgresCluster,
    mariadb_server: MariaDBServer,
    tmp_path_factory: pytest.TempPathFactory,
    receiver: WebhookReceiver,
) -> Iterator[Gateway]:
    target = f'{{ name = "{HOOK}", kind = "json", url = "{receiver.url}" }}'
    config = init_home(
        tmp_path_factory.mktemp("metrics"),
        tls_mode="disable",
        extra=f"[notify]\ntargets = [{target}]\nbackoff_seconds = 0.1\n",
    )
    provision(config, pg_server)
    cli(
        config,
        *("source", "add", MY_SOURCE, "--engine", "mysql", "--host", mariadb_server.host),
        *("--port", str(mariadb_server.port), "--database", SCHEMA),
        *("--user", "qb_reader", "--password-env", "READ_PW"),
        *("--write-user", "qb_native", "--write-password-env", "WRITE_PW", "--tls", "disable"),
        env={"READ_PW": MARIADB_PASSWORDS["qb_reader"], "WRITE_PW": MARIADB_PASSWORDS["qb_native"]},
    )
    for group, level in (("analysts", "propose"), ("approvers", "approve"), ("readers", "read")):
        cli(config, "grant", group, MY_SOURCE, level)
    setup_pg_items(pg_server)
    setup_my_items(mariadb_server)
    serve = start_serve(config)
    gw = Gateway(config, serve, pg_server, port=listen_port(config))
    gw.mysql_port = listen_port(config, "mysql")  # type: ignore[attr-defined]
    try:
        yield gw
    finally:
        if serve.stop() != 0:
            serve.kill()


def mysql_connect(gw: Gateway, user: str, password: str | None = None) -> pymysql.connections.Connection:
    return pymysql.connect(
        host=gw.host,
        port=gw.mysql_port,  # type: ignore[attr-defined]
        user=user,
        password=gw.passwords[user] if password is None else password,
        database=MY_SOURCE,
        connect_timeout=10,
        read_timeout=30,
    )


def wait_until(check: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_metrics_move_exactly_with_real_traffic(gateway: Gateway, receiver: WebhookReceiver) -> None:
    gw = gateway
    before = scrape(gw.serve.admin_url)
    log_start = len(gw.serve.log)
    bob = Api(gw.serve.admin_url, "bob", gw.passwords["bob"])

    # --- PostgreSQL: a read, a denied write, a held write (psql), a held bound write (psycopg),
    # a wrong password and an unknown source.
    read = psql(gw, "carol", "-A", "-t", "-c", "SELECT name FROM items WHERE id = 2")
    assert (read.returncode, read.stdout) == (0, "banana\n"), read.stderr
    denied = psql(gw, "carol", "-c", "DELETE FROM items WHERE id = 1")
    assert denied.returncode != 0
    assert "42501" in denied.stderr, denied.stderr
    held = psql(gw, "alice", "-c", "UPDATE items SET name = 'approved!' WHERE id = 3")
    assert "QB001" in held.stderr, held.stderr
    approved_id = held_id(held.stderr)
    with psycopg.connect(gw.conninfo("alice"), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as bound:
            conn.execute("UPDATE items SET name = %s WHERE id = %s", (PARAM_SECRET, 4))
        assert bound.value.sqlstate == "QB001"
    wrong = psql(gw, "carol", "-c", "SELECT 1", password="wrong-Secret-pw-0")
    assert wrong.returncode != 0
    assert "password authentication failed" in wrong.stderr
    nosuch = psql(gw, "carol", "-c", "SELECT 1", dbname="no_such_source")
    assert nosuch.returncode != 0
    assert "does not exist" in nosuch.stderr

    # --- MySQL: a read, a denied write, a held write (PyMySQL) and a wrong password.
    with mysql_connect(gw, "carol") as conn, conn.cursor() as cur:
        cur.execute("SELECT name FROM items WHERE id = 2")
        assert cur.fetchall() == (("banana",),)
    with mysql_connect(gw, "carol") as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.OperationalError) as my_denied:
            cur.execute("DELETE FROM items WHERE id = 1")
        assert my_denied.value.args[0] == 1142
    with mysql_connect(gw, "alice") as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.MySQLError) as my_held:
            cur.execute("UPDATE items SET name = 'rejected!' WHERE id = 5")
        rejected_id = held_id(str(my_held.value))
    with pytest.raises(pymysql.err.OperationalError) as my_wrong:
        mysql_connect(gw, "carol", password="wrong-My-Secret-0")
    assert my_wrong.value.args[0] == 1045

    # --- Decisions over the admin API; the approved request runs.
    bob.ok("POST", f"/requests/{approved_id}/approve", {"comment": "ok"})
    bob.ok("POST", f"/requests/{rejected_id}/reject", {"comment": "no"})
    assert bob.wait_final(approved_id)["status"] == "succeeded"
    assert gw.rows("SELECT name FROM items WHERE id = 3") == [["approved!"]]
    # created ×3, approved, executed, rejected
    wait_until(lambda: len(receiver.events(approved_id)) >= 3, "the approved request's webhooks")
    wait_until(lambda: len(receiver.events(rejected_id)) >= 2, "the rejected request's webhooks")

    def settled() -> bool:
        now = scrape(gw.serve.admin_url)
        return (
            all(
                total(now, name) == total(before, name)
                for name in (
                    "querybase_client_connections_open",
                    "querybase_client_sessions_open",
                    "querybase_pool_in_use_connections",
                    "querybase_pool_waiting_clients",
                )
            )
            and moved(
                before, now, "querybase_notification_deliveries_total", target=HOOK, outcome="delivered"
            )
            >= 6
        )

    wait_until(settled, "every client session to end and every webhook to be delivered")
    after = scrape(gw.serve.admin_url)

    def delta(name: str, **labels: str) -> float:
        return moved(before, after, name, **labels)

    def grew(name: str, **labels: str) -> float:
        """How far the sum over every sample of `name` with `labels` moved."""
        return total(after, name, **labels) - total(before, name, **labels)

    pg = {"protocol": "postgresql", "source": SOURCE}
    my = {"protocol": "mysql", "source": MY_SOURCE}

    # Clients and logins.
    assert delta("querybase_client_connections_accepted_total", protocol="postgresql") == 6
    assert delta("querybase_client_connections_accepted_total", protocol="mysql") == 4
    assert delta("querybase_client_sessions_total", **pg, tls="no") == 4
    assert delta("querybase_client_sessions_total", **my, tls="no") == 3
    assert delta("querybase_login_failures_total", protocol="postgresql", reason="wrong_password") == 1
    assert delta("querybase_login_failures_total", protocol="postgresql", reason="unknown_source") == 1
    assert delta("querybase_login_failures_total", protocol="mysql", reason="wrong_password") == 1
    assert (
        total(after, "querybase_login_failures_total") - total(before, "querybase_login_failures_total") == 3
    )

    # Statements: exactly these on PostgreSQL (psql -c and psycopg in autocommit send nothing else).
    assert delta("querybase_statements_total", **pg, kind="read", verdict="forward") == 1
    assert delta("querybase_statements_total", **pg, kind="write", verdict="deny") == 1
    assert delta("querybase_statements_total", **pg, kind="write", verdict="hold") == 2
    assert grew("querybase_statements_total", protocol="postgresql") == 4
    assert delta("querybase_statement_duration_seconds_count", **pg, verdict="forward") == 1
    assert delta("querybase_statement_duration_seconds_count", **pg, verdict="deny") == 1
    assert delta("querybase_statement_duration_seconds_count", **pg, verdict="hold") == 2
    # The one session that forwarded a statement had its first one sampled for overhead.
    assert delta("querybase_statement_overhead_seconds_count", protocol="postgresql") == 1
    assert 0 < delta("querybase_statement_overhead_seconds_sum", protocol="postgresql") < 0.5
    # On MySQL the client may add session statements of its own; reads and writes are exact.
    assert delta("querybase_statements_total", **my, kind="read", verdict="forward") == 1
    assert delta("querybase_statements_total", **my, kind="write", verdict="deny") == 1
    assert delta("querybase_statements_total", **my, kind="write", verdict="hold") == 1
    forwarded_my = grew("querybase_statements_total", **my, verdict="forward")
    assert delta("querybase_statement_duration_seconds_count", **my, verdict="forward") == forwarded_my
    assert delta("querybase_statement_duration_seconds_count", **my, verdict="deny") == 1
    assert delta("querybase_statement_duration_seconds_count", **my, verdict="hold") == 1
    assert delta("querybase_statement_duration_seconds_bucket", **pg, verdict="forward", le="+Inf") == 1

    # Pools: `shop` pools by transaction: one checkout per login (4) and one per transaction (4:
    # a refused statement too, it is decided on the connection it would run on); the MySQL source
    # by session: one per session. All are back and idle.
    shop_read = {"source": SOURCE, "role": "read"}
    my_read = {"source": MY_SOURCE, "role": "read"}
    assert delta("querybase_pool_checkout_wait_seconds_count", **shop_read) == 8
    assert delta("querybase_pool_checkout_wait_seconds_count", **my_read) == 3
    assert get(after, "querybase_pool_in_use_connections", **shop_read) == 0
    assert get(after, "querybase_pool_idle_connections", **shop_read) >= 1
    assert get(after, "querybase_pool_size", **shop_read) == 10
    assert total(after, "querybase_pool_connect_errors_total") == total(
        before, "querybase_pool_connect_errors_total"
    )

    # Change requests: transitions, decision times, the execution, the notifications.
    assert delta("querybase_change_requests_total", source=SOURCE, status="pending") == 2
    for status in ("approved", "executing", "succeeded"):
        assert delta("querybase_change_requests_total", source=SOURCE, status=status) == 1, status
    assert delta("querybase_change_requests_total", source=MY_SOURCE, status="pending") == 1
    assert delta("querybase_change_requests_total", source=MY_SOURCE, status="rejected") == 1
    assert delta("querybase_change_request_decision_seconds_count", source=SOURCE, decision="approved") == 1
    assert (
        delta("querybase_change_request_decision_seconds_count", source=MY_SOURCE, decision="rejected") == 1
    )
    assert (
        delta("querybase_change_request_executions_total", source=SOURCE, outcome="succeeded", recovered="no")
        == 1
    )
    assert delta("querybase_change_request_execution_seconds_count", source=SOURCE) == 1
    assert delta("querybase_notification_deliveries_total", target=HOOK, outcome="delivered") == 6
    for outcome in ("retrying", "failed", "dropped"):
        assert delta("querybase_notification_deliveries_total", target=HOOK, outcome=outcome) == 0
    # Read from the store at the scrape: psycopg's request is still pending.
    assert delta("querybase_change_requests_current", source=SOURCE, status="pending") == 1
    assert get(after, "querybase_change_requests_current", source=MY_SOURCE, status="pending") == 0
    assert 0 <= get(after, "querybase_change_requests_oldest_pending_seconds", source=SOURCE) < 600

    # Classification caches (synced at the scrape): four new PostgreSQL texts, none seen before.
    assert delta("querybase_classification_cache_misses_total", protocol="postgresql", level="exact") == 4
    assert delta("querybase_classification_cache_hits_total", protocol="postgresql", level="exact") == 0
    assert delta("querybase_classification_cache_misses_total", protocol="mysql", level="exact") >= 3
    assert get(after, "querybase_audit_queue_depth") >= 0

    check_log(gw, log_start)


def check_log(gw: Gateway, log_start: int) -> None:
    text = gw.serve.log[log_start:]
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    statements = [e for e in events if e.get("event") in ("statement", "statement_denied", "statement_held")]
    by_verdict: dict[tuple[str, str], list[dict[str, object]]] = {}
    for event in statements:
        by_verdict.setdefault((str(event["protocol"]), str(event["verdict"])), []).append(event)
    assert len(by_verdict[("postgresql", "deny")]) == 1
    assert len(by_verdict[("postgresql", "hold")]) == 2
    assert len(by_verdict[("mysql", "hold")]) == 1
    reads = [e for e in by_verdict[("postgresql", "forward")] if e["kind"] == "read"]
    assert len(reads) == 1  # read_sample_rate = 1.0: every read has its line
    line = reads[0]
    assert {"connection_id", "client", "user", "source", "duration_ms", "timestamp"} <= set(line)
    assert (line["user"], line["source"], line["kind"]) == ("carol", SOURCE, "read")
    assert isinstance(line["duration_ms"], float)
    held = by_verdict[("mysql", "hold")][0]
    assert (held["user"], held["source"], held["kind"]) == ("alice", MY_SOURCE, "write")
    assert isinstance(held["request"], int)
    # Context from the connection on every session line.
    connected = [e for e in events if e.get("event") == "connected"]
    assert {(e["protocol"], e["user"]) for e in connected} >= {("postgresql", "carol"), ("mysql", "alice")}
    # Nothing secret: no password (QueryBase's or the upstreams'), no bound parameter value.
    secrets = [PARAM_SECRET, "wrong-Secret-pw-0", "wrong-My-Secret-0", *gw.passwords.values()]
    secrets += [*PG_PASSWORDS.values(), *MARIADB_PASSWORDS.values()]
    for secret in secrets:
        assert secret not in gw.serve.log, f"{secret!r} appears in the serve log"


def test_metrics_endpoint_is_plain_prometheus_text(gateway: Gateway) -> None:
    answer = httpx.get(f"{gateway.serve.admin_url}/metrics", timeout=10)
    assert answer.status_code == 200
    names = {family.name for family in text_string_to_metric_families(answer.text)}
    assert {"querybase_statements", "querybase_pool_size", "querybase_change_requests_current"} <= names
    assert httpx.get(f"{gateway.serve.admin_url}/api/v1/metrics", timeout=10).status_code == 404


def test_read_sampling_key_reaches_the_config(tmp_path: Path) -> None:
    from proxy.config import load_settings

    config = init_home(tmp_path / "home", extra="read_sample_rate = 0.25\n")
    assert load_settings(config).log.read_sample_rate == 0.25
