"""Upstream MySQL/MariaDB connections: login with the source's credentials, read-only role, reset.

Like `proxy.upstream.pg`: control mode (login, reset) reads whole payloads through a
`PacketReader`; relay mode (`attach(sink)`) hands every received chunk to the client session.
Authentication: mysql_native_password and caching_sha2_password (fast path; full authentication
over TLS, or with the server's RSA key when not on TLS), following AuthSwitchRequest.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import cast

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from proxy.errors import QueryBaseError
from proxy.tlsfiles import tls_required
from proxy.upstream.base import UpstreamBase, UpstreamTarget
from proxy.wire.mysql import protocol as my

RESET_TIMEOUT = 10.0
NATIVE = "mysql_native_password"
CACHING_SHA2 = "caching_sha2_password"
READ_ONLY_SQL = "SET SESSION TRANSACTION READ ONLY"


class UpstreamError(QueryBaseError):
    sqlstate = "08S01"
    mysql_errno = 2013  # CR_SERVER_LOST
    code = "upstream"


def scramble_native(password: str, nonce: bytes) -> bytes:
    """mysql_native_password: SHA1(pw) XOR SHA1(nonce ‖ SHA1(SHA1(pw)))."""
    if not password:
        return b""
    stage1 = hashlib.sha1(password.encode()).digest()  # noqa: S324 - the protocol's hash
    mask = hashlib.sha1(nonce[:20] + hashlib.sha1(stage1).digest()).digest()  # noqa: S324
    return bytes(a ^ b for a, b in zip(stage1, mask, strict=True))


def scramble_caching_sha2(password: str, nonce: bytes) -> bytes:
    """caching_sha2_password fast path: SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) ‖ nonce)."""
    if not password:
        return b""
    stage1 = hashlib.sha256(password.encode()).digest()
    mask = hashlib.sha256(hashlib.sha256(stage1).digest() + nonce[:20]).digest()
    return bytes(a ^ b for a, b in zip(stage1, mask, strict=True))


def _auth_response(plugin: str, password: str, nonce: bytes) -> bytes:
    if plugin == NATIVE:
        return scramble_native(password, nonce)
    if plugin == CACHING_SHA2:
        return scramble_caching_sha2(password, nonce)
    raise UpstreamError(f"upstream asks for unsupported authentication plugin {plugin!r}")


class UpstreamConnection(UpstreamBase[tuple[int, bytes]]):
    """One logged-in upstream session; pooled by `proxy.upstream.pool.Pool`."""

    def __init__(self, target: UpstreamTarget, params: tuple[tuple[str, str], ...]) -> None:
        super().__init__(target, params, my.PacketReader)
        opts = dict(params)
        self.capabilities = my.Capability(int(opts.get("capabilities", "0")))
        self.charset = int(opts.get("charset", str(my.UTF8MB4_GENERAL_CI)))
        self.schema = opts.get("schema") or target.database
        self.server_version = ""
        self.thread_id = 0
        self.status = my.ServerStatus.SERVER_STATUS_AUTOCOMMIT
        self.on_tls = False

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        target = self.target
        transport, _ = await loop.create_connection(lambda: self._protocol, target.host, target.port)
        self._transport = transport
        seq, payload = await self._protocol.read()
        if payload[:1] == b"\xff":
            raise UpstreamError(my.parse_err(payload).message)
        hello = my.parse_handshake_v10(payload)
        self.server_version, self.thread_id, self.status = (
            hello.server_version,
            hello.connection_id,
            hello.status,
        )
        wanted = self.capabilities | my.Capability.CLIENT_PROTOCOL_41 | my.Capability.CLIENT_SECURE_CONNECTION
        wanted |= my.Capability.CLIENT_PLUGIN_AUTH | my.Capability.CLIENT_TRANSACTIONS
        missing = (self.capabilities & ~hello.capabilities) & ~my.Capability.CLIENT_SSL
        if missing:
            raise UpstreamError(f"upstream lacks capabilities the client needs: {missing!r}")
        caps = wanted & hello.capabilities
        seq = my.next_seq(seq)
        if target.tls != "disable" and hello.capabilities & my.Capability.CLIENT_SSL:
            caps |= my.Capability.CLIENT_SSL
            self.transport.write(my.make_packets(my.make_ssl_request(caps, self.charset), seq)[0])
            seq = my.next_seq(seq)
            new = await loop.start_tls(
                self.transport, self._protocol, self.target.ssl_context(), server_hostname=target.host
            )
            self._transport = cast(asyncio.Transport, new)
            self.on_tls = True
        elif tls_required(target.tls):
            raise UpstreamError(f"upstream of source {target.source!r} does not offer TLS")
        else:
            caps &= ~my.Capability.CLIENT_SSL
        self.capabilities = caps
        plugin = hello.auth_plugin or NATIVE
        password = target.password or ""
        response = _auth_response(plugin, password, hello.scramble)
        login = my.make_handshake_response41(
            caps, target.user, response, self.schema, plugin, charset=self.charset
        )
        self.transport.write(my.make_packets(login, seq)[0])
        await self._finish_auth(plugin, password, hello.scramble)
        if target.read_only:
            await self.simple_query(READ_ONLY_SQL)

    async def _finish_auth(self, plugin: str, password: str, nonce: bytes) -> None:
        while True:
            seq, payload = await self._protocol.read()
            head = payload[:1]
            reply_seq = my.next_seq(seq)
            if head == b"\x00":
                self.status = my.parse_ok(payload, self.capabilities).status
                return
            if head == b"\xff":
                err = my.parse_err(payload)
                raise UpstreamError(f"login refused: {err.message} (errno {err.errno})")
            if head == b"\xfe":
                switch = my.parse_auth_switch_request(payload)
                plugin, nonce = switch.plugin, switch.data
                self.transport.write(my.make_packets(_auth_response(plugin, password, nonce), reply_seq)[0])
            elif head == b"\x01" and plugin == CACHING_SHA2:
                data = my.parse_auth_more_data(payload)
                if data == b"\x03":
                    continue  # fast path succeeded; OK follows
                if data == b"\x04":  # full authentication
                    if self.on_tls:
                        self.transport.write(my.make_packets(password.encode() + b"\x00", reply_seq)[0])
                    else:
                        self.transport.write(my.make_packets(b"\x02", reply_seq)[0])  # ask for the key
                elif data.startswith(b"-----BEGIN"):
                    key = serialization.load_pem_public_key(data)
                    if not isinstance(key, rsa.RSAPublicKey):
                        raise UpstreamError("upstream sent a non-RSA public key")
                    plain = password.encode() + b"\x00"
                    masked = bytes(b ^ nonce[i % len(nonce)] for i, b in enumerate(plain))
                    sealed = key.encrypt(
                        masked,
                        padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),  # noqa: S303
                    )
                    self.transport.write(my.make_packets(sealed, reply_seq)[0])
                else:
                    raise UpstreamError("unexpected caching_sha2_password exchange from upstream")
            else:
                raise UpstreamError(f"unexpected upstream packet during login: {payload[:1]!r}")

    async def simple_query(self, sql: str) -> None:
        """Run one statement in control mode; raise UpstreamError on ERR."""
        self.transport.write(my.make_packets(my.make_query(sql), 0)[0])
        scanner = my.ResultScanner(bool(self.capabilities & my.Capability.CLIENT_DEPRECATE_EOF), self.status)
        scanner.start(my.Command.COM_QUERY)
        while True:
            _, payload = await self._protocol.read()
            if scanner.feed(payload) is my.ScanEvent.DONE:
                break
        self.status = scanner.status
        if scanner.error is not None:
            raise UpstreamError(f"{sql}: {scanner.error.message} (errno {scanner.error.errno})")

    async def _simple_command(self, command: my.Command, body: bytes = b"") -> None:
        self.transport.write(my.make_packets(my.make_command(command, body), 0)[0])
        _, payload = await self._protocol.read()
        if payload[:1] == b"\xff":
            raise UpstreamError(my.parse_err(payload).message)
        if payload[:1] == b"\x00":
            self.status = my.parse_ok(payload, self.capabilities).status

    # ------------------------------------------------------------------------------- relay

    async def reset(self) -> bool:
        """COM_RESET_CONNECTION, back to the pool's schema, read-only again; False if unusable."""
        self.detach()
        if self.broken:
            return False
        try:
            async with asyncio.timeout(RESET_TIMEOUT):
                await self._simple_command(my.Command.COM_RESET_CONNECTION)
                await self._simple_command(my.Command.COM_INIT_DB, self.schema.encode())
                if self.target.read_only:
                    await self.simple_query(READ_ONLY_SQL)
        except (TimeoutError, QueryBaseError):
            return False
        return True

    async def stop_running(self) -> None:
        """KILL QUERY this connection's thread, from a new connection of the same login."""
        helper: UpstreamConnection | None = None
        try:
            helper = await UpstreamConnection.connect(self.target, self.params)
            await helper.simple_query(f"KILL QUERY {int(self.thread_id)}")
        except QueryBaseError:
            pass
        finally:
            if helper is not None:
                helper.close()

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            try:
                self._transport.write(my.make_packets(my.make_command(my.Command.COM_QUIT), 0)[0])
            finally:
                self._transport.close()
