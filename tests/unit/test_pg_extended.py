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


# ------------------------------------------------------------ every transition of the model

WRITE = Classification(Kind.WRITE, reason="UPDATE")


def answered(ext: ExtendedState, *replies: bytes, status: str = "I") -> None:
    """The server answers the oldest batch: completions (b"1", b"2", b"3"), b"E", then ReadyForQuery."""
    for reply in replies:
        if reply == b"E":
            ext.error()
        else:
            ext.completed(reply)
    ext.ready(ord(status))


def test_a_batch_opens_with_its_first_message_and_closes_with_sync() -> None:
    ext = ExtendedState()
    assert not ext.batch_open
    assert ext.open_batch is None
    ext.extended()  # a Describe opens it
    assert ext.batch_open
    batch = ext.open_batch
    assert batch is not None
    assert not batch.errored
    ext.sync()
    assert not ext.batch_open
    assert not ext.settled()
    ext.ready(ord("I"))
    assert ext.settled()


def test_a_simple_query_inside_an_open_batch_is_a_desync() -> None:
    ext = ExtendedState()
    ext.extended()
    with pytest.raises(Desync):
        ext.simple()


def test_ready_for_query_before_the_sync_is_a_desync() -> None:
    ext = ExtendedState()
    ext.extended()
    with pytest.raises(Desync):
        ext.ready(ord("I"))


def test_a_completion_with_nothing_waiting_is_a_desync() -> None:
    ext = ExtendedState()
    ext.simple()
    with pytest.raises(Desync):
        ext.completed(b"1")


def test_an_error_skips_the_rest_of_its_batch() -> None:
    ext = ExtendedState()
    ext.parse(b"a", "SELECT 1", (), READ)
    ext.error()  # the server refused the Parse (reported before the batch ends)
    ext.bind(b"p", b"a", b"raw")  # sent after the error: skipped by the server
    ext.sync()
    assert ext.portals[b"p"].state is State.FAILED
    ext.ready(ord("I"))
    assert ext.statements == {}
    assert ext.portals == {}


def test_an_error_without_any_batch_is_ignored() -> None:
    ExtendedState().error()  # e.g. a FATAL while idle: the session ends on its own


def test_portals_outlive_a_batch_only_inside_a_transaction() -> None:
    ext = ExtendedState()
    ext.parse(b"", "SELECT 1", (), READ)
    ext.bind(b"p", b"", b"raw")
    ext.sync()
    answered(ext, b"1", b"2", status="T")
    assert b"p" in ext.portals
    ext.simple()
    answered(ext, status="I")  # COMMIT: the transaction and its portals are over
    assert b"p" not in ext.portals
    assert b"" in ext.statements  # statements live on


def test_close_forgets_at_once_and_the_close_is_answered() -> None:
    ext = ExtendedState()
    ext.parse(b"s", "SELECT 1", (), READ)
    ext.bind(b"p", b"s", b"raw")
    ext.sync()
    answered(ext, b"1", b"2", status="T")
    ext.close(b"P", b"p")
    ext.close(b"S", b"s")
    assert ext.portals == {}
    assert ext.statements == {}
    ext.sync()
    answered(ext, b"3", b"3")


def test_resolve_explains_each_way_an_execute_fails_closed() -> None:
    ext = ExtendedState()
    ext.extended()
    missing = ext.resolve(b"nope")
    assert isinstance(missing, Unknown)
    assert "not bound through QueryBase" in missing.reason
    ext.bind(b"orphan", b"never-parsed", b"raw")
    orphan = ext.resolve(b"orphan")
    assert isinstance(orphan, Unknown)
    assert "did not see prepared" in orphan.reason
    ext.sync()
    ext.ready(ord("T"))  # the Bind was never confirmed: it failed
    ext.parse(b"s", "SELECT 1", (), READ)
    ext.sync()
    answered(ext, b"E", status="T")  # the Parse failed
    ext.extended()
    assert isinstance(ext.resolve(b"orphan"), Unknown)


def test_resolve_a_portal_whose_statement_failed() -> None:
    ext = ExtendedState()
    ext.parse(b"s", "SELECT 1", (), READ)
    ext.bind(b"p", b"s", b"raw")
    statement = ext.statements[b"s"]
    ext.sync()
    ext.completed(b"1")
    ext.completed(b"2")
    ext.ready(ord("T"))
    statement.state = State.FAILED  # as if the server had dropped it after the Bind
    ext.extended()
    found = ext.resolve(b"p")
    assert isinstance(found, Unknown)
    assert "was not prepared at the server" in found.reason


