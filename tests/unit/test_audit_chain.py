"""The hash-chained audit log on a SQLite store: appends verify, and every kind of tampering is named."""

from __future__ import annotations

import asyncio
import itertools
import shutil
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import text

from proxy.audit import log as audit
from proxy.store.db import Store
from proxy.store.models import AuditEvent

EVENTS: list[dict[str, Any]] = [
    {"kind": "user.created", "actor": "admin", "subject": "alice", "payload": {"admin": False}},
    {"kind": "group.created", "actor": "admin", "subject": "analysts"},
    {"kind": "group.member_added", "actor": "admin", "subject": "analysts", "payload": {"user": "alice"}},
    {
        "kind": "grant.added",
        "actor": "root",
        "source": "shop",
        "subject": "analysts",
        "payload": {"level": "read"},
    },
    {"kind": "user.disabled", "actor": None, "subject": "alice", "payload": {"why": "left — ünïcode"}},
]
SQLITE = "sqlite+aiosqlite:///"
COLUMNS = ("occurred_at", "kind", "actor", "source", "subject", "payload", "prev_hash", "hash")
SELECT_ALL = f"SELECT id, {', '.join(COLUMNS)} FROM audit_events ORDER BY id"
UPDATE_ALL = f"UPDATE audit_events SET {', '.join(f'{c} = :{c}' for c in COLUMNS)} WHERE id = :id"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty catalog file; each test gets a copy (migrating takes ~0.1 s)."""
    path = tmp_path_factory.mktemp("template") / "catalog.db"
    template = Store(SQLITE + str(path))
    await template.migrate()
    await template.close()
    assert not path.with_name("catalog.db-wal").exists()  # checkpointed: one file is the database
    return path


@pytest_asyncio.fixture(loop_scope="function")
async def store(tmp_path: Path, migrated_db: Path) -> AsyncIterator[Store]:
    shutil.copyfile(migrated_db, tmp_path / "catalog.db")
    store = Store(SQLITE + str(tmp_path / "catalog.db"))
    await store.migrate()  # a no-op on the copy, and proves it is at head
    try:
        yield store
    finally:
        await store.close()


@pytest_asyncio.fixture(loop_scope="function")
async def chained(store: Store) -> Store:
    """The store with EVENTS appended, one transaction each."""
    for event in EVENTS:
        await append(store, **event)
    return store


async def append(store: Store, kind: str, **fields: Any) -> AuditEvent:
    async with store.write_session() as session, session.begin():
        return await audit.append(session, kind, **fields)


async def verify(store: Store) -> audit.VerifyResult:
    async with store.session() as session:
        return await audit.verify(session)


async def sql(store: Store, statement: str, **params: Any) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(text(statement), params)


async def raw_rows(store: Store) -> list[dict[str, Any]]:
    async with store.engine.connect() as conn:
        result = await conn.execute(text(SELECT_ALL))
        return [dict(row._mapping) for row in result]


def assert_broken(result: audit.VerifyResult, event_id: int, problem: str) -> None:
    assert result.ok is False
    assert result.first_bad_id == event_id
    assert result.problem is not None
    assert problem in result.problem
    assert result.describe().startswith(f"audit chain broken at event #{event_id}: ")


# an intact chain -----------------------------------------------------------------------------


async def test_empty_store_has_no_events(store: Store) -> None:
    result = await verify(store)
    assert result.ok is True
    assert result.events == 0
    assert result.describe() == "no events"


async def test_appended_events_verify(chained: Store) -> None:
    result = await verify(chained)
    assert result.ok is True
    assert result.events == len(EVENTS)
    assert result.first_bad_id is None
    assert result.describe() == f"audit chain intact: {len(EVENTS)} events"


async def test_events_are_linked_from_the_genesis_hash(chained: Store) -> None:
    rows = await raw_rows(chained)
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["prev_hash"] == "0" * 64
    for before, after in itertools.pairwise(rows):
        assert after["prev_hash"] == before["hash"]
    assert all(len(r["hash"]) == 64 and int(r["hash"], 16) >= 0 for r in rows)
    assert len({r["hash"] for r in rows}) == len(rows)
    assert [r["kind"] for r in rows] == [e["kind"] for e in EVENTS]


async def test_append_returns_the_stored_event(store: Store) -> None:
    first = await append(store, "a.b", actor="x")
    second = await append(store, "a.b", actor="x")
    assert (first.id, second.id) == (1, 2)
    assert second.prev_hash == first.hash
    assert first.hash != second.hash  # same content, different position
    assert first.payload == {}


async def test_several_appends_in_one_transaction(store: Store) -> None:
    async with store.session() as session, session.begin():
        for i in range(3):
            await audit.append(session, "bulk.item", actor="batch", payload={"i": i})
    await append(store, "after", actor="x")
    result = await verify(store)
    assert result.ok
    assert result.events == 4


async def test_rolled_back_append_leaves_no_trace(chained: Store) -> None:
    async with chained.session() as session:
        transaction = await session.begin()
        await audit.append(session, "doomed", actor="x")
        await transaction.rollback()
    event = await append(chained, "next", actor="x")
    assert event.id == len(EVENTS) + 1
    result = await verify(chained)
    assert result.ok
    assert result.events == len(EVENTS) + 1


# Writers queue on SQLite (BEGIN IMMEDIATE) instead of failing with 'database is locked'.
async def test_concurrent_appends_all_land(store: Store) -> None:
    await asyncio.gather(*(append(store, "concurrent", actor=f"u{i}") for i in range(8)))
    result = await verify(store)
    assert result.ok
    assert result.events == 8
    assert sorted(r["actor"] for r in await raw_rows(store)) == [f"u{i}" for i in range(8)]


# tampering -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_id", "column", "value"),
    [
        (3, "payload", '{"user": "mallory"}'),
        (1, "payload", '{"admin": true}'),
        (2, "kind", "group.deleted"),
        (4, "actor", "mallory"),
        (5, "actor", "admin"),  # was NULL
        (1, "actor", None),
        (4, "source", "other"),
        (3, "subject", "admins"),
        (5, "payload", "{}"),  # the newest event
    ],
)
async def test_modified_content_is_named(
    chained: Store, event_id: int, column: str, value: str | None
) -> None:
    statement = f"UPDATE audit_events SET {column} = :v WHERE id = :id"
    await sql(chained, statement, v=value, id=event_id)
    assert_broken(await verify(chained), event_id, "content does not match its hash (modified)")


async def test_changed_timestamp_is_named(chained: Store) -> None:
    await sql(
        chained, "UPDATE audit_events SET occurred_at = :t WHERE id = 2", t="2020-01-01 00:00:00.000000"
    )
    assert_broken(await verify(chained), 2, "modified")


async def test_timestamp_moved_by_one_microsecond_is_named(chained: Store) -> None:
    stored = (await raw_rows(chained))[3]["occurred_at"]
    moved = datetime.fromisoformat(stored) + timedelta(microseconds=1)
    await sql(chained, "UPDATE audit_events SET occurred_at = :t WHERE id = 4", t=moved.isoformat(" "))
    assert_broken(await verify(chained), 4, "modified")


async def test_modified_event_with_a_recomputed_hash_breaks_the_next_link(chained: Store) -> None:
    async with chained.session() as session, session.begin():
        event = await session.get(AuditEvent, 3)
        assert event is not None
        event.payload = {"user": "mallory"}
        event.hash = audit.event_hash(event)
    assert_broken(await verify(chained), 4, "previous-hash link broken")


@pytest.mark.parametrize(("deleted", "named", "after"), [(3, 4, 2), (1, 2, 0), (2, 3, 1)])
async def test_deleted_event_is_named(chained: Store, deleted: int, named: int, after: int) -> None:
    await sql(chained, "DELETE FROM audit_events WHERE id = :id", id=deleted)
    result = await verify(chained)
    assert_broken(result, named, f"event(s) missing after #{after}")


async def test_deleted_and_renumbered_event_is_named(chained: Store) -> None:
    # Hide the gap: delete #3 and move #4, #5 down. #3 (was #4) no longer matches anything.
    await sql(chained, "DELETE FROM audit_events WHERE id = 3")
    await sql(chained, "UPDATE audit_events SET id = 3 WHERE id = 4")
    await sql(chained, "UPDATE audit_events SET id = 4 WHERE id = 5")
    assert_broken(await verify(chained), 3, "previous-hash link broken")


async def test_swapped_events_are_named(chained: Store) -> None:
    rows = {r["id"]: r for r in await raw_rows(chained)}
    # Every column but the id; `hash` is unique, so park #2 on a placeholder first.
    await sql(chained, "UPDATE audit_events SET hash = 'parked' WHERE id = 2")
    await sql(chained, UPDATE_ALL, id=3, **{c: rows[2][c] for c in COLUMNS})
    await sql(chained, UPDATE_ALL, id=2, **{c: rows[3][c] for c in COLUMNS})
    swapped = {r["id"]: r for r in await raw_rows(chained)}
    assert swapped[2]["kind"] == EVENTS[2]["kind"]
    assert swapped[3]["kind"] == EVENTS[1]["kind"]
    assert_broken(await verify(chained), 2, "previous-hash link broken")


async def test_forged_event_inserted_in_the_middle_is_caught_at_the_next(chained: Store) -> None:
    for event_id in (5, 4, 3):  # make room for a forged #3, highest first to keep ids unique
        await sql(
            chained, "UPDATE audit_events SET id = :new WHERE id = :old", new=event_id + 1, old=event_id
        )
    rows = {r["id"]: r for r in await raw_rows(chained)}
    async with chained.session() as session, session.begin():
        forged = AuditEvent(
            id=3,
            occurred_at=datetime.fromisoformat(rows[4]["occurred_at"]),
            kind="grant.added",
            actor="admin",
            source="shop",
            subject="mallory",
            payload={"level": "write"},
            prev_hash=rows[2]["hash"],  # links correctly to #2
        )
        forged.hash = audit.event_hash(forged)  # and is correct for itself
        session.add(forged)
    async with chained.session() as session:
        stored = await session.get(AuditEvent, 3)
        assert stored is not None
        assert audit.event_hash(stored) == stored.hash
    assert_broken(await verify(chained), 4, "previous-hash link broken")


async def test_forged_event_appended_without_the_real_link_is_named(chained: Store) -> None:
    async with chained.session() as session, session.begin():
        forged = AuditEvent(
            id=6,
            occurred_at=datetime(2030, 1, 1),
            kind="user.created",
            actor="admin",
            source=None,
            subject="mallory",
            payload={"admin": True},
            prev_hash="0" * 64,
        )
        forged.hash = audit.event_hash(forged)
        session.add(forged)
    assert_broken(await verify(chained), 6, "previous-hash link broken")


async def test_event_appended_after_a_gap_is_named(chained: Store) -> None:
    rows = await raw_rows(chained)
    await sql(
        chained,
        "INSERT INTO audit_events (id, occurred_at, kind, actor, source, subject, payload, prev_hash, hash) "
        "VALUES (7, :t, 'x', NULL, NULL, NULL, '{}', :prev, :h)",
        t=rows[-1]["occurred_at"],
        prev=rows[-1]["hash"],
        h="f" * 64,
    )
    assert_broken(await verify(chained), 7, "event(s) missing after #5")


async def test_replaced_prev_hash_is_named(chained: Store) -> None:
    await sql(chained, "UPDATE audit_events SET prev_hash = :h WHERE id = 3", h="1" * 64)
    assert_broken(await verify(chained), 3, "previous-hash link broken")


async def test_only_the_first_bad_event_is_reported(chained: Store) -> None:
    await sql(chained, "UPDATE audit_events SET kind = 'x' WHERE id IN (2, 4)")
    assert_broken(await verify(chained), 2, "modified")


async def test_verify_walks_past_one_batch(store: Store) -> None:
    async with store.session() as session, session.begin():
        for i in range(25):
            await audit.append(session, "many", actor="x", payload={"i": i})
    async with store.session() as session:
        events = [e.id async for e in audit.iter_events(session, batch=7)]
    assert events == list(range(1, 26))
    await sql(store, "UPDATE audit_events SET payload = '{\"i\": 99}' WHERE id = 23")
    assert_broken(await verify(store), 23, "modified")
