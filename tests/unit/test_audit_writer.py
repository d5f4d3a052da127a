"""AuditWriter on a real SQLite store: batched appends in order, health, overflow, an unavailable
store (another connection holding the write lock), the anchor, flush and close."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import event, select, text

from proxy.audit import log as audit
from proxy.store.db import Store
from proxy.store.models import AuditEvent

WAIT = 20.0  # seconds: longer than SQLite's 5 s busy timeout


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "catalog.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[Store]:
    store = Store(f"sqlite+aiosqlite:///{db_path}")
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def anchor(db_path: Path) -> audit.Anchor:
    return audit.Anchor(db_path.with_name(db_path.name + audit.ANCHOR_SUFFIX))


class Health:
    """Collects on_health_change calls."""

    def __init__(self) -> None:
        self.changes: list[tuple[bool, str | None]] = []

    def __call__(self, healthy: bool, reason: str | None) -> None:
        self.changes.append((healthy, reason))


@pytest.fixture
def captured() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as logs:
        yield logs


async def rows(store: Store) -> list[AuditEvent]:
    async with store.session() as session:
        return list((await session.scalars(select(AuditEvent).order_by(AuditEvent.id))).all())


async def verify(store: Store, anchor: audit.Anchor | None) -> audit.VerifyResult:
    async with store.session() as session:
        return await audit.verify(session, anchor)


async def until(condition: Any, what: str, timeout: float = WAIT) -> None:  # noqa: ASYNC109 - polls a plain attribute
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def lock_database(path: Path) -> sqlite3.Connection:
    """Another connection holding SQLite's write lock: every other writer gets 'database is locked'."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    return conn


# writing -------------------------------------------------------------------------------------


async def test_recorded_events_land_in_order_in_batches(store: Store, anchor: audit.Anchor) -> None:
    commits: list[int] = []
    event.listen(store.write_engine.sync_engine, "commit", lambda _conn: commits.append(1))
    writer = audit.AuditWriter(store, batch_size=4, anchor=anchor)
    for i in range(10):  # queued before the task starts: batches of 4, 4 and 2
        writer.record("pg.login", actor=f"user{i}", source="shop", subject="127.0.0.1", payload={"i": i})
    assert writer.depth == 10
    await writer.start()
    assert await writer.flush(5)
    assert (writer.depth, writer.written, writer.dropped) == (0, 10, 0)
    assert len(commits) == 3
    stored = await rows(store)
    assert [e.actor for e in stored] == [f"user{i}" for i in range(10)]
    assert [e.payload for e in stored] == [{"i": i} for i in range(10)]
    assert all((e.kind, e.source, e.subject) == ("pg.login", "shop", "127.0.0.1") for e in stored)
    times = [audit.as_utc(e.occurred_at) for e in stored]
    assert times == sorted(times)  # when recorded, not when written
    result = await verify(store, anchor)
    assert result.ok, result.describe()
    assert result.anchored_id == 10
    await writer.close(5)


async def test_batches_and_direct_appends_share_one_chain(store: Store, anchor: audit.Anchor) -> None:
    audit.attach_anchor(store, anchor)
    writer = audit.AuditWriter(store, batch_size=3, anchor=anchor)
    await writer.start()

    async def direct(i: int) -> None:
        async with store.write_session() as session, session.begin():
            await audit.append(session, "group.created", actor="admin", subject=f"g{i}")

    for i in range(20):
        writer.record("pg.verdict", actor="alice", payload={"n": i})
        if i % 4 == 0:
            await direct(i)
    assert await writer.flush(5)
    stored = await rows(store)
    assert len(stored) == 25
    assert [e.payload["n"] for e in stored if e.kind == "pg.verdict"] == list(range(20))
    result = await verify(store, anchor)
    assert result.ok, result.describe()
    assert result.anchored_id == 25
    await writer.close(5)


