"""proxy/observe/metrics.py and what feeds it without a session: pool, login limiter, notifier, caches,
the deploy files' metric names, log sampling and redaction."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from policies.cache import classify_mysql_cached, classify_pg_cached, pg_fingerprint_level
from policies.types import Action, Kind
from proxy.auth.limits import LoginLimiter, LoginRateLimited
from proxy.changes.notify import Notifier
from proxy.config import LogSettings, NotifySettings, WebhookTarget
from proxy.errors import PoolTimeout, UpstreamConnectError
from proxy.observe import metrics
from proxy.observe.logging import REDACTED, ReadSampler, configure
from proxy.upstream.pool import Key, Pool

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "querybase-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "querybase-alerts.yml"
NAME = re.compile(r"\bquerybase_[a-z0-9_]+")


def value(name: str, **labels: str) -> float:
    found = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if found is None else found


# ------------------------------------------------------------------------------ deploy files


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, item in node.items():
                if key in ("expr", "definition") and isinstance(item, str):
                    exprs.append(item)
                elif key == "query" and isinstance(item, dict | str):
                    walk(item) if isinstance(item, dict) else exprs.append(item)
                else:
                    walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(board)
    return exprs


def alert_rules() -> dict[str, dict[str, str]]:
    """alert name -> its scalar fields (expr, severity, summary…), read from the rules file.

    No YAML library is a dependency; the file keeps to one shape (`- alert:` items whose scalars
    are inline or `|` / `>-` blocks), and this reads exactly that shape.
    """
    rules: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    block_key, block_indent, block = "", 0, list[str]()
    for line in [*ALERTS.read_text().splitlines(), ""]:
        indent = len(line) - len(line.lstrip())
        if block_key and (not line.strip() or indent > block_indent):
            block.append(line.strip())
            continue
        if block_key and current is not None:
            current[block_key] = " ".join(part for part in block if part)
            block_key = ""
        stripped = line.strip()
        if stripped.startswith("- alert:"):
            current = rules.setdefault(stripped.split(":", 1)[1].strip(), {})
        elif current is not None and ":" in stripped and not stripped.startswith("#"):
            key, _, rest = stripped.partition(":")
            rest = rest.strip()
            if rest in ("|", ">-", ">", "|-"):
                block_key, block_indent, block = key, indent, []
            elif rest:
                current[key] = rest.strip('"')
    return rules


def alert_exprs() -> list[str]:
    return [rule["expr"] for rule in alert_rules().values()]


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_deploy_files_use_only_metrics_that_exist(source: str) -> None:
    exprs = dashboard_exprs() if source == "dashboard" else alert_exprs()
    assert len(exprs) >= 10
    used = {name for expr in exprs for name in NAME.findall(expr)}
    known = metrics.metric_names()
    assert used, exprs
    assert used <= known, f"unknown metric names: {sorted(used - known)}"


def test_alerts_cover_the_issue_and_dashboard_is_grafana_json() -> None:
    rules = alert_rules()
    assert "querybase_change_requests_current" in rules["QueryBasePendingApprovalsPilingUp"]["expr"]
    assert "querybase_login_failures_total" in rules["QueryBaseLoginFailureBurst"]["expr"]
    assert "querybase_pool_waiting_clients" in rules["QueryBasePoolSaturated"]["expr"]
    assert "querybase_pool_connect_errors_total" in rules["QueryBaseUpstreamConnectErrors"]["expr"]
    for name, rule in rules.items():
        assert rule.get("severity") in ("info", "warning", "critical"), name
        assert rule.get("summary"), name
        assert rule["expr"].count("(") == rule["expr"].count(")"), name
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "querybase"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_metric_names_are_prefixed_and_exposed() -> None:
    text = metrics.exposition().decode()
    families = {f.name for f in text_string_to_metric_families(text)}
    assert families
    assert all(name.startswith("querybase_") for name in families)
    assert "querybase_statements" in families  # counters are parsed without _total
    assert "_created" not in text


# ------------------------------------------------------------------------------ hot path


def test_statement_metrics_are_prebound_once_per_source() -> None:
    first = metrics.statement_metrics("postgresql", "unit-shop")
    assert metrics.statement_metrics("postgresql", "unit-shop") is first
    before = value(
        "querybase_statements_total", protocol="postgresql", source="unit-shop", kind="write", verdict="hold"
    )
    first.counted[(Kind.WRITE, Action.HOLD)].inc()
    first.duration[Action.HOLD].observe(0.003)
    assert (
        value(
            "querybase_statements_total",
            protocol="postgresql",
            source="unit-shop",
            kind="write",
            verdict="hold",
        )
        == before + 1
    )
    assert (
        value(
            "querybase_statement_duration_seconds_bucket",
            protocol="postgresql",
            source="unit-shop",
            verdict="hold",
            le="0.005",
        )
        == 1
    )
    assert len(first.counted) == len(Kind) * len(Action)


def test_read_sampler_is_exact_and_cheap() -> None:
    for rate, expected in ((1.0, 100), (0.0, 0), (0.25, 25), (0.1, 10), (0.01, 1)):
        sample = ReadSampler(rate)
        assert sum(sample() for _ in range(100)) == expected, rate
    quarter = ReadSampler(0.25)
    assert [quarter() for _ in range(8)] == [False, False, False, True] * 2


# ------------------------------------------------------------------------------ pool


class Conn:
    def __init__(self, params: Key) -> None:
        self.params = params
        self.closed = False

    @property
    def broken(self) -> bool:
        return self.closed

    async def reset(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


P: Key = (("user", "u"),)


def pool_values(source: str) -> dict[str, float]:
    labels = {"source": source, "role": "read"}
    return {
        "size": value("querybase_pool_size", **labels),
        "idle": value("querybase_pool_idle_connections", **labels),
        "in_use": value("querybase_pool_in_use_connections", **labels),
        "opening": value("querybase_pool_opening_connections", **labels),
        "waiting": value("querybase_pool_waiting_clients", **labels),
        "checkouts": value("querybase_pool_checkout_wait_seconds_count", **labels),
        "timeouts": value("querybase_pool_checkout_timeouts_total", **labels),
        "errors": value("querybase_pool_connect_errors_total", **labels),
    }


async def test_pool_reports_size_idle_in_use_waiting_and_waits() -> None:
    async def connect(params: Key) -> Conn:
        await asyncio.sleep(0)
        return Conn(params)

    pool: Pool[Conn] = Pool("unit-pool/read", connect, size=2, timeout=0.3)
    assert pool_values("unit-pool") == dict.fromkeys(pool_values("unit-pool"), 0.0) | {"size": 2.0}
    first = await pool.acquire(P)
    second = await pool.acquire(P)
    assert pool_values("unit-pool") | {} == {
        "size": 2.0,
        "idle": 0.0,
        "in_use": 2.0,
        "opening": 0.0,
        "waiting": 0.0,
        "checkouts": 2.0,
        "timeouts": 0.0,
        "errors": 0.0,
    }
    third = asyncio.create_task(pool.acquire(P))
    await asyncio.sleep(0.05)
    assert pool_values("unit-pool")["waiting"] == 1.0
    await pool.release(first)
    assert await third is first
    assert pool_values("unit-pool")["waiting"] == 0.0
    with pytest.raises(PoolTimeout):
        await pool.acquire(P)
    await pool.release(second)
    got = pool_values("unit-pool")
    assert (got["idle"], got["in_use"], got["timeouts"], got["checkouts"]) == (1.0, 1.0, 1.0, 3.0)
    await pool.close()
    assert pool_values("unit-pool")["size"] == 0.0
    assert pool_values("unit-pool")["idle"] == 0.0


async def test_pool_counts_connect_errors() -> None:
    async def connect(params: Key) -> Conn:
        raise UpstreamConnectError("upstream said no")

    pool: Pool[Conn] = Pool("unit-broken/read", connect, size=1, timeout=1.0)
    for _ in range(3):
        with pytest.raises(UpstreamConnectError):
            await pool.acquire(P)
    got = pool_values("unit-broken")
    assert (got["errors"], got["opening"], got["waiting"], got["checkouts"]) == (3.0, 0.0, 0.0, 0.0)
    await pool.close()


# ------------------------------------------------------------------------------ logins


def test_login_limiter_counts_failures_and_refusals() -> None:
    def failures(reason: str) -> float:
        return value("querybase_login_failures_total", protocol="unit", reason=reason)

    limiter = LoginLimiter(per_user=2, protocol="unit")
    before = {r: failures(r) for r in ("wrong_password", "unknown_user", "rate_limited")}
    limiter.failure("ann", "10.0.0.1")
    limiter.failure("ann", "10.0.0.1", "unknown_user")
    with pytest.raises(LoginRateLimited):
        limiter.check("ann", "10.0.0.1")
    limiter.check("bea", "10.0.0.2")
    assert {r: failures(r) - before[r] for r in before} == {
        "wrong_password": 1,
        "unknown_user": 1,
        "rate_limited": 1,
    }


# ------------------------------------------------------------------------------ caches


def cache_counts() -> dict[tuple[str, str, str], float]:
    out = {}
    for protocol, level in (("postgresql", "exact"), ("mysql", "exact"), ("postgresql", "fingerprint")):
        for what in ("hits", "misses"):
            out[(protocol, level, what)] = value(
                f"querybase_classification_cache_{what}_total", protocol=protocol, level=level
            )
    return out


def test_sync_copies_cache_counts_once() -> None:
    metrics.sync()
    before = cache_counts()
    classify_mysql_cached("SELECT 1 FROM unit_sync_table")
    classify_mysql_cached("SELECT 1 FROM unit_sync_table")
    classify_pg_cached("SELECT 1 FROM unit_sync_pg WHERE a = 1")
    classify_pg_cached("SELECT 1 FROM unit_sync_pg WHERE a = 2")  # fingerprint hit
    metrics.sync()
    metrics.sync()  # nothing new: nothing added
    after = cache_counts()
    moved = {key: after[key] - before[key] for key in after if after[key] != before[key]}
    assert moved == {
        ("mysql", "exact", "misses"): 1,
        ("mysql", "exact", "hits"): 1,
        ("postgresql", "exact", "misses"): 2,
        ("postgresql", "fingerprint", "misses"): 1,
        ("postgresql", "fingerprint", "hits"): 1,
    }
    assert value("querybase_classification_cache_entries", protocol="postgresql", level="fingerprint") == len(
        pg_fingerprint_level
    )


# ------------------------------------------------------------------------------ notifier


def refused_url() -> str:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/refused"


async def test_notifier_counts_attempts_by_outcome() -> None:
    def counts() -> dict[str, float]:
        return {
            o: value("querybase_notification_deliveries_total", target="unit-hook", outcome=o)
            for o in metrics.NOTIFY_OUTCOMES
        }

    before = counts()
    target = WebhookTarget(name="unit-hook", url=refused_url())
    settings = NotifySettings(targets=[target], max_attempts=3, backoff_seconds=0.0, queue_size=1)
    notifier = Notifier(settings, None)
    notifier.publish("created", {"id": 1})
    notifier.publish("created", {"id": 2})  # the queue holds one: the first is dropped
    await notifier.start()
    for _ in range(200):
        if counts()["failed"] > before["failed"]:
            break
        await asyncio.sleep(0.02)
    await notifier.close(2.0)
    assert {o: counts()[o] - before[o] for o in before} == {
        "delivered": 0,
        "retrying": 2,
        "failed": 1,
        "dropped": 1,
    }


# ------------------------------------------------------------------------------ logging


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Configure QueryBase logging as `serve` does (JSON) into a buffer; restore afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    real, sys.stderr = sys.stderr, stream  # configure() binds to sys.stderr
    try:
        configure(LogSettings(level="debug", format="json"))
    finally:
        sys.stderr = real
    try:
        yield stream
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        structlog.reset_defaults()


def test_secret_fields_are_redacted_in_structlog_and_stdlib_lines(json_log: io.StringIO) -> None:
    log = structlog.get_logger("querybase.unit").bind(connection_id=7, protocol="mysql")
    log.info("login", user="ann", password="hunter2-secret", scramble="c2NyYW1ibGU=", kind="read")
    log.info("held", parameters=[{"value_b64": "c2VjcmV0"}], api_token="qbt_abc", source="shop")
    logging.getLogger("uvicorn.error").info("extra", extra={"client_proof": "proof-value"})
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["login", "held", "extra"]
    assert (lines[0]["user"], lines[0]["kind"], lines[0]["connection_id"]) == ("ann", "read", 7)
    assert (lines[0]["password"], lines[0]["scramble"]) == (REDACTED, REDACTED)
    assert (lines[1]["parameters"], lines[1]["api_token"]) == (REDACTED, REDACTED)
    assert lines[2]["client_proof"] == REDACTED
    text = json_log.getvalue()
    for secret in ("hunter2", "c2NyYW1ibGU", "c2VjcmV0", "qbt_abc", "proof-value"):
        assert secret not in text


# ------------------------------------------------------------------------------ multiprocess

WORKER = """
import os, sys
from policies.types import Action
from proxy.observe import metrics
assert metrics.MULTIPROCESS
metrics.CLIENT_CONNECTIONS_ACCEPTED.labels("postgresql").inc(int(sys.argv[1]))
metrics.CLIENT_CONNECTIONS_OPEN.labels("postgresql").inc(int(sys.argv[1]))
metrics.statement_metrics("postgresql", "mp").duration[Action.FORWARD].observe(0.002)
print(os.getpid())
"""

SCRAPER = """
import sys
from proxy.observe import metrics
for pid in sys.argv[1:]:
    metrics.mark_process_dead(int(pid))
sys.stdout.write(metrics.exposition().decode())
"""


def test_multiprocess_mode_merges_every_worker(tmp_path: Path) -> None:
    env = {**os.environ, metrics.MULTIPROC_ENV: str(tmp_path)}

    def run(code: str, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code, *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    first = run(WORKER, "2").strip()
    run(WORKER, "3")

    def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    merged = samples(run(SCRAPER))
    accepted = ("querybase_client_connections_accepted_total", (("protocol", "postgresql"),))
    open_now = ("querybase_client_connections_open", (("protocol", "postgresql"),))
    count = (
        "querybase_statement_duration_seconds_count",
        (("protocol", "postgresql"), ("source", "mp"), ("verdict", "forward")),
    )
    assert (merged[accepted], merged[open_now], merged[count]) == (5, 5, 2)
    # The first worker is gone: its open connections leave the livesum gauge, its counts stay.
    after = samples(run(SCRAPER, first))
    assert (after[accepted], after[open_now], after[count]) == (5, 3, 2)
