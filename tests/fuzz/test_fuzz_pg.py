"""Bounded wire fuzzing of the PostgreSQL listener (the long run is `make fuzz`, tests/fuzz/run.py).

Rule guarded: hostile or malformed PostgreSQL input — mutated startup, SSLRequest, SCRAM and
extended-protocol sequences from `read` and `propose` users — never crashes serve, never logs an
error or a traceback, leaves no orphan task, does not disturb another user's session, keeps
memory bounded, and changes nothing in the database.
"""

from __future__ import annotations

import os

import pytest

from tests.fuzz.run import fuzz_and_check
from tests.fuzz.target import Target

pytestmark = pytest.mark.integration

SECONDS = float(os.environ.get("FUZZ_TEST_SECONDS", "15"))


def test_fuzz_pg_listener(fuzz_target: Target) -> None:
    seed = int(os.environ.get("FUZZ_SEED", "20240610"))
    summary = fuzz_and_check(
        fuzz_target, messages=10**9, seconds=SECONDS, seed=seed, protocols=("pg",), workers=3, login_workers=2
    )
    print(summary.text())
    assert summary.cases > 50, summary.text()
    assert summary.login_cases > 20, summary.text()
    assert not summary.failures(), summary.text()
