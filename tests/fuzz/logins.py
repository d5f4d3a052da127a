"""The login-path memory investigation: does serve's memory keep growing with garbage logins?

`investigate(target, n)` runs, `rounds` times, n garbage/half-open/fuzzed logins on EACH port
(a quarter each: random bytes, a startup or handshake cut short and held open, an SSLRequest
followed by non-TLS bytes, a fuzzed login plan from pgcases/mycases) and, every `step`
connections per port, asks tests/fuzz/traced_serve.py for a gc.collect() + VmRSS sample (and,
with tracemalloc on, a snapshot). The report is the series and, with tracemalloc, the allocation
sites that grew most between the end of the first round and the end of the last: a plateau
(allocator arenas, caches that fill once) shows flat later rounds; a leak grows every round.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import tracemalloc
from pathlib import Path

from proxy.wire.mysql import protocol as my
from proxy.wire.pg import protocol as pgp
from tests.fuzz import driver, mycases, pgcases
from tests.fuzz.mutate import encode_pg
from tests.fuzz.target import MY_SOURCE, PASSWORDS, PG_SOURCE, Target

CONCURRENCY = 40


async def _garbage(run: driver.Run, port: int, pool: int, kind: int, seed: int) -> None:
    r = random.Random(seed)
    try:
        reader, writer = await driver._open(run, port, pool)
    except (OSError, TimeoutError):
        return
    try:
        is_pg = port == run.target.pg_port
        if kind == 0:  # random bytes
            writer.write(r.randbytes(r.randrange(1, 200)))
            with contextlib.suppress(TimeoutError):
                await driver._recv(reader, 0.2)
        elif kind == 1:  # cut short and held open
            if is_pg:
                data = encode_pg(pgcases.startup({b"user": b"fz_login", b"database": PG_SOURCE.encode()}))
            else:
                await driver._recv(reader, 1.0)  # the greeting
                data = my.make_packets(
                    my.make_handshake_response41(mycases.CAPABILITIES, "fz_login", bytes(32), MY_SOURCE), 1
                )[0]
            writer.write(data[: r.randrange(1, len(data))])
            await asyncio.sleep(r.choice((0.1, 0.5, 1.0)))
        elif kind == 2:  # SSLRequest, then bytes that are not a TLS handshake
            if is_pg:
                writer.write(pgp.make_ssl_request())
            else:
                await driver._recv(reader, 1.0)
                writer.write(my.make_packets(my.make_ssl_request(mycases.CAPABILITIES, 45), 1)[0])
            with contextlib.suppress(TimeoutError):
                await driver._recv(reader, 0.5 if is_pg else 0.05)
            writer.write(r.choice((b"GET / HTTP/1.1\r\n\r\n", r.randbytes(64), b"\x16\x03\x01\x00\x05\x01")))
            with contextlib.suppress(TimeoutError):
                await driver._recv(reader, 0.5)
        else:  # a fuzzed login
            stats = driver.Stats()
            if is_pg:
                plan = pgcases.login_plan(seed, b"fz_login", PG_SOURCE.encode())
                await driver._pg_login_case(run, plan, reader, writer, stats)
            else:
                myplan = mycases.login_plan(seed, "fz_login", PASSWORDS["fz_login"], MY_SOURCE)
                await driver._my_login_case(myplan, driver.MyConn(reader, writer), stats)
    except (ConnectionError, TimeoutError, OSError, ValueError, pgp.ProtocolViolation, my.ProtocolViolation):
        pass
    finally:
        await driver._close(writer)


# Which kinds of garbage to send (0 random bytes, 1 cut short and held, 2 SSLRequest + non-TLS
# bytes, 3 fuzzed login): FUZZ_LOGIN_KINDS=0,1,3 leaves out the TLS path, to tell causes apart.
KINDS = tuple(int(k) for k in os.environ.get("FUZZ_LOGIN_KINDS", "0,1,2,3").split(","))


async def _batch(run: driver.Run, count: int, seed0: int) -> None:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with sem:
            for port, pool in ((run.target.pg_port, 5), (run.target.my_port, 6)):
                await _garbage(run, port, pool, KINDS[i % len(KINDS)], seed0 + i)

    await asyncio.gather(*(one(i) for i in range(count)))


IDLE_SESSIONS = 40  # per port, below the sources' pool size (each session holds an upstream)


async def _idle_sessions(run: driver.Run, count: int) -> tuple[dict[str, object], dict[str, object]]:
    """What logged-in, idle sessions cost: `count` per port held open, sampled, closed, sampled."""
    writers: list[asyncio.StreamWriter] = []
    for _ in range(count):
        reader, writer = await driver._open(run, run.target.pg_port, 7)
        assert await driver.pg_login(driver.PgConn(reader, writer), "fz_read", PASSWORDS["fz_read"], {})
        writers.append(writer)
        reader, writer = await driver._open(run, run.target.my_port, 8)
        assert await driver.my_login(driver.MyConn(reader, writer), "fz_read", PASSWORDS["fz_read"])
        writers.append(writer)
    held = await asyncio.to_thread(sample, run.target, f"idle{count}")
    for writer in writers:
        await driver._close(writer)
    await asyncio.sleep(2.0)
    return held, await asyncio.to_thread(sample, run.target, "idle-closed")


def sample(target: Target, name: str, wait: float = 60.0) -> dict[str, object]:
    """gc.collect() in serve, then VmRSS (and a tracemalloc snapshot when tracing)."""
    assert target.snapshot_dir is not None
    (target.snapshot_dir / f"{name}.request").write_text("")
    done = target.snapshot_dir / f"{name}.json"
    deadline = time.monotonic() + wait
    while not done.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"serve did not answer snapshot request {name}")
        time.sleep(0.05)
    time.sleep(0.05)
    facts: dict[str, object] = json.loads(done.read_text())
    facts["rss_without_gc_kib"] = target.rss_kib()
    facts["upstreams"] = upstream_connections(target)
    return facts


def upstream_connections(target: Target) -> str:
    """serve's upstream connections as the databases count them: PostgreSQL / MariaDB."""
    pg = target.pg.execute_sql(
        "SELECT count(*) FROM pg_stat_activity WHERE usename IN ('qb_reader', 'qb_scram')"
    ).strip()
    maria = target.maria.execute_sql(
        "SELECT count(*) FROM information_schema.processlist WHERE user IN ('qb_reader', 'qb_native')"
    ).strip()
    return f"{pg}/{maria}"


