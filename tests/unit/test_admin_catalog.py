"""The catalog operations the admin API added: update_source, update_user, remove_user,
remove_group, access — on a SQLite store, with their audit events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from policies.types import Level
from proxy.errors import InvalidInput, NotFound
from proxy.store.catalog import Catalog, SourceSpec
from proxy.store.crypto import SecretBox
from proxy.store.db import Store
from proxy.store.models import AuditEvent, ChangeRequest, Engine, Source, User

READ_PW = "read-secret-5e1f"
WRITE_PW = "write-secret-9a2b"
NEW_PW = "new-read-secret-77"
USER_PW = "user-password-42"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/catalog.db")
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def catalog(store: Store) -> Catalog:
    org = Catalog(store, SecretBox(bytes(range(32))))
    await org.add_source(
        SourceSpec("shop", Engine.POSTGRESQL, "db.internal", 5432, "shop", "reader", write_user="writer"),
        read_password=READ_PW,
        write_password=WRITE_PW,
        actor="t",
    )
    return org


async def last_event(store: Store) -> AuditEvent:
    async with store.session() as session:
        event = await session.scalar(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(1))
    assert event is not None
    return event


async def test_update_source_changes_fields_and_reseals_passwords(catalog: Catalog, store: Store) -> None:
    view = await catalog.update_source(
        "shop",
        {"port": 6543, "read_password": NEW_PW, "approvals_required": 2, "allowed_schemas": ["a", "b"]},
        actor="root",
    )
    assert (view.port, view.approvals_required, view.allowed_schemas) == (6543, 2, ("a", "b"))
    creds = await catalog.source_credentials("shop")
    assert (creds.read_password, creds.write_password) == (NEW_PW, WRITE_PW)
    event = await last_event(store)
    assert (event.kind, event.actor, event.source) == ("source.updated", "root", "shop")
    assert event.payload == {
        "port": 6543,
        "read_password": "set",
        "approvals_required": 2,
        "allowed_schemas": ["a", "b"],
    }
    assert NEW_PW not in json.dumps(event.payload)
    async with store.session() as session:
        sealed = await session.scalar(select(Source.read_password_sealed))
    assert sealed is not None
    assert NEW_PW not in sealed


async def test_clearing_the_write_user_clears_its_password(catalog: Catalog) -> None:
    view = await catalog.update_source("shop", {"write_user": None}, actor="root")
    assert (view.write_user, view.write_password_set) == (None, False)
    assert (await catalog.source_credentials("shop")).write_password is None
    view = await catalog.update_source("shop", {"read_password": None}, actor="root")
    assert view.read_password_set is False


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "other"}, "cannot change name"),
        ({"engine": "mysql"}, "cannot change engine"),
        ({"port": 0}, "invalid port"),
        ({"tls": "sometimes"}, "invalid tls mode"),
        ({"hold_wait_seconds": -1}, "hold_wait_seconds"),
        ({"write_user": None, "write_password": "x"}, "write password needs a write user"),
    ],
)
async def test_update_source_refuses_bad_changes_and_changes_nothing(
    catalog: Catalog, store: Store, changes: dict[str, object], message: str
) -> None:
    before = await catalog.get_source("shop")
    count = (await last_event(store)).id
    with pytest.raises(InvalidInput, match=message):
        await catalog.update_source("shop", changes, actor="root")
    assert await catalog.get_source("shop") == before
    assert (await last_event(store)).id == count
    with pytest.raises(NotFound):
        await catalog.update_source("nope", {"port": 1}, actor="root")


async def test_update_user_and_last_admin_guard(catalog: Catalog) -> None:
    await catalog.add_user("root", USER_PW, admin=True, actor="t")
    await catalog.add_user("alice", USER_PW, actor="t")
    with pytest.raises(InvalidInput, match="last active admin"):
        await catalog.update_user("root", admin=False, actor="t")
    with pytest.raises(InvalidInput, match="last active admin"):
        await catalog.update_user("root", active=False, actor="t")
    with pytest.raises(InvalidInput, match="last active admin"):
        await catalog.remove_user("root", actor="t")
    view = await catalog.update_user("alice", admin=True, actor="root")
    assert view.admin is True
    view = await catalog.update_user("root", admin=False, actor="alice")
    assert view.admin is False
    with pytest.raises(InvalidInput, match="md5"):
        await catalog.update_user("alice", pg_auth="md5", actor="t")
    view = await catalog.update_user("alice", pg_auth="password", actor="t")
    assert view.pg_auth == "password"
    login = await catalog.user_login("alice")
    assert login is not None
    assert login.md5_verifier is None


async def test_remove_user_with_change_requests_is_refused(catalog: Catalog, store: Store) -> None:
    await catalog.add_user("alice", USER_PW, actor="t")
    async with store.write_session() as session, session.begin():
        user_id = await session.scalar(select(User.id).where(User.name == "alice"))
        source_id = await session.scalar(select(Source.id).where(Source.name == "shop"))
        assert user_id is not None
        assert source_id is not None
        session.add(
            ChangeRequest(
                source_id=source_id,
                requester_id=user_id,
                kind="write",
                statement_text="DELETE FROM t",
                classification={},
                session_facts={},
            )
        )
    with pytest.raises(InvalidInput, match="disable the user instead"):
        await catalog.remove_user("alice", actor="t")
    assert (await catalog.get_user("alice")).name == "alice"


async def test_remove_group_takes_grants_and_memberships_and_access_follows(catalog: Catalog) -> None:
    await catalog.add_user("alice", USER_PW, actor="t")
    await catalog.add_group("team", actor="t")
    await catalog.add_member("team", "alice", actor="t")
    await catalog.grant("team", "shop", Level.READ, actor="t")
    await catalog.grant("team", "shop", Level.WRITE, actor="t")
    await catalog.grant("team", "shop", Level.APPROVE, actor="t")
    assert await catalog.access("alice") == {"shop": (Level.WRITE, True)}
    await catalog.remove_group("team", actor="t")
    assert await catalog.access("alice") == {}
    assert await catalog.list_grants() == []
    assert (await catalog.get_user("alice")).groups == ()
    with pytest.raises(NotFound):
        await catalog.remove_group("team", actor="t")
