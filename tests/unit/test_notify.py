"""Webhook notifications (proxy/changes/notify.py) against a real HTTP receiver and a real SQLite store.

The receiver is a small ASGI app served by uvicorn in the test's event loop; each target gets its
own path, and a test scripts the answers per path (500 twice, 429 with Retry-After, 404, hang).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import shutil
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import uvicorn
from pydantic import ValidationError
from sqlalchemy import text
from structlog.testing import capture_logs

from proxy.changes.notify import EVENTS, STATEMENT_LIMIT, Notifier, summary
from proxy.config import NotifySettings, WebhookTarget
from proxy.store.catalog import Catalog, SourceSpec
from proxy.store.crypto import SecretBox
from proxy.store.db import Store
from proxy.store.models import ChangeRequest, Engine

SQLITE = "sqlite+aiosqlite:///"
KEY = bytes(range(32))
REQUESTS = 20  # change requests 1..20 exist in the template store (notification rows reference them)


# receiver ------------------------------------------------------------------------------------


@dataclass
class Hit:
    path: str
    body: Any
    headers: dict[str, str]
    at: float


@dataclass
class Receiver:
    """Records every POST; `script[path]` lists the answers to give, in order, then 200."""

    port: int = 0
    hits: list[Hit] = field(default_factory=list)
    script: dict[str, list[tuple[int, dict[str, str]] | str]] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self, path: str) -> list[Any]:
        return [h.body for h in self.hits if h.path == path]

    async def wait_for(self, path: str, count: int, within: float = 5.0) -> list[Hit]:
        async with asyncio.timeout(within), self.changed:
            await self.changed.wait_for(lambda: len(self.bodies(path)) >= count)
        return [h for h in self.hits if h.path == path]

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        body = json.loads(raw) if raw else None
        async with self.changed:
            self.hits.append(Hit(scope["path"], body, headers, time.monotonic()))
            self.changed.notify_all()
        planned = self.script.get(scope["path"])
        answer = planned.pop(0) if planned else (200, {})
        if answer == "hang":
            await self.release.wait()
            answer = (200, {})
        assert isinstance(answer, tuple)
        status, extra = answer
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (k.encode(), v.encode()) for k, v in {"content-type": "text/plain", **extra}.items()
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"ok" if status < 300 else b"no_service"})


class _QuietUvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # leave pytest's signal handlers alone
        yield


@pytest_asyncio.fixture(loop_scope="function")
async def receiver() -> AsyncIterator[Receiver]:
    sock = socket.create_server(("127.0.0.1", 0))
    rec = Receiver(port=sock.getsockname()[1])
    config = uvicorn.Config(
        rec.app,
        log_config=None,
        lifespan="off",
        access_log=False,
        http="h11",
        ws="none",
        interface="asgi3",
        timeout_graceful_shutdown=1,
    )
    server = _QuietUvicorn(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), task.result()
        await asyncio.sleep(0.01)
    try:
        yield rec
    finally:
        rec.release.set()
        server.should_exit = True
        await task
        sock.close()


def refused_url() -> str:
    """An http URL on a port nothing listens on."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/refused"


# store ---------------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated catalog with change requests 1..REQUESTS; each test gets a copy."""
    path = tmp_path_factory.mktemp("notify-template") / "catalog.db"
    template = Store(SQLITE + str(path))
    await template.migrate()
    catalog = Catalog(template, SecretBox(KEY))
    await catalog.add_user("alice", "alice-password-1", actor=None)
    spec = SourceSpec(
        name="shop",
        engine=Engine.POSTGRESQL,
        host="db.internal",
        port=5432,
        database="shop",
        read_user="qb_reader",
        write_user="qb_writer",
    )
    await catalog.add_source(spec, read_password="r-pw-1", write_password="w-pw-1", actor=None)
    async with template.engine.connect() as conn:
        source_id = (await conn.execute(text("SELECT id FROM sources"))).scalar_one()
        user_id = (await conn.execute(text("SELECT id FROM users"))).scalar_one()
    async with template.write_session() as session, session.begin():
        session.add_all(
            ChangeRequest(
                id=n,
                source_id=source_id,
                requester_id=user_id,
                kind="write",
                statement_text="DELETE FROM orders",
                classification={"kind": "write"},
                session_facts={},
            )
            for n in range(1, REQUESTS + 1)
        )
    await template.close()
    return path


