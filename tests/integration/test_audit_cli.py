"""`querybase audit verify` and `audit export` on SQLite and PostgreSQL stores: every kind of
tampering — a changed field, a deleted, swapped or inserted event, the newest events removed or
replaced — fails verification naming the first bad event; untouched chains verify."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import stat
import subprocess
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from proxy.audit import log as audit
from proxy.store.db import Store
from proxy.store.models import AuditEvent
from tests.support.localdb import PostgresCluster
from tests.support.querybase import ADMIN_PASSWORD, run_cli_in_process, write_config

pytestmark = pytest.mark.integration

_db_names = itertools.count()
COLUMNS = ("occurred_at", "kind", "actor", "source", "subject", "payload", "prev_hash", "hash")


class Home:
    """An initialised QueryBase home whose store holds five events: the admin user and four groups."""

    def __init__(self, config: Path, url: str) -> None:
        self.config = config
        self.url = url

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli_in_process(self.config, *args)

    def ok(self, *args: str) -> str:
        result = self.cli(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def on_store(self, work: Callable[[Store], Awaitable[Any]]) -> Any:
        """Run `work` on the store as someone with SQL access only (no anchor attached)."""

        async def run() -> Any:
            store = Store(self.url)
            try:
                return await work(store)
            finally:
                await store.close()

        return asyncio.run(run())

    def sql(self, *statements: tuple[str, dict[str, Any]]) -> None:
        async def run(store: Store) -> None:
            async with store.engine.begin() as conn:
                for statement, params in statements:
                    await conn.execute(text(statement), params)

        self.on_store(run)

    def rows(self) -> dict[int, dict[str, Any]]:
        async def run(store: Store) -> dict[int, dict[str, Any]]:
            async with store.engine.connect() as conn:
                result = await conn.execute(text(f"SELECT id, {', '.join(COLUMNS)} FROM audit_events"))
                # payload as JSON text on both (asyncpg decodes json columns but binds only text)
                return {row.id: {**row._mapping, "payload": _json_text(row.payload)} for row in result}

        rows: dict[int, dict[str, Any]] = self.on_store(run)
        return rows

    def add_event(self, event_id: int, kind: str, prev_hash: str, occurred_at: datetime) -> None:
        """A well-formed event (its own hash right, linked to `prev_hash`), as a forger would."""

        async def run(store: Store) -> None:
            async with store.session() as session, session.begin():
                forged = AuditEvent(
                    id=event_id,
                    occurred_at=occurred_at,
                    kind=kind,
                    actor="admin",
                    source=None,
                    subject="mallory",
                    payload={"admin": True},
                    prev_hash=prev_hash,
                )
                forged.hash = audit.event_hash(forged)
                session.add(forged)

        self.on_store(run)

    def verify_fails(self, event_id: int, problem: str) -> None:
        result = self.cli("audit", "verify")
        assert result.returncode == 1, result.stdout + result.stderr
        line = result.stdout.strip()
        assert line.startswith(f"audit chain broken at event #{event_id}: "), line
        assert problem in line, line
        report = json.loads(self.cli("audit", "verify", "--json").stdout)
        assert (report["ok"], report["first_bad_id"]) == (False, event_id)


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _moment(value: datetime | str) -> datetime:
    # Raw SQL hands back SQLite's stored text and PostgreSQL's timestamptz as they are.
    return audit.as_utc(value if isinstance(value, datetime) else datetime.fromisoformat(value))


def _pg_url(server: PostgresCluster) -> str:
    name = f"audit_{next(_db_names)}"
    server.execute_sql(f"DROP DATABASE IF EXISTS {name}")
    server.execute_sql(f"CREATE DATABASE {name}")
    return server.dsn("qb_admin", name).replace("postgresql://", "postgresql+asyncpg://", 1)


def make_home(tmp_path: Path, backend: str, request: pytest.FixtureRequest, *, anchor: bool = True) -> Home:
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'qb' / 'querybase.db'}"
        extra = ""
    else:
        url = _pg_url(request.getfixturevalue("pg_server"))
        extra = f'[store]\nurl = "{url}"\n' + ('[audit]\nanchor_file = "audit.anchor"\n' if anchor else "")
    config = write_config(tmp_path / "qb", extra=extra)
    home = Home(config, url)
    init = run_cli_in_process(config, "init", env={"QUERYBASE_ADMIN_PASSWORD": ADMIN_PASSWORD})
    assert init.returncode == 0, init.stderr
    for group in ("g1", "g2", "g3", "g4"):
        home.ok("group", "add", group)
    return home


@pytest.fixture(params=["sqlite", "postgresql"])
def home(request: pytest.FixtureRequest, tmp_path: Path) -> Home:
    return make_home(tmp_path, request.param, request)


# untouched -----------------------------------------------------------------------------------


def test_untouched_chain_verifies_against_its_anchor(home: Home) -> None:
    result = home.cli("audit", "verify")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "audit chain intact: 5 events"
    assert result.stderr == ""  # anchored: no warning
    report = json.loads(home.ok("audit", "verify", "--json"))
    assert report["ok"] is True
    assert (report["events"], report["head_id"], report["anchored_id"]) == (5, 5, 5)
    anchor = "querybase.db.audit-anchor" if home.url.startswith("sqlite") else "audit.anchor"
    assert report["anchor_file"] == str(home.config.parent / anchor)
    assert report["note"] is None


# tampering inside the chain ------------------------------------------------------------------


def test_changed_field_is_named(home: Home) -> None:
    home.sql(("UPDATE audit_events SET subject = 'admins' WHERE id = 3", {}))
    home.verify_fails(3, "content does not match its hash (modified)")


def test_deleted_event_is_named(home: Home) -> None:
    home.sql(("DELETE FROM audit_events WHERE id = 3", {}))
    home.verify_fails(4, "event(s) missing after #2")


def test_swapped_events_are_named(home: Home) -> None:
    rows = home.rows()
    update = f"UPDATE audit_events SET {', '.join(f'{c} = :{c}' for c in COLUMNS)} WHERE id = :id"
    home.sql(
        ("UPDATE audit_events SET hash = 'parked' WHERE id = 2", {}),  # `hash` is unique
        (update, {"id": 3, **{c: rows[2][c] for c in COLUMNS}}),
        (update, {"id": 2, **{c: rows[3][c] for c in COLUMNS}}),
    )
    swapped = home.rows()
    assert (swapped[2]["subject"], swapped[3]["subject"]) == ("g2", "g1")
    home.verify_fails(2, "previous-hash link broken")


def test_inserted_event_is_named(home: Home) -> None:
    for event_id in (5, 4, 3):  # make room for a forged #3, highest first to keep ids unique
        home.sql(
            ("UPDATE audit_events SET id = :new WHERE id = :old", {"new": event_id + 1, "old": event_id})
        )
    rows = home.rows()
    home.add_event(3, "group.member_added", rows[2]["hash"], _moment(rows[4]["occurred_at"]))
    home.verify_fails(4, "previous-hash link broken")


# tampering at the end ------------------------------------------------------------------------


def test_removed_newest_events_are_named(home: Home) -> None:
    home.sql(("DELETE FROM audit_events WHERE id >= 4", {}))
    home.verify_fails(4, "event(s) #4..#5 removed from the end of the chain")


def test_replaced_newest_event_is_named(home: Home) -> None:
    rows = home.rows()
    home.sql(("DELETE FROM audit_events WHERE id = 5", {}))
    home.add_event(5, "user.admin_changed", rows[4]["hash"], datetime.now().astimezone())
    home.verify_fails(5, "does not match the anchor")


def test_later_legitimate_events_still_verify(home: Home) -> None:
    home.ok("group", "add", "g5")
    home.on_store(_append_unanchored)  # a writer that does not move this anchor (another host)
    result = home.cli("audit", "verify", "--json")
    report = json.loads(result.stdout)
    assert report["ok"] is True, report
    assert (report["events"], report["anchored_id"]) == (7, 6)


async def _append_unanchored(store: Store) -> None:
    async with store.write_session() as session, session.begin():
        await audit.append(session, "source.tested", actor="other-host")


def test_postgresql_store_without_an_anchor_says_what_it_cannot_see(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    home = make_home(tmp_path, "postgresql", request, anchor=False)
    result = home.cli("audit", "verify")
    assert result.returncode == 0
    assert result.stdout.strip() == "audit chain intact: 5 events"
    assert "audit.anchor_file is not set" in result.stderr
    home.sql(("DELETE FROM audit_events WHERE id = 5", {}))
    assert home.cli("audit", "verify").returncode == 0  # the documented limit, said out loud


# export --------------------------------------------------------------------------------------


def _lines(text_: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text_.splitlines()]


def _rehash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()


def test_export_writes_every_event_as_a_verifiable_line(home: Home) -> None:
    result = home.cli("audit", "export")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "querybase: exported 5 audit events"
    records = _lines(result.stdout)
    assert [r["id"] for r in records] == [1, 2, 3, 4, 5]
    assert set(records[0]) == {
        "id",
        "occurred_at",
        "kind",
        "actor",
        "source",
        "subject",
        "payload",
        "prev_hash",
        "hash",
    }
    assert [r["kind"] for r in records] == ["user.created"] + ["group.created"] * 4
    assert records[0]["prev_hash"] == audit.GENESIS_HASH
    for before, after in itertools.pairwise(records):
        assert after["prev_hash"] == before["hash"]
    assert all(_rehash(r) == r["hash"] for r in records)
    # Each line is already canonical: a consumer can hash the line minus its hash as is.
    for line, record in zip(result.stdout.splitlines(), records, strict=True):
        assert line == json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_export_filters_by_time(home: Home) -> None:
    records = _lines(home.ok("audit", "export"))
    third = records[2]["occurred_at"]
    assert [r["id"] for r in _lines(home.ok("audit", "export", "--since", third))] == [3, 4, 5]
    assert [r["id"] for r in _lines(home.ok("audit", "export", "--until", third))] == [1, 2]
    assert [
        r["id"]
        for r in _lines(
            home.ok(
                "audit", "export", "--since", records[1]["occurred_at"], "--until", records[3]["occurred_at"]
            )
        )
    ] == [2, 3]
    # A date alone, and a time without an offset, are UTC.
    assert len(_lines(home.ok("audit", "export", "--since", "2000-01-01"))) == 5
    assert _lines(home.ok("audit", "export", "--until", "2000-01-01T00:00:00")) == []
    naive_third = datetime.fromisoformat(third).replace(tzinfo=None).isoformat()
    assert [r["id"] for r in _lines(home.ok("audit", "export", "--since", naive_third))] == [3, 4, 5]


def test_export_refuses_a_bad_date(home: Home) -> None:
    result = home.cli("audit", "export", "--since", "yesterday")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "querybase: error: --since: 'yesterday' is not an ISO 8601 date or date-time"
    )


def test_export_to_a_file(home: Home, tmp_path: Path) -> None:
    target = tmp_path / "out" / "audit.jsonl"
    target.parent.mkdir()
    result = home.cli("audit", "export", "--output", str(target))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert target.read_text(encoding="utf-8") == home.ok("audit", "export")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["audit.jsonl"]  # no partial file left
    missing = home.cli("audit", "export", "--output", str(tmp_path / "nowhere" / "x.jsonl"))
    assert missing.returncode == 1
    assert "--output: cannot write" in missing.stderr


def test_export_pages_through_a_long_log(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    home = make_home(tmp_path, "sqlite", request)

    async def many(store: Store) -> None:
        batch = [
            audit.PendingEvent("pg.verdict", "alice", "shop", None, {"n": n}, 1_700_000_000 + n / 1000)
            for n in range(2500)
        ]
        async with store.write_session() as session, session.begin():
            await audit.append_batch(session, batch)

    home.on_store(many)
    records = _lines(home.ok("audit", "export"))
    assert len(records) == 2505
    assert [r["id"] for r in records] == list(range(1, 2506))
    assert [r["payload"]["n"] for r in records[5:]] == list(range(2500))
    assert json.loads(home.ok("audit", "verify", "--json"))["ok"] is True
