"""The fuzzer's starting points are valid: its typed-field messages encode to exactly what the
proxy's own codec builds, and what the proxy's parsers accept; and a case is a pure function of
its seed (the reproduction the summary prints is the case that ran).

Rule guarded: a mutation is only meaningful relative to a valid message; if the templates drifted
from the protocol, the fuzzer would test the gateway's error paths only.
"""

from __future__ import annotations

import random

from proxy.wire.mysql import protocol as my
from proxy.wire.pg import protocol as pgp
from tests.fuzz import mycases, pgcases
from tests.fuzz.mutate import encode_fields, encode_my, encode_pg


def test_pg_templates_encode_like_the_codec() -> None:
    assert encode_pg(pgcases.query(b"SELECT 1")) == pgp.make_query("SELECT 1")
    assert encode_pg(pgcases.parse(b"s1", b"SELECT $1", [23])) == pgp.make_parse(b"s1", b"SELECT $1", [23])
    values: list[bytes | None] = [b"1", None]
    assert encode_pg(pgcases.bind(b"p", b"s", [0, 1], values, [1])) == pgp.make_bind(
        b"p", b"s", [0, 1], values, [1]
    )
    assert encode_pg(pgcases.describe(b"P", b"p")) == pgp.make_describe(b"P", b"p")
    assert encode_pg(pgcases.execute(b"p", 5)) == pgp.make_execute(b"p", 5)
    assert encode_pg(pgcases.sasl_initial(b"SCRAM-SHA-256", b"n,,n=,r=x")) == pgp.make_sasl_initial(
        "SCRAM-SHA-256", b"n,,n=,r=x"
    )
    assert encode_pg(pgcases.sasl_response(b"c=biws")) == pgp.make_sasl_response(b"c=biws")
    assert encode_pg(pgcases.ssl_request()) == pgp.make_ssl_request()
    assert encode_pg(pgcases.startup({b"user": b"u", b"database": b"d"})) == pgp.make_startup(
        {"user": "u", "database": "d"}
    )
    assert encode_pg(pgcases.cancel_request(7, 9)) == pgp.make_cancel_request(7, (9).to_bytes(4, "big"))
    for type_byte, label in ((b"S", "S"), (b"H", "H"), (b"X", "X"), (b"c", "c")):
        assert encode_pg(pgcases.simple(type_byte, label)) == pgp.message(type_byte)


def test_pg_templates_parse_back() -> None:
    assert pgp.parse_parse(encode_pg(pgcases.parse(b"s1", b"SELECT 1", [25]))[5:]).param_types == (25,)
    bind = pgp.parse_bind(encode_pg(pgcases.bind(b"p1", b"s1", [1], [b"\x00\x00\x00\x01"], [0]))[5:])
    assert (bind.portal, bind.statement) == ("p1", "s1")
    assert pgp.parse_execute(encode_pg(pgcases.execute(b"p1", 3))[5:]) == ("p1", 3)
    assert isinstance(pgp.parse_startup(encode_pg(pgcases.ssl_request())), pgp.SSLRequest)


def test_mysql_templates_encode_like_the_codec() -> None:
    assert encode_my(mycases.com_query(b"SELECT 1")) == my.make_packets(my.make_query("SELECT 1"), 0)[0]
    assert encode_fields(
        mycases.com_change_user(b"u", b"x" * 20, b"db", b"mysql_native_password").fields
    ) == (my.make_change_user("u", b"x" * 20, "db", auth_plugin="mysql_native_password"))
    response = mycases.handshake_response(
        int(mycases.CAPABILITIES), b"u", b"y" * 32, b"db", b"caching_sha2_password"
    )
    assert encode_fields(response.fields) == my.make_handshake_response41(
        mycases.CAPABILITIES, "u", b"y" * 32, "db", "caching_sha2_password"
    )
    assert encode_fields(mycases.ssl_request(int(mycases.CAPABILITIES)).fields) == my.make_ssl_request(
        mycases.CAPABILITIES, my.UTF8MB4_GENERAL_CI
    )


def test_mysql_templates_parse_back() -> None:
    r = random.Random(1)
    execute = encode_fields(mycases.com_execute(5, 2, r).fields)
    command, body = my.parse_command(execute)
    assert command is my.Command.COM_STMT_EXECUTE
    parsed = my.parse_stmt_execute(body, 2, None)
    assert parsed.statement_id == 5
    assert len(parsed.values) == 2
    assert my.parse_stmt_fetch(encode_fields(mycases.com_fetch(5, 10).fields)[1:]) == (5, 10)
    assert my.parse_set_option(encode_fields([*mycases.command(0x1B).fields[1:]]) + b"\x00\x00") == 0
    change = my.parse_change_user(
        encode_fields(mycases.com_change_user(b"u", b"a" * 20, b"d", b"mysql_native_password").fields)[1:],
        mycases.CAPABILITIES,
    )
    assert (change.user, change.database, change.auth_plugin) == ("u", "d", "mysql_native_password")
    response = my.parse_handshake_response41(
        encode_fields(
            mycases.handshake_response(int(mycases.CAPABILITIES), b"u", b"z" * 32, b"d", b"p").fields
        )
    )
    assert isinstance(response, my.HandshakeResponse41)
    assert response.database == "d"


def test_cases_are_a_function_of_their_seed() -> None:
    for seed in range(200):
        a, b = pgcases.command_case(seed), pgcases.command_case(seed)
        assert a.sends == b.sends
        state = mycases.ConnState(b"s" * 20, {1: 2}, ("fz_alt", "pw"), "fz_my")
        c, d = mycases.command_case(seed, state), mycases.command_case(seed, state)
        assert c.sends == d.sends


def test_mutations_happen_and_sequences_stay_mostly_valid() -> None:
    cases = [pgcases.command_case(seed) for seed in range(500)]
    altered = sum(case.altered for case in cases)
    total = sum(len(case.messages) for case in cases)
    assert 0.05 < altered / total < 0.6, (altered, total)
    assert sum(case.framing_broken for case in cases) < len(cases) // 2