@pytest_asyncio.fixture(loop_scope="function")
async def store(tmp_path: Path, migrated_db: Path) -> AsyncIterator[Store]:
    shutil.copyfile(migrated_db, tmp_path / "catalog.db")
    store = Store(SQLITE + str(tmp_path / "catalog.db"))
    try:
        yield store
    finally:
        await store.close()


async def deliveries(store: Store) -> list[tuple[Any, ...]]:
    async with store.engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT request_id, event, target, attempt, outcome, http_status, error"
                " FROM notification_deliveries ORDER BY id"
            )
        )
        return [tuple(r) for r in result]


# helpers -------------------------------------------------------------------------------------


def request(rid: int = 12, **changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "id": rid,
        "source": "shop",
        "requester": "alice",
        "status": "approved",
        "kind": "write",
        "statement": "UPDATE orders SET state = 'shipped' WHERE id = 7",
        "approvals": 1,
        "approvals_required": 1,
        "created_at": "2025-01-02T03:04:05+00:00",
        "actor": "bob",
        "comment": "looks fine",
        "rows_affected": None,
        "error": None,
        "url": "https://querybase.example/requests/12",
    }
    fields.update(changes)
    return fields


def settings(*targets: WebhookTarget, **changes: Any) -> NotifySettings:
    values: dict[str, Any] = {
        "targets": list(targets),
        "timeout_seconds": 5.0,
        "max_attempts": 5,
        "backoff_seconds": 0.01,
        "queue_size": 100,
    }
    values.update(changes)
    return NotifySettings(**values)


def target(name: str, url: str, kind: str = "json", events: list[str] | None = None) -> WebhookTarget:
    return WebhookTarget(name=name, kind=kind, url=url, events=events)


@contextlib.asynccontextmanager
async def running(notifier: Notifier, close_timeout: float = 5.0) -> AsyncIterator[Notifier]:
    await notifier.start()
    try:
        yield notifier
    finally:
        await notifier.close(close_timeout)


# payloads ------------------------------------------------------------------------------------


async def test_json_payload(receiver: Receiver) -> None:
    notifier = Notifier(settings(target("hook", receiver.url("/hook"))), None)
    async with running(notifier):
        notifier.publish("approved", request())
        (hit,) = await receiver.wait_for("/hook", 1)
    assert set(hit.body) == {"event", "request", "sent_at"}
    assert hit.body["event"] == "approved"
    assert hit.body["request"] == request()
    sent_at = datetime.fromisoformat(hit.body["sent_at"])
    assert sent_at.tzinfo is not None
    assert abs((datetime.now(UTC) - sent_at).total_seconds()) < 60
    assert hit.headers["content-type"] == "application/json"
    assert hit.headers["x-querybase-event"] == "approved"
    assert len(hit.headers["x-querybase-delivery"]) == 32