def top_growth(directory: Path, first: str, last: str, limit: int = 15) -> list[str]:
    before = tracemalloc.Snapshot.load(str(directory / f"{first}.snap"))
    after = tracemalloc.Snapshot.load(str(directory / f"{last}.snap"))
    keep = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    ]
    stats = after.filter_traces(keep).compare_to(before.filter_traces(keep), "traceback")
    out = []
    for stat in stats[:limit]:
        frames = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in list(stat.traceback)[:4])
        out.append(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  {frames}")
    return out


def investigate(target: Target, n: int, *, rounds: int = 3, step: int = 1000, seed: int = 7) -> str:
    run = driver.Run(target, seed, 10**12, time.monotonic() + 10**6)
    series: list[tuple[str, int, dict[str, object]]] = []
    series.append(("start", 0, sample(target, "s0")))
    done = 0
    names = ["s0"]
    t0 = time.monotonic()
    for round_ in range(1, rounds + 1):
        for start in range(0, n, step):
            count = min(step, n - start)
            asyncio.run(_batch(run, count, seed * 10**7 + done))
            done += count
            name = f"s{len(names)}"
            names.append(name)
            series.append((f"round {round_}", done, sample(target, name)))
    time.sleep(5.0)
    series.append(("idle 5 s", done, sample(target, "end")))
    names.append("end")
    idle = asyncio.run(_idle_sessions(run, IDLE_SESSIONS))
    series += [(f"{IDLE_SESSIONS} idle", done, idle[0]), ("closed", done, idle[1])]
    lines = [
        f"login-path investigation: {rounds} rounds of {n} garbage/half-open/fuzzed logins on each port, "
        f"kinds {KINDS}, MALLOC_* {[k + '=' + v for k, v in os.environ.items() if k.startswith('MALLOC_')]} "
        f"({2 * n * rounds} connections, {time.monotonic() - t0:.0f} s); serve pid {target.pid}",
        f"{'phase':<10} {'conns/port':>10} {'VmRSS after gc':>15} {'threads':>8} {'upstreams pg/my':>16} "
        f"{'gc objects':>11} {'traced (tracemalloc)':>21}",
    ]
    for phase, conns, facts in series:
        traced = facts.get("traced_current")
        traced_text = f"{int(traced) / 1048576:.1f} MiB" if isinstance(traced, int) else "-"  # type: ignore[arg-type]
        lines.append(
            f"{phase:<10} {conns:>10} {int(facts['rss_kib']) / 1024:>11.1f} MiB "  # type: ignore[call-overload]
            f"{facts.get('threads', '?'):>8} {facts['upstreams']:>16} {facts['gc_objects']:>11} "
            f"{traced_text:>21}"
        )
    snaps = target.snapshot_dir
    if snaps is not None and (snaps / "end.snap").exists():
        first_round_end = names[n // step + (1 if n % step else 0)]
        lines.append(f"largest growth by allocation site, {first_round_end} (end of round 1) → end:")
        lines += ["  " + line for line in top_growth(snaps, first_round_end, "end")]
        lines.append("largest growth by allocation site, start → end:")
        lines += ["  " + line for line in top_growth(snaps, "s0", "end")]
    return "\n".join(lines)
