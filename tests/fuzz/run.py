"""Wire fuzzing of `querybase serve`: the long run (`make fuzz`) and the bounded one the tests call.

    python tests/fuzz/run.py [--messages N] [--seconds S] [--seed N] [--protocols pg,my]
    python tests/fuzz/run.py --show pg:SEED      # print the bytes of one case
    python tests/fuzz/run.py --logins 5000       # the login-path memory investigation

Standalone, the script starts its own PostgreSQL and MariaDB (tests/support/localdb.py) in a
temporary directory, provisions a QueryBase home and starts `querybase serve`; the tests hand it
the session's servers instead (`fuzz_and_check`). The summary reports messages sent, connections,
crashes, error-level log lines, leaked tasks, the other sessions' health, VmRSS at start/end/peak
and whether the databases are unchanged; the exit status is 0 only when every check holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests` and `proxy` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fuzz import driver, mycases, pgcases
from tests.fuzz.logins import investigate, sample, top_growth
from tests.fuzz.target import Health, Target, checksums, fuzz_gateway, scan_log, scan_log_from

# Allowed growth of serve's VmRSS between the sample after warm-up and the end, in MiB. What the
# login investigation (docs/fuzzing.md) measured as the allocator's and caches' plateau, with room.
RSS_GROWTH_LIMIT_MIB = 150


@dataclass
class Summary:
    seed: int
    seconds: float
    messages: int
    altered: int
    cases: int
    login_cases: int
    connections: int
    probes_ok: int
    closed_by_server: int
    stalls: int
    logins_refused: int
    serve_alive: bool
    exit_code: int | None
    error_lines: list[str]
    tracebacks: list[str]
    leaked_tasks: list[str]
    warnings: dict[str, int]
    known: dict[str, int]
    health: dict[str, dict[str, object]]
    rss_start_kib: int
    rss_end_kib: int
    rss_peak_kib: int
    database_unchanged: bool
    database_diff: list[str]
    per_protocol: dict[str, dict[str, int]]
    client_errors: list[str]
    harness_errors: list[str]
    suspects: dict[str, list[str]] = field(default_factory=dict)

    @property
    def rss_growth_mib(self) -> float:
        return (self.rss_end_kib - self.rss_start_kib) / 1024

    def failures(self) -> list[str]:
        out = []
        if not self.serve_alive:
            out.append(f"serve died (exit code {self.exit_code})")
        if self.error_lines:
            out.append(f"{len(self.error_lines)} error-level or non-JSON log lines")
        if self.tracebacks:
            out.append(f"{len(self.tracebacks)} tracebacks in the log")
        if self.leaked_tasks:
            out.append(f"{len(self.leaked_tasks)} leaked-task lines in the log")
        for name, report in self.health.items():
            if report["failures"] or not report["queries"]:
                out.append(f"the {name} health session failed: {report['failures'][:3]}")
        if self.rss_growth_mib > RSS_GROWTH_LIMIT_MIB:
            out.append(f"VmRSS grew by {self.rss_growth_mib:.0f} MiB (limit {RSS_GROWTH_LIMIT_MIB})")
        if self.harness_errors:
            out.append(f"{len(self.harness_errors)} errors of the fuzzer itself: {self.harness_errors[:3]}")
        if not self.database_unchanged:
            out.append(f"the database changed: {self.database_diff}")
        return out

    def text(self) -> str:
        h = self.health
        pg, pym = h["psycopg"], h["pymysql"]
        lines = [
            f"seed {self.seed}, {self.seconds:.0f} s",
            f"messages sent in mutated sequences: {self.messages} (altered by a mutation: {self.altered})",
            f"  per protocol: {json.dumps(self.per_protocol)}",
            f"command cases: {self.cases}; hostile logins: {self.login_cases}; "
            f"connections: {self.connections}",
            f"probes answered: {self.probes_ok}; connections closed by serve: {self.closed_by_server}; "
            f"stalls: {self.stalls}; valid logins refused: {self.logins_refused}",
            f"crashes: {0 if self.serve_alive else 1}",
            f"error-level lines: {len(self.error_lines)}; tracebacks: {len(self.tracebacks)}; "
            f"leaked tasks: {len(self.leaked_tasks)}",
            "known, reported bugs (tests/fuzz/known.py), matching lines: "
            + json.dumps(self.known, sort_keys=True),
            f"warning events: {json.dumps(self.warnings, sort_keys=True)}",
            f"other sessions: psycopg {pg['queries']} queries, {len(pg['failures'])} failures, "  # type: ignore[arg-type]
            f"max latency {pg['max_latency']:.2f} s; PyMySQL {pym['queries']} queries, "
            f"{len(pym['failures'])} failures, max latency {pym['max_latency']:.2f} s",  # type: ignore[arg-type]
            f"VmRSS: start {self.rss_start_kib // 1024} MiB, end {self.rss_end_kib // 1024} MiB, "
            f"peak {self.rss_peak_kib // 1024} MiB (growth {self.rss_growth_mib:+.0f} MiB)",
            f"database unchanged: {self.database_unchanged}",
        ]
        for line in (self.error_lines + self.tracebacks + self.leaked_tasks)[:20]:
            lines.append(f"  log: {line[:2000]}")
        for client, seeds in list(self.suspects.items())[:20]:
            lines.append(f"  connection {client} sent: {' '.join(seeds)}")
        for client, seeds in list(self.suspects.items())[:3]:  # the bytes of each one's last cases
            for spec in seeds[-2:]:
                lines.append(f"  {client} {spec}: {show(spec)[:3000]}")
        for error in self.client_errors[:10]:
            lines.append(f"  client: {error}")
        failures = self.failures()
        lines.append("RESULT: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
        return "\n".join(lines)


def fuzz_and_check(
    target: Target,
    *,
    messages: int,
    seconds: float,
    seed: int,
    protocols: tuple[str, ...] = ("pg", "my"),
    workers: int = 4,
    login_workers: int = 2,
    warmup: float | None = None,
    report_every: float = 0.0,
) -> Summary:
    """Fuzz `target` until `messages` were sent or `seconds` passed, then check everything."""
    before = checksums(target)
    log_offset = target.log_path.stat().st_size
    t0 = time.monotonic()
    samples: list[tuple[float, int]] = []
    run = driver.Run(target, seed, messages, time.monotonic() + seconds, protocols)
    with Health(target) as health:
        asyncio.run(
            driver.fuzz(
                run, workers=workers, login_workers=login_workers, samples=samples, report_every=report_every
            )
        )
        time.sleep(1.0)  # let the last connections close before the final samples
    elapsed = time.monotonic() - t0
    alive = target.alive()
    after = checksums(target)
    diff = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    found = scan_log_from(target.log_path, log_offset)
    if warmup is None:  # the allocator's plateau builds up first (docs/fuzzing.md): 10% of the run
        warmup = max(3.0, elapsed / 10)
    warm = [kib for t, kib in samples if t >= warmup] or [kib for _, kib in samples] or [0]
    end_rss = target.rss_kib() or warm[-1]
    stats = run.stats
    suspects: dict[str, list[str]] = {}
    for line in found.error_lines + found.tracebacks + found.leaked_tasks:
        with contextlib.suppress(ValueError):
            client = json.loads(line).get("client", "")
            if client in run.history:
                suspects[client] = list(run.history[client])
    return Summary(
        seed=seed,
        seconds=elapsed,
        messages=sum(s.messages for s in stats.values()),
        altered=sum(s.altered for s in stats.values()),
        cases=sum(s.cases for s in stats.values()),
        login_cases=sum(s.login_cases for s in stats.values()),
        connections=sum(s.connections for s in stats.values()),
        probes_ok=sum(s.probes_ok for s in stats.values()),
        closed_by_server=sum(s.closed_by_server for s in stats.values()),
        stalls=sum(s.stalls for s in stats.values()),
        logins_refused=sum(s.logins_refused for s in stats.values()),
        serve_alive=alive,
        exit_code=target.process.returncode,
        error_lines=found.error_lines,
        tracebacks=found.tracebacks,
        leaked_tasks=found.leaked_tasks,
        warnings=found.warnings,
        known=found.known,
        health={"psycopg": asdict(health.pg), "pymysql": asdict(health.my)},
        rss_start_kib=warm[0],
        rss_end_kib=end_rss,
        rss_peak_kib=max([kib for _, kib in samples] + [end_rss]),
        database_unchanged=not diff,
        database_diff=diff,
        per_protocol={
            name: {k: v for k, v in asdict(s).items() if isinstance(v, int)} for name, s in stats.items()
        },
        client_errors=[e for s in stats.values() for e in s.client_errors],
        harness_errors=[e for s in stats.values() for e in s.harness_errors],
        suspects=suspects,
    )


# ------------------------------------------------------------------------- standalone servers


@contextlib.contextmanager
def own_servers(workdir: Path) -> Iterator[tuple[object, object]]:
    """A PostgreSQL cluster and a MariaDB server of our own, as the test fixtures start them."""
    from tests.support.localdb import MariaDBServer, PostgresCluster

    base = workdir / "servers"
    base.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        workdir.chmod(0o711)
        base.chmod(0o711)
    with PostgresCluster(base / "pg") as pg, MariaDBServer(base / "mariadb") as maria:
        yield pg, maria


def show(spec: str) -> str:
    """The bytes and messages of one case: pg:SEED, my:SEED, pglogin:SEED, mylogin:SEED."""
    kind, _, seed_text = spec.partition(":")
    seed = int(seed_text)
    if kind == "pg":
        return pgcases.command_case(seed).describe()
    if kind == "my":
        return mycases.command_case(seed, mycases.ConnState()).describe() + (
            "\n(statement ids and the COM_CHANGE_USER scramble depend on the connection:"
            " shown for a fresh one)"
        )
    if kind == "pglogin":
        plan = pgcases.login_plan(seed, b"fz_login", b"fz_pg")
        return repr(plan)
    if kind == "mylogin":
        return repr(mycases.login_plan(seed, "fz_login", "?", "fz_my"))
    raise SystemExit(f"unknown case kind {kind!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=int(os.environ.get("FUZZ_MESSAGES", "1000000")))
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", "14400")))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("FUZZ_SEED", str(int(time.time())))))
    parser.add_argument("--protocols", default=os.environ.get("FUZZ_PROTOCOLS", "pg,my"))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("FUZZ_WORKERS", "6")))
    parser.add_argument("--login-workers", type=int, default=int(os.environ.get("FUZZ_LOGIN_WORKERS", "2")))
    parser.add_argument("--json", type=Path, help="also write the summary as JSON here")
    parser.add_argument("--show", metavar="KIND:SEED", help="print one case and exit")
    parser.add_argument("--logins", type=int, metavar="N", help="the login-path memory investigation instead")
    parser.add_argument("--rounds", type=int, default=3, help="--logins: rounds of N logins per port")
    parser.add_argument(
        "--tracemalloc", type=int, default=0, metavar="FRAMES", help="--logins: trace allocations"
    )
    args = parser.parse_args(argv)
    if args.show:
        print(show(args.show))
        return 0
    with tempfile.TemporaryDirectory(prefix="querybase-fuzz-") as tmp:
        workdir = Path(tmp)
        with own_servers(workdir) as (pg, maria):
            if args.logins:
                home = workdir / "home"
                with fuzz_gateway(pg, maria, home, traced=True, trace_frames=args.tracemalloc) as target:  # type: ignore[arg-type]
                    print(investigate(target, args.logins, rounds=args.rounds), flush=True)
                    found = scan_log(target.log_path)
                    print(f"serve log: {len(found.error_lines)} error-level lines, known bugs {found.known}")
                return 0
            traced = args.tracemalloc > 0
            home = workdir / "home"
            with fuzz_gateway(pg, maria, home, traced=traced, trace_frames=args.tracemalloc) as target:  # type: ignore[arg-type]
                print(
                    f"fuzzing serve pid {target.pid}: seed {args.seed}, up to {args.messages} messages",
                    flush=True,
                )
                if traced:
                    print(f"before: {sample(target, 'before')}", flush=True)
                summary = fuzz_and_check(
                    target,
                    messages=args.messages,
                    seconds=args.seconds,
                    seed=args.seed,
                    protocols=tuple(args.protocols.split(",")),
                    workers=args.workers,
                    login_workers=args.login_workers,
                    report_every=30.0,
                )
                if traced and target.snapshot_dir is not None:
                    print(f"after: {sample(target, 'after')}")
                    print("largest growth by allocation site, before → after the run:")
                    print(
                        "\n".join(
                            "  " + line for line in top_growth(target.snapshot_dir, "before", "after", 25)
                        )
                    )
        print(summary.text())
        if args.json:
            args.json.write_text(json.dumps(asdict(summary), indent=2, default=str))
    return 0 if not summary.failures() else 1


if __name__ == "__main__":
    sys.exit(main())
