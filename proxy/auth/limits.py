"""Failed-login limits for both protocols and the admin API: per user and per client address, sliding window.

The limiter is also where failed logins are counted (`querybase_login_failures_total`): each
`failure()` with its reason, and each refusal by `check()` as `rate_limited`, under the protocol
the limiter serves ("postgresql", "mysql", or "api" for POST /api/v1/auth/token).
"""

from __future__ import annotations

import time
from collections import deque

from proxy.errors import QueryBaseError
from proxy.observe import metrics


class LoginFailed(QueryBaseError):
    sqlstate = "28P01"  # invalid_password
    mysql_errno = 1045  # ER_ACCESS_DENIED_ERROR
    code = "login_failed"


class LoginRateLimited(LoginFailed):
    """Too many recent failures for this user or client address: refused before any password check."""


class LoginLimiter:
    """Failed logins per user and per client address in a sliding window; past the limit, refuse.

    Only keys with a failure inside the window are kept: a check never creates one, and a key
    whose failures have all expired is dropped when next looked at. Under a spray of names or
    addresses the table is bounded by `max_keys`: the keys whose last failure is oldest go first
    (never the whole table at once, which would lift every lockout).
    """

    def __init__(
        self,
        per_user: int = 5,
        per_address: int = 20,
        window: float = 60.0,
        *,
        protocol: str = "api",
        max_keys: int = 100_000,
    ) -> None:
        self._limits = {"user": per_user, "address": per_address}
        self._window = window
        self._max_keys = max_keys
        # Insertion order is the order of each key's last failure (a failure moves its key last).
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._rate_limited = metrics.LOGIN_FAILURES.labels(protocol, "rate_limited")
        self.protocol = protocol

    def _recent(self, key: tuple[str, str], now: float) -> int:
        """How many failures `key` has inside the window (dropping the key when none are left)."""
        times = self._failures.get(key)
        if times is None:
            return 0
        while times and now - times[0] > self._window:
            times.popleft()
        if not times:
            del self._failures[key]
        return len(times)

    def check(self, user: str, address: str) -> None:
        now = time.monotonic()
        for kind, value in (("user", user), ("address", address)):
            if self._recent((kind, value), now) >= self._limits[kind]:
                self._rate_limited.inc()
                raise LoginRateLimited(
                    f"too many failed logins for this {kind}; try again in {self._window:g} seconds"
                )

    def failure(self, user: str, address: str, reason: str = "wrong_password") -> None:
        """Record a failed password check; `reason` is wrong_password or unknown_user."""
        metrics.LOGIN_FAILURES.labels(self.protocol, reason).inc()
        now = time.monotonic()
        for key in (("user", user), ("address", address)):
            self._recent(key, now)
            times = self._failures.pop(key, None)
            if times is None:
                times = deque(maxlen=max(self._limits.values()))
            times.append(now)
            self._failures[key] = times  # last in order: the most recent failure
        while len(self._failures) > self._max_keys:  # bound memory under a spray of names
            del self._failures[next(iter(self._failures))]

    def __len__(self) -> int:
        """Keys currently tracked (for tests and the memory investigation)."""
        return len(self._failures)
