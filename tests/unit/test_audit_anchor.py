"""The audit anchor on a SQLite store: the file itself, appends moving it, and verify() checking the
chain's end against it (cut tails, rewound and re-grown tails, a missing or damaged anchor)."""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from proxy.audit import log as audit
from proxy.store.db import Store
from proxy.store.models import AuditEvent


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'catalog.db'}")
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def anchor(tmp_path: Path) -> audit.Anchor:
    return audit.Anchor(tmp_path / "catalog.db.audit-anchor")


@pytest.fixture
async def anchored(store: Store, anchor: audit.Anchor) -> Store:
    """The store with its anchor attached and five events, one transaction each."""
    audit.attach_anchor(store, anchor)
    for i in range(5):
        await append(store, f"group.created.{i}")
    return store


async def append(store: Store, kind: str) -> AuditEvent:
    async with store.write_session() as session, session.begin():
        return await audit.append(session, kind, actor="admin", subject=kind)


async def verify(store: Store, anchor: audit.Anchor | None) -> audit.VerifyResult:
    async with store.session() as session:
        return await audit.verify(session, anchor)


async def sql(store: Store, statement: str, **params: object) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(text(statement), params)


async def head(store: Store) -> tuple[int, str]:
    async with store.session() as session:
        row = (
            await session.execute(text("SELECT id, hash FROM audit_events ORDER BY id DESC LIMIT 1"))
        ).one()
    return row.id, row.hash


# the file ------------------------------------------------------------------------------------


def test_missing_anchor_reads_as_none(anchor: audit.Anchor) -> None:
    assert anchor.read() is None


def test_advance_only_moves_forward(anchor: audit.Anchor) -> None:
    assert anchor.advance(3, "a" * 64) is True
    assert anchor.read() == audit.AnchorRecord(3, "a" * 64)
    assert anchor.advance(2, "b" * 64) is False  # a late writer never rewinds it
    assert anchor.advance(3, "c" * 64) is False
    assert anchor.read() == audit.AnchorRecord(3, "a" * 64)
    assert anchor.advance(10, "d" * 64) is True
    assert anchor.read() == audit.AnchorRecord(10, "d" * 64)
    assert stat.S_IMODE(anchor.path.stat().st_mode) == 0o600
    assert anchor.path.read_text().startswith("querybase-audit-anchor v1 id=00000000000000000010 hash=ddd")


def test_a_damaged_anchor_is_refused_and_kept(anchor: audit.Anchor) -> None:
    anchor.path.write_text("id=99 hash=whatever\n")
    with pytest.raises(audit.AnchorError, match="is not an anchor record"):
        anchor.read()
    with pytest.raises(audit.AnchorError, match="is not an anchor record"):
        anchor.advance(100, "e" * 64)
    assert anchor.path.read_text() == "id=99 hash=whatever\n"  # evidence is not overwritten


