"""Hand-built PostgreSQL protocol sequences against a real `querybase serve` (issue 10, classes 1, 4, 5).

The source `open` used here reads with a login that *can* write (qb_scram owns write grants on
`items`), so nothing but QueryBase stands between a `read` or `propose` user and the table: each
test shows the attack's sequence, checks what the client is told, and checks the database itself
(as its superuser) is unchanged. Where a sequence lifts the read-only backstop it does so the way
an attacker would — through the same name-swapping trick — so on the code before the fix the
write really lands.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.wire.pg import protocol as pgp
from tests.support.localdb import PG_PASSWORDS, PostgresCluster
from tests.support.pgfront import ITEMS, Gateway, RawPg, ServerError, cli, running_gateway, setup_items

pytestmark = pytest.mark.integration

OPEN = "open"  # read login qb_scram: DML-capable, so only QueryBase stops the writes
CHECKSUM = "SELECT string_agg(id || ':' || name, ',' ORDER BY id) FROM items"
LIFT = b"SELECT set_config('transaction_read_only', 'off', true)"
UPDATE = b"UPDATE items SET name = 'pwned' RETURNING id"


@pytest.fixture(scope="module", params=["transaction", "session"])
def gateway(
    pg_server: PostgresCluster, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Gateway]:
    """Every attack runs against a source in each pool mode."""
    setup_items(pg_server)
    with running_gateway(
        pg_server, tmp_path_factory.mktemp("adv-pg") / "qb", tls_mode="disable", pool_mode=request.param
    ) as gw:
        env = {"OPEN_PW": PG_PASSWORDS["qb_scram"]}
        cli(
            gw.config,
            *("source", "add", OPEN, "--engine", "postgresql", "--host", pg_server.host),
            *("--pool-mode", request.param),
            *("--port", str(pg_server.port), "--database", "qbtest", "--user", "qb_scram"),
            *("--password-env", "OPEN_PW", "--tls", "disable"),
            env=env,
        )
        for group, level in (("readers", "read"), ("analysts", "propose")):
            cli(gw.config, "grant", group, OPEN, level)
        yield gw


@pytest.fixture
def unchanged(gateway: Gateway) -> Iterator[None]:
    before = gateway.admin_sql(CHECKSUM)
    yield
    assert gateway.admin_sql(CHECKSUM) == before, "the attack changed the database"


def connect(gateway: Gateway, user: str) -> RawPg:
    raw = RawPg(gateway.host, gateway.port)
    raw.login(user, gateway.passwords[user], OPEN)
    return raw


def exchange(raw: RawPg, *messages: bytes, syncs: int | None = None) -> list[tuple[bytes, bytes]]:
    """Send `messages` in one write; read until as many ReadyForQuery as Sync/Query were sent."""
    raw.send(b"".join(messages))
    due = syncs if syncs is not None else sum(1 for m in messages if m[:1] in (b"S", b"Q"))
    seen: list[tuple[bytes, bytes]] = []
    while due:
        msg = raw.read_message()
        assert msg is not None, f"connection closed; got {seen}"
        seen.append(msg)
        if msg[0] == b"Z":
            due -= 1
    return seen


def errors(seen: list[tuple[bytes, bytes]]) -> list[str]:
    return [pgp.parse_error_fields(body).get("C", "") for t, body in seen if t == b"E"]


def swap_execute(target: bytes, portal: bytes = b"p") -> list[bytes]:
    """Bind `portal` to the unnamed statement `target`, re-parse the unnamed statement as a read,
    and Execute the portal: the server runs `target`."""
    return [
        pgp.make_parse(b"", target, []),
        pgp.make_bind(portal, b"", [], [], []),
        pgp.make_parse(b"", b"SELECT 1", []),
        pgp.make_execute(portal),
    ]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(("user", "refusal"), [("carol", "42501"), ("alice", "QB001")])
def test_portal_runs_its_own_statement_after_the_unnamed_one_is_replaced(
    gateway: Gateway, user: str, refusal: str
) -> None:
    """Rule: Execute is decided on the statement the portal was bound from, not on what the
    statement name means at Execute time (the unnamed statement replaced by a later Parse)."""
    with connect(gateway, user) as raw:
        exchange(raw, pgp.make_query("BEGIN"))
        seen = exchange(raw, *swap_execute(LIFT, b"lift"), *swap_execute(UPDATE), pgp.SYNC)
        assert refusal in errors(seen) or "42501" in errors(seen)
        exchange(raw, pgp.make_query("COMMIT"))


@pytest.mark.usefixtures("unchanged")
def test_portal_survives_close_and_reparse_of_its_statement_name(gateway: Gateway) -> None:
    """Rule: Close + re-Parse of a statement name does not change what an existing portal runs."""
    with connect(gateway, "carol") as raw:
        exchange(raw, pgp.make_query("BEGIN"))
        seen = exchange(
            raw,
            pgp.make_parse(b"s", LIFT, []),
            pgp.make_bind(b"lift", b"s", [], [], []),
            pgp.make_close(b"S", b"s"),
            pgp.make_parse(b"s", b"SELECT 1", []),
            pgp.make_execute(b"lift"),
            pgp.SYNC,
        )
        assert "42501" in errors(seen)
        seen = exchange(
            raw,
            pgp.make_parse(b"w", UPDATE, []),
            pgp.make_bind(b"pw", b"w", [], [], []),
            pgp.make_close(b"S", b"w"),
            pgp.make_parse(b"w", b"SELECT 1", []),
            pgp.make_execute(b"pw"),
            pgp.SYNC,
        )
        assert errors(seen), "the swapped UPDATE was not refused"
        exchange(raw, pgp.make_query("ROLLBACK"))


@pytest.mark.usefixtures("unchanged")
def test_a_parse_the_server_rejected_does_not_rename_the_statement(gateway: Gateway) -> None:
    """Rule: a name means what the server confirmed. Parse of an existing name fails at the server
    (it keeps the old statement), so QueryBase must not believe the new text."""
    with connect(gateway, "carol") as raw:
        exchange(raw, pgp.make_query("BEGIN"))
        exchange(raw, pgp.make_parse(b"s", UPDATE, []), pgp.SYNC)
        seen = exchange(raw, pgp.make_parse(b"s", b"SELECT 1", []), pgp.SYNC)
        assert errors(seen) == ["42P05"]  # duplicate_prepared_statement: the transaction is aborted
        exchange(raw, pgp.make_query("ROLLBACK"))
        seen = exchange(raw, pgp.make_bind(b"p", b"s", [], [], []), pgp.make_execute(b"p"), pgp.SYNC)
        assert errors(seen) == ["42501"]  # the statement behind "s" is not known: fail closed
        exchange(raw, pgp.make_query("ROLLBACK"))


@pytest.mark.usefixtures("unchanged")
def test_fetch_from_a_protocol_portal_is_decided_on_its_statement(gateway: Gateway) -> None:
    """Rule: SQL FETCH/MOVE run a portal's query (protocol portals included): they take the kind
    of the portal's statement, and a cursor QueryBase did not see declared fails closed."""
    with connect(gateway, "carol") as raw:
        exchange(raw, pgp.make_query("BEGIN"))
        seen = exchange(raw, pgp.make_parse(b"", UPDATE, []), pgp.make_bind(b"p", b"", [], [], []), pgp.SYNC)
        assert not errors(seen)
        with pytest.raises(ServerError) as caught:
            raw.query("FETCH ALL FROM p")
        assert caught.value.sqlstate == "42501"
        exchange(raw, pgp.make_query("ROLLBACK"))
        exchange(raw, pgp.make_query("BEGIN"))
        with pytest.raises(ServerError) as caught:
            raw.query("FETCH ALL FROM nowhere")
        assert caught.value.sqlstate == "42501"
        exchange(raw, pgp.make_query("ROLLBACK"))