def test_resolve_waits_for_an_earlier_batchs_statement() -> None:
    ext = ExtendedState()
    ext.parse(b"s", "SELECT 1", (), READ)
    ext.sync()
    ext.bind(b"p", b"s", b"raw")  # the next batch: the Parse is not confirmed yet
    assert ext.resolve(b"p") is WAIT
    ext.sync()


def test_sql_prepare_and_execute_follow_the_batch_that_made_them() -> None:
    ext = ExtendedState()
    ext.simple()
    ext.forwarded(Classification(Kind.READ, prepares="q", names=("prepare:q",)))
    assert ext.sql_kind("execute", "q") is WAIT  # its batch has not ended
    ext.ready(ord("I"))
    assert ext.sql_kind("execute", "q") is Kind.READ
    c = ext.with_sql_names(Classification(Kind.UNKNOWN, executes="q"))
    assert isinstance(c, Classification)
    assert c.kind is Kind.READ
    ext.simple()
    ext.forwarded(Classification(Kind.SESSION, names=("deallocate:q",)))
    ext.ready(ord("I"))
    assert isinstance(ext.sql_kind("execute", "q"), Unknown)


def test_a_failed_sql_prepare_is_forgotten() -> None:
    ext = ExtendedState()
    ext.simple()
    ext.forwarded(Classification(Kind.READ, prepares="q", names=("prepare:q",)))
    answered(ext, b"E")
    assert isinstance(ext.sql_kind("execute", "q"), Unknown)


def test_fetch_runs_a_cursors_kind_and_close_all_forgets_every_cursor() -> None:
    ext = ExtendedState()
    ext.simple()
    ext.forwarded(Classification(Kind.WRITE, names=("declare:c",)))
    ext.ready(ord("T"))
    c = ext.with_sql_names(Classification(Kind.READ, names=("fetch:c",)))
    assert isinstance(c, Classification)
    assert c.kind is Kind.WRITE
    assert "runs a write statement" in c.reason
    ext.simple()
    ext.forwarded(Classification(Kind.READ, names=("close:*",)))
    ext.ready(ord("T"))
    assert isinstance(ext.sql_kind("fetch", "c"), Unknown)


def test_fetch_of_a_protocol_portal_uses_its_statement() -> None:
    ext = ExtendedState()
    ext.parse(b"", "UPDATE t SET a = 1", (), WRITE)
    ext.bind(b"p", b"", b"raw")
    ext.sync()
    answered(ext, b"1", b"2", status="T")
    assert ext.sql_kind("fetch", "p") is Kind.WRITE


def test_an_unvetted_protocol_statement_reached_by_sql_is_unknown() -> None:
    ext = ExtendedState()
    ext.parse(b"s", "SELECT f()", (), Classification(Kind.READ, unvetted=("f",)))
    ext.sync()
    answered(ext, b"1")
    assert ext.sql_kind("execute", "s") is Kind.UNKNOWN


def test_with_sql_names_leaves_other_statements_alone() -> None:
    ext = ExtendedState()
    plain = Classification(Kind.READ)
    assert ext.with_sql_names(plain) is plain
    unknown_fetch = Classification(Kind.UNKNOWN, names=("fetch:c",))
    assert ext.with_sql_names(unknown_fetch) is unknown_fetch
    wait = ExtendedState()
    wait.simple()
    wait.forwarded(Classification(Kind.READ, prepares="q", names=("prepare:q",)))
    assert wait.with_sql_names(Classification(Kind.UNKNOWN, executes="q")) is WAIT
    missing = ext.with_sql_names(Classification(Kind.UNKNOWN, executes="nope"))
    assert isinstance(missing, Classification)
    assert missing.kind is Kind.UNKNOWN
    assert "nope" in missing.reason


def test_a_protocol_name_and_a_sql_name_that_could_be_the_same_forget_each_other() -> None:
    ext = ExtendedState()
    ext.simple()
    ext.forwarded(Classification(Kind.READ, prepares="q", names=("prepare:q", "declare:c")))
    ext.ready(ord("T"))
    ext.parse(b"Q", "SELECT 2", (), READ)  # case-insensitive match: the SQL name may be gone
    ext.bind(b"C", b"Q", b"raw")
    assert "q" not in ext.sql_prepared
    assert "c" not in ext.cursors
    ext.sync()
    answered(ext, b"1", b"2", status="T")
    ext.simple()
    ext.forwarded(Classification(Kind.READ, prepares="q", names=("prepare:q", "declare:c")))
    assert b"Q" not in ext.statements
    assert b"C" not in ext.portals
    ext.ready(ord("T"))


