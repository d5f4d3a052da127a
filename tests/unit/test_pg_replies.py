"""`Replies` (proxy/wire/pg/replies.py), sans-IO: server bytes in, client bytes and events out —
the same whether the stream arrives whole, split at any offset, or one byte at a time."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from policies.types import Classification, Kind
from proxy.wire.pg import protocol as pgp
from proxy.wire.pg.extended import AS_PARSE_COMPLETE, Desync, ExtendedState
from proxy.wire.pg.replies import Relayed, Replies

READ = Classification(Kind.READ)
PARSE_COMPLETE = b"1\x00\x00\x00\x04"
BIND_COMPLETE = b"2\x00\x00\x00\x04"
CLOSE_COMPLETE = b"3\x00\x00\x00\x04"
ROWS = pgp.make_row_description(["n"]) + pgp.make_data_row([b"1"]) + pgp.make_command_complete("SELECT 1")


def z(status: bytes = b"I") -> bytes:
    return pgp.make_ready_for_query(status)


Setup = Callable[[], Replies]


def splits(stream: bytes) -> list[list[bytes]]:
    """The stream whole, in two pieces at every offset, and one byte at a time."""
    ways = [[stream], [stream[i : i + 1] for i in range(len(stream))]]
    ways += [[stream[:i], stream[i:]] for i in range(1, len(stream))]
    return ways


def relay(setup: Setup, stream: bytes) -> tuple[Replies, bytes, Relayed]:
    """Feed `stream` every way; all must agree. Returns the last tracker, the client's bytes and
    the events merged over the chunks."""
    results = []
    for chunks in splits(stream):
        replies = setup()
        merged = Relayed(b"")
        data = b""
        for chunk in chunks:
            out = replies.feed(chunk)
            data += out.data
            merged.params += out.params
            merged.answered += out.answered
            if out.status is not None:
                merged.status = out.status
        results.append((replies, data, merged))
    first = results[0]
    for other in results[1:]:
        assert (other[1], other[2]) == (first[1], first[2])
    return first


def simple(*kinds: Kind) -> Setup:
    def setup() -> Replies:
        model = ExtendedState()
        replies = Replies(model)
        for index, kind in enumerate(kinds):
            model.simple()
            replies.query_sent(float(index), kind)
        return replies

    return setup


def test_the_clients_own_replies_pass_unchanged() -> None:
    stream = ROWS + z() + pgp.make_command_complete("BEGIN") + z(b"T")
    replies, data, out = relay(simple(Kind.READ, Kind.TRANSACTION), stream)
    assert data == stream
    assert out.answered == [[(0.0, Kind.READ)], [(1.0, Kind.TRANSACTION)]]
    assert out.status == ord("T")
    assert replies.idle


def test_parameter_status_is_reported_wherever_it_is_cut() -> None:
    stream = pgp.make_command_complete("SET") + pgp.make_parameter_status("application_name", "x") + z()
    _, data, out = relay(simple(Kind.SESSION), stream)
    assert data == stream
    assert out.params == [("application_name", "x")]


def test_an_answer_not_yet_complete_leaves_something_owed() -> None:
    replies = simple(Kind.READ)()
    out = replies.feed(ROWS + z()[:5])
    assert out.data == ROWS  # the ReadyForQuery without its status byte waits
    assert out.status is None
    assert not replies.idle
    out = replies.feed(z()[5:])
    assert out.data == z()
    assert replies.idle


def test_querybases_own_sync_passes_the_answer_but_not_its_ready_for_query() -> None:
    def setup() -> Replies:
        model = ExtendedState()
        replies = Replies(model)
        model.parse(b"", "SELECT 1", (), READ)
        model.bind(b"", b"", b"raw")
        model.sync()
        replies.execute_sent(7.0, Kind.READ)
        replies.own_sync()
        return replies

    stream = PARSE_COMPLETE + BIND_COMPLETE + ROWS + z()
    replies, data, out = relay(setup, stream)
    assert data == PARSE_COMPLETE + BIND_COMPLETE + ROWS
    assert out.answered == [[(7.0, Kind.READ)]]
    assert out.status == ord("I")
    assert replies.idle


def test_querybases_own_query_is_never_seen() -> None:
    def setup() -> Replies:
        model = ExtendedState()
        replies = Replies(model)
        model.simple()
        replies.query_sent(1.0, Kind.READ)
        model.simple()
        replies.own_query()
        return replies

    abort = pgp.make_error("ERROR", "P0001", "statement refused by QueryBase") + z(b"E")
    stream = ROWS + z(b"T") + abort
    replies, data, out = relay(setup, stream)
    assert data == ROWS + z(b"T")
    assert out.status == ord("E")  # the session learns the transaction failed
    assert out.answered == [[(1.0, Kind.READ)]]
    assert replies.idle


def test_a_close_in_place_of_a_parse_reaches_the_client_as_parse_complete() -> None:
    def setup() -> Replies:
        model = ExtendedState()
        replies = Replies(model)
        model.parse(b"s", "SELECT 1", (), READ, server_name=b"_qb_x", edit=AS_PARSE_COMPLETE)
        model.bind(b"", b"s", b"raw")
        model.sync()
        replies.sync_sent()
        return replies

    _, data, _ = relay(setup, CLOSE_COMPLETE + BIND_COMPLETE + z())
    assert data == PARSE_COMPLETE + BIND_COMPLETE + z()


def test_a_parse_querybase_added_is_not_answered_to_the_client() -> None:
    outcomes: list[bool] = []

    def setup() -> Replies:
        outcomes.clear()
        model = ExtendedState()
        replies = Replies(model)
        model.prepare_again(outcomes.append)
        model.bind(b"", b"s", b"raw")
        model.sync()
        replies.execute_sent(2.0, Kind.READ)
        replies.sync_sent()
        return replies

    _, data, out = relay(setup, PARSE_COMPLETE + BIND_COMPLETE + ROWS + z())
    assert data == BIND_COMPLETE + ROWS + z()
    assert outcomes == [True]
    assert out.answered == [[(2.0, Kind.READ)]]


def test_edits_and_a_dropped_ready_for_query_in_one_chunk() -> None:
    def setup() -> Replies:
        model = ExtendedState()
        replies = Replies(model)
        model.prepare_again(lambda ok: None)
        model.bind(b"", b"s", b"raw")
        model.sync()
        replies.execute_sent(3.0, Kind.READ)
        replies.own_sync()
        return replies

    _, data, _ = relay(setup, PARSE_COMPLETE + BIND_COMPLETE + ROWS + z())
    assert data == BIND_COMPLETE + ROWS


def test_a_ready_for_query_nothing_was_owed_for_is_a_desync() -> None:
    replies = Replies(ExtendedState())
    with pytest.raises(Desync):
        replies.feed(z())


def test_a_completion_out_of_order_is_a_desync() -> None:
    model = ExtendedState()
    replies = Replies(model)
    model.parse(b"", "SELECT 1", (), READ)
    model.sync()
    replies.sync_sent()
    with pytest.raises(Desync):
        replies.feed(BIND_COMPLETE)


def test_malformed_framing_is_a_protocol_violation() -> None:
    replies = simple(Kind.READ)()
    with pytest.raises(pgp.ProtocolViolation):
        replies.feed(b"C\x00\x00\x00\x02")