@pytest.mark.usefixtures("unchanged")
def test_sql_execute_after_deallocate_and_protocol_parse(gateway: Gateway) -> None:
    """Rule: SQL EXECUTE runs whatever holds the name now; DEALLOCATE and a protocol Parse of the
    same name replace what PREPARE recorded."""
    with connect(gateway, "carol") as raw:
        raw.query("PREPARE foo AS SELECT 1")
        raw.query("DEALLOCATE foo")
        exchange(raw, pgp.make_parse(b"foo", b"DELETE FROM items", []), pgp.SYNC)
        raw.query("BEGIN")
        with pytest.raises(ServerError) as caught:
            raw.query("EXECUTE foo")
        assert caught.value.sqlstate == "42501"
        raw.query("ROLLBACK")


def test_legitimate_extended_sequences_still_work(gateway: Gateway) -> None:
    """Describe-then-Execute, a row limit continued with PortalSuspended, Flush without Sync, a
    named statement reused across batches, pipelined batches: answered as PostgreSQL would."""
    with connect(gateway, "carol") as raw:
        seen = exchange(
            raw,
            pgp.make_parse(b"q", b"SELECT id FROM items ORDER BY id", []),
            pgp.make_describe(b"S", b"q"),
            pgp.FLUSH,
            syncs=0,
        )
        assert seen == []
        seen = exchange(raw, pgp.SYNC)
        assert [t for t, _ in seen] == [b"1", b"t", b"T", b"Z"]
        seen = exchange(
            raw,
            pgp.make_bind(b"c", b"q", [], [], []),
            pgp.make_execute(b"c", 2),
            pgp.make_execute(b"c", 2),
            pgp.make_execute(b"c", 0),
            pgp.SYNC,
        )
        assert [t for t, _ in seen].count(b"D") == len(ITEMS)
        assert [t for t, _ in seen].count(b"s") == 2  # PortalSuspended twice, then CommandComplete
        pipelined = []
        for i in (1, 2, 3):
            pipelined += [pgp.make_bind(b"", b"q", [], [], []), pgp.make_execute(b""), pgp.SYNC]
            pipelined += [pgp.make_parse(b"", f"SELECT {i}".encode(), []), pgp.SYNC]
        seen = exchange(raw, *pipelined)
        assert not errors(seen)
        assert [t for t, _ in seen].count(b"D") == 3 * len(ITEMS)


