"""The fuzzing clients: asyncio workers that log in properly and send mutated command sequences,
and workers that send hostile logins; plus the run that ties them to the oracle.

Command workers (per protocol) log in as fz_read or fz_propose, then repeat: send one case (its
bytes cut into sends as the case says), then a probe (PostgreSQL: Sync and a query; MySQL: a
query) whose answer carries a marker, and read until the marker's answer, the server closing the
connection, or a deadline (a stall: the case left the server waiting for bytes, e.g. a length
lie; the connection is dropped). A case whose framing lies is not probed: the worker waits a
moment and hangs up. Login workers play `login_plan`s: hostile or cut-short startups, TLS
requests followed by garbage, mutated SCRAM / scramble answers, half-open connections.

Each connection comes from its own loopback address (127.0.<pool>.<n>): the gateway's failed-login
limit counts per client address, and the login workers' failures must not lock out the command
workers or the health sessions (127.0.0.1).

Every case is reproducible from its seed: `python tests/fuzz/run.py --show pg:SEED`. When serve
logs an error, the summary names the client address and the seeds that connection sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import ssl
import time
from collections import deque
from dataclasses import dataclass, field

from proxy.auth.scram import ScramClient
from proxy.upstream.mysql import scramble_caching_sha2, scramble_native
from proxy.wire.mysql import protocol as my
from proxy.wire.pg import protocol as pgp
from tests.fuzz import mycases, pgcases
from tests.fuzz.mutate import encode_my, encode_pg
from tests.fuzz.target import MY_SOURCE, PASSWORDS, PG_SOURCE, Target

PROBE_DEADLINE = 3.0
LOGIN_READ = 1.0
CASES_PER_CONNECTION = 60
HISTORY = 40  # cases remembered per connection for the report


@dataclass
class Stats:
    messages: int = 0  # messages sent in mutated sequences (commands and logins)
    altered: int = 0  # messages a mutation changed
    cases: int = 0
    login_cases: int = 0
    connections: int = 0
    logins_ok: int = 0
    logins_refused: int = 0  # a command worker's valid login refused (rate limit, pool)
    probes_ok: int = 0
    closed_by_server: int = 0
    stalls: int = 0
    client_errors: list[str] = field(default_factory=list)
    harness_errors: list[str] = field(default_factory=list)  # exceptions of the fuzzer itself


@dataclass
class Run:
    target: Target
    seed: int
    messages: int  # stop when both protocols together sent this many
    deadline: float  # time.monotonic() after which everything stops
    protocols: tuple[str, ...] = ("pg", "my")
    stats: dict[str, Stats] = field(default_factory=lambda: {"pg": Stats(), "my": Stats()})
    history: dict[str, deque[str]] = field(default_factory=dict)  # "ip:port" → recent case ids
    _counter: itertools.count[int] = field(default_factory=itertools.count)
    _addresses: dict[int, itertools.cycle[str]] = field(default_factory=dict)

    def done(self) -> bool:
        sent = sum(s.messages for s in self.stats.values())
        return sent >= self.messages or time.monotonic() >= self.deadline or not self.target.alive()

    def next_seed(self) -> int:
        return self.seed * 1_000_003 + next(self._counter)

    def address(self, pool: int) -> str:
        if pool not in self._addresses:
            self._addresses[pool] = itertools.cycle(f"127.0.{pool}.{n}" for n in range(1, 251))
        return next(self._addresses[pool])

    def remember(self, writer: asyncio.StreamWriter, entry: str) -> None:
        key = _key(writer)
        self.history.setdefault(key, deque(maxlen=HISTORY)).append(entry)
        if len(self.history) > 20000:
            self.history.pop(next(iter(self.history)))


def _key(writer: asyncio.StreamWriter) -> str:
    """The client address of a connection as serve logs it ("ip:port")."""
    sock = writer.get_extra_info("sockname")
    return f"{sock[0]}:{sock[1]}" if isinstance(sock, tuple) else "?"


def client_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _open(run: Run, port: int, pool: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection(run.target.host, port, local_addr=(run.address(pool), 0)), 10
    )


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 2)


async def _send(writer: asyncio.StreamWriter, chunks: list[bytes]) -> None:
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()


async def _recv(reader: asyncio.StreamReader, wait: float) -> bytes:
    """One read; b"" at EOF or reset; TimeoutError when nothing comes within `wait` seconds."""
    try:
        return await asyncio.wait_for(reader.read(65536), wait)
    except (ConnectionError, ssl.SSLError):
        return b""


# ---------------------------------------------------------------------------- PostgreSQL


class PgConn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames = pgp.BackendReader()
        self.eof = False

    async def message(self, wait: float) -> tuple[bytes, bytes] | None:
        """The next backend message; None at EOF; TimeoutError when none comes within `wait` s."""
        end = time.monotonic() + wait
        while True:
            try:
                msg = self.frames.next()
            except pgp.ProtocolViolation:
                self.eof = True
                return None
            if msg is not None:
                return msg
            if self.eof:
                return None
            data = await _recv(self.reader, max(0.01, end - time.monotonic()))
            if not data:
                self.eof = True
            else:
                self.frames.feed(data)


async def pg_login(conn: PgConn, user: str, password: str, params: dict[str, str]) -> bool:
    conn.writer.write(pgp.make_startup({"user": user, "database": PG_SOURCE, **params}))
    scram = ScramClient(password)
    while True:
        msg = await conn.message(10)
        if msg is None or msg[0] == b"E":
            return False
        if msg[0] == b"Z":
            return True
        if msg[0] != b"R":
            continue
        code, payload = pgp.parse_auth(msg[1])
        if code == pgp.AuthCode.SASL:
            conn.writer.write(pgp.make_sasl_initial("SCRAM-SHA-256", scram.first()))
        elif code == pgp.AuthCode.SASL_CONTINUE:
            conn.writer.write(pgp.make_sasl_response(scram.final(payload)))


async def pg_probe(conn: PgConn, marker: bytes) -> str:
    """'ok' (the probe's answer came), 'eof' (the server hung up), 'stall'."""
    conn.writer.write(pgcases.probe(marker))
    seen = False
    end = time.monotonic() + PROBE_DEADLINE
    try:
        while True:
            msg = await conn.message(max(0.01, end - time.monotonic()))
            if msg is None:
                return "eof"
            if msg[0] == b"D" and marker in msg[1]:
                seen = True
            elif msg[0] == b"Z" and seen:
                return "ok"
            elif msg[0] == b"E" and marker in msg[1]:
                seen = True
    except TimeoutError:
        return "stall"


async def pg_command_worker(run: Run, wid: int) -> None:
    stats = run.stats["pg"]
    while not run.done():
        user = ("fz_read", "fz_propose")[wid % 2]
        try:
            reader, writer = await _open(run, run.target.pg_port, 2)
        except (OSError, TimeoutError) as exc:
            stats.client_errors.append(f"connect: {exc!r}")
            await asyncio.sleep(0.5)
            continue
        stats.connections += 1
        conn = PgConn(reader, writer)
        try:
            if not await pg_login(conn, user, PASSWORDS[user], {"statement_timeout": "5000"}):
                stats.logins_refused += 1
                continue
            stats.logins_ok += 1
            for _ in range(CASES_PER_CONNECTION):
                if run.done():
                    break
                seed = run.next_seed()
                case = pgcases.command_case(seed)
                run.remember(writer, f"pg:{seed}")
                stats.cases += 1
                stats.messages += len(case.messages)
                stats.altered += case.altered
                await _send(writer, case.sends)
                if case.framing_broken:
                    with contextlib.suppress(TimeoutError):
                        await conn.message(0.05)
                    break
                result = await pg_probe(conn, f"probe-{seed}".encode())
                if result == "ok":
                    stats.probes_ok += 1
                    continue
                if result == "eof":
                    stats.closed_by_server += 1
                else:
                    stats.stalls += 1
                break
        except (ConnectionError, TimeoutError, ssl.SSLError):
            stats.closed_by_server += 1
        except Exception as exc:  # a bug of the harness: reported, and the worker goes on
            stats.harness_errors.append(f"{exc!r} after {list(run.history.get(_key(writer), []))[-1:]}")
        finally:
            await _close(writer)


async def pg_login_worker(run: Run, wid: int) -> None:
    stats = run.stats["pg"]
    while not run.done():
        seed = run.next_seed()
        plan = pgcases.login_plan(seed, b"fz_login", PG_SOURCE.encode())
        try:
            reader, writer = await _open(run, run.target.pg_port, 1)
        except (OSError, TimeoutError) as exc:
            stats.client_errors.append(f"connect: {exc!r}")
            await asyncio.sleep(0.5)
            continue
        stats.connections += 1
        stats.login_cases += 1
        run.remember(writer, f"pglogin:{seed}")
        try:
            await _pg_login_case(run, plan, reader, writer, stats)
        except (ConnectionError, TimeoutError, ssl.SSLError, pgp.ProtocolViolation, ValueError):
            pass
        except Exception as exc:  # a bug of the harness: reported, and the worker goes on
            stats.harness_errors.append(f"{exc!r} in pglogin:{seed}")
        finally:
            await _close(writer)


async def _pg_login_case(
    run: Run,
    plan: pgcases.LoginPlan,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    stats: Stats,
) -> None:
    m = plan.mutator
    if plan.stop_after == 0:
        await asyncio.sleep(plan.linger)
        return
    for msg in plan.pre:
        await _send(writer, m.split(encode_pg(msg)))
        stats.messages += 1
        stats.altered += msg.altered
        if msg.label == "Cancel":
            return
        answer = await _recv(reader, LOGIN_READ)
        if answer == b"S" and plan.tls_garbage is not None:
            writer.write(plan.tls_garbage)
            stats.messages += 1
            stats.altered += 1
            with contextlib.suppress(TimeoutError):
                await _recv(reader, LOGIN_READ)
            return
        if answer == b"S":
            await writer.start_tls(client_tls(), server_hostname="querybase")
        elif answer != b"N":
            return
    await _send(writer, m.split(encode_pg(plan.startup)))
    stats.messages += 1
    stats.altered += plan.startup.altered
    if plan.stop_after == 1:
        await asyncio.sleep(plan.linger)
        return
    conn = PgConn(reader, writer)
    scram = ScramClient(PASSWORDS["fz_login"])
    while True:
        msg = await conn.message(LOGIN_READ)
        if msg is None or msg[0] in (b"E", b"Z"):
            return
        if msg[0] != b"R":
            continue
        code, payload = pgp.parse_auth(msg[1])
        if code == pgp.AuthCode.SASL:
            first = pgcases.sasl_initial(plan.mechanism, scram.first())
            if plan.mutate_first:
                m.mutate_message(first, encode_pg)
            await _send(writer, m.split(encode_pg(first)))
        elif code == pgp.AuthCode.SASL_CONTINUE:
            if plan.stop_after == 2:
                await asyncio.sleep(plan.linger)
                return
            try:
                final = pgcases.sasl_response(scram.final(payload))
            except pgp.ProtocolViolation:
                final = pgcases.sasl_response(b"c=biws,r=x,p=AAAA")
            if plan.mutate_final:
                m.mutate_message(final, encode_pg)
            await _send(writer, m.split(encode_pg(final)))
        else:
            return
        stats.messages += 1
        stats.altered += int(plan.mutate_first or plan.mutate_final)


# ---------------------------------------------------------------------------------- MySQL


class MyConn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames = my.PacketReader()
        self.eof = False

    async def packet(self, wait: float) -> tuple[int, bytes] | None:
        """The next payload; None at EOF; TimeoutError when none comes within `wait` seconds."""
        end = time.monotonic() + wait
        while True:
            try:
                found = self.frames.next()
            except my.ProtocolViolation:
                self.eof = True
                return None
            if found is not None:
                return found
            if self.eof:
                return None
            data = await _recv(self.reader, max(0.01, end - time.monotonic()))
            if not data:
                self.eof = True
            else:
                self.frames.feed(data)


async def my_login(conn: MyConn, user: str, password: str) -> bytes | None:
    """Log in with caching_sha2_password; the greeting's scramble, or None when refused."""
    got = await conn.packet(10)
    if got is None:
        return None
    hello = my.parse_handshake_v10(got[1])
    answer = scramble_caching_sha2(password, hello.scramble)
    payload = my.make_handshake_response41(
        mycases.CAPABILITIES, user, answer, MY_SOURCE, "caching_sha2_password"
    )
    conn.writer.write(my.make_packets(payload, my.next_seq(got[0]))[0])
    while True:
        got = await conn.packet(10)
        if got is None or got[1][:1] == b"\xff":
            return None
        if got[1][:1] == b"\x00":
            return hello.scramble


async def my_probe(conn: MyConn, marker: bytes) -> tuple[str, list[bytes]]:
    """Send the probe; ('ok' | 'eof' | 'stall', every payload read before its answer)."""
    conn.writer.write(mycases.probe(marker))
    seen: list[bytes] = []
    end = time.monotonic() + PROBE_DEADLINE
    row = my.make_lenenc_str(marker)
    try:
        while True:
            got = await conn.packet(max(0.01, end - time.monotonic()))
            if got is None:
                return "eof", seen
            payload = got[1]
            if payload == row:  # the probe's row: its terminator follows
                await conn.packet(max(0.01, end - time.monotonic()))
                return "ok", seen
            if payload[:1] == b"\xff" and marker in payload:
                return "ok", seen
            seen.append(payload)
    except TimeoutError:
        return "stall", seen


async def my_command_worker(run: Run, wid: int) -> None:
    stats = run.stats["my"]
    while not run.done():
        user = ("fz_read", "fz_propose")[wid % 2]
        try:
            reader, writer = await _open(run, run.target.my_port, 3)
        except (OSError, TimeoutError) as exc:
            stats.client_errors.append(f"connect: {exc!r}")
            await asyncio.sleep(0.5)
            continue
        stats.connections += 1
        conn = MyConn(reader, writer)
        try:
            scramble = await my_login(conn, user, PASSWORDS[user])
            if scramble is None:
                stats.logins_refused += 1
                continue
            stats.logins_ok += 1
            state = mycases.ConnState(scramble, {}, ("fz_alt", PASSWORDS["fz_alt"]), MY_SOURCE)
            result, _ = await my_probe(conn, b"setup")  # nothing mutated yet: a plain round trip
            writer.write(encode_my(mycases.com_query(b"SET SESSION max_statement_time = 5")))
            await conn.packet(PROBE_DEADLINE)
            for _ in range(CASES_PER_CONNECTION):
                if run.done():
                    break
                seed = run.next_seed()
                if random.Random(seed).random() < 0.3:  # learn a real statement id first
                    sql = random.Random(seed).choice(mycases.SQL).encode()
                    writer.write(encode_my(mycases.com_prepare(sql)))
                    first = await conn.packet(PROBE_DEADLINE)
                    if first is None:
                        stats.closed_by_server += 1
                        break
                    if first[1][:1] == b"\x00" and len(first[1]) >= 12:
                        ok = my.parse_stmt_prepare_ok(first[1])
                        state.statements[ok.statement_id] = ok.num_params
                    result, _ = await my_probe(conn, f"prep-{seed}".encode())
                    if result != "ok":
                        stats.stalls += result == "stall"
                        break
                case = mycases.command_case(seed, state)
                run.remember(writer, f"my:{seed}")
                stats.cases += 1
                stats.messages += len(case.messages)
                stats.altered += case.altered
                await _send(writer, case.sends)
                if case.framing_broken:
                    with contextlib.suppress(TimeoutError):
                        await conn.packet(0.05)
                    break
                result, _ = await my_probe(conn, f"probe-{seed}".encode())
                if result == "ok":
                    stats.probes_ok += 1
                    continue
                if result == "eof":
                    stats.closed_by_server += 1
                else:
                    stats.stalls += 1
                break
        except (ConnectionError, TimeoutError, ssl.SSLError):
            stats.closed_by_server += 1
        except Exception as exc:  # a bug of the harness: reported, and the worker goes on
            stats.harness_errors.append(f"{exc!r} after {list(run.history.get(_key(writer), []))[-1:]}")
        finally:
            await _close(writer)


async def my_login_worker(run: Run, wid: int) -> None:
    stats = run.stats["my"]
    while not run.done():
        seed = run.next_seed()
        plan = mycases.login_plan(seed, "fz_login", PASSWORDS["fz_login"], MY_SOURCE)
        try:
            reader, writer = await _open(run, run.target.my_port, 4)
        except (OSError, TimeoutError) as exc:
            stats.client_errors.append(f"connect: {exc!r}")
            await asyncio.sleep(0.5)
            continue
        stats.connections += 1
        stats.login_cases += 1
        run.remember(writer, f"mylogin:{seed}")
        try:
            await _my_login_case(plan, MyConn(reader, writer), stats)
        except (ConnectionError, TimeoutError, ssl.SSLError, my.ProtocolViolation, ValueError):
            pass
        except Exception as exc:  # a bug of the harness: reported, and the worker goes on
            stats.harness_errors.append(f"{exc!r} in mylogin:{seed}")
        finally:
            await _close(writer)


async def _my_login_case(plan: mycases.LoginPlan, conn: MyConn, stats: Stats) -> None:
    m = plan.mutator
    got = await conn.packet(LOGIN_READ)
    if got is None or plan.stop_after == 0:
        await asyncio.sleep(plan.linger)
        return
    hello = my.parse_handshake_v10(got[1])
    seq = 1
    if plan.ssl is not None:
        await _send(conn.writer, m.split(encode_my(plan.ssl)))
        stats.messages += 1
        stats.altered += plan.ssl.altered
        if plan.stop_after == 1:
            await asyncio.sleep(plan.linger)
            return
        if plan.tls_garbage is not None:
            conn.writer.write(plan.tls_garbage)
            stats.messages += 1
            stats.altered += 1
            with contextlib.suppress(TimeoutError):
                await conn.packet(LOGIN_READ)
            return
        await conn.writer.start_tls(client_tls(), server_hostname="querybase")
        seq = 2
    response = plan.response
    if plan.correct:
        scramble = scramble_native if plan.plugin == b"mysql_native_password" else scramble_caching_sha2
        response = mycases.handshake_response(
            int(mycases.CAPABILITIES),
            plan.user,
            scramble(plan.password, hello.scramble),
            plan.database,
            plan.plugin,
        )
    response.seq = seq
    if plan.mutate_response:
        m.mutate_message(response, encode_my)
    await _send(conn.writer, m.split(encode_my(response)))
    stats.messages += 1
    stats.altered += response.altered
    if plan.stop_after == 2:
        await asyncio.sleep(plan.linger)
        return
    while True:
        got = await conn.packet(LOGIN_READ)
        if got is None or got[1][:1] in (b"\x00", b"\xff"):
            return
        if got[1][:1] == b"\xfe":  # AuthSwitchRequest
            switch = my.parse_auth_switch_request(got[1])
            answer = plan.switch_answer
            if answer is None:
                answer = scramble_native(plan.password, switch.data)
            conn.writer.write(my.make_packets(answer, my.next_seq(got[0]))[0])
            stats.messages += 1


# ------------------------------------------------------------------------------ the run


async def rss_sampler(run: Run, samples: list[tuple[float, int]], interval: float = 1.0) -> None:
    t0 = time.monotonic()
    while not run.done():
        samples.append((time.monotonic() - t0, run.target.rss_kib()))
        await asyncio.sleep(interval)
    samples.append((time.monotonic() - t0, run.target.rss_kib()))


async def progress(run: Run, every: float) -> None:
    t0 = time.monotonic()
    while not run.done():
        await asyncio.sleep(every)
        pg, my_ = run.stats["pg"], run.stats["my"]
        print(
            f"[{time.monotonic() - t0:7.0f}s] messages pg={pg.messages} my={my_.messages} "
            f"cases pg={pg.cases} my={my_.cases} logins pg={pg.login_cases} my={my_.login_cases} "
            f"stalls pg={pg.stalls} my={my_.stalls} rss={run.target.rss_kib() // 1024} MiB",
            flush=True,
        )


async def fuzz(
    run: Run, *, workers: int, login_workers: int, samples: list[tuple[float, int]], report_every: float = 0.0
) -> None:
    tasks = [asyncio.create_task(rss_sampler(run, samples))]
    if report_every:
        tasks.append(asyncio.create_task(progress(run, report_every)))
    if "pg" in run.protocols:
        tasks += [asyncio.create_task(pg_command_worker(run, i)) for i in range(workers)]
        tasks += [asyncio.create_task(pg_login_worker(run, i)) for i in range(login_workers)]
    if "my" in run.protocols:
        tasks += [asyncio.create_task(my_command_worker(run, i)) for i in range(workers)]
        tasks += [asyncio.create_task(my_login_worker(run, i)) for i in range(login_workers)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            run.stats["pg"].harness_errors.append(f"worker crashed: {result!r}")
