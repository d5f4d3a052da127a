"""proxy/auth/limits.py LoginLimiter: what it keeps in memory.

Rules guarded (docs/fuzzing.md, the login-path investigation): a login attempt that does not fail
leaves nothing behind; a key whose failures have expired is dropped; under a spray of names the
table stays bounded by dropping the keys with the oldest failures, and never forgets everything
at once (which would lift the lockout of the user the spray was meant to free).
"""

from __future__ import annotations

import time

import pytest

from proxy.auth.limits import LoginLimiter, LoginRateLimited


def test_checks_alone_keep_nothing() -> None:
    limiter = LoginLimiter(protocol="unit")
    for i in range(1000):
        limiter.check(f"garbage-{i}", f"10.0.{i // 250}.{i % 250}")
    assert len(limiter) == 0


def test_expired_failures_are_dropped() -> None:
    limiter = LoginLimiter(window=0.05, protocol="unit")
    limiter.failure("ann", "10.0.0.1")
    assert len(limiter) == 2  # the user and the address
    time.sleep(0.1)
    limiter.check("ann", "10.0.0.1")
    assert len(limiter) == 0


def test_a_spray_of_names_evicts_the_oldest_keys_and_keeps_the_lockout() -> None:
    limiter = LoginLimiter(per_user=2, max_keys=50, protocol="unit")
    for i in range(100):  # old failures of other names, from many addresses
        limiter.failure(f"spray-{i}", f"10.1.0.{i}")
    limiter.failure("victim", "10.0.0.9")
    limiter.failure("victim", "10.0.0.9")
    for i in range(20):  # fewer new keys than the table holds
        limiter.failure(f"late-{i}", f"10.2.0.{i}")
    assert len(limiter) == 50
    with pytest.raises(LoginRateLimited):
        limiter.check("victim", "10.3.0.1")


def test_limits_still_apply() -> None:
    limiter = LoginLimiter(per_user=3, per_address=4, protocol="unit")
    for _ in range(3):
        limiter.check("bob", "10.0.0.1")
        limiter.failure("bob", "10.0.0.1")
    with pytest.raises(LoginRateLimited):
        limiter.check("bob", "10.0.0.2")
    limiter.failure("carl", "10.0.0.1")
    with pytest.raises(LoginRateLimited):
        limiter.check("dora", "10.0.0.1")
    limiter.check("dora", "10.0.0.2")
