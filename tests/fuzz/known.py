"""Log findings that are known, reported, still unfixed bugs in files this suite does not own.

Each entry: an id, the file the bug is in, and a predicate over one log line. The fuzz summary
counts lines matching an entry under "known" instead of failing on them, so that the fuzzer keeps
finding *new* problems while these wait for their fix; each one also has a deterministic test in
tests/fuzz/test_robustness.py marked xfail(strict=True), which starts failing (XPASS) the
day the bug is fixed — remove the entry here then. Nothing may be added here without such a test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Known:
    id: str
    where: str
    matches: Callable[[str], bool]


KNOWN: tuple[Known, ...] = (
    Known(
        "pg-tls-garbage",
        "proxy/pg/session.py PgSession._login/_negotiate",
        lambda line: (
            '"login_crashed"' in line
            and '"postgresql"' in line
            and "start_tls" in line
            and "SSLError" in line
        ),
    ),
    Known(
        "pg-fatal-on-closed-transport",
        "proxy/pg/session.py PgSession._login → _fatal",
        lambda line: (
            "Task exception was never retrieved" in line
            and "PgSession._login" in line
            and "handler is closed" in line
        ),
    ),
    Known(
        "my-tls-garbage",
        "proxy/mysql/session.py MySQLSession._login/_authenticate",
        lambda line: (
            '"login_crashed"' in line and '"mysql"' in line and "start_tls" in line and "SSLError" in line
        ),
    ),
    Known(
        "my-fatal-on-closed-transport",
        "proxy/mysql/session.py MySQLSession._login → _fatal",
        lambda line: (
            "Task exception was never retrieved" in line
            and "MySQLSession._login" in line
            and "handler is closed" in line
        ),
    ),
    Known(
        "pg-held-write-malformed-bind",
        "proxy/pg/session.py PgSession._finish_refusal → _refusal_error → draft.parameters",
        lambda line: (
            "Task exception was never retrieved" in line
            and "_finish_refusal" in line
            and "ProtocolViolation" in line
        ),
    ),
    Known(
        "my-upstream-data-after-client-closed",
        "proxy/mysql/session.py MySQLSession.upstream_data",
        lambda line: (
            "Fatal error on transport" in line
            and "mysql/session.py" in line
            and "upstream_data" in line
            and "handler is closed" in line
        ),
    ),
)


def known_issue(line: str) -> str | None:
    for known in KNOWN:
        if known.matches(line):
            return known.id
    return None
