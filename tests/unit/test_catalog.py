"""Catalog operations on a SQLite store: users, groups, sources (sealed passwords), grants, audit."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import text

from policies.types import Level
from proxy.audit import log as audit
from proxy.auth.verifiers import ScramVerifier, scram_verify_password
from proxy.errors import AlreadyExists, InvalidInput, NotFound, SecretError
from proxy.store.catalog import Catalog, SourceSpec
from proxy.store.crypto import SecretBox
from proxy.store.db import Store
from proxy.store.models import ChangeRequest, Engine, UpstreamTLS

SQLITE = "sqlite+aiosqlite:///"
KEY = bytes(range(100, 132))
READ_PW = "rëad-Pässwörd-🔑-7f3a9c"
WRITE_PW = "WriteSecret-b81d44e0"
USER_PW = "alice-password-c0ffee"
HOST = "db-7.shop.internal"


def double_sha1(data: bytes) -> bytes:
    """SHA1(SHA1(data)), MySQL's stored form of a native password (not a security use here)."""
    return hashlib.sha1(hashlib.sha1(data, usedforsecurity=False).digest(), usedforsecurity=False).digest()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty catalog file; each test gets a copy (migrating takes ~0.1 s)."""
    path = tmp_path_factory.mktemp("template") / "catalog.db"
    template = Store(SQLITE + str(path))
    await template.migrate()
    await template.close()
    assert not path.with_name("catalog.db-wal").exists()
    return path


@pytest_asyncio.fixture(loop_scope="function")
async def store(tmp_path: Path, migrated_db: Path) -> AsyncIterator[Store]:
    shutil.copyfile(migrated_db, tmp_path / "catalog.db")
    store = Store(SQLITE + str(tmp_path / "catalog.db"))
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def catalog(store: Store) -> Catalog:
    return Catalog(store, SecretBox(KEY))


def shop(**changes: Any) -> SourceSpec:
    fields: dict[str, Any] = {
        "name": "shop",
        "engine": Engine.POSTGRESQL,
        "host": HOST,
        "port": 5432,
        "database": "shop",
        "read_user": "qb_reader",
        "write_user": "qb_writer",
    }
    fields.update(changes)
    return SourceSpec(**fields)


async def add_shop(catalog: Catalog, name: str = "shop", **changes: Any) -> None:
    await catalog.add_source(
        shop(name=name, **changes), read_password=READ_PW, write_password=WRITE_PW, actor="admin"
    )


async def rows(store: Store, statement: str, **params: Any) -> list[dict[str, Any]]:
    async with store.engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(text(statement), params)]


async def events(store: Store) -> list[tuple[str, str | None]]:
    return [
        (r["kind"], r["subject"])
        for r in await rows(store, "SELECT kind, subject FROM audit_events ORDER BY id")
    ]


async def verify_chain(store: Store) -> audit.VerifyResult:
    async with store.session() as session:
        return await audit.verify(session)


async def user_row(store: Store, name: str) -> dict[str, Any]:
    (row,) = await rows(store, "SELECT * FROM users WHERE name = :n", n=name)
    return row


# users ---------------------------------------------------------------------------------------


async def test_add_and_list_users(catalog: Catalog, store: Store) -> None:
    await catalog.add_user("bob", "bob-password-1", admin=True, actor="root")
    await catalog.add_user("alice", USER_PW, actor="bob")
    users = await catalog.list_users()
    assert [(u.name, u.admin, u.active, u.groups) for u in users] == [
        ("alice", False, True, ()),
        ("bob", True, True, ()),
    ]
    assert users[0].created_at.endswith("+00:00")
    assert await catalog.user_exists("alice")
    assert not await catalog.user_exists("carol")
    assert await events(store) == [("user.created", "bob"), ("user.created", "alice")]


async def test_user_is_stored_as_verifiers_only(catalog: Catalog, store: Store) -> None:
    await catalog.add_user("alice", USER_PW, actor=None)
    row = await user_row(store, "alice")
    assert scram_verify_password(ScramVerifier.decode(row["scram_verifier"]), USER_PW)
    assert row["sha256_sha256"] == hashlib.sha256(hashlib.sha256(USER_PW.encode()).digest()).digest()
    assert row["sha1_sha1"] == double_sha1(USER_PW.encode())
    assert USER_PW not in repr(row)
    assert USER_PW.encode() not in b"".join(v for v in row.values() if isinstance(v, bytes))


async def test_duplicate_user(catalog: Catalog, store: Store) -> None:
    await catalog.add_user("alice", USER_PW, actor=None)
    with pytest.raises(AlreadyExists, match="alice"):
        await catalog.add_user("alice", "another-password", actor=None)
    assert len(await events(store)) == 1
    assert scram_verify_password(
        ScramVerifier.decode((await user_row(store, "alice"))["scram_verifier"]), USER_PW
    )


@pytest.mark.parametrize(
    "name", ["", "1alice", "al ice", "a" * 64, "ålice", "a;b", "-x", ".x", "a/b", "a\x00b", "a'b", " alice"]
)
async def test_invalid_user_names(catalog: Catalog, store: Store, name: str) -> None:
    with pytest.raises(InvalidInput, match="invalid user name"):
        await catalog.add_user(name, USER_PW, actor=None)
    assert await catalog.list_users() == []
    assert await events(store) == []


@pytest.mark.parametrize("name", ["_svc", "a" * 63, "a.b-c_d", "A1", "x"])
async def test_valid_user_names(catalog: Catalog, name: str) -> None:
    await catalog.add_user(name, USER_PW, actor=None)
    assert await catalog.user_exists(name)


# '$' would also match before a trailing newline; the whole name must fit.
async def test_name_with_trailing_newline_is_invalid(catalog: Catalog) -> None:
    with pytest.raises(InvalidInput):
        await catalog.add_user("alice\n", USER_PW, actor=None)


@pytest.mark.parametrize("password", ["", "1234567", "short", "pässwör"])
async def test_short_password(catalog: Catalog, store: Store, password: str) -> None:
    with pytest.raises(InvalidInput, match="at least 8"):
        await catalog.add_user("alice", password, actor=None)
    assert not await catalog.user_exists("alice")
    assert await events(store) == []


async def test_password_with_nul(catalog: Catalog) -> None:
    with pytest.raises(InvalidInput, match="NUL"):
        await catalog.add_user("alice", "password\x00suffix", actor=None)


async def test_eight_characters_are_enough(catalog: Catalog) -> None:
    await catalog.add_user("alice", "12345678", actor=None)
    assert await catalog.user_exists("alice")


async def test_set_password_changes_every_verifier(catalog: Catalog, store: Store) -> None:
    await catalog.add_user("alice", USER_PW, actor=None)
    before = await user_row(store, "alice")
    await catalog.set_password("alice", "new-password-42", actor="alice")
    after = await user_row(store, "alice")
    scram = ScramVerifier.decode(after["scram_verifier"])
    assert scram_verify_password(scram, "new-password-42")
    assert not scram_verify_password(scram, USER_PW)
    assert after["sha256_sha256"] == hashlib.sha256(hashlib.sha256(b"new-password-42").digest()).digest()
    assert after["sha1_sha1"] == double_sha1(b"new-password-42")
    assert after["sha256_sha256"] != before["sha256_sha256"]
    assert after["sha1_sha1"] != before["sha1_sha1"]
    assert after["password_changed_at"] >= before["password_changed_at"]
    assert (await events(store))[-1] == ("user.password_changed", "alice")


async def test_set_password_errors_leave_the_user_alone(catalog: Catalog, store: Store) -> None:
    await catalog.add_user("alice", USER_PW, actor=None)
    before = await user_row(store, "alice")
    with pytest.raises(InvalidInput):
        await catalog.set_password("alice", "short", actor=None)
    with pytest.raises(NotFound, match="carol"):
        await catalog.set_password("carol", "long-enough-password", actor=None)
    assert await user_row(store, "alice") == before
    assert len(await events(store)) == 1


async def test_disable_and_enable(catalog: Catalog, store: Store) -> None:
    await catalog.add_user("alice", USER_PW, actor=None)
    await catalog.set_active("alice", False, actor="admin")
    assert [u.active for u in await catalog.list_users()] == [False]
    await catalog.set_active("alice", True, actor="admin")
    assert [u.active for u in await catalog.list_users()] == [True]
    with pytest.raises(NotFound):
        await catalog.set_active("carol", False, actor="admin")
    assert [k for k, _ in await events(store)] == ["user.created", "user.disabled", "user.enabled"]


# groups --------------------------------------------------------------------------------------


async def test_groups_and_members(catalog: Catalog, store: Store) -> None:
    for name in ("alice", "bob"):
        await catalog.add_user(name, USER_PW, actor=None)
    await catalog.add_group("analysts", actor="admin")
    await catalog.add_group("approvers", actor="admin")
    await catalog.add_member("analysts", "alice", actor="admin")
    await catalog.add_member("analysts", "bob", actor="admin")
    await catalog.add_member("approvers", "bob", actor="admin")

    groups = {g.name: g.members for g in await catalog.list_groups()}
    assert groups == {"analysts": ("alice", "bob"), "approvers": ("bob",)}
    users = {u.name: u.groups for u in await catalog.list_users()}
    assert users == {"alice": ("analysts",), "bob": ("analysts", "approvers")}

    await catalog.remove_member("analysts", "bob", actor="admin")
    groups = {g.name: g.members for g in await catalog.list_groups()}
    assert groups == {"analysts": ("alice",), "approvers": ("bob",)}

    kinds = await rows(
        store, "SELECT kind, subject, payload FROM audit_events WHERE kind LIKE 'group.%' ORDER BY id"
    )
    assert [(r["kind"], r["subject"], json.loads(r["payload"]).get("user")) for r in kinds] == [
        ("group.created", "analysts", None),
        ("group.created", "approvers", None),
        ("group.member_added", "analysts", "alice"),
        ("group.member_added", "analysts", "bob"),
        ("group.member_added", "approvers", "bob"),
        ("group.member_removed", "analysts", "bob"),
    ]


async def test_group_errors(catalog: Catalog, store: Store) -> None:
    await catalog.add_user("alice", USER_PW, actor=None)
    await catalog.add_user("bob", USER_PW, actor=None)
    await catalog.add_group("analysts", actor=None)
    await catalog.add_member("analysts", "alice", actor=None)
    count = len(await events(store))

    with pytest.raises(AlreadyExists):
        await catalog.add_group("analysts", actor=None)
    with pytest.raises(InvalidInput):
        await catalog.add_group("bad name", actor=None)
    with pytest.raises(AlreadyExists):
        await catalog.add_member("analysts", "alice", actor=None)
    with pytest.raises(NotFound, match="nobody"):
        await catalog.add_member("analysts", "nobody", actor=None)
    with pytest.raises(NotFound, match="ghosts"):
        await catalog.add_member("ghosts", "alice", actor=None)
    with pytest.raises(NotFound, match="not a member"):
        await catalog.remove_member("analysts", "bob", actor=None)
    with pytest.raises(NotFound, match="ghosts"):
        await catalog.remove_member("ghosts", "alice", actor=None)

    await catalog.remove_member("analysts", "alice", actor=None)
    with pytest.raises(NotFound, match="not a member"):
        await catalog.remove_member("analysts", "alice", actor=None)
    assert len(await events(store)) == count + 1
    assert [g.members for g in await catalog.list_groups()] == [()]


# sources -------------------------------------------------------------------------------------


async def test_add_source_and_read_the_credentials(catalog: Catalog) -> None:
    view = await catalog.add_source(
        shop(engine=Engine.MYSQL, port=3306, tls=UpstreamTLS.REQUIRE, pool_size=4),
        read_password=READ_PW,
        write_password=WRITE_PW,
        actor="admin",
    )
    assert (view.name, view.engine, view.host, view.port, view.tls, view.pool_size) == (
        "shop",
        "mysql",
        HOST,
        3306,
        "require",
        4,
    )
    assert view.read_password_set
    assert view.write_password_set
    creds = await catalog.source_credentials("shop")
    assert creds.read_password == READ_PW
    assert creds.write_password == WRITE_PW
    assert creds.view == await catalog.get_source("shop")
    assert READ_PW not in repr(creds)
    assert WRITE_PW not in repr(creds)


async def test_source_without_passwords(catalog: Catalog) -> None:
    view = await catalog.add_source(
        shop(write_user=None), read_password=None, write_password=None, actor=None
    )
    assert not view.read_password_set
    assert not view.write_password_set
    creds = await catalog.source_credentials("shop")
    assert (creds.read_password, creds.write_password) == (None, None)


async def test_views_never_hold_a_password_or_sealed_value(catalog: Catalog) -> None:
    await add_shop(catalog)
    await add_shop(catalog, "crm")
    await catalog.add_group("analysts", actor=None)
    await catalog.grant("analysts", "shop", Level.READ, actor=None)
    views = [*await catalog.list_sources(), await catalog.get_source("shop"), await catalog.get_source("crm")]
    for view in views:
        dumped = json.dumps(view.as_dict(), ensure_ascii=False)
        for needle in (READ_PW, WRITE_PW, "v1:"):
            assert needle not in dumped
            assert needle not in repr(view)
        assert HOST in dumped  # the check above looks at real content
    assert (await catalog.get_source("shop")).as_dict()["grants"] == [{"group": "analysts", "level": "read"}]


async def test_passwords_are_sealed_in_the_store(catalog: Catalog, store: Store) -> None:
    await add_shop(catalog)
    (row,) = await rows(store, "SELECT read_password_sealed, write_password_sealed FROM sources")
    assert row["read_password_sealed"].startswith("v1:")
    assert row["write_password_sealed"].startswith("v1:")
    assert READ_PW not in row["read_password_sealed"]
    assert WRITE_PW not in row["write_password_sealed"]
    (created,) = await rows(store, "SELECT payload FROM audit_events WHERE kind = 'source.created'")
    assert READ_PW not in created["payload"]
    assert WRITE_PW not in created["payload"]
    assert "v1:" not in created["payload"]


async def test_sealed_password_is_bound_to_its_source_and_role(catalog: Catalog, store: Store) -> None:
    await add_shop(catalog)
    await add_shop(catalog, "crm")
    async with store.engine.begin() as conn:
        # Copy shop's sealed read password onto crm's read slot, and shop's write onto its own read.
        await conn.execute(
            text(
                "UPDATE sources SET read_password_sealed = "
                "(SELECT read_password_sealed FROM sources WHERE name = 'shop') WHERE name = 'crm'"
            )
        )
        await conn.execute(
            text("UPDATE sources SET read_password_sealed = write_password_sealed WHERE name = 'shop'")
        )
    with pytest.raises(SecretError):
        await catalog.source_credentials("crm")
    with pytest.raises(SecretError):
        await catalog.source_credentials("shop")


async def test_credentials_need_the_right_key(catalog: Catalog, store: Store) -> None:
    await add_shop(catalog)
    with pytest.raises(SecretError):
        await Catalog(store, SecretBox(bytes(32))).source_credentials("shop")
    keyless = Catalog(store)
    with pytest.raises(InvalidInput, match="secret key"):
        await keyless.source_credentials("shop")
    with pytest.raises(InvalidInput, match="secret key"):
        await keyless.add_source(shop(name="crm"), read_password="x", write_password=None, actor=None)
    assert [s.name for s in await keyless.list_sources()] == ["shop"]  # listing needs no key


async def test_plaintext_passwords_never_reach_the_database_files(
    catalog: Catalog, store: Store, tmp_path: Path
) -> None:
    await catalog.add_user("alice", USER_PW, actor=None)
    await add_shop(catalog)
    await add_shop(catalog, "crm", engine=Engine.MYSQL, port=3306)
    await catalog.set_password("alice", "second-user-password", actor=None)

    def files() -> bytes:
        return b"".join(p.read_bytes() for p in sorted(tmp_path.glob("catalog.db*")))

    while_open = files()
    await store.close()
    after_close = files()
    for blob in (while_open, after_close):
        assert HOST.encode() in blob  # the data really is in these bytes
        for secret in (READ_PW, WRITE_PW, USER_PW, "second-user-password"):
            assert secret.encode() not in blob
            assert secret.encode("utf-16-le") not in blob


@pytest.mark.parametrize(
    ("changes", "write_password", "problem"),
    [
        ({"name": "bad name"}, WRITE_PW, "invalid source name"),
        ({"host": ""}, WRITE_PW, "invalid host"),
        ({"host": "db host"}, WRITE_PW, "invalid host"),
        ({"port": 0}, WRITE_PW, "invalid port"),
        ({"port": 65536}, WRITE_PW, "invalid port"),
        ({"database": ""}, WRITE_PW, "database"),
        ({"read_user": ""}, WRITE_PW, "read user"),
        ({"pool_size": 0}, WRITE_PW, "pool size"),
        ({"pool_size": 1001}, WRITE_PW, "pool size"),
        ({"write_user": None}, WRITE_PW, "write password needs"),
    ],
)
async def test_invalid_sources(
    catalog: Catalog, store: Store, changes: dict[str, Any], write_password: str, problem: str
) -> None:
    with pytest.raises(InvalidInput, match=problem):
        await catalog.add_source(
            shop(**changes), read_password=READ_PW, write_password=write_password, actor=None
        )
    assert await catalog.list_sources() == []
    assert await events(store) == []


async def test_pool_mode_defaults_by_engine_and_can_change(catalog: Catalog) -> None:
    await add_shop(catalog)
    await add_shop(catalog, name="mysql_shop", engine=Engine.MYSQL, port=3306)
    await add_shop(catalog, name="pinned", pool_mode="session")
    modes = {s.name: s.pool_mode for s in await catalog.list_sources()}
    assert modes == {"shop": "transaction", "mysql_shop": "session", "pinned": "session"}
    view = await catalog.update_source("shop", {"pool_mode": "session"}, actor="admin")
    assert view.pool_mode == "session"
    with pytest.raises(InvalidInput, match="invalid pool mode"):
        await catalog.update_source("shop", {"pool_mode": "statement"}, actor="admin")
    with pytest.raises(InvalidInput, match="not available for MySQL"):
        await catalog.update_source("mysql_shop", {"pool_mode": "transaction"}, actor="admin")
    with pytest.raises(InvalidInput, match="not available for MySQL"):
        await add_shop(catalog, name="my2", engine=Engine.MYSQL, port=3306, pool_mode="transaction")
    assert (await catalog.get_source("mysql_shop")).pool_mode == "session"


async def test_duplicate_source(catalog: Catalog, store: Store) -> None:
    await add_shop(catalog)
    with pytest.raises(AlreadyExists, match="shop"):
        await add_shop(catalog, host="elsewhere")
    assert [s.host for s in await catalog.list_sources()] == [HOST]
    assert len(await events(store)) == 1


async def test_unknown_source(catalog: Catalog) -> None:
    with pytest.raises(NotFound, match="nope"):
        await catalog.get_source("nope")
    with pytest.raises(NotFound, match="nope"):
        await catalog.source_credentials("nope")
    with pytest.raises(NotFound, match="nope"):
        await catalog.remove_source("nope", actor=None)


# grants --------------------------------------------------------------------------------------


async def test_grant_and_revoke(catalog: Catalog, store: Store) -> None:
    await add_shop(catalog)
    await catalog.add_group("analysts", actor=None)
    await catalog.grant("analysts", "shop", Level.READ, actor="admin")
    await catalog.grant("analysts", "shop", Level.APPROVE, actor="admin")
    assert [(g.group, g.source, g.level) for g in await catalog.list_grants()] == [
        ("analysts", "shop", "approve"),
        ("analysts", "shop", "read"),
    ]
    assert (await catalog.get_source("shop")).grants == (("analysts", "approve"), ("analysts", "read"))
    with pytest.raises(AlreadyExists):
        await catalog.grant("analysts", "shop", Level.READ, actor=None)
    await catalog.revoke("analysts", "shop", Level.READ, actor="admin")
    assert [(g.group, g.level) for g in await catalog.list_grants()] == [("analysts", "approve")]
    with pytest.raises(NotFound, match="no read grant"):
        await catalog.revoke("analysts", "shop", Level.READ, actor=None)
    with pytest.raises(NotFound):
        await catalog.revoke("analysts", "shop", Level.WRITE, actor=None)
    with pytest.raises(NotFound, match="ghosts"):
        await catalog.grant("ghosts", "shop", Level.READ, actor=None)
    with pytest.raises(NotFound, match="nope"):
        await catalog.grant("analysts", "nope", Level.READ, actor=None)
    grant_events = await rows(
        store, "SELECT kind, source, subject, payload FROM audit_events WHERE kind LIKE 'grant.%' ORDER BY id"
    )
    assert [(r["kind"], r["source"], r["subject"], json.loads(r["payload"])) for r in grant_events] == [
        ("grant.added", "shop", "analysts", {"level": "read"}),
        ("grant.added", "shop", "analysts", {"level": "approve"}),
        ("grant.revoked", "shop", "analysts", {"level": "read"}),
    ]


@pytest_asyncio.fixture(loop_scope="function")
async def org(catalog: Catalog) -> Catalog:
    """alice: readers + proposers(+approve) on shop, readers on crm; bob: approvers only; carol: none."""
    await add_shop(catalog)
    await add_shop(catalog, "crm")
    for user in ("alice", "bob", "carol"):
        await catalog.add_user(user, USER_PW, actor=None)
    for group in ("readers", "proposers", "approvers", "writers"):
        await catalog.add_group(group, actor=None)
    await catalog.grant("readers", "shop", Level.READ, actor=None)
    await catalog.grant("readers", "crm", Level.READ, actor=None)
    await catalog.grant("proposers", "shop", Level.PROPOSE, actor=None)
    await catalog.grant("proposers", "shop", Level.APPROVE, actor=None)
    await catalog.grant("approvers", "shop", Level.APPROVE, actor=None)
    await catalog.grant("writers", "shop", Level.WRITE, actor=None)
    await catalog.add_member("readers", "alice", actor=None)
    await catalog.add_member("proposers", "alice", actor=None)
    await catalog.add_member("approvers", "bob", actor=None)
    return catalog


async def test_levels_take_the_highest_data_level_and_approve_separately(org: Catalog) -> None:
    assert await org.levels("alice", "shop") == (Level.PROPOSE, True)
    assert await org.levels("alice", "crm") == (Level.READ, False)
    assert await org.levels("bob", "shop") == (None, True)
    assert await org.levels("bob", "crm") == (None, False)
    assert await org.levels("carol", "shop") == (None, False)
    assert await org.levels("nobody", "shop") == (None, False)
    assert await org.levels("alice", "nowhere") == (None, False)


async def test_write_beats_propose_and_read(org: Catalog) -> None:
    await org.add_member("writers", "alice", actor=None)
    assert await org.levels("alice", "shop") == (Level.WRITE, True)
    await org.remove_member("proposers", "alice", actor=None)
    assert await org.levels("alice", "shop") == (Level.WRITE, False)
    await org.remove_member("writers", "alice", actor=None)
    assert await org.levels("alice", "shop") == (Level.READ, False)


async def test_several_levels_in_one_group(org: Catalog) -> None:
    await org.grant("approvers", "shop", Level.READ, actor=None)
    await org.grant("approvers", "shop", Level.WRITE, actor=None)
    assert await org.levels("bob", "shop") == (Level.WRITE, True)
    await org.revoke("approvers", "shop", Level.WRITE, actor=None)
    assert await org.levels("bob", "shop") == (Level.READ, True)


async def test_disabled_user_has_no_levels(org: Catalog) -> None:
    await org.set_active("alice", False, actor=None)
    assert await org.levels("alice", "shop") == (None, False)
    assert await org.levels("alice", "crm") == (None, False)
    await org.set_active("alice", True, actor=None)
    assert await org.levels("alice", "shop") == (Level.PROPOSE, True)


async def test_remove_source_cascades_its_grants(org: Catalog, store: Store) -> None:
    (shop_row,) = await rows(store, "SELECT id FROM sources WHERE name = 'shop'")
    await org.remove_source("shop", actor="admin")
    assert await rows(store, "SELECT * FROM grants WHERE source_id = :id", id=shop_row["id"]) == []
    assert {(g.group, g.source) for g in await org.list_grants()} == {("readers", "crm")}
    assert [s.name for s in await org.list_sources()] == ["crm"]
    with pytest.raises(NotFound):
        await org.get_source("shop")
    assert await org.levels("alice", "shop") == (None, False)
    # A new source of the same name starts with no grants.
    await add_shop(org)
    assert (await org.get_source("shop")).grants == ()
    assert await org.levels("alice", "shop") == (None, False)
    assert await org.levels("alice", "crm") == (Level.READ, False)
    assert (await events(store))[-2] == ("source.removed", "shop")


async def test_source_with_change_requests_is_kept_whole(org: Catalog, store: Store) -> None:
    (src,) = await rows(store, "SELECT id FROM sources WHERE name = 'shop'")
    user = await user_row(store, "alice")
    async with store.session() as session, session.begin():
        session.add(
            ChangeRequest(
                source_id=src["id"],
                requester_id=user["id"],
                kind="write",
                statement_text="DELETE FROM orders",
                classification={"kind": "write"},
                session_facts={},
            )
        )
    count = len(await events(store))
    with pytest.raises(InvalidInput, match="change requests"):
        await org.remove_source("shop", actor=None)
    assert [s.name for s in await org.list_sources()] == ["crm", "shop"]
    assert await org.levels("alice", "shop") == (Level.PROPOSE, True)  # grants untouched
    assert len(await events(store)) == count


# audit ---------------------------------------------------------------------------------------


async def test_every_operation_is_audited_and_the_chain_verifies(catalog: Catalog, store: Store) -> None:
    await catalog.add_user("alice", USER_PW, admin=True, actor="root")
    await catalog.set_password("alice", "another-password", actor="alice")
    await catalog.set_active("alice", False, actor="root")
    await catalog.set_active("alice", True, actor="root")
    await catalog.add_group("analysts", actor="alice")
    await catalog.add_member("analysts", "alice", actor="alice")
    await add_shop(catalog)
    await catalog.grant("analysts", "shop", Level.READ, actor="alice")
    await catalog.revoke("analysts", "shop", Level.READ, actor="alice")
    await catalog.remove_member("analysts", "alice", actor="alice")
    await catalog.remove_source("shop", actor="alice")
    # Reads and refused operations are not catalog changes.
    await catalog.list_users()
    await catalog.list_groups()
    await catalog.list_grants()
    with pytest.raises(AlreadyExists):
        await catalog.add_group("analysts", actor="alice")

    recorded = await rows(store, "SELECT kind, actor, source, subject FROM audit_events ORDER BY id")
    assert [(r["kind"], r["actor"], r["source"], r["subject"]) for r in recorded] == [
        ("user.created", "root", None, "alice"),
        ("user.password_changed", "alice", None, "alice"),
        ("user.disabled", "root", None, "alice"),
        ("user.enabled", "root", None, "alice"),
        ("group.created", "alice", None, "analysts"),
        ("group.member_added", "alice", None, "analysts"),
        ("source.created", "admin", "shop", "shop"),
        ("grant.added", "alice", "shop", "analysts"),
        ("grant.revoked", "alice", "shop", "analysts"),
        ("group.member_removed", "alice", None, "analysts"),
        ("source.removed", "alice", "shop", "shop"),
    ]
    result = await verify_chain(store)
    assert result.ok, result.describe()
    assert result.events == 11
    payloads = " ".join(r["payload"] for r in await rows(store, "SELECT payload FROM audit_events"))
    for secret in (USER_PW, "another-password", READ_PW, WRITE_PW, "v1:"):
        assert secret not in payloads


# Two admin requests at once must queue on SQLite, not fail with 'database is locked'.
async def test_concurrent_changes_all_land(catalog: Catalog, store: Store) -> None:
    await asyncio.gather(*(catalog.add_group(f"team{i}", actor=None) for i in range(4)))
    assert len(await catalog.list_groups()) == 4
    assert (await verify_chain(store)).events == 4


async def test_sources_made_before_pool_modes_keep_session_pooling(tmp_path: Path) -> None:
    """Migration 0007: a source that existed before is upgraded to `session`, as it was served."""
    from alembic import command

    from proxy.store.db import alembic_config

    path = tmp_path / "old.db"
    store = Store(SQLITE + str(path))

    def to_0006(conn: Any) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0006")

    async with store.write_engine.begin() as conn:
        await conn.run_sync(to_0006)
        await conn.execute(
            text(
                "INSERT INTO sources (name, engine, host, port, database, read_user, tls, pool_size, "
                "pool_timeout_seconds, approvals_required, block_ddl, request_ttl_seconds, "
                "hold_wait_seconds, created_at, updated_at) VALUES ('old', 'postgresql', 'db', 5432, "
                "'d', 'r', 'prefer', 10, 10, 1, 0, 86400, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
    await store.migrate()
    catalog = Catalog(store, SecretBox(KEY))
    try:
        assert (await catalog.get_source("old")).pool_mode == "session"
        await add_shop(catalog)
        assert (await catalog.get_source("shop")).pool_mode == "transaction"
    finally:
        await store.close()
