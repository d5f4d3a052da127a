"""Upstream PostgreSQL connections: raw-protocol login with the source's credentials, reset, cancel.

An `UpstreamConnection` has two modes. In control mode (login, reset) its protocol frames whole
messages and hands them to `read()`. In relay mode (`attach(sink)`) every received chunk
goes straight to the client session's `upstream_data()`, untouched.
"""

from __future__ import annotations

import asyncio
from typing import cast

from proxy.errors import QueryBaseError
from proxy.pg import protocol as pgp
from proxy.pg.scram import SCRAM, ScramClient, md5_password
from proxy.relay import UpstreamBase, UpstreamTarget
from proxy.tlsfiles import tls_required

CONNECT_TIMEOUT = 10.0  # for the cancel connection
RESET_TIMEOUT = 10.0


class UpstreamError(QueryBaseError):
    """The upstream refused or broke the login; carries its SQLSTATE when it sent one."""

    sqlstate = "08006"  # connection_failure
    code = "upstream"

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        if sqlstate:
            self.sqlstate = sqlstate


class UpstreamConnection(UpstreamBase[tuple[bytes, bytes]]):
    """One logged-in upstream session; pooled by `proxy.pool.Pool`."""

    def __init__(self, target: UpstreamTarget, params: tuple[tuple[str, str], ...]) -> None:
        super().__init__(target, params, pgp.BackendReader)
        self.parameter_status: dict[str, str] = {}
        self.backend_pid = 0
        self.backend_key = b""
        self.status = b"I"
        self.on_tls = False
        self._sasl_final = b""

    # ---------------------------------------------------------------------------- lifecycle

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        target = self.target
        transport, _ = await loop.create_connection(lambda: self._protocol, target.host, target.port)
        self._transport = transport
        if target.tls != "disable":
            await self._negotiate_tls(loop)
        startup = {"user": target.user, "database": target.database}
        startup.update(self.params)
        if target.read_only:
            startup["default_transaction_read_only"] = "on"
        self._transport.write(pgp.make_startup(startup))
        await self._authenticate()
        while True:
            type_byte, body = await self._protocol.read()
            if type_byte == b"S":
                name, value = pgp.parse_parameter_status(body)
                self.parameter_status[name] = value
            elif type_byte == b"K":
                self.backend_pid, self.backend_key = pgp.parse_backend_key_data(body)
            elif type_byte == b"Z":
                self.status = body[:1]
                return
            elif type_byte == b"E":
                raise self._error(body)
            elif type_byte not in (b"N", b"v"):
                raise UpstreamError(f"unexpected upstream message {type_byte!r} during login")

    async def _negotiate_tls(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._transport is not None
        self._protocol.raw_waiter = loop.create_future()
        self._transport.write(pgp.make_ssl_request())
        answer = await self._protocol.raw_waiter
        self._protocol.raw_waiter = None
        if answer[:1] == b"S" and len(answer) == 1:
            new = await loop.start_tls(
                self._transport, self._protocol, self.target.ssl_context(), server_hostname=self.target.host
            )
            self._transport = cast(asyncio.Transport, new)
            self.on_tls = True
        elif answer[:1] == b"N" and len(answer) == 1:
            if tls_required(self.target.tls):
                raise UpstreamError(f"upstream of source {self.target.source!r} does not offer TLS")
        else:
            raise UpstreamError("upstream answered the SSLRequest with garbage")

    async def _authenticate(self) -> None:
        target, transport = self.target, self._transport
        assert transport is not None
        scram: ScramClient | None = None
        while True:
            type_byte, body = await self._protocol.read()
            if type_byte == b"E":
                raise self._error(body)
            if type_byte != b"R":
                raise UpstreamError(f"unexpected upstream message {type_byte!r} during authentication")
            code, payload = pgp.parse_auth(body)
            if code == pgp.AuthCode.OK:
                if scram is not None and not scram.verify(self._sasl_final):
                    raise UpstreamError("upstream's SCRAM server signature is wrong")
                return
            password = target.password
            needs_password = (pgp.AuthCode.CLEARTEXT_PASSWORD, pgp.AuthCode.MD5_PASSWORD, pgp.AuthCode.SASL)
            if code in needs_password and password is None:
                raise UpstreamError(
                    f"upstream asks for a password for {target.user!r} but source {target.source!r} has none",
                    "28P01",
                )
            if code == pgp.AuthCode.CLEARTEXT_PASSWORD:
                assert password is not None
                if not self.on_tls:  # `prefer` against a server without TLS included
                    raise UpstreamError(
                        "upstream asks for a cleartext password over an unencrypted connection"
                    )
                transport.write(pgp.make_password(password.encode()))
            elif code == pgp.AuthCode.MD5_PASSWORD:
                assert password is not None
                transport.write(pgp.make_password(md5_password(target.user, password, payload[:4])))
            elif code == pgp.AuthCode.SASL:
                assert password is not None
                mechanisms = [m.decode() for m in payload.split(b"\x00") if m]
                if SCRAM not in mechanisms:
                    raise UpstreamError(f"upstream offers no supported SASL mechanism: {mechanisms}")
                scram = ScramClient(password)
                transport.write(pgp.make_sasl_initial(SCRAM, scram.first()))
            elif code == pgp.AuthCode.SASL_CONTINUE and scram is not None:
                transport.write(pgp.make_sasl_response(scram.final(payload)))
            elif code == pgp.AuthCode.SASL_FINAL and scram is not None:
                self._sasl_final = payload
            else:
                raise UpstreamError(f"upstream asks for unsupported authentication method {code}")

    def _error(self, body: bytes) -> UpstreamError:
        fields = pgp.parse_error_fields(body)
        return UpstreamError(f"{fields.get('M', 'error')} (SQLSTATE {fields.get('C', '?')})", fields.get("C"))

    # ------------------------------------------------------------------------------- relay

    async def reset(self) -> bool:
        """Roll back anything open and DISCARD ALL; False when the connection is not reusable."""
        self.detach()
        if self.broken:
            return False
        try:
            async with asyncio.timeout(RESET_TIMEOUT):
                if self.status != b"I":
                    await self._simple("ROLLBACK")
                await self._simple("DISCARD ALL")
        except (TimeoutError, QueryBaseError):
            return False
        return self.status == b"I"

    async def _simple(self, sql: str) -> None:
        self.transport.write(pgp.make_query(sql))
        failed: UpstreamError | None = None
        while True:
            type_byte, body = await self._protocol.read()
            if type_byte == b"S":
                name, value = pgp.parse_parameter_status(body)
                self.parameter_status[name] = value
            elif type_byte == b"E":
                failed = self._error(body)
            elif type_byte == b"Z":
                self.status = body[:1]
                if failed is not None:
                    raise failed
                return

    async def stop_running(self) -> None:
        """Ask the upstream to cancel whatever this connection is running (a new connection)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                transport, _ = await loop.create_connection(
                    asyncio.Protocol, self.target.host, self.target.port
                )
                transport.write(pgp.make_cancel_request(self.backend_pid, self.backend_key))
                await asyncio.sleep(0)
                transport.close()
        except (OSError, TimeoutError):
            pass

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            try:
                self._transport.write(pgp.TERMINATE)
            finally:
                self._transport.close()
