"""The verdict errors of proxy/errors.py and their one renderer per protocol: what a client gets
in place of its statement's own answer, with the same codes whichever session refuses it."""

from __future__ import annotations

import pytest

from proxy.errors import (
    ApprovedButFailed,
    AuditUnavailable,
    Denied,
    DeniedPrivileged,
    Held,
    HoldFailed,
    PoolTimeout,
    QueryBaseError,
    Refused,
    UpstreamConnectError,
    WaitCancelled,
)
from proxy.wire.mysql import protocol as my
from proxy.wire.pg import protocol as pgp


def pg_fields(exc: QueryBaseError, severity: str = "ERROR") -> dict[str, str]:
    message = pgp.error_response(exc, severity)
    assert message[:1] == b"E"
    return pgp.parse_error_fields(message[5:])


def mysql_err(exc: QueryBaseError) -> my.ErrPacket:
    return my.parse_err(my.err_payload(exc))


@pytest.mark.parametrize(
    ("exc", "sqlstate", "errno", "mysql_sqlstate"),
    [
        (Denied("permission denied: x"), "42501", 1142, "42000"),
        (Denied("permission denied: x", mysql_errno=1044), "42501", 1044, "42000"),
        (DeniedPrivileged("permission denied: x"), "42501", 1227, "42000"),
        (Held(7, "shop"), "QB001", 9001, "HY000"),
        (HoldFailed("store down"), "58000", 1105, "HY000"),
        (AuditUnavailable("audit log unavailable"), "58000", 1105, "HY000"),
        (WaitCancelled("cancelled"), "57014", 1317, "70100"),
        (ApprovedButFailed("failed", sqlstate="23505", mysql_errno=1062), "23505", 1062, "HY000"),
        (ApprovedButFailed("failed", sqlstate=None, mysql_errno=None), "XX000", 1105, "HY000"),
        (PoolTimeout("no connection"), "53300", 1040, "53300"),
        (UpstreamConnectError("down"), "08001", 2003, "08001"),
    ],
)
def test_each_error_carries_its_codes_to_both_protocols(
    exc: QueryBaseError, sqlstate: str, errno: int, mysql_sqlstate: str
) -> None:
    fields = pg_fields(exc)
    assert (fields["S"], fields["C"], fields["M"]) == ("ERROR", sqlstate, exc.message)
    err = mysql_err(exc)
    assert (err.errno, err.sqlstate) == (errno, mysql_sqlstate)


def test_verdicts_are_refusals() -> None:
    for cls in (
        Denied,
        DeniedPrivileged,
        Held,
        HoldFailed,
        AuditUnavailable,
        WaitCancelled,
        ApprovedButFailed,
    ):
        assert issubclass(cls, Refused)


def test_held_says_what_happens_next_in_each_protocols_way() -> None:
    held = Held(12, "shop", "still pending after 5s", why="unknown statement")
    fields = pg_fields(held)
    assert (
        fields["M"]
        == 'write held for approval as change request #12 on source "shop" (still pending after 5s)'
    )
    assert fields["D"].startswith("The statement did not run.")
    assert "change request 12" in fields["H"]
    text = mysql_err(held).message
    assert text.startswith(fields["M"] + " [unknown statement]; it did not run")


def test_a_fatal_error_is_rendered_with_its_severity() -> None:
    assert pg_fields(PoolTimeout("no connection"), "FATAL")["S"] == "FATAL"