@pytest.mark.usefixtures("unchanged")
def test_pipelined_execute_waits_for_the_batch_that_bound_its_portal(gateway: Gateway) -> None:
    """Rule: across batches nothing is assumed. A portal bound in an earlier, unanswered batch is
    decided only once the server has said what that batch did (here: its Parse failed, so the
    old statement stayed and the Execute must fail closed)."""
    lift_session = b"SELECT set_config('default_transaction_read_only', 'off', false)"
    with connect(gateway, "carol") as raw:
        seen = exchange(raw, *swap_execute(lift_session, b"lift"), pgp.SYNC)
        assert errors(seen) == ["42501"]
        exchange(raw, pgp.make_parse(b"s", UPDATE, []), pgp.SYNC)
        seen = exchange(
            raw,
            pgp.make_parse(b"s", b"SELECT 1", []),  # fails: "s" exists
            pgp.SYNC,
            pgp.make_bind(b"p", b"s", [], [], []),
            pgp.make_execute(b"p"),
            pgp.SYNC,
        )
        assert errors(seen) == ["42P05", "42501"]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    "sql",
    [
        "RESET transaction_read_only",
        "SET LOCAL transaction_read_only TO DEFAULT",
        "SET transaction_read_only TO DEFAULT",
        "SELECT set_config('transaction_read_only', NULL, true)",
    ],
)
def test_the_backstop_cannot_be_reset(gateway: Gateway, pg_server: PostgresCluster, sql: str) -> None:
    """Rule: every spelling that can turn read-only off is privileged. First, directly on the
    database with the same startup setting QueryBase uses, the statement really lifts it."""
    with RawPg(pg_server.host, pg_server.port) as direct:
        direct.login(
            "qb_scram", PG_PASSWORDS["qb_scram"], "qbtest", extra={"default_transaction_read_only": "on"}
        )
        direct.query("BEGIN")
        direct.query(sql)
        rows, _ = direct.query("SHOW transaction_read_only")
        assert rows == [[b"off"]], f"{sql} did not lift read-only on this server; the test proves nothing"
        direct.query("ROLLBACK")
    with connect(gateway, "carol") as raw:
        raw.query("BEGIN")
        with pytest.raises(ServerError) as caught:
            raw.query(sql)
        assert caught.value.sqlstate == "42501"
        raw.query("ROLLBACK")