def test_non_ascii_names_forget_every_candidate() -> None:
    ext = ExtendedState()
    ext.simple()
    ext.forwarded(Classification(Kind.READ, prepares="q", names=("prepare:q",)))
    ext.ready(ord("I"))
    ext.parse("é".encode("latin-1"), "SELECT 1", (), READ)
    assert ext.sql_prepared == {}
    ext.sync()
    answered(ext, b"1")
    ext.simple()
    ext.forwarded(Classification(Kind.READ, prepares="é", names=("prepare:é",)))
    assert ext.statements == {}
    ext.ready(ord("I"))
    ext.simple()
    ext.forwarded(Classification(Kind.SESSION, names=("deallocate:*",)))
    assert ext.sql_prepared == {}
    ext.ready(ord("I"))


def test_the_name_tables_are_bounded() -> None:
    from proxy.wire.pg import extended

    ext = ExtendedState()
    original = extended.MAX_NAMES
    extended.MAX_NAMES = 2
    try:
        for name in (b"a", b"b", b"c"):
            ext.parse(name, "SELECT 1", (), READ)
        assert list(ext.statements) == [b"c"]  # forgetting is safe: unknown fails closed
        for name in ("x", "y", "z"):
            ext.forwarded(Classification(Kind.READ, names=(f"declare:{name}",)))
        assert list(ext.cursors) == ["z"]
    finally:
        extended.MAX_NAMES = original


def test_resolve_waits_for_an_earlier_batchs_portal() -> None:
    ext = ExtendedState()
    ext.parse(b"", "SELECT 1", (), READ)
    ext.bind(b"p", b"", b"raw")
    ext.sync()
    ext.extended()  # the next batch: the Bind is not confirmed yet
    assert ext.resolve(b"p") is WAIT


def test_sql_kind_of_protocol_names_in_every_state() -> None:
    ext = ExtendedState()
    ext.parse(b"s", "SELECT 1", (), READ)
    ext.sync()
    assert ext.sql_kind("execute", "s") is WAIT  # its batch is not answered yet
    answered(ext, b"1")
    assert ext.sql_kind("execute", "s") is Kind.READ
    ext.statements[b"s"].state = State.FAILED
    assert isinstance(ext.sql_kind("execute", "s"), Unknown)
    ext.bind(b"p", b"never", b"raw")  # a portal of a statement QueryBase never saw
    ext.sync()
    answered(ext, b"2", status="T")
    assert isinstance(ext.sql_kind("fetch", "p"), Unknown)


def test_a_failed_sql_name_falls_back_to_the_protocol_names() -> None:
    ext = ExtendedState()
    ext.simple()
    ext.forwarded(Classification(Kind.READ, prepares="q", names=("prepare:q",)))
    ext.sql_prepared["q"].state = State.FAILED
    assert isinstance(ext.sql_kind("execute", "q"), Unknown)
    ext.ready(ord("I"))


def test_fetching_a_read_cursor_in_a_read_leaves_the_classification_alone() -> None:
    ext = ExtendedState()
    ext.simple()
    ext.forwarded(Classification(Kind.READ, names=("declare:c",)))
    ext.ready(ord("T"))
    fetch = Classification(Kind.READ, names=("fetch:c",))
    assert ext.with_sql_names(fetch) is fetch


def test_a_portal_bound_after_an_error_in_its_batch_runs_nothing() -> None:
    ext = ExtendedState()
    ext.parse(b"", "SELECT 1", (), READ)
    ext.error()  # the Parse failed: the server skips the rest of the batch
    ext.bind(b"p", b"", b"raw")
    found = ext.resolve(b"p")
    assert isinstance(found, Unknown)
    assert "was not created at the server" in found.reason
    ext.sync()
    ext.ready(ord("I"))


def test_names_that_are_not_statement_names_change_nothing() -> None:
    ext = ExtendedState()
    ext.simple()
    ext.forwarded(Classification(Kind.SESSION, names=("lexing", "settings", "fetch:c")))
    assert (ext.sql_prepared, ext.cursors) == ({}, {})
    ext.ready(ord("I"))
