"""KILL and COM_PROCESS_KILL through the MySQL listener, in every spelling (issue 10, classes 2 and 7).

Every user of a source shares its upstream login, so a KILL relayed raw would stop whatever that
login runs — other users' statements included. QueryBase recognises KILL from the classifier's
parse (comments, executable comments, case, whitespace change nothing), translates a QueryBase
connection id of the user's own session to its upstream thread, and refuses everything else.
Raw protocol clients (tests/support/myfront.py) against a real `querybase serve` and MariaDB.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from tests.support.localdb import MariaDBServer
from tests.support.myfront import (
    ADV_SOURCE,
    Gateway,
    adversarial_gateway,
    connect_raw,
    raw_error,
    results,
    setup_items,
)

pytestmark = pytest.mark.integration

SLEEP = 6


@pytest.fixture(scope="module")
def gateway(mariadb_server: MariaDBServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    setup_items(mariadb_server)
    with adversarial_gateway(mariadb_server, tmp_path_factory.mktemp("adv-kill") / "home") as gw:
        yield gw


class Sleeper:
    """carol's session running `SELECT SLEEP(n)` in a thread, with both of its ids."""

    def __init__(self, gw: Gateway, seconds: int) -> None:
        self.conn = pymysql.connect(**gw.connect_args("carol", ADV_SOURCE), autocommit=True)
        self.qb_id = self.conn.thread_id()  # QueryBase's connection id (the greeting's)
        self.outcome: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, args=(seconds,), daemon=True)
        self.thread.start()
        self.upstream_id = self._upstream_thread(gw, seconds)

    def _run(self, seconds: int) -> None:
        start = time.monotonic()
        try:
            with self.conn.cursor() as cur:
                cur.execute(f"SELECT SLEEP({seconds})")
                self.outcome["rows"] = cur.fetchall()
        except pymysql.MySQLError as exc:
            self.outcome["error"] = exc.args
        self.outcome["elapsed"] = time.monotonic() - start

    @staticmethod
    def _upstream_thread(gw: Gateway, seconds: int) -> int:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            ids = gw.rows(
                f"SELECT ID FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP({seconds})'"
            )
            if ids:
                return int(ids[0][0])
            time.sleep(0.05)
        raise AssertionError("the sleeper never reached the upstream")

    def finish(self) -> dict[str, Any]:
        self.thread.join(SLEEP + 10)
        self.conn.close()
        return self.outcome


def kill_spellings(thread: int, qb_id: int) -> list[bytes]:
    """Every way we know to say KILL (plus ones that must not be translated at all)."""
    texts = [
        f"KILL {thread}",
        f"KILL QUERY {thread}",
        f"/* x */ KILL QUERY {thread}",
        f"kill query {thread} -- c",
        f"kill query {thread} # c",
        f"/*!50000 KILL QUERY {thread} */",
        f"/*M!100000 KILL QUERY {thread} */",
        f"KiLl\tQuErY\n{thread}",
        f"KILL CONNECTION {thread}",
        f"KILL HARD QUERY {thread}",
        f"KILL SOFT CONNECTION {thread}",
        f"KILL ({thread})",
        f"KILL {thread} + 0",
        f"KILL QUERY ID {thread}",
        "KILL USER qb_adv",
        "KILL HARD USER qb_adv",
        f"KILL QUERY {qb_id}",  # the victim's QueryBase id: not this user's session
        f"KILL {qb_id}",
        f"SELECT 1; KILL QUERY {thread}",
        f"EXECUTE IMMEDIATE 'KILL QUERY {thread}'",
        f"SET STATEMENT max_statement_time=100 FOR KILL QUERY {thread}",
        f"PREPARE k FROM 'KILL QUERY {thread}'",
        "EXECUTE k",
        f"DO (SELECT 1); KILL {thread}",
    ]
    return [text.encode() for text in texts]


@pytest.mark.parametrize("attacker", ["alice", "carol_other_source", "dave"])
def test_no_spelling_of_kill_reaches_another_users_statement(gateway: Gateway, attacker: str) -> None:
    """Rule: a user may only cancel or kill their own QueryBase sessions, whatever the spelling of
    KILL (DESIGN.md §3 binding rules) — propose, write, and the same user on another source's
    session are all "another session". Every attempt is answered with an error and carol's
    running SLEEP ends undisturbed."""
    sleeper = Sleeper(gateway, SLEEP)
    user, source = ("carol", "shop_my") if attacker == "carol_other_source" else (attacker, ADV_SOURCE)
    raw = connect_raw(gateway, user, source)
    answers = {}
    try:
        for text in kill_spellings(sleeper.upstream_id, sleeper.qb_id):
            if user == "carol" and str(sleeper.qb_id).encode() in text:
                continue  # carol's own session id: that one she may kill (next test)
            answers[text] = raw_error(results(raw, text)[-1][-1])
        raw.send(b"\x0c" + struct.pack("<I", sleeper.upstream_id))  # COM_PROCESS_KILL
        answers[b"COM_PROCESS_KILL"] = raw_error(raw.must_read()[1])
        assert raw_error(results(raw, b"SELECT 1")[-1][-1]) == (0, ""), "the session is unusable"
    finally:
        raw.close()
        outcome = sleeper.finish()
    allowed = {text: answer for text, answer in answers.items() if answer[0] == 0}
    assert not allowed, f"accepted: {allowed}"
    assert outcome.get("rows") == ((0,),), outcome  # SLEEP returns 1 when interrupted
    assert outcome["elapsed"] >= SLEEP - 0.5


@pytest.mark.parametrize(
    "spelling",
    [
        "/* x */ KILL QUERY {id}",
        "kill query {id} -- c",
        "/*!50000 KILL QUERY {id} */",
        "KILL HARD QUERY {id}",
    ],
)
def test_own_kill_query_works_in_any_spelling(gateway: Gateway, spelling: str) -> None:
    """Rule: KILL QUERY with the QueryBase connection id of one's own session is translated to its
    upstream thread, whatever the spelling: the statement stops, the session goes on."""
    sleeper = Sleeper(gateway, 20)
    raw = connect_raw(gateway, "carol")
    try:
        answer = raw_error(results(raw, spelling.format(id=sleeper.qb_id).encode())[-1][-1])
        assert answer == (0, ""), answer
    finally:
        raw.close()
        outcome = sleeper.finish()
    assert outcome["elapsed"] < 10, outcome
    assert outcome.get("rows") == ((1,),) or outcome.get("error", (0,))[0] in (1317, 1028), outcome


def test_own_com_process_kill_ends_the_session(gateway: Gateway) -> None:
    """Rule: COM_PROCESS_KILL is KILL CONNECTION by command byte: one's own QueryBase session may be
    ended; its running statement stops with it."""
    sleeper = Sleeper(gateway, 20)
    raw = connect_raw(gateway, "carol")
    try:
        raw.send(b"\x0c" + struct.pack("<I", sleeper.qb_id))
        assert raw_error(raw.must_read()[1]) == (0, "")
    finally:
        raw.close()
        outcome = sleeper.finish()
    assert outcome["elapsed"] < 10, outcome
    assert "error" in outcome, outcome