@pytest.mark.usefixtures("unchanged")
def test_standard_conforming_strings_off_is_refused(gateway: Gateway, pg_server: PostgresCluster) -> None:
    """Rule: the classifier reads text as the server does. With standard_conforming_strings off a
    backslash escapes a quote, so text that is one SELECT to a standard reader hides a DELETE."""
    hidden = "SELECT 'a\\' || '; DELETE FROM items; --'"
    with RawPg(pg_server.host, pg_server.port) as direct:
        direct.login("qb_scram", PG_PASSWORDS["qb_scram"], "qbtest")
        direct.query("BEGIN")
        direct.query("SET LOCAL standard_conforming_strings = off")
        direct.query(hidden)
        rows, _ = direct.query("SELECT count(*) FROM items")
        assert rows == [[b"0"]], "the hidden DELETE did not run directly; the test proves nothing"
        direct.query("ROLLBACK")
    for user in ("carol", "alice"):
        with connect(gateway, user) as raw:
            with pytest.raises(ServerError) as caught:
                raw.query("SET standard_conforming_strings = off")
            assert caught.value.sqlstate == "42501"
            with pytest.raises(ServerError) as caught:
                raw.query("SELECT set_config('standard_conforming_strings', 'off', false)")
            assert caught.value.sqlstate == "42501"


@pytest.mark.parametrize(
    "extra",
    [
        {"options": "-c default_transaction_read_only=off"},
        {"options": "-c standard_conforming_strings=off"},
        {"options": "--role=qb_admin"},
        {"role": "qb_admin"},
        {"client_encoding": "SJIS"},
        {"options": "-d 5"},
    ],
    ids=["options-read-only", "options-strings", "options-role", "role", "sjis", "other-switch"],
)
def test_startup_parameters_pass_policy(gateway: Gateway, extra: dict[str, str]) -> None:
    """Rule: startup parameters are settings applied at login; each passes policy as the SET it
    amounts to, so a read user cannot start a writable, differently-lexed or other-role session."""
    with RawPg(gateway.host, gateway.port) as raw, pytest.raises(ServerError) as caught:
        raw.login("carol", gateway.passwords["carol"], OPEN, extra=extra)
    assert caught.value.sqlstate == "42501", caught.value.fields


def test_a_write_user_with_an_unsafe_startup_encoding_is_refused_at_login(gateway: Gateway) -> None:
    """Rule: QueryBase never relays text it cannot read as the server does, whoever sends it."""
    with RawPg(gateway.host, gateway.port) as raw, pytest.raises(ServerError) as caught:
        raw.login("dave", gateway.passwords["dave"], "shop", extra={"client_encoding": "SJIS"})
    assert "SJIS is not supported" in caught.value.fields["M"]


def test_unsafe_client_encoding_set_later_is_refused(gateway: Gateway) -> None:
    """Rule: a client encoding whose characters can contain 0x5C is refused (SET NAMES too)."""
    with connect(gateway, "carol") as raw:
        for sql in ("SET client_encoding = 'SJIS'", "SET NAMES 'GBK'"):
            with pytest.raises(ServerError) as caught:
                raw.query(sql)
            assert caught.value.sqlstate == "42501"
        raw.query("SET client_encoding = 'LATIN1'")
        # A byte that is not UTF-8 on its own, read as LATIN1 é by QueryBase and the server alike.
        seen = exchange(raw, pgp.message(b"Q", b"SELECT '\xe9' AS e\x00"))
        assert [body for t, body in seen if t == b"D"] == [b"\x00\x01\x00\x00\x00\x01\xe9"]


def test_messages_after_terminate_are_ignored(gateway: Gateway, tmp_path: Path) -> None:
    """Rule: nothing after Terminate reaches the upstream, and the session ends cleanly."""
    with connect(gateway, "carol") as raw:
        raw.send(b"X\x00\x00\x00\x04" + pgp.make_query("DELETE FROM items"))
        assert raw.read_all_until_eof() == []
    assert gateway.count() == len(ITEMS)