async def test_a_bad_payload_is_kept_without_wedging_the_queue(store: Store, captured: list[Any]) -> None:
    writer = audit.AuditWriter(store)
    await writer.start()
    writer.record("pg.verdict", actor="a", payload={"value": object()})
    writer.record("pg.verdict", actor="b", payload={"ok": True})
    assert await writer.flush(5)
    first, second = await rows(store)
    assert set(first.payload) == {"unserialisable_payload"}
    assert second.payload == {"ok": True}
    assert any(e["event"] == "audit.unserialisable_payload" for e in captured)
    await writer.close(5)


async def test_a_retried_batch_that_had_committed_is_not_appended_twice(store: Store) -> None:
    writer = audit.AuditWriter(store)
    batch = [audit.PendingEvent("pg.login", "alice", "shop", None, {"tls": True}, time.time())]
    async with store.write_session() as session, session.begin():
        committed = await audit.append_batch(session, batch)
    # The retry after an attempt whose outcome was lost finds the stored copy.
    assert await writer._commit(batch, True) == committed
    assert len(await rows(store)) == 1
    # A first attempt never looks, and an identical event at another moment is a new event.
    again = [batch[0]._replace(at=batch[0].at + 1)]
    assert (await writer._commit(again, True))[0] == 2


# health and overflow -------------------------------------------------------------------------


async def test_a_full_queue_is_unhealthy_and_drops_loudly(store: Store, captured: list[Any]) -> None:
    health = Health()
    writer = audit.AuditWriter(store, queue_size=3, on_health_change=health)
    writer.record("pg.login", actor="a")
    writer.record("pg.login", actor="b")
    assert writer.healthy
    writer.record("pg.login", actor="c")  # takes the last slot: the next check already refuses
    assert not writer.healthy
    assert writer.reason == "audit queue full (3 events waiting)"
    writer.record("pg.login", actor="d")
    writer.record("pg.login", actor="e")
    assert (writer.dropped, writer.depth) == (2, 3)
    drops = [e for e in captured if e["event"] == "audit.event_dropped"]
    assert len(drops) == 1  # once per episode, not per event
    assert drops[0]["log_level"] == "error"
    with pytest.raises(audit.AuditUnavailable, match=r"audit queue full .*writes and approvals are refused"):
        writer.check()

    await writer.start()
    assert await writer.flush(5)
    assert writer.healthy
    assert writer.reason is None
    assert [e.actor for e in await rows(store)] == ["a", "b", "c"]
    assert health.changes == [(False, "audit queue full (3 events waiting)"), (True, None)]
    recovered = [e for e in captured if e["event"] == "audit.healthy"]
    assert recovered[0]["dropped_while_unhealthy"] == 2
    await writer.close(5)


@pytest.mark.parametrize(("on_failure", "reads"), [("block", False), ("allow", True)])
async def test_on_failure_decides_for_reads_only(store: Store, on_failure: Any, reads: bool) -> None:
    writer = audit.AuditWriter(store, queue_size=1, on_failure=on_failure)
    assert writer.admits(read=True)
    assert writer.admits(read=False)
    writer.check(read=False)
    writer.record("pg.login", actor="a")  # fills the queue
    assert writer.admits(read=True) is reads
    assert writer.admits(read=False) is False
    with pytest.raises(audit.AuditUnavailable):
        writer.check(read=False)
    if reads:
        writer.check(read=True)
    else:
        with pytest.raises(audit.AuditUnavailable, match="statements are refused"):
            writer.check(read=True)
    await writer.close(1)


