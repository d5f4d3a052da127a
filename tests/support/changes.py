"""Helpers for change-request tests: an admin-API client acting as a user, and QB001 parsing."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx

from tests.support.querybase import ADMIN_PASSWORD

HELD = re.compile(r"change request #(\d+)")
FINAL = {"succeeded", "failed", "rejected", "expired", "cancelled", "unknown"}


def held_id(text: str) -> int:
    found = HELD.search(text)
    assert found is not None, f"no change request id in: {text!r}"
    return int(found.group(1))


class Api:
    """The admin API as one user (token from POST /api/v1/auth/token)."""

    def __init__(self, base: str, user: str, password: str) -> None:
        self.base = base.rstrip("/") + "/api/v1"
        answer = httpx.post(
            f"{self.base}/auth/token", json={"username": user, "password": password}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        self.headers = {"Authorization": f"Bearer {answer.json()['access_token']}"}

    @classmethod
    def admin(cls, base: str) -> Api:
        return cls(base, "admin", ADMIN_PASSWORD)

    def call(self, method: str, path: str, json: Any = None, **params: Any) -> httpx.Response:
        return httpx.request(
            method, f"{self.base}{path}", json=json, params=params or None, headers=self.headers, timeout=30
        )

    def ok(self, method: str, path: str, json: Any = None, **params: Any) -> Any:
        answer = self.call(method, path, json, **params)
        assert answer.status_code < 300, f"{method} {path}: {answer.status_code} {answer.text}"
        return answer.json() if answer.content else None

    def wait_final(self, request_id: int, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            view: dict[str, Any] = self.ok("GET", f"/requests/{request_id}")
            if view["status"] in FINAL or time.monotonic() > deadline:
                return view
            time.sleep(0.1)