def test_an_unwritable_anchor_says_so(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("")
    blocked = audit.Anchor(tmp_path / "plain-file" / "anchor")  # a parent that is not a directory
    with pytest.raises(audit.AnchorError, match="cannot write it"):
        blocked.advance(1, "f" * 64)


# appends move it -----------------------------------------------------------------------------


async def test_committed_appends_move_the_anchor_to_the_head(anchored: Store, anchor: audit.Anchor) -> None:
    assert anchor.read() == audit.AnchorRecord(*await head(anchored))
    async with anchored.write_session() as session, session.begin():
        for i in range(3):
            await audit.append(session, "bulk", actor="x", payload={"i": i})
    assert anchor.read() == audit.AnchorRecord(8, (await head(anchored))[1])


async def test_a_rolled_back_append_does_not_move_the_anchor(anchored: Store, anchor: audit.Anchor) -> None:
    before = anchor.read()
    async with anchored.write_session() as session:
        transaction = await session.begin()
        await audit.append(session, "doomed", actor="x")
        await transaction.rollback()
        async with session.begin():  # the same session commits something else afterwards
            await session.execute(text("SELECT 1"))
    assert anchor.read() == before
    assert (await verify(anchored, anchor)).ok


async def test_a_rolled_back_savepoint_never_anchors_an_event_that_is_not_there(
    anchored: Store, anchor: audit.Anchor
) -> None:
    async with anchored.write_session() as session, session.begin():
        nested = await session.begin_nested()
        await audit.append(session, "in a savepoint", actor="x")
        await nested.rollback()
    assert anchor.read() == audit.AnchorRecord(*await head(anchored))
    assert (await verify(anchored, anchor)).ok


async def test_a_store_without_an_attached_anchor_leaves_it_alone(
    anchored: Store, anchor: audit.Anchor
) -> None:
    before = anchor.read()
    audit.attach_anchor(anchored, None)
    await append(anchored, "unanchored")
    assert anchor.read() == before
    result = await verify(anchored, anchor)  # a chain longer than its anchor is fine
    assert result.ok, result.describe()
    assert (result.events, result.head_id, result.anchored_id) == (6, 6, 5)


# verify against it ---------------------------------------------------------------------------


async def test_intact_anchored_chain_verifies(anchored: Store, anchor: audit.Anchor) -> None:
    result = await verify(anchored, anchor)
    assert result.ok
    assert (result.events, result.head_id, result.anchored_id, result.note) == (5, 5, 5, None)
    assert result.anchor_file == str(anchor.path)
    assert result.describe() == "audit chain intact: 5 events"


@pytest.mark.parametrize(("removed", "named", "span"), [(1, 5, "#5"), (2, 4, "#4..#5"), (5, 1, "#1..#5")])
async def test_removed_newest_events_are_named(
    anchored: Store, anchor: audit.Anchor, removed: int, named: int, span: str
) -> None:
    await sql(anchored, "DELETE FROM audit_events WHERE id > :keep", keep=5 - removed)
    async with anchored.session() as session:
        assert (await audit.verify(session)).ok  # what the chain alone cannot see
    result = await verify(anchored, anchor)
    assert not result.ok
    assert result.first_bad_id == named
    assert result.problem is not None
    assert f"event(s) {span} removed from the end of the chain" in result.problem
    assert "records #5" in result.problem
    assert result.describe().startswith(f"audit chain broken at event #{named}: ")


async def test_a_cut_and_regrown_tail_is_named_at_the_anchor(anchored: Store, anchor: audit.Anchor) -> None:
    # Remove #4 and #5, then append two well-formed events in their place (by a store that does
    # not move the anchor, like someone with SQL access only).
    await sql(anchored, "DELETE FROM audit_events WHERE id > 3")
    audit.attach_anchor(anchored, None)
    await append(anchored, "forged.one")
    await append(anchored, "forged.two")
    async with anchored.session() as session:
        assert (await audit.verify(session)).ok
    result = await verify(anchored, anchor)
    assert not result.ok
    assert result.first_bad_id == 5
    assert result.problem is not None
    assert "does not match the anchor" in result.problem


async def test_a_forged_tail_longer_than_the_anchor_is_named_at_the_anchor(
    anchored: Store, anchor: audit.Anchor
) -> None:
    await sql(anchored, "DELETE FROM audit_events WHERE id = 5")
    audit.attach_anchor(anchored, None)
    for kind in ("forged.5", "forged.6", "forged.7"):
        await append(anchored, kind)
    result = await verify(anchored, anchor)
    assert (result.ok, result.first_bad_id) == (False, 5)


async def test_tampering_inside_the_chain_is_still_named_first(anchored: Store, anchor: audit.Anchor) -> None:
    await sql(anchored, "UPDATE audit_events SET actor = 'mallory' WHERE id = 2")
    await sql(anchored, "DELETE FROM audit_events WHERE id = 5")
    result = await verify(anchored, anchor)
    assert (result.ok, result.first_bad_id) == (False, 2)
    assert result.problem == "content does not match its hash (modified)"


async def test_a_missing_anchor_is_a_note_not_a_failure(anchored: Store, anchor: audit.Anchor) -> None:
    anchor.path.unlink()
    result = await verify(anchored, anchor)
    assert result.ok
    assert result.note is not None
    assert "removal of the newest events cannot be detected" in result.note
    assert result.describe() == "audit chain intact: 5 events"


async def test_a_damaged_anchor_fails_verification(anchored: Store, anchor: audit.Anchor) -> None:
    anchor.path.write_bytes(b"\x00" * 20)
    result = await verify(anchored, anchor)
    assert not result.ok
    assert result.first_bad_id is None
    assert result.describe().startswith("audit chain cannot be checked: audit anchor ")


async def test_an_empty_store_with_an_anchor_has_lost_everything(store: Store, anchor: audit.Anchor) -> None:
    anchor.advance(2, "a" * 64)
    result = await verify(store, anchor)
    assert (result.ok, result.first_bad_id) == (False, 1)


# export lines --------------------------------------------------------------------------------


async def test_export_line_rehashes_to_its_hash(anchored: Store) -> None:
    async with anchored.session() as session:
        events = [e async for e in audit.iter_events(session)]
    for event in events:
        line = audit.export_line(event)
        record = json.loads(line)
        stored_hash = record.pop("hash")
        rehashed = hashlib.sha256(
            json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        ).hexdigest()
        assert rehashed == stored_hash == event.hash
        assert datetime.fromisoformat(record["occurred_at"]).tzinfo is not None
