"""Upstream PostgreSQL connections: raw-protocol login with the source's credentials, reset, cancel.

An `UpstreamConnection` has two modes. In control mode (login, reset) its protocol frames whole
messages and hands them to `read()`. In relay mode (`attach(sink)`) every received chunk
goes straight to the client session's `upstream_data()`, untouched.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from typing import cast

from proxy.auth.scram import SCRAM, ScramClient, md5_password
from proxy.errors import QueryBaseError
from proxy.tlsfiles import tls_required
from proxy.upstream.base import UpstreamBase, UpstreamTarget
from proxy.wire.pg import protocol as pgp

CONNECT_TIMEOUT = 10.0  # for the cancel connection
RESET_TIMEOUT = 10.0
# A connection's session settings: everything a client (startup packet) or the session (SET,
# set_config, RESET…) set, by canonical name, as text SET accepts back. Transaction pooling reads it
# after a transaction that may have changed settings and carries it to the next connection.
_SETTINGS_SQL = (
    "SELECT name, setting FROM pg_catalog.pg_settings WHERE source IN ('client', 'session') ORDER BY name"
)
READ_ONLY_SETTING = "default_transaction_read_only"


class UpstreamError(QueryBaseError):
    """The upstream refused or broke the login; carries its SQLSTATE when it sent one."""

    sqlstate = "08006"  # connection_failure
    code = "upstream"

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        if sqlstate:
            self.sqlstate = sqlstate


class UpstreamConnection(UpstreamBase[tuple[bytes, bytes]]):
    """One logged-in upstream session; pooled by `proxy.upstream.pool.Pool`."""

    def __init__(self, target: UpstreamTarget, params: tuple[tuple[str, str], ...]) -> None:
        super().__init__(target, params, pgp.BackendReader)
        self.parameter_status: dict[str, str] = {}
        self.backend_pid = 0
        self.backend_key = b""
        self.status = b"I"
        self.on_tls = False
        self._sasl_final = b""
        # The session settings this connection has now, and those it had right after login (what
        # RESET returns to); transaction pooling carries a client's settings between connections.
        self.settings: dict[str, str] = {}
        self.base_settings: dict[str, str] = {}
        # Statements prepared here under their shared server names (transaction pooling), least
        # recently used first.
        self.prepared: OrderedDict[bytes, None] = OrderedDict()

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
                break
            elif type_byte == b"E":
                raise self._error(body)
            elif type_byte not in (b"N", b"v"):
                raise UpstreamError(f"unexpected upstream message {type_byte!r} during login")
        # What RESET returns to (transaction pooling carries settings from connection to connection).
        self.base_settings = await self.read_settings()

    # ---------------------------------------------------------------- transaction pooling

    async def read_settings(self) -> dict[str, str]:
        """The session settings this connection has now (one round trip); also kept in `settings`."""
        async with asyncio.timeout(RESET_TIMEOUT):
            rows = await self._simple(_SETTINGS_SQL)
        self.settings = self._checked(self._decoded(rows))
        return self.settings

    async def apply_settings(self, wanted: dict[str, str]) -> None:
        """Make this connection's session settings `wanted` in one round trip: RESET what it has
        and `wanted` lacks, set_config what differs, then read back what took."""
        encoding = wanted.get("client_encoding")
        if encoding is not None and encoding != self.settings.get("client_encoding"):
            # The rest of the text is read in the new encoding: change it in a message of its own.
            async with asyncio.timeout(RESET_TIMEOUT):
                await self._simple(
                    f"SELECT pg_catalog.set_config('client_encoding', {_literal(encoding)}, false)"
                )
            self.settings["client_encoding"] = encoding
        resets = [name for name in self.settings if name not in wanted and name not in self.base_settings]
        changes = [(n, v) for n, v in wanted.items() if self.settings.get(n) != v]
        sql = "".join(f"RESET {_ident(name)}; " for name in resets)
        if changes:
            sql += "SELECT " + ", ".join(
                f"pg_catalog.set_config({_literal(n)}, {_literal(v)}, false)" for n, v in changes
            )
            sql += "; "
        async with asyncio.timeout(RESET_TIMEOUT):
            rows = await self._simple(sql + _SETTINGS_SQL)
        self.settings = self._checked(self._decoded(rows))

    async def forget_prepared(self, count: int) -> None:
        """DEALLOCATE the `count` least recently used shared statements (one round trip)."""
        names = list(self.prepared)[:count]
        if not names:
            return
        sql = "".join(f"DEALLOCATE {_ident(n.decode('ascii'))}; " for n in names)
        async with asyncio.timeout(RESET_TIMEOUT):
            await self._simple(sql)
        for name in names:
            self.prepared.pop(name, None)

    def _encoding(self) -> str:
        return pgp.python_encoding(self.parameter_status.get("client_encoding", "UTF8")) or "utf-8"

    def _decoded(self, rows: list[list[bytes | None]]) -> dict[str, str]:
        """(name, setting) rows, in the client encoding the connection has after the query."""
        encoding = self._encoding()
        return {
            (r[0] or b"").decode(encoding, "replace"): (r[1] or b"").decode(encoding, "replace") for r in rows
        }

    def _checked(self, settings: dict[str, str]) -> dict[str, str]:
        """The read-only backstop: a read-role connection whose settings are not read-only is
        never used again."""
        if self.target.read_only and (
            settings.get(READ_ONLY_SETTING) != "on"
            or self.parameter_status.get(READ_ONLY_SETTING, "on") != "on"
        ):
            self.close()
            raise UpstreamError(
                f"upstream of source {self.target.source!r} stopped being read-only "
                f"({READ_ONLY_SETTING}={settings.get(READ_ONLY_SETTING, 'default')})"
            )
        return settings

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
        self.settings = dict(self.base_settings)  # DISCARD ALL is a RESET ALL
        self.prepared.clear()  # and a DEALLOCATE ALL
        return self.status == b"I"

    async def _simple(self, sql: str) -> list[list[bytes | None]]:
        """Run `sql` as one simple Query in control mode: the rows of its last result, or the error."""
        self.transport.write(pgp.make_query(sql, self._encoding()))
        failed: UpstreamError | None = None
        rows: list[list[bytes | None]] = []
        while True:
            type_byte, body = await self._protocol.read()
            if type_byte == b"D":
                rows.append(pgp.parse_data_row(body))
            elif type_byte == b"T":
                rows = []
            elif type_byte == b"S":
                name, value = pgp.parse_parameter_status(body)
                self.parameter_status[name] = value
            elif type_byte == b"E":
                failed = self._error(body)
            elif type_byte == b"Z":
                self.status = body[:1]
                if failed is not None:
                    raise failed
                return rows

    async def stop_running(self, still: Callable[[], bool] | None = None) -> None:
        """Ask the upstream to cancel whatever this connection is running (a new connection).
        `still`, asked once the cancel connection is open, says whether the statement to cancel
        still runs here: with transaction pooling the connection may serve another client by then,
        whose statement must not be cancelled."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                transport, _ = await loop.create_connection(
                    asyncio.Protocol, self.target.host, self.target.port
                )
                if still is not None and not still():
                    transport.close()
                    return
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


def _literal(text: str) -> str:
    """A string constant (QueryBase keeps standard_conforming_strings on: backslashes are plain)."""
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
