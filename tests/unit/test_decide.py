"""Verdicts (policies.decide): every kind × level, block_ddl, SQL PREPARE of writes, no level."""

from __future__ import annotations

import pytest

from policies.decide import decide
from policies.types import Action, Classification, Kind, Level, SourcePolicy, Verdict

FWD, HOLD, DENY = Action.FORWARD, Action.HOLD, Action.DENY
OPEN = SourcePolicy()
BLOCK_DDL = SourcePolicy(block_ddl=True)

REASONS = {
    Kind.READ: "",
    Kind.TRANSACTION: "BEGIN",
    Kind.SESSION: "SET search_path",
    Kind.WRITE: "DELETE",
    Kind.DDL: "DROP TABLE",
    Kind.UNKNOWN: 'syntax error at or near "SELEC"',
    Kind.PRIVILEGED: "SET ROLE changes who the session is",
}

# (kind, level) → (action, needed); block_ddl off.
MATRIX: dict[tuple[Kind, Level | None], tuple[Action, Level | None]] = {
    (Kind.READ, None): (DENY, Level.READ),
    (Kind.READ, Level.READ): (FWD, None),
    (Kind.READ, Level.PROPOSE): (FWD, None),
    (Kind.READ, Level.WRITE): (FWD, None),
    (Kind.TRANSACTION, None): (DENY, Level.READ),
    (Kind.TRANSACTION, Level.READ): (FWD, None),
    (Kind.TRANSACTION, Level.PROPOSE): (FWD, None),
    (Kind.TRANSACTION, Level.WRITE): (FWD, None),
    (Kind.SESSION, None): (DENY, Level.READ),
    (Kind.SESSION, Level.READ): (FWD, None),
    (Kind.SESSION, Level.PROPOSE): (FWD, None),
    (Kind.SESSION, Level.WRITE): (FWD, None),
    (Kind.WRITE, None): (DENY, Level.READ),
    (Kind.WRITE, Level.READ): (DENY, Level.PROPOSE),
    (Kind.WRITE, Level.PROPOSE): (HOLD, None),
    (Kind.WRITE, Level.WRITE): (FWD, None),
    (Kind.DDL, None): (DENY, Level.READ),
    (Kind.DDL, Level.READ): (DENY, Level.PROPOSE),
    (Kind.DDL, Level.PROPOSE): (HOLD, None),
    (Kind.DDL, Level.WRITE): (FWD, None),
    (Kind.UNKNOWN, None): (DENY, Level.READ),
    (Kind.UNKNOWN, Level.READ): (DENY, Level.PROPOSE),
    (Kind.UNKNOWN, Level.PROPOSE): (HOLD, None),
    (Kind.UNKNOWN, Level.WRITE): (FWD, None),
    (Kind.PRIVILEGED, None): (DENY, Level.READ),
    (Kind.PRIVILEGED, Level.READ): (DENY, Level.WRITE),
    (Kind.PRIVILEGED, Level.PROPOSE): (DENY, Level.WRITE),
    (Kind.PRIVILEGED, Level.WRITE): (FWD, None),
}


def level_id(level: Level | None) -> str:
    return level.value if level else "none"


def check(verdict: Verdict, c: Classification, action: Action, needed: Level | None) -> None:
    assert verdict.action is action, verdict
    assert verdict.kind is c.kind
    assert verdict.needed is needed, verdict
    if action is DENY:
        assert needed is not None
        assert needed.value in verdict.reason, verdict
    if c.reason and action is not FWD:
        assert c.reason in verdict.reason, verdict


def test_matrix_covers_every_kind_and_level() -> None:
    assert set(MATRIX) == {
        (kind, level) for kind in Kind for level in (None, Level.READ, Level.PROPOSE, Level.WRITE)
    }


@pytest.mark.parametrize(
    ("kind", "level", "action", "needed"),
    [
        pytest.param(kind, level, action, needed, id=f"{kind.value}-{level_id(level)}-{action.value}")
        for (kind, level), (action, needed) in MATRIX.items()
    ],
)
def test_kind_by_level(kind: Kind, level: Level | None, action: Action, needed: Level | None) -> None:
    c = Classification(kind=kind, reason=REASONS[kind])
    check(decide(c, level, OPEN), c, action, needed)


@pytest.mark.parametrize("kind", list(Kind), ids=lambda kind: kind.value)
def test_approve_alone_is_no_data_level(kind: Kind) -> None:
    c = Classification(kind=kind, reason=REASONS[kind])
    check(decide(c, Level.APPROVE, OPEN), c, DENY, Level.READ)


def test_example_reason_reads_like_a_sentence() -> None:
    verdict = decide(Classification(kind=Kind.WRITE, reason="DELETE"), Level.READ, OPEN)
    assert verdict.reason == "DELETE needs propose"


def test_reason_without_classifier_reason_names_the_kind() -> None:
    verdict = decide(Classification(kind=Kind.WRITE), Level.READ, OPEN)
    assert verdict.reason == "write statement needs propose"