async def test_slack_payload(receiver: Receiver) -> None:
    long_statement = "INSERT INTO t VALUES " + ", ".join(f"({n}, '<x> & y')" for n in range(1000))
    notifier = Notifier(settings(target("slack", receiver.url("/slack"), kind="slack")), None)
    async with running(notifier):
        notifier.publish("approved", request())
        notifier.publish("executed", request(13, statement=long_statement, rows_affected=1000, url=None))
        first, second = (h.body for h in await receiver.wait_for("/slack", 2))

    assert first["text"] == "QueryBase request #12 on shop approved by bob (1/1 approvals)"
    headline, detail, notes = first["blocks"]
    assert headline == {
        "type": "section",
        "text": {
            "type": "mrkdwn",
            "text": "*<https://querybase.example/requests/12|QueryBase request #12 on shop approved by bob"
            " (1/1 approvals)>*",
        },
    }
    assert detail["type"] == "section"
    assert detail["text"] == {
        "type": "mrkdwn",
        "text": "```UPDATE orders SET state = 'shipped' WHERE id = 7```",
    }
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in detail["fields"]}
    assert fields == {
        "*Source*": "shop",
        "*Requester*": "alice",
        "*Status*": "approved",
        "*Kind*": "write",
        "*Approvals*": "1/1",
        "*By*": "bob",
        "*Created*": "2025-01-02T03:04:05+00:00",
    }
    assert all(f["type"] == "mrkdwn" for f in detail["fields"])
    assert notes == {"type": "context", "elements": [{"type": "mrkdwn", "text": "*Comment:* looks fine"}]}

    assert second["text"] == "QueryBase request #13 on shop executed by bob, 1000 rows affected"
    code = second["blocks"][1]["text"]["text"]
    assert code.startswith("```INSERT INTO t VALUES (0, '&lt;x&gt; &amp; y')")
    assert code.endswith("…```")
    assert len(code) < 3000  # Slack's limit for a section's text
    assert len(code) >= STATEMENT_LIMIT
    assert "<x>" not in json.dumps(second)


async def test_google_chat_payload(receiver: Receiver) -> None:
    notifier = Notifier(settings(target("chat", receiver.url("/chat"), kind="google_chat")), None)
    bad = request(
        9, status="failed", statement="DELETE FROM a\nWHERE b < 'x'", error="23503: <fk> violated\nmore"
    )
    async with running(notifier):
        notifier.publish("failed", bad)
        (hit,) = await receiver.wait_for("/chat", 1)
    body = hit.body
    assert body["text"] == "QueryBase request #9 on shop failed by bob: 23503: <fk> violated"
    (card_v2,) = body["cardsV2"]
    assert card_v2["cardId"] == "querybase-9-failed"
    card = card_v2["card"]
    assert card["header"] == {"title": "QueryBase request #9", "subtitle": "shop: failed"}
    fields, statement, notes, link = card["sections"]
    labels = {w["decoratedText"]["topLabel"]: w["decoratedText"]["text"] for w in fields["widgets"]}
    assert labels["Source"] == "shop"
    assert labels["Status"] == "failed"
    assert labels["Approvals"] == "1/1"
    assert statement == {
        "header": "Statement",
        "widgets": [{"textParagraph": {"text": "DELETE FROM a<br>WHERE b &lt; 'x'"}}],
    }
    note_texts = {w["decoratedText"]["topLabel"]: w["decoratedText"]["text"] for w in notes["widgets"]}
    assert note_texts == {"Comment": "looks fine", "Error": "23503: &lt;fk&gt; violated<br>more"}
    assert link == {
        "widgets": [
            {
                "buttonList": {
                    "buttons": [
                        {
                            "text": "Open request",
                            "onClick": {"openLink": {"url": "https://querybase.example/requests/12"}},
                        }
                    ]
                }
            }
        ]
    }


@pytest.mark.parametrize(
    ("event", "changes", "line"),
    [
        ("created", {"actor": "alice"}, "QueryBase request #12 on shop created by alice"),
        ("rejected", {}, "QueryBase request #12 on shop rejected by bob"),
        ("cancelled", {"actor": None}, "QueryBase request #12 on shop cancelled"),
        ("executed", {"rows_affected": 1}, "QueryBase request #12 on shop executed by bob, 1 row affected"),
        ("expired", {"actor": None}, "QueryBase request #12 on shop expired"),
        ("unknown", {"actor": None}, "QueryBase request #12 on shop has an unknown outcome"),
    ],
)
def test_summary_lines(event: str, changes: dict[str, Any], line: str) -> None:
    assert summary(event, request(**changes)) == line


# routing -------------------------------------------------------------------------------------


