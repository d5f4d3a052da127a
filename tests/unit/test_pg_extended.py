"""The PostgreSQL statement/portal model (proxy/wire/pg/extended.py), driven as the session drives it:
messages out, replies in. These cover what transaction pooling added: shared server names, the
replies QueryBase edits, and moving a client to another server connection."""

from __future__ import annotations

import pytest

from policies.types import Classification, Kind
from proxy.wire.pg.extended import (
    AS_PARSE_COMPLETE,
    DROP,
    WAIT,
    Desync,
    ExtendedState,
    Portal,
    State,
    Unknown,
)

READ = Classification(Kind.READ)


def test_a_parse_answered_by_a_close_is_edited_and_confirms_the_statement() -> None:
    ext = ExtendedState()
    ext.parse(
        b"s1",
        "SELECT 1",
        (),
        READ,
        server_name=b"_qb_x",
        parse_tail=b"SELECT 1\x00\x00\x00",
        edit=AS_PARSE_COMPLETE,
    )
    ext.sync()
    assert ext.completed(b"3") == AS_PARSE_COMPLETE  # the Close QueryBase sent in its place
    ext.ready(ord("I"))
    assert ext.statements[b"s1"].state is State.CONFIRMED
    assert ext.statements[b"s1"].server_name == b"_qb_x"


def test_a_parse_answered_by_a_close_expects_close_complete() -> None:
    ext = ExtendedState()
    ext.parse(b"s1", "SELECT 1", (), READ, server_name=b"_qb_x", edit=AS_PARSE_COMPLETE)
    with pytest.raises(Desync):
        ext.completed(b"1")


def test_a_re_prepare_is_dropped_and_reports_whether_it_happened() -> None:
    outcomes: list[bool] = []
    ext = ExtendedState()
    ext.prepare_again(outcomes.append)
    ext.bind(b"", b"s1", b"raw")
    ext.sync()
    assert ext.completed(b"1") == DROP
    assert ext.completed(b"2") is None
    ext.ready(ord("I"))
    assert outcomes == [True]


def test_a_re_prepare_the_server_skipped_reports_failure() -> None:
    outcomes: list[bool] = []
    ext = ExtendedState()
    ext.prepare_again(outcomes.append)
    ext.sync()
    ext.error()  # the server rejected it
    ext.ready(ord("I"))
    assert outcomes == [False]


def test_a_parse_with_a_server_name_reports_failure_when_refused() -> None:
    outcomes: list[bool] = []
    ext = ExtendedState()
    ext.parse(b"s1", "SELEC", (), READ, server_name=b"_qb_x", done=outcomes.append)
    ext.sync()
    ext.error()
    ext.ready(ord("I"))
    assert outcomes == [False]
    assert b"s1" not in ext.statements


def test_moving_to_another_connection_keeps_confirmed_named_statements_only() -> None:
    ext = ExtendedState()
    ext.parse(b"named", "SELECT 1", (), READ, server_name=b"_qb_a", parse_tail=b"t")
    ext.parse(b"", "SELECT 2", (), READ)
    ext.bind(b"p", b"named", b"raw")
    ext.sync()
    for reply in (b"1", b"1", b"2"):
        ext.completed(reply)
    ext.ready(ord("T"))  # inside a transaction: the portal lives on
    ext.simple()
    ext.forwarded(Classification(Kind.READ, names=("declare:c",)))
    ext.ready(ord("I"))
    ext.new_connection()
    assert list(ext.statements) == [b"named"]
    assert ext.portals == {}
    assert ext.cursors == {}
    # A portal of the new connection binds the statement that followed the client.
    ext.bind(b"", b"named", b"raw")
    found = ext.resolve(b"")
    assert isinstance(found, Portal)
    assert found.statement is ext.statements[b"named"]


def test_a_statement_not_confirmed_by_its_own_connection_does_not_follow() -> None:
    ext = ExtendedState()
    ext.parse(b"named", "SELECT 1", (), READ)  # session pooling: no server name
    ext.sync()
    ext.completed(b"1")
    ext.ready(ord("I"))
    ext.new_connection()
    assert ext.statements == {}
    ext.bind(b"", b"named", b"raw")
    assert isinstance(ext.resolve(b""), Unknown)


def test_moving_with_replies_outstanding_is_a_desync() -> None:
    ext = ExtendedState()
    ext.parse(b"", "SELECT 1", (), READ)
    with pytest.raises(Desync):
        ext.new_connection()
    ext.sync()
    with pytest.raises(Desync):
        ext.new_connection()  # the Sync is not answered yet


def test_wait_is_still_answered_for_an_earlier_batch() -> None:
    ext = ExtendedState()
    ext.parse(b"s", "SELECT 1", (), READ, server_name=b"_qb_s")
    ext.bind(b"p", b"s", b"raw")
    ext.sync()
    ext.extended()
    assert ext.resolve(b"p") is WAIT
