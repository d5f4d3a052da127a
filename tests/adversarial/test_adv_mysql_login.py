"""Hostile input on the MySQL login path is an expected event (issue 10, "login path robustness").

Garbage where a TLS ClientHello belongs, a client that hangs up in the middle of a TLS handshake or
of a large result: each is one clean warning line in serve's log — no `login_crashed`, no
traceback, no "Task exception was never retrieved", no error-level line — and other sessions go on.
"""

from __future__ import annotations

import gc
import json
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.wire.mysql import protocol as my
from tests.support.localdb import MariaDBServer
from tests.support.myfront import (
    RAW_CAPABILITIES,
    SOURCE,
    Gateway,
    RawMy,
    results,
    running_gateway,
    setup_items,
)

pytestmark = pytest.mark.integration

HTTP = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def gateway(mariadb_server: MariaDBServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    setup_items(mariadb_server)
    with running_gateway(
        mariadb_server, tmp_path_factory.mktemp("adv-login") / "home", tls_mode="allow"
    ) as gw:
        yield gw


def log_since(gw: Gateway, offset: int) -> list[str]:
    time.sleep(0.7)
    gc.collect()
    with gw.serve.log_path.open("rb") as log:
        log.seek(offset)
        return log.read().decode("utf-8", "replace").splitlines()


def problems(lines: list[str]) -> list[str]:
    bad = []
    for line in lines:
        if "Traceback" in line or "Task exception was never retrieved" in line or "login_crashed" in line:
            bad.append(line)
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if line.strip():
                bad.append(line)  # not one of serve's JSON lines: a stray traceback line
            continue
        if record.get("level") in ("error", "critical", "exception"):
            bad.append(line)
    return bad


def ssl_request(sock: socket.socket) -> None:
    reader = my.PacketReader()
    while reader.next() is None:
        reader.feed(sock.recv(65536))
    caps = RAW_CAPABILITIES | my.Capability.CLIENT_SSL
    sock.sendall(my.make_packets(my.make_ssl_request(caps, my.UTF8MB4_GENERAL_CI), 1)[0])


def drain(sock: socket.socket) -> None:
    sock.settimeout(5)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


@pytest.mark.parametrize(
    "garbage",
    [HTTP, b"\x16\x03\x01\x00\x05hello", b"\x00" * 64, b""],
    ids=["http", "truncated-client-hello", "zeros", "hang-up"],
)
def test_garbage_instead_of_a_tls_handshake(gateway: Gateway, garbage: bytes) -> None:
    """Rule: a TLS handshake that is not one is logged as one warning line and nothing else."""
    offset = gateway.serve.log_path.stat().st_size
    with socket.create_connection((gateway.host, gateway.port), timeout=5) as sock:
        ssl_request(sock)
        if garbage:
            sock.sendall(garbage)
            drain(sock)
    lines = log_since(gateway, offset)
    assert not problems(lines), problems(lines)
    warned = sum('"login_aborted"' in line or '"session_error"' in line for line in lines)
    assert warned == 1 if garbage else warned <= 1, lines  # a plain hang-up may pass silently


def test_hang_up_during_a_large_result(gateway: Gateway) -> None:
    """Rule: a client that resets the connection while its result streams is no error: the
    upstream's remaining bytes go nowhere, quietly, and the next session is served."""
    offset = gateway.serve.log_path.stat().st_size
    for _ in range(5):
        raw = RawMy(gateway)
        raw.login(gateway, "carol")
        query = b"SELECT a.name, b.name, c.name, d.name FROM items a, items b, items c, items d, items e"
        raw.send(b"\x03" + query)
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()
    lines = log_since(gateway, offset)
    assert not problems(lines), problems(lines)
    raw = RawMy(gateway)
    try:
        raw.login(gateway, "carol", database=SOURCE)
        assert results(raw, b"SELECT 1")[-1][-1][:1] != b"\xff"
    finally:
        raw.close()


def test_abandoned_tls_handshake_does_not_hold_up_shutdown(
    mariadb_server: MariaDBServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Rule: a session whose client abandoned its TLS handshake half-way (the TLS layer never tells
    the session the socket is gone) still ends, so `serve` stops promptly on SIGTERM."""
    home = tmp_path_factory.mktemp("adv-login-stop") / "home"
    with running_gateway(mariadb_server, home, tls_mode="allow") as gw:
        with socket.create_connection((gw.host, gw.port), timeout=5) as sock:
            ssl_request(sock)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
            with pytest.raises(ssl.SSLWantReadError):
                tls.do_handshake()
            sock.sendall(outgoing.read())  # the ClientHello, then nothing more
            assert sock.recv(5)[:1] == b"\x16"  # the server's hello
        time.sleep(0.5)
        started = time.monotonic()
        assert gw.serve.stop(timeout=15) == 0
        assert time.monotonic() - started < 10
        assert not problems(gw.serve.log.splitlines()), problems(gw.serve.log.splitlines())


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_declared_login_packet_length_is_not_allocated(gateway: Gateway) -> None:
    """Rule: before login, what a packet header declares is neither allocated nor awaited: 30
    clients each sending a header for a 16 MiB login packet cost no memory to speak of, and each
    is refused at once (a login packet is far smaller than 64 KiB)."""
    offset = gateway.serve.log_path.stat().st_size
    before = rss_mib(gateway.serve.process.pid)
    socks = []
    try:
        for _ in range(30):
            sock = socket.create_connection((gateway.host, gateway.port), timeout=5)
            sock.recv(65536)  # the greeting
            sock.sendall(b"\xff\xff\xff\x01")
            socks.append(sock)
        time.sleep(1.0)
        grown = rss_mib(gateway.serve.process.pid) - before
        for sock in socks:
            drain(sock)  # the server ends each of them
    finally:
        for sock in socks:
            sock.close()
    assert grown < 32, f"VmRSS grew by {grown:.0f} MiB for 30 packet headers"
    lines = log_since(gateway, offset)
    assert not problems(lines), problems(lines)
    assert sum('"session_error"' in line for line in lines) == 30


def test_tls_login_still_works(gateway: Gateway) -> None:
    """The same port still speaks TLS properly afterwards (a real handshake, then a query)."""
    with socket.create_connection((gateway.host, gateway.port), timeout=5) as sock:
        ssl_request(sock)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with context.wrap_socket(sock) as tls:
            assert tls.version() is not None
