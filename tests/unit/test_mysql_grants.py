"""SHOW GRANTS lines as data, and the findings they give (proxy.upstream.probe)."""

from __future__ import annotations

import pytest

from proxy.upstream.probe import GrantLine, mysql_findings, parse_grant_line


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "GRANT USAGE ON *.* TO `u`@`%` IDENTIFIED BY PASSWORD '*2B60229'",
            GrantLine(("USAGE",), "", "*.*", False),
        ),
        (
            "GRANT SELECT, INSERT, UPDATE (`a`, `b,c`) ON `shop`.`t` TO `u`@`%` WITH GRANT OPTION",
            GrantLine(("SELECT", "INSERT", "UPDATE"), "", "`shop`.`t`", True),
        ),
        (
            "GRANT ALL PRIVILEGES ON `my``db`.* TO 'u'@'%'",
            GrantLine(("ALL PRIVILEGES",), "", "`my``db`.*", False),
        ),
        (
            "GRANT EXECUTE ON PROCEDURE `shop`.`wipe` TO `u`@`%`",
            GrantLine(("EXECUTE",), "PROCEDURE", "`shop`.`wipe`", False),
        ),
        ("GRANT PROXY ON ``@`%` TO `u`@`%`", GrantLine(("PROXY",), "PROXY", "``@`%`", False)),
        ("GRANT `r_writer` TO `u`@`%`", GrantLine(("`r_writer`",), "ROLE", "", False)),
        ("GRANT `r1`@`%`,`r2`@`%` TO `u`@`%`", GrantLine(("`r1`@`%`", "`r2`@`%`"), "ROLE", "", False)),
        (
            "GRANT BACKUP_ADMIN,SYSTEM_VARIABLES_ADMIN ON *.* TO `u`@`%`",
            GrantLine(("BACKUP_ADMIN", "SYSTEM_VARIABLES_ADMIN"), "", "*.*", False),
        ),
        ("SET DEFAULT ROLE `r_writer` FOR `u`@`%`", None),
        ("REVOKE INSERT ON `mysql`.* FROM `u`@`%`", None),
    ],
)
def test_parse_grant_line(line: str, expected: GrantLine | None) -> None:
    assert parse_grant_line(line) == expected


def _codes(*lines: str, definers: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    grants = [g for g in map(parse_grant_line, lines) if g is not None]
    return [(f.code, f.severity, f.what) for f in mysql_findings(grants, definers or {})]


def test_read_privileges_are_no_finding() -> None:
    assert (
        _codes(
            "GRANT USAGE ON *.* TO `u`@`%`",
            "GRANT SELECT, SHOW VIEW ON `shop`.* TO `u`@`%`",
            "GRANT SELECT (`a`) ON `shop`.`t` TO `u`@`%`",
            "GRANT CREATE TEMPORARY TABLES ON `shop`.* TO `u`@`%`",  # session-local
        )
        == []
    )


def test_every_other_privilege_is_a_finding() -> None:
    assert _codes(
        "GRANT SELECT, UPDATE (`a`) ON `shop`.`t` TO `u`@`%` WITH GRANT OPTION",
        "GRANT FILE, PROCESS, SOME_NEW_ADMIN ON *.* TO `u`@`%`",
    ) == [
        ("privilege", "high", "UPDATE on `shop`.`t`"),
        ("privilege", "high", "GRANT OPTION on `shop`.`t`"),
        ("global_privilege", "high", "FILE on *.*"),
        ("global_privilege", "medium", "PROCESS on *.*"),
        ("global_privilege", "medium", "SOME_NEW_ADMIN on *.*"),  # unknown: not on the read allowlist
    ]


def test_routines_by_their_sql_security() -> None:
    definers = {"`shop`.`wipe`": "DEFINER", "`shop`.`show_me`": "INVOKER"}
    assert _codes(
        "GRANT EXECUTE ON PROCEDURE `shop`.`wipe` TO `u`@`%`",
        "GRANT EXECUTE ON FUNCTION `shop`.`show_me` TO `u`@`%`",
        "GRANT EXECUTE ON PROCEDURE `shop`.`unseen` TO `u`@`%`",  # not visible: assume DEFINER
        definers=definers,
    ) == [
        (
            "security_definer",
            "high",
            "EXECUTE on SQL SECURITY DEFINER procedure: `shop`.`unseen`, `shop`.`wipe`",
        ),
        ("execute", "low", "EXECUTE on function: `shop`.`show_me`"),
    ]