async def test_an_unavailable_store_stops_writes_and_service_resumes(
    store: Store, db_path: Path, anchor: audit.Anchor, captured: list[Any]
) -> None:
    health = Health()
    writer = audit.AuditWriter(store, anchor=anchor, on_health_change=health, retry_max=0.2)
    await writer.start()
    writer.record("pg.login", actor="before")
    assert await writer.flush(5)

    locker = lock_database(db_path)
    try:
        writer.record("pg.verdict", actor="alice", payload={"statement": "UPDATE t SET x = 1"})
        await until(lambda: not writer.healthy, "the writer to notice the locked store")
        assert writer.reason is not None
        assert "refuses audit writes: database is locked" in writer.reason
        with pytest.raises(audit.AuditUnavailable) as refused:
            writer.check(read=False)
        assert "writes and approvals are refused until it recovers" in refused.value.message
        assert "database is locked" in refused.value.message
        assert refused.value.code == "audit_unavailable"
        writer.record("pg.verdict", actor="alice", payload={"statement": "SELECT 1"})  # still accepted
        assert writer.depth == 2
        assert not await writer.flush(0.2)
        assert [e.actor for e in await rows(store)] == ["before"]  # nothing went unrecorded...
    finally:
        locker.execute("ROLLBACK")
        locker.close()

    await until(lambda: writer.healthy, "the writer to recover")
    assert await writer.flush(WAIT)
    stored = await rows(store)
    assert [(e.actor, e.payload.get("statement")) for e in stored] == [
        ("before", None),
        ("alice", "UPDATE t SET x = 1"),
        ("alice", "SELECT 1"),
    ]  # ...and nothing was lost or written twice
    assert writer.written == 3
    assert health.changes[0][0] is False
    assert health.changes[-1] == (True, None)
    result = await verify(store, anchor)
    assert result.ok, result.describe()
    assert result.anchored_id == 3
    assert [e["event"] for e in captured if e["event"] == "audit.write_failed"] == ["audit.write_failed"]
    writer.check()
    await writer.close(5)


# the anchor ----------------------------------------------------------------------------------


async def test_start_anchors_an_existing_unanchored_chain(store: Store, anchor: audit.Anchor) -> None:
    async with store.write_session() as session, session.begin():
        for i in range(3):
            await audit.append(session, "user.created", actor="cli:root", subject=f"u{i}")
    writer = audit.AuditWriter(store, anchor=anchor)
    await writer.start()
    assert anchor.read() is not None
    assert anchor.read().event_id == 3  # type: ignore[union-attr]
    await writer.close(5)


async def test_an_unwritable_anchor_is_unhealthy_until_it_can_be_written(
    store: Store, tmp_path: Path
) -> None:
    blocker = tmp_path / "anchors"
    blocker.write_text("a file where the anchor's directory should be")
    anchor = audit.Anchor(blocker / "qb.audit-anchor")
    writer = audit.AuditWriter(store, anchor=anchor, retry_initial=0.05, retry_max=0.1)
    await writer.start()
    writer.record("pg.login", actor="a")
    assert await writer.flush(5)  # the event is in the store...
    assert len(await rows(store)) == 1
    assert not writer.healthy  # ...but its tail protection is not
    assert writer.reason is not None
    assert "cannot write it" in writer.reason
    blocker.unlink()
    await until(lambda: writer.healthy, "the anchor to be retried")
    assert anchor.read() == audit.AnchorRecord(1, (await rows(store))[0].hash)
    await writer.close(5)


async def test_a_chain_shorter_than_its_anchor_is_logged_at_start(
    store: Store, anchor: audit.Anchor, captured: list[Any]
) -> None:
    anchor.advance(7, "a" * 64)
    writer = audit.AuditWriter(store, anchor=anchor)
    await writer.start()
    assert [e for e in captured if e["event"] == "audit.chain_shorter_than_anchor"]
    assert anchor.read() == audit.AnchorRecord(7, "a" * 64)
    await writer.close(5)


# shutdown ------------------------------------------------------------------------------------


async def test_close_flushes_and_later_events_are_counted(store: Store, captured: list[Any]) -> None:
    writer = audit.AuditWriter(store)
    await writer.start()
    for i in range(50):
        writer.record("mysql.verdict", actor="bob", payload={"i": i})
    await writer.close(5)
    assert len(await rows(store)) == 50
    assert not writer.healthy
    assert writer.reason == "writer closed"
    writer.record("mysql.verdict", actor="late")
    assert writer.dropped == 1
    assert next(e for e in captured if e["event"] == "audit.event_dropped")["reason"] == "writer closed"
    assert not [e for e in captured if e["event"] == "audit.events_not_written"]
    await writer.close(5)  # twice is fine