async def test_events_filter(receiver: Receiver) -> None:
    notifier = Notifier(
        settings(
            target("audit", receiver.url("/audit"), events=["executed", "failed"]),
            target("all", receiver.url("/all")),
        ),
        None,
    )
    async with running(notifier):
        for event in EVENTS:
            notifier.publish(event, request(status=event))
        await receiver.wait_for("/all", len(EVENTS))
    assert [b["event"] for b in receiver.bodies("/all")] == list(EVENTS)
    assert [b["event"] for b in receiver.bodies("/audit")] == ["executed", "failed"]


def test_unknown_event_in_a_filter_is_refused() -> None:
    # A typo would silently mute the target for that event: the configuration refuses it.
    with pytest.raises(ValidationError, match="executd"):
        target("audit", "https://example.com/hook", events=["executd", "failed"])


async def test_publish_without_targets_is_a_noop() -> None:
    notifier = Notifier(settings(), None)
    tasks_before = len(asyncio.all_tasks())
    await notifier.start()
    assert len(asyncio.all_tasks()) == tasks_before
    for event in EVENTS:
        notifier.publish(event, request())
    started = time.monotonic()
    await notifier.close()
    assert time.monotonic() - started < 0.1


# retries and outcomes ------------------------------------------------------------------------


async def test_retry_then_success(receiver: Receiver, store: Store) -> None:
    receiver.script["/flaky"] = [(500, {}), (502, {})]
    notifier = Notifier(settings(target("flaky", receiver.url("/flaky")), backoff_seconds=0.1), store)
    async with running(notifier):
        notifier.publish("created", request(3))
        hits = await receiver.wait_for("/flaky", 3)
    assert await deliveries(store) == [
        (3, "created", "flaky", 1, "retrying", 500, "HTTP 500: no_service"),
        (3, "created", "flaky", 2, "retrying", 502, "HTTP 502: no_service"),
        (3, "created", "flaky", 3, "delivered", 200, None),
    ]
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(hits)]
    assert gaps[0] >= 0.09  # backoff 0.1 s, then doubled
    assert gaps[1] >= 0.19
    assert len({h.headers["x-querybase-delivery"] for h in hits}) == 1  # one delivery id across retries


async def test_429_honours_retry_after(receiver: Receiver, store: Store) -> None:
    receiver.script["/busy"] = [(429, {"Retry-After": "1"})]
    notifier = Notifier(settings(target("busy", receiver.url("/busy")), backoff_seconds=0.01), store)
    async with running(notifier):
        notifier.publish("approved", request(4))
        first, second = await receiver.wait_for("/busy", 2)
    assert second.at - first.at >= 0.95
    assert [row[3:6] for row in await deliveries(store)] == [(1, "retrying", 429), (2, "delivered", 200)]


async def test_404_fails_at_once(receiver: Receiver, store: Store) -> None:
    receiver.script["/gone"] = [(404, {})]
    notifier = Notifier(settings(target("gone", receiver.url("/gone"))), store)
    async with running(notifier):
        notifier.publish("rejected", request(5))
        await receiver.wait_for("/gone", 1)
    assert await deliveries(store) == [(5, "rejected", "gone", 1, "failed", 404, "HTTP 404: no_service")]
    assert len(receiver.bodies("/gone")) == 1


async def test_max_attempts_then_failed(receiver: Receiver, store: Store) -> None:
    receiver.script["/down"] = [(503, {})] * 10
    notifier = Notifier(settings(target("down", receiver.url("/down")), max_attempts=3), store)
    async with running(notifier):
        notifier.publish("executed", request(6, rows_affected=2))
        await receiver.wait_for("/down", 3)
    assert [row[3:6] for row in await deliveries(store)] == [
        (1, "retrying", 503),
        (2, "retrying", 503),
        (3, "failed", 503),
    ]
    assert len(receiver.bodies("/down")) == 3


async def test_refused_connection_is_retried_then_failed(store: Store) -> None:
    url = refused_url()
    notifier = Notifier(settings(target("nobody", url), max_attempts=2), store)
    async with running(notifier):
        notifier.publish("expired", request(7, actor=None))
    rows = await deliveries(store)
    assert [row[:6] for row in rows] == [
        (7, "expired", "nobody", 1, "retrying", None),
        (7, "expired", "nobody", 2, "failed", None),
    ]
    assert all(row[6].startswith("ConnectError") for row in rows)
    assert not any(url in row[6] or "/refused" in row[6] for row in rows)