@pytest.mark.usefixtures("unchanged")
def test_functions_that_run_sql_text_or_write_in_read_only_are_refused(
    gateway: Gateway, pg_server: PostgresCluster
) -> None:
    """Rule (class 6, interim list): functions that execute SQL given as text, or write even in a
    read-only transaction, are not reads. Directly on the database first: ts_stat really runs a
    DELETE, and brin_summarize_new_values really changes the index inside a READ ONLY transaction."""
    pg_server.execute_sql(
        "DROP TABLE IF EXISTS brin_t; CREATE TABLE brin_t (v int); "
        "CREATE INDEX brin_t_v ON brin_t USING brin (v) WITH (pages_per_range = 1); "
        "INSERT INTO brin_t SELECT generate_series(1, 5000); GRANT SELECT ON brin_t TO qb_scram, qb_reader;"
    )
    pg_server.execute_sql(
        "DROP SEQUENCE IF EXISTS adv_seq; CREATE SEQUENCE adv_seq; GRANT ALL ON adv_seq TO qb_scram;"
    )
    # The text ts_stat runs is invisible to a classifier; here it moves a sequence.
    ts_stat = "SELECT * FROM ts_stat('SELECT to_tsvector(setval(''adv_seq'', 42)::text)')"
    with RawPg(pg_server.host, pg_server.port) as direct:
        direct.login("qb_scram", PG_PASSWORDS["qb_scram"], "qbtest")
        direct.query(ts_stat)
        assert direct.query("SELECT last_value FROM adv_seq")[0] == [[b"42"]], "ts_stat ran nothing"
    summarized = pg_server.execute_sql(
        "BEGIN READ ONLY; SELECT brin_summarize_new_values('brin_t_v'); COMMIT;"
    ).split()
    assert any(int(v) > 0 for v in summarized if v.isdigit()), "BRIN summarisation wrote nothing"
    pg_server.execute_sql("SELECT brin_desummarize_range('brin_t_v', 0)")
    with connect(gateway, "carol") as raw:
        for sql in (
            ts_stat,
            "SELECT brin_summarize_new_values('brin_t_v')",
            "SELECT gin_clean_pending_list('x')",
        ):
            with pytest.raises(ServerError) as caught:
                raw.query(sql)
            assert caught.value.sqlstate == "42501", sql


@pytest.mark.usefixtures("unchanged")
def test_user_functions_are_held_or_denied(gateway: Gateway, pg_server: PostgresCluster) -> None:
    """Rule (class 6): reads may call only vetted built-ins; a user function fails closed — denied
    for read, held for propose — with a message naming it. Directly, the function really deletes."""
    pg_server.execute_sql(
        "CREATE OR REPLACE FUNCTION adv_wipe() RETURNS bigint LANGUAGE sql "
        "AS 'WITH d AS (DELETE FROM items RETURNING 1) SELECT count(*) FROM d'; "
        "GRANT EXECUTE ON FUNCTION adv_wipe() TO qb_scram;"
    )
    with RawPg(pg_server.host, pg_server.port) as direct:
        direct.login("qb_scram", PG_PASSWORDS["qb_scram"], "qbtest")
        direct.query("BEGIN")
        assert direct.query("SELECT adv_wipe()")[0] == [[str(len(ITEMS)).encode()]]
        direct.query("ROLLBACK")
    before = gateway.last_request_id()
    for user, sqlstate in (("carol", "42501"), ("alice", "QB001")):
        with connect(gateway, user) as raw:
            with pytest.raises(ServerError) as caught:
                raw.query("SELECT name FROM items WHERE id = (SELECT adv_wipe())")
            assert caught.value.sqlstate == sqlstate
            assert "adv_wipe()" in caught.value.fields.get("M", "") or sqlstate == "QB001"
    held = gateway.new_requests(before)
    assert [r["statement_text"] for r in held] == ["SELECT name FROM items WHERE id = (SELECT adv_wipe())"]
    assert held[0]["kind"] == "unknown"  # recorded as decided, not as the read it looked like
    assert "adv_wipe()" in held[0]["classification"]["reason"]


def test_a_function_the_source_trusts_is_a_read(gateway: Gateway, pg_server: PostgresCluster) -> None:
    """Class 6: `source set --trusted-functions` lets reads call the named functions (as the
    classifier names them); others stay refused, and a trusted one still runs read-only."""
    pg_server.execute_sql(
        "CREATE OR REPLACE FUNCTION adv_double(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1 * 2';"
        "CREATE OR REPLACE FUNCTION adv_wipe2() RETURNS void LANGUAGE sql AS 'DELETE FROM items';"
    )
    cli(
        gateway.config,
        "source",
        "set",
        OPEN,
        "--trusted-functions",
        "adv_double, public.adv_double, adv_wipe2",
    )
    try:
        with connect(gateway, "carol") as raw:
            assert raw.query("SELECT adv_double(21), public.adv_double(1)")[0] == [[b"42", b"2"]]
            with pytest.raises(ServerError) as caught:
                raw.query("SELECT adv_wipe()")
            assert caught.value.sqlstate == "42501"
            with pytest.raises(ServerError) as caught:
                raw.query("SELECT adv_wipe2()")
            assert caught.value.sqlstate == "25006"  # trusted, so forwarded: the backstop stops it
        assert gateway.count() == len(ITEMS)
    finally:
        cli(gateway.config, "source", "set", OPEN, "--trusted-functions", "")