async def test_close_on_a_locked_store_gives_up_loudly(
    store: Store, db_path: Path, captured: list[Any]
) -> None:
    writer = audit.AuditWriter(store, retry_max=0.1)
    await writer.start()
    locker = lock_database(db_path)
    try:
        writer.record("pg.login", actor="stuck")
        started = time.monotonic()
        await writer.close(0.5)
        assert time.monotonic() - started < 0.5 + audit.CLOSE_GRACE + 1
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    lost = [e for e in captured if e["event"] == "audit.events_not_written"]
    assert lost
    assert lost[0]["count"] == 1
    assert lost[0]["log_level"] == "error"
    async with store.session() as session:
        assert (await session.execute(text("SELECT count(*) FROM audit_events"))).scalar() == 0


async def test_congestion_slows_callers_instead_of_refusing(
    store: Store, captured: list[dict[str, Any]]
) -> None:
    writer = audit.AuditWriter(store, queue_size=8, batch_size=2)
    for n in range(5):
        writer.record("statement", actor="alice", payload={"n": n})
    assert not writer.congested  # below three quarters
    writer.record("statement", actor="alice", payload={"n": 5})
    assert writer.congested  # 6 of 8 queued: callers should wait for room
    assert writer.healthy  # still healthy: nothing is refused
    room = asyncio.ensure_future(writer.room())
    await asyncio.sleep(0.05)
    assert not room.done()
    await writer.start()
    await asyncio.wait_for(room, WAIT)  # drained to half: room again
    assert not writer.congested
    assert await writer.flush(WAIT)
    await writer.close(WAIT)
    assert [r.payload["n"] for r in await rows(store)] == list(range(6))
    assert any(e["event"] == "audit.congested" for e in captured)


async def test_close_releases_callers_waiting_for_room(store: Store) -> None:
    writer = audit.AuditWriter(store, queue_size=4, batch_size=1)
    for n in range(3):
        writer.record("statement", actor="alice", payload={"n": n})
    assert writer.congested
    room = asyncio.ensure_future(writer.room())
    await writer.close(0.1)  # never started: nothing drains, but nobody may wait forever
    await asyncio.wait_for(room, 1)


def _statement(actor: str, text: str, verdict: str = "forward", at: float = 0.0) -> audit.PendingEvent:
    payload = {"protocol": "mysql", "kind": "read", "verdict": verdict, "statement": text}
    return audit.PendingEvent("statement", actor, "shop", f"mysql:{actor}", payload, at)


def test_coalesce_merges_repeated_forwarded_statements_of_one_session() -> None:
    batch = [
        _statement("alice", "SELECT ?", at=1.0),
        _statement("bob", "SELECT ?", at=2.0),
        _statement("alice", "SELECT ?", at=3.0),
        _statement("alice", "DELETE FROM t", verdict="hold", at=4.0),
        _statement("alice", "DELETE FROM t", verdict="hold", at=5.0),
        _statement("alice", "SELECT ?", at=6.0),
    ]
    out = audit.coalesce(batch)
    assert [(e.actor, e.payload["verdict"], e.payload.get("count")) for e in out if e.payload] == [
        ("alice", "forward", 3),
        ("bob", "forward", None),
        ("alice", "hold", None),
        ("alice", "hold", None),  # holds are never merged: each is a change request
    ]
    assert out[0].at == 1.0
    assert out[0].payload is not None
    assert out[0].payload["last_at"] == "1970-01-01T00:00:06.000000+00:00"
    assert batch[0].payload is not None
    assert "count" not in batch[0].payload  # the queued events are not changed (a retry coalesces again)
    assert audit.coalesce(batch) == out


async def test_writer_stores_coalesced_statements_in_a_verifiable_chain(store: Store) -> None:
    writer = audit.AuditWriter(store, batch_size=100)
    for _ in range(50):
        writer.record(
            "statement",
            actor="alice",
            source="shop",
            subject="mysql:1",
            payload={"protocol": "mysql", "kind": "read", "verdict": "forward", "statement": "SELECT ?"},
        )
    await writer.start()
    assert await writer.flush(WAIT)
    await writer.close(WAIT)
    stored = await rows(store)
    assert len(stored) == 1
    assert stored[0].payload["count"] == 50
    assert (await verify(store, None)).ok
