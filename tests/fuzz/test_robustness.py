"""Deterministic reproductions of what the wire fuzzer found, kept as regression tests.

Rule guarded: hostile input on either listener is an expected event — one clean warning line,
no error-level line, no traceback, no "Task exception was never retrieved" — and a client that
hangs up mid-statement leaves no error behind. Each test sends the exact bytes of one finding
and reads serve's log from where it stood before.

The bugs were in proxy/wire/pg/session.py and proxy/wire/mysql/session.py; these tests were
xfail(strict=True) until the owners' fixes (commits 3a8bcc1, 78f1570 and 4b1fd75) made them pass.
"""

from __future__ import annotations

import contextlib
import gc
import socket
import struct
import time

import pytest

from proxy.upstream.mysql import scramble_caching_sha2
from proxy.wire.mysql import protocol as my
from proxy.wire.pg import protocol as pgp
from tests.fuzz.mycases import CAPABILITIES
from tests.fuzz.target import MY_SOURCE, PASSWORDS, PG_SOURCE, TABLE, LogFindings, Target, scan_log_from
from tests.support.pgfront import RawPg

pytestmark = pytest.mark.integration

HTTP = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"  # what a browser or a scanner sends: not a ClientHello


def _settle(target: Target, offset: int) -> LogFindings:
    time.sleep(0.5)
    return scan_log_from(target.log_path, offset, known=False)


def _drain(sock: socket.socket) -> None:
    sock.settimeout(5)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionError, TimeoutError):
        pass


def _clean(found: LogFindings) -> str:
    return "\n".join(found.error_lines + found.tracebacks + found.leaked_tasks)


def test_pg_garbage_instead_of_tls_handshake(fuzz_target: Target) -> None:
    offset = fuzz_target.log_path.stat().st_size
    with socket.create_connection((fuzz_target.host, fuzz_target.pg_port), timeout=5) as sock:
        sock.sendall(pgp.make_ssl_request())  # 00 00 00 08 04 d2 16 2f
        assert sock.recv(1) == b"S"
        sock.sendall(HTTP)
        _drain(sock)
    gc.collect()
    found = _settle(fuzz_target, offset)
    assert not _clean(found), _clean(found)


def test_mysql_garbage_instead_of_tls_handshake(fuzz_target: Target) -> None:
    offset = fuzz_target.log_path.stat().st_size
    with socket.create_connection((fuzz_target.host, fuzz_target.my_port), timeout=5) as sock:
        reader = my.PacketReader()
        reader.feed(sock.recv(65536))
        assert reader.next() is not None  # the greeting
        sock.sendall(my.make_packets(my.make_ssl_request(CAPABILITIES, my.UTF8MB4_GENERAL_CI), 1)[0])
        sock.sendall(HTTP)
        _drain(sock)
    found = _settle(fuzz_target, offset)
    assert not _clean(found), _clean(found)


def _my_login(target: Target, user: str) -> socket.socket:
    sock = socket.create_connection((target.host, target.my_port), timeout=5)
    reader = my.PacketReader()
    while (got := reader.next()) is None:
        reader.feed(sock.recv(65536))
    hello = my.parse_handshake_v10(got[1])
    answer = scramble_caching_sha2(PASSWORDS[user], hello.scramble)
    payload = my.make_handshake_response41(CAPABILITIES, user, answer, MY_SOURCE, "caching_sha2_password")
    sock.sendall(my.make_packets(payload, 1)[0])
    while True:
        while (got := reader.next()) is None:
            reader.feed(sock.recv(65536))
        if got[1][:1] != b"\x01":
            assert got[1][:1] == b"\x00", got
            return sock


def test_mysql_client_hangs_up_during_a_result(fuzz_target: Target) -> None:
    offset = fuzz_target.log_path.stat().st_size
    for _ in range(5):
        sock = _my_login(fuzz_target, "fz_read")
        # A result that arrives after the client is gone: the client closes right after sending.
        # No function calls (a read user's function allowlist may change): a join makes ~8,000 rows.
        query = f"SELECT a.name, b.name, c.name FROM {TABLE} a, {TABLE} b, {TABLE} c".encode()
        sock.sendall(my.make_packets(b"\x03" + query, 0)[0])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, at once
        sock.close()
    time.sleep(1.0)
    found = _settle(fuzz_target, offset)
    # Only this test's finding: a login task of the test before may be collected meanwhile.
    lines = [line for line in _clean(found).splitlines() if "MySQLSession._login" not in line]
    assert not lines, "\n".join(lines)


def _malformed_bind() -> bytes:
    """Bind "" from "" with one parameter whose length says 100 bytes but only 3 follow (and no
    result-format count): framed correctly, its body truncated."""
    body = b"\x00" + b"\x00" + struct.pack("!hh", 0, 1) + struct.pack("!i", 100) + b"abc"
    return b"B" + struct.pack("!i", len(body) + 4) + body


def test_pg_held_write_with_a_malformed_bind(fuzz_target: Target) -> None:
    offset = fuzz_target.log_path.stat().st_size
    with RawPg(fuzz_target.host, fuzz_target.pg_port, timeout=5) as pg:
        pg.login("fz_propose", PASSWORDS["fz_propose"], PG_SOURCE)
        pg.send(
            pgp.make_parse(b"", f"UPDATE {TABLE} SET name = $1".encode(), [])
            + _malformed_bind()
            + pgp.make_execute(b"")
            + pgp.message(b"S")
        )
        answers = []
        with contextlib.suppress(TimeoutError, OSError):
            while (msg := pg.read_message()) is not None:
                answers.append(msg[0])
                if msg[0] == b"Z":
                    break
    gc.collect()
    found = _settle(fuzz_target, offset)
    assert not _clean(found), f"client got {answers}\n{_clean(found)}"
    assert answers, "no answer"
    assert answers[-1] in (b"Z", b"E"), answers  # an answer: an error, or the end of the batch


def test_mysql_declared_packet_length_is_not_preallocated(fuzz_target: Target) -> None:
    """A packet header is 4 bytes; what it declares must not be allocated before it arrives.
    30 clients each send a header declaring a 16 MiB login packet (ff ff ff 01) and wait."""
    before = fuzz_target.rss_kib()
    socks = []
    try:
        for _ in range(30):
            sock = socket.create_connection((fuzz_target.host, fuzz_target.my_port), timeout=5)
            sock.recv(65536)  # the greeting
            sock.sendall(b"\xff\xff\xff\x01")
            socks.append(sock)
        time.sleep(1.0)
        grown_mib = (fuzz_target.rss_kib() - before) / 1024
    finally:
        for sock in socks:
            sock.close()
    assert grown_mib < 64, f"VmRSS grew by {grown_mib:.0f} MiB for 30 packet headers"