def test_other_users_statements_are_not_shown(gateway: Gateway) -> None:
    """Rule: a user may not see another user's session. Every QueryBase user of a source shares its
    read login, so pg_stat_activity would show one user the others' statement text."""
    with connect(gateway, "alice") as other:
        other.send(pgp.make_query("SELECT pg_sleep(3), 'alice-secret-marker'"))
        with connect(gateway, "carol") as raw:
            for sql in ("SELECT query FROM pg_stat_activity", "SELECT * FROM pg_stat_get_activity(NULL)"):
                with pytest.raises(ServerError) as caught:
                    raw.query(sql)
                assert caught.value.sqlstate == "42501"
                assert "other sessions" in caught.value.fields["M"]


@pytest.mark.usefixtures("unchanged")
def test_copy_messages_outside_copy_and_typed_parse(gateway: Gateway) -> None:
    """Rule: CopyData/CopyDone/CopyFail outside COPY carry nothing the server runs (it ignores
    them) and change no verdict; a Parse with declared parameter types binds and runs as a read,
    and the same shape with a write is refused."""
    with connect(gateway, "carol") as raw:
        raw.send(pgp.message(b"d", b"DELETE FROM items;\n") + pgp.message(b"c") + pgp.message(b"f", b"x\x00"))
        assert raw.query("SELECT count(*) FROM items")[0] == [[str(len(ITEMS)).encode()]]
        seen = exchange(
            raw,
            pgp.make_parse(b"t", b"SELECT name FROM items WHERE id = $1", [23]),
            pgp.make_bind(b"", b"t", [0], [b"2"], []),
            pgp.make_execute(b""),
            pgp.make_parse(b"w", b"DELETE FROM items WHERE id = $1", [23]),
            pgp.make_bind(b"", b"w", [0], [b"2"], []),
            pgp.make_execute(b""),
            pgp.SYNC,
        )
        assert [body for t, body in seen if t == b"D"] == [b"\x00\x01\x00\x00\x00\x06banana"]
        assert errors(seen) == ["42501"]


def test_an_encoding_change_in_an_open_batch_is_followed(gateway: Gateway) -> None:
    """Rule: after a statement that changes how text is read, QueryBase reads nothing more until
    the server has answered it — also inside an extended batch the client has not synced yet."""
    with connect(gateway, "carol") as raw:
        raw.send(
            pgp.make_parse(b"", b"SET client_encoding = 'LATIN1'", [])
            + pgp.make_bind(b"", b"", [], [], [])
            + pgp.make_execute(b"")
            + pgp.make_parse(b"", b"SELECT '\xe9' AS e", [])  # LATIN1 é: not UTF-8
            + pgp.make_bind(b"", b"", [], [], [])
            + pgp.make_execute(b"")
            + pgp.SYNC
        )
        seen = []
        while (msg := raw.read_message()) is not None:
            seen.append(msg)
            if msg[0] == b"Z":
                break
        assert not errors(seen)
        assert [body for t, body in seen if t == b"D"] == [b"\x00\x01\x00\x00\x00\x01\xe9"]
        assert raw.query("SHOW client_encoding")[0] == [[b"LATIN1"]]


@pytest.mark.usefixtures("unchanged")
def test_sql_execute_does_not_trust_a_parse_the_server_has_not_answered(gateway: Gateway) -> None:
    """Rule: a simple Query is a batch of its own. A protocol Parse of an existing name sent just
    before it (and rejected by the server) must not decide what SQL EXECUTE of that name runs."""
    with connect(gateway, "carol") as raw:
        exchange(raw, pgp.make_query("BEGIN"))
        exchange(raw, pgp.make_parse(b"foo", b"DELETE FROM items", []), pgp.SYNC)
        seen = exchange(
            raw,
            pgp.make_parse(b"foo", b"SELECT 1", []),  # fails: "foo" exists
            pgp.SYNC,
            pgp.make_query("EXECUTE foo"),
        )
        assert errors(seen)[-1] == "42501"
        exchange(raw, pgp.make_query("ROLLBACK"))