def test_unknown_reason_carries_the_parser_message() -> None:
    verdict = decide(
        Classification(kind=Kind.UNKNOWN, reason="syntax error at end of input"), Level.READ, OPEN
    )
    assert "syntax error at end of input" in verdict.reason
    assert "propose" in verdict.reason


@pytest.mark.parametrize(
    ("kind", "level", "action", "needed"),
    [
        pytest.param(Kind.DDL, Level.PROPOSE, DENY, Level.WRITE, id="ddl-propose-denied"),
        pytest.param(Kind.DDL, Level.READ, DENY, Level.PROPOSE, id="ddl-read-denied-as-usual"),
        pytest.param(Kind.DDL, Level.WRITE, FWD, None, id="ddl-write-forwarded"),
        pytest.param(Kind.DDL, None, DENY, Level.READ, id="ddl-none-denied"),
        pytest.param(Kind.WRITE, Level.PROPOSE, HOLD, None, id="write-propose-still-held"),
        pytest.param(Kind.UNKNOWN, Level.PROPOSE, HOLD, None, id="unknown-propose-still-held"),
        pytest.param(Kind.READ, Level.READ, FWD, None, id="read-read-forwarded"),
    ],
)
def test_block_ddl(kind: Kind, level: Level | None, action: Action, needed: Level | None) -> None:
    c = Classification(kind=kind, reason=REASONS[kind])
    verdict = decide(c, level, BLOCK_DDL)
    check(verdict, c, action, needed)
    if kind is Kind.DDL and level is Level.PROPOSE:
        assert "DDL is blocked on this source" in verdict.reason


@pytest.mark.parametrize(
    ("kind", "level", "action", "needed"),
    [
        pytest.param(Kind.WRITE, Level.PROPOSE, DENY, Level.WRITE, id="write-propose"),
        pytest.param(Kind.WRITE, Level.READ, DENY, Level.WRITE, id="write-read"),
        pytest.param(Kind.WRITE, Level.WRITE, FWD, None, id="write-write"),
        pytest.param(Kind.UNKNOWN, Level.PROPOSE, DENY, Level.WRITE, id="unknown-propose"),
        pytest.param(Kind.DDL, Level.PROPOSE, DENY, Level.WRITE, id="ddl-propose"),
        pytest.param(Kind.PRIVILEGED, Level.PROPOSE, DENY, Level.WRITE, id="privileged-propose"),
        pytest.param(Kind.READ, Level.READ, FWD, None, id="read-read"),
        pytest.param(Kind.SESSION, Level.PROPOSE, FWD, None, id="session-propose"),
        pytest.param(Kind.TRANSACTION, Level.READ, FWD, None, id="transaction-read"),
        pytest.param(Kind.READ, None, DENY, Level.READ, id="read-none"),
        pytest.param(Kind.WRITE, None, DENY, Level.READ, id="write-none"),
    ],
)
def test_sql_prepare(kind: Kind, level: Level | None, action: Action, needed: Level | None) -> None:
    c = Classification(kind=kind, reason=REASONS[kind], prepares="s1")
    verdict = decide(c, level, OPEN)
    check(verdict, c, action, needed)
    if action is DENY and level is not None:
        assert "prepared write cannot be held" in verdict.reason
        assert "run the statement itself" in verdict.reason


def test_forward_keeps_the_classifier_reason_for_the_audit() -> None:
    c = Classification(kind=Kind.SESSION, reason="SET search_path")
    assert decide(c, Level.READ, OPEN) == Verdict(action=FWD, kind=Kind.SESSION, reason="SET search_path")


def test_hold_reason_names_the_statement() -> None:
    verdict = decide(Classification(kind=Kind.WRITE, reason="DELETE"), Level.PROPOSE, OPEN)
    assert verdict == Verdict(action=HOLD, kind=Kind.WRITE, reason="DELETE held for approval")


def test_reads_calling_unvetted_functions_fail_closed_unless_the_source_trusts_them() -> None:
    """Issue 10 class 6: held for propose, denied for read (naming the function), forwarded for
    write; a source's trusted functions are reads again."""
    c = Classification(Kind.READ, unvetted=("audit.log_read",))
    denied = decide(c, Level.READ, SourcePolicy())
    assert denied.action is Action.DENY
    assert "audit.log_read()" in denied.reason
    assert decide(c, Level.PROPOSE, SourcePolicy()).action is Action.HOLD
    assert decide(c, Level.WRITE, SourcePolicy()).action is Action.FORWARD
    trusted = SourcePolicy(trusted_functions=frozenset({"audit.log_read"}))
    assert decide(c, Level.READ, trusted).action is Action.FORWARD
    # A write stays a write (held/denied as such), whatever it calls.
    w = Classification(Kind.WRITE, unvetted=("f",))
    assert decide(w, Level.PROPOSE, SourcePolicy()).kind is Kind.WRITE
