"""The verdict on one classified message for one user's data level on one source (DESIGN.md §1, §3).

Pure: a `Classification`, the effective data level (`read`/`propose`/`write`, or None) and the source's
`SourcePolicy` in; a `Verdict` out. The session acts on it and renders `reason` into the client's error
(SQLSTATE 42501 / QB001; MySQL 1227/1142), so reasons are short and name the level that is needed.

| kind                          | read          | propose                    | write   |
|-------------------------------|---------------|----------------------------|---------|
| read, transaction, session    | forward       | forward                    | forward |
| write, unknown                | deny: propose | hold                       | forward |
| ddl                           | deny: propose | hold (deny if `block_ddl`) | forward |
| privileged                    | deny: write   | deny: write                | forward |

No level (or `approve` alone, which is not a data level) denies everything: read is needed. A SQL
`PREPARE` of anything but a read/transaction/session statement is denied below `write`: holding it
would be pointless, since the approved `PREPARE` would run later on another connection and the
client's `EXECUTE` would find nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import replace

from policies.types import STRICTNESS, Action, Classification, Kind, Level, SourcePolicy, Verdict

_PASS_THROUGH = frozenset({Kind.READ, Kind.TRANSACTION, Kind.SESSION})
_DATA_LEVELS = frozenset({Level.READ, Level.PROPOSE, Level.WRITE})


def _subject(c: Classification) -> str:
    """What the statement is, for a message: the classifier's reason, or its kind."""
    if c.kind is Kind.UNKNOWN:
        return f"unclassifiable statement ({c.reason})" if c.reason else "unclassifiable statement"
    if c.kind is Kind.DDL and c.reason:
        return f"DDL ({c.reason})"
    return c.reason or f"{c.kind.value} statement"


def _deny(c: Classification, needed: Level, reason: str | None = None) -> Verdict:
    text = reason if reason is not None else f"{_subject(c)} needs {needed.value}"
    return Verdict(action=Action.DENY, kind=c.kind, reason=text, needed=needed)


def decide(c: Classification, level: Level | None, policy: SourcePolicy) -> Verdict:
    """Forward, hold or deny the classified message `c` for a user whose data level is `level`."""
    if level is None or level not in _DATA_LEVELS:
        return _deny(c, Level.READ, f"{_subject(c)} needs read (no data access on this source)")
    if level is Level.WRITE:
        return Verdict(action=Action.FORWARD, kind=c.kind, reason=c.reason)
    if c.unvetted and c.kind in _PASS_THROUGH:
        untrusted = [name for name in c.unvetted if name not in policy.trusted_functions]
        if untrusted:
            # Functions are an allowlist: one QueryBase does not know may write or run SQL text.
            reason = f"calls {untrusted[0]}(), which is neither a vetted built-in nor trusted on this source"
            c = replace(c, kind=Kind.UNKNOWN, reason=reason)
    if c.kind in _PASS_THROUGH:
        return Verdict(action=Action.FORWARD, kind=c.kind, reason=c.reason)
    if c.prepares is not None:
        return _deny(
            c,
            Level.WRITE,
            f"PREPARE {c.prepares} of {_subject(c)} needs write: a prepared write cannot be held; "
            "run the statement itself so it can be held",
        )
    if c.kind is Kind.PRIVILEGED:
        return _deny(c, Level.WRITE)
    if level is Level.READ:
        return _deny(c, Level.PROPOSE)
    if c.kind is Kind.DDL and policy.block_ddl:
        return _deny(c, Level.WRITE, f"DDL is blocked on this source ({c.reason or 'ddl'}); it needs write")
    return Verdict(action=Action.HOLD, kind=c.kind, reason=f"{_subject(c)} held for approval")


# Verdicts depend only on their (hashable, frozen) inputs, and few distinct combinations occur.
decide_cached = functools.lru_cache(maxsize=4096)(decide)


def as_decided(c: Classification, verdict: Verdict) -> Classification:
    """The classification a held statement is recorded with: the kind and reason the verdict took
    (a read calling an untrusted function is held as unknown, naming the function)."""
    if verdict.kind is c.kind:
        return c
    return replace(c, kind=verdict.kind, reason=verdict.reason)


def with_prepared_kind(c: Classification, prepared: Mapping[str, Kind]) -> Classification:
    """For SQL `EXECUTE name`: the kind recorded when `name` was prepared in this session, unless
    the EXECUTE itself is stricter (its arguments can call guarded functions)."""
    if c.executes is None:
        return c
    kind = prepared.get(c.executes)
    if kind is not None and (c.kind is Kind.UNKNOWN or STRICTNESS[kind] > STRICTNESS[c.kind]):
        return replace(c, kind=kind)
    return c