# isolation -----------------------------------------------------------------------------------


async def test_hanging_and_refused_targets_do_not_delay_a_healthy_one(
    receiver: Receiver, store: Store
) -> None:
    receiver.script["/hang"] = ["hang"]
    notifier = Notifier(
        settings(
            target("hang", receiver.url("/hang")),
            target("refused", refused_url()),
            target("ok", receiver.url("/ok")),
            timeout_seconds=5.0,
            backoff_seconds=5.0,
        ),
        store,
    )
    await notifier.start()
    try:
        notifier.publish("approved", request(8))
        await receiver.wait_for("/hang", 1)  # the hanging target holds its request open
        notifier.publish("executed", request(9))
        started = time.monotonic()
        await receiver.wait_for("/ok", 2, within=1.0)
        assert time.monotonic() - started < 1.0
    finally:
        started = time.monotonic()
        await notifier.close(timeout=0.5)
        closing = time.monotonic() - started
    assert closing < 1.0
    rows = await deliveries(store)
    ok = [(row[0], row[4]) for row in rows if row[2] == "ok"]
    assert ok == [(8, "delivered"), (9, "delivered")]
    hang = [row[3:] for row in rows if row[2] == "hang"]
    # The first event was in flight on attempt 1; the second never left the queue.
    assert hang == [
        (1, "failed", None, "not delivered: notifier closed"),
        (0, "failed", None, "not delivered: notifier closed"),
    ]
    refused = [(row[0], row[3], row[4]) for row in rows if row[2] == "refused"]
    assert (8, 1, "retrying") in refused
    assert refused[-1][2] == "failed"


async def test_queue_overflow_drops_the_oldest(receiver: Receiver) -> None:
    notifier = Notifier(settings(target("ok", receiver.url("/ok")), queue_size=2), None)
    with capture_logs() as logs:
        for rid in (1, 2, 3, 4):  # not started yet: nothing is consumed
            notifier.publish("created", request(rid))
    assert notifier.dropped == {"ok": 2}
    dropped = [e for e in logs if e["event"] == "notify.queue_full_dropped_oldest"]
    assert [(e["target"], e["request_id"], e["log_level"]) for e in dropped] == [
        ("ok", 1, "warning"),
        ("ok", 2, "warning"),
    ]
    assert all("url" not in json.dumps(e) and str(receiver.port) not in json.dumps(e) for e in logs)
    async with running(notifier):
        await receiver.wait_for("/ok", 2)
    assert [b["request"]["id"] for b in receiver.bodies("/ok")] == [3, 4]


async def test_close_drains_the_queue(receiver: Receiver, store: Store) -> None:
    notifier = Notifier(settings(target("ok", receiver.url("/ok"))), store)
    await notifier.start()
    for rid in range(1, 11):
        notifier.publish("created", request(rid))
    started = time.monotonic()
    await notifier.close(timeout=5.0)
    assert time.monotonic() - started < 5.0
    assert [b["request"]["id"] for b in receiver.bodies("/ok")] == list(range(1, 11))
    assert [(row[0], row[4]) for row in await deliveries(store)] == [
        (rid, "delivered") for rid in range(1, 11)
    ]
    notifier.publish("created", request(11))  # after close: ignored, not raised
    await asyncio.sleep(0.05)
    assert len(receiver.bodies("/ok")) == 10


async def test_close_returns_within_its_timeout_while_a_target_hangs(
    receiver: Receiver, store: Store
) -> None:
    receiver.script["/hang"] = ["hang"]
    notifier = Notifier(settings(target("hang", receiver.url("/hang")), timeout_seconds=30.0), store)
    await notifier.start()
    for rid in (1, 2, 3):
        notifier.publish("created", request(rid))
    await receiver.wait_for("/hang", 1)
    started = time.monotonic()
    await notifier.close(timeout=1.0)
    assert 0.4 < time.monotonic() - started < 1.3
    assert [(row[0], row[3], row[4]) for row in await deliveries(store)] == [
        (1, 1, "failed"),
        (2, 0, "failed"),
        (3, 0, "failed"),
    ]


