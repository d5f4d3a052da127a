"""SessionRegistry, and the admin API's sessions endpoints and error shapes, in process (ASGI)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from admin_api.app import create_app
from admin_api.deps import ApiContext
from admin_api.tokens import derive_signing_key
from proxy.config import build_settings
from proxy.errors import StoreError
from proxy.observe.sessions import SessionRegistry
from proxy.store.catalog import Catalog
from proxy.store.crypto import SecretBox
from proxy.store.db import Store

ADMIN_PW = "unit-admin-password"
USER_PW = "unit-user-password"


def test_registry_allocates_ids_lists_and_unregisters() -> None:
    registry = SessionRegistry()
    a = registry.register("postgresql", "127.0.0.1:5000", lambda: None)
    b = registry.register("mysql", "127.0.0.1:5001", lambda: None)
    assert (a.id, b.id) == (1, 2)
    assert a.state == "authenticating"
    assert a.since.tzinfo is not None
    a.user, a.source, a.state = "alice", "shop", "idle"
    assert [s.id for s in registry.list()] == [1, 2]
    assert registry.get(1) is a
    registry.unregister(a)
    registry.unregister(a)  # twice is harmless
    assert [s.id for s in registry.list()] == [2]
    assert len(registry) == 1
    c = registry.register("postgresql", "127.0.0.1:5002", lambda: None)
    assert c.id == 3  # ids are never reused


def test_registry_terminate_calls_the_front_end() -> None:
    registry = SessionRegistry()
    calls: list[int] = []
    s = registry.register("postgresql", "127.0.0.1:5000", lambda: calls.append(1))
    assert registry.terminate(s.id) is True
    assert calls == [1]
    assert s.state == "terminating"
    assert registry.get(s.id) is s  # listed until the front end unregisters it
    assert registry.terminate(999) is False
    registry.unregister(s)
    assert registry.terminate(s.id) is False
    assert calls == [1]


def test_unregister_of_a_stale_object_keeps_the_live_one() -> None:
    registry = SessionRegistry()
    s = registry.register("mysql", "c", lambda: None)
    other = SessionRegistry().register("mysql", "c", lambda: None)  # same id, different registry
    assert other.id == s.id
    registry.unregister(other)
    assert registry.get(s.id) is s


@dataclass
class Api:
    client: httpx.AsyncClient
    ctx: ApiContext
    ready: list[bool]

    async def token(self, user: str, password: str) -> dict[str, str]:
        r = await self.client.post("/api/v1/auth/token", json={"username": user, "password": password})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = build_settings(
        tmp_path / "querybase.toml", {"store": {"url": f"sqlite+aiosqlite:///{tmp_path}/qb.db"}}, {}
    )
    store = Store(settings.store.url)
    await store.migrate()
    key = secrets.token_bytes(32)
    box = SecretBox(key)
    catalog = Catalog(store, box)
    await catalog.add_user("admin", ADMIN_PW, admin=True, actor="test")
    await catalog.add_user("alice", USER_PW, actor="test")
    ready = [True]

    async def readiness() -> None:
        if not ready[0]:
            raise StoreError("not ready in this test")

    ctx = ApiContext(
        settings=settings,
        store=store,
        catalog=catalog,
        box=box,
        readiness=readiness,
        sessions=SessionRegistry(),
        signing_key=derive_signing_key(key),
    )
    transport = httpx.ASGITransport(app=create_app(ctx))
    async with httpx.AsyncClient(transport=transport, base_url="http://qb") as client:
        yield Api(client, ctx, ready)
    await store.close()


async def test_sessions_list_and_terminate(api: Api) -> None:
    closed: list[int] = []
    s1 = api.ctx.sessions.register("postgresql", "10.0.0.1:40000", lambda: closed.append(1))
    s1.user, s1.source, s1.state = "alice", "shop", "active"
    api.ctx.sessions.register("mysql", "10.0.0.2:40001", lambda: closed.append(2))
    admin = await api.token("admin", ADMIN_PW)

    listed = (await api.client.get("/api/v1/sessions", headers=admin)).json()
    assert [(s["id"], s["protocol"], s["client"], s["user"], s["source"], s["state"]) for s in listed] == [
        (1, "postgresql", "10.0.0.1:40000", "alice", "shop", "active"),
        (2, "mysql", "10.0.0.2:40001", None, None, "authenticating"),
    ]
    assert listed[0]["since"].endswith("Z") or "+00:00" in listed[0]["since"]

    r = await api.client.delete("/api/v1/sessions/1", headers=admin)
    assert r.status_code == 204
    assert closed == [1]
    r = await api.client.delete("/api/v1/sessions/99", headers=admin)
    assert (r.status_code, r.json()["code"]) == (404, "not_found")

    events = (await api.client.get("/api/v1/audit?kind=session.terminated", headers=admin)).json()["events"]
    assert [(e["actor"], e["subject"], e["source"], e["payload"]["session_id"]) for e in events] == [
        ("admin", "alice", "shop", 1)
    ]


async def test_sessions_need_an_admin(api: Api) -> None:
    api.ctx.sessions.register("postgresql", "10.0.0.1:40000", lambda: None)
    alice = await api.token("alice", USER_PW)
    for method in ("GET", "DELETE"):
        path = "/api/v1/sessions" if method == "GET" else "/api/v1/sessions/1"
        r = await api.client.request(method, path, headers=alice)
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")
        r = await api.client.request(method, path)
        assert (r.status_code, r.json()["code"]) == (401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
    assert len(api.ctx.sessions) == 1


async def test_error_shapes(api: Api) -> None:
    r = await api.client.get("/api/v1/no-such-thing")
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    r = await api.client.put("/api/v1/sessions")
    assert (r.status_code, r.json()["code"]) == (405, "method_not_allowed")
    r = await api.client.post("/api/v1/auth/token", json={"username": "admin"})
    assert r.status_code == 422
    assert r.json() == {"code": "invalid", "message": "password: Field required"}
    r = await api.client.post(
        "/api/v1/auth/token", content=b"not json", headers={"content-type": "application/json"}
    )
    assert (r.status_code, r.json()["code"]) == (422, "invalid")


async def test_readyz_follows_readiness(api: Api) -> None:
    assert (await api.client.get("/readyz")).json() == {"status": "ready"}
    api.ready[0] = False
    r = await api.client.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "code": "store", "message": "not ready in this test"}
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