# robustness ----------------------------------------------------------------------------------


async def test_publish_never_raises(receiver: Receiver) -> None:
    circular: dict[str, Any] = {"id": 1}
    circular["self"] = circular
    weird: list[Any] = [
        {},
        {"id": "not-a-number", "statement": None},
        {"id": True, "source": b"\xff\x00", "statement": 42, "approvals": {1, 2}},
        {"id": 2, "created_at": datetime.now(UTC), "rows_affected": math.nan},
        {("tuple", "key"): 1, "id": 3},
        circular,
        None,
        ["not", "a", "dict"],
        {"id": 4, "statement": "x" * 100_000, "error": "\x00\n\n", "url": "javascript:alert(1)"},
    ]
    notifier = Notifier(
        settings(
            target("json", receiver.url("/json")),
            target("slack", receiver.url("/slack"), kind="slack"),
            target("chat", receiver.url("/chat"), kind="google_chat"),
        ),
        None,
    )
    async with running(notifier):
        for item in weird:
            notifier.publish("created", item)
        notifier.publish("no-such-event", request())
        notifier.publish(None, request())  # type: ignore[arg-type]
        notifier.publish("approved", request(12))  # the workers are still alive
        for path in ("/json", "/slack", "/chat"):
            await receiver.wait_for(path, len(weird) + 1)
    for path in ("/json", "/slack", "/chat"):
        bodies = receiver.bodies(path)
        assert len(bodies) == len(weird) + 1  # unknown events are not sent
    assert receiver.bodies("/json")[-1]["request"] == request(12)
    assert "javascript:" not in json.dumps(receiver.bodies("/slack")[-2]["blocks"][0])


async def test_unrecordable_store_does_not_stop_delivery(receiver: Receiver, tmp_path: Path) -> None:
    unmigrated = Store(SQLITE + str(tmp_path / "empty.db"))  # no notification_deliveries table
    try:
        notifier = Notifier(settings(target("ok", receiver.url("/ok"))), unmigrated)
        with capture_logs() as logs:
            async with running(notifier):
                notifier.publish("created", request(1))
                notifier.publish("approved", request(1))
                await receiver.wait_for("/ok", 2)
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["notify.record_failed"] * 2
    finally:
        await unmigrated.close()


async def test_unknown_request_id_is_logged_not_raised(receiver: Receiver, store: Store) -> None:
    notifier = Notifier(settings(target("ok", receiver.url("/ok"))), store)
    async with running(notifier):
        notifier.publish("created", request(999))  # violates the foreign key: recording fails
        notifier.publish("created", request(1))
        await receiver.wait_for("/ok", 2)
    assert [(row[0], row[4]) for row in await deliveries(store)] == [(1, "delivered")]


async def test_urls_stay_out_of_logs(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    secret = "/services/T000/B000/s3cr3t-t0ken"
    receiver.script[secret] = [(500, {})]
    notifier = Notifier(settings(target("ops", receiver.url(secret), kind="slack")), None)
    caplog.set_level(logging.DEBUG)
    with capture_logs() as logs:
        async with running(notifier):
            notifier.publish("created", request())
            await receiver.wait_for(secret, 2)
    ours = [r.getMessage() for r in caplog.records if not r.name.startswith("uvicorn")]  # not the receiver's
    assert any(r.name.startswith("httpcore") for r in caplog.records)  # the client side was captured
    assert not [m for m in ours if "s3cr3t" in m]
    assert "s3cr3t" not in json.dumps(logs, default=str)
    assert [e["event"] for e in logs] == ["notify.retrying", "notify.delivered"]
    assert all(e["target"] == "ops" for e in logs)
