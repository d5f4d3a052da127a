#!/usr/bin/env python3
"""sysbench against MariaDB directly and through QueryBase, interleaved in one run.

Theory of operation
-------------------
One throwaway MariaDB (tests/support/localdb.py) gets the sysbench tables (`sysbench
oltp_read_only prepare`, run directly as qb_native, which may write; qb_reader may only SELECT).
Two targets then serve the same schema to sysbench over TCP, without TLS:

  direct     MariaDB itself, as qb_reader (mysql_native_password)
  querybase  `querybase serve` (log level warning), MySQL source `bench` whose read login is
             qb_reader, user `bench` with a read grant, so every statement goes through the
             classifier

Only read workloads run (QueryBase holds writes): `oltp_point_select` (one primary-key lookup
per transaction) and `oltp_read_only` (BEGIN, 10 point selects, 4 range queries, COMMIT), each
with server-side prepared statements (`--db-ps-mode=auto`: COM_STMT_PREPARE once, then
COM_STMT_EXECUTE) and without (`--db-ps-mode=disable`: sysbench inlines the parameters and sends
COM_QUERY with a different text every time), at each thread count.

After a short warm-up of each target, each repeat runs every case (test × ps mode × threads)
once on every target, the target order alternating from repeat to repeat (direct, querybase,
querybase, direct, …), so slow drifts of the machine hit both alike. A case's result is the
median over the repeats of sysbench's transactions per second and 95th-percentile latency; the
ratio QueryBase/direct is computed from the medians. The run reports the numbers and whether
the product goal (point_select at 16 threads ≥ 0.6 × direct) was reached; it never fails on a
timing, only when a sysbench run fails.

Everything started here (MariaDB, serve) is stopped on exit, Ctrl-C and SIGTERM included, and
the temporary directory is removed unless --keep is given.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.localdb import DATABASE, HOST, MARIADB_PASSWORDS, MariaDBServer  # noqa: E402
from tests.support.querybase import ServeProcess, init_home, run_cli_in_process, start_serve  # noqa: E402

READER = "qb_reader"  # SELECT on qbtest: the login both targets use
WRITER = "qb_native"  # ALL on qbtest: only for `sysbench prepare`
QB_SOURCE = "bench"
QB_USER = "bench"
QB_PASSWORD = "bench-Secret-pw-42"
RESULTS = Path(__file__).resolve().parent / "results" / "latest-mysql.md"
QUICK_RESULTS = RESULTS.with_name("latest-mysql-quick.md")  # a smoke run is not a result
TARGETS = ("direct", "querybase")
LABELS = {"direct": "direct", "querybase": "QueryBase"}
TESTS = ("oltp_point_select", "oltp_read_only")
PS_MODES = ("auto", "disable")
GOALS = (("oltp_point_select", "auto", 16, 0.6), ("oltp_point_select", "disable", 16, 0.6))


def say(message: str) -> None:
    print(message, flush=True)


# ------------------------------------------------------------------------------------ targets


@dataclass
class Target:
    name: str
    host: str
    port: int
    db: str
    user: str
    password: str
    pid: int | None = None  # the proxy process in between, whose CPU time is measured


@dataclass
class Run:
    target: str
    test: str
    ps_mode: str
    threads: int
    repeat: int
    ok: bool
    tps: float | None = None
    qps: float | None = None
    p95_ms: float | None = None
    avg_ms: float | None = None
    transactions: int | None = None
    errors: int | None = None
    proxy_cpu_s: float | None = None
    wall_s: float | None = None
    machine_busy: float | None = None  # share of all CPUs not idle during the run (0..1)
    output: str = ""

    @property
    def proxy_cpu_share(self) -> float | None:
        return self.proxy_cpu_s / self.wall_s if self.proxy_cpu_s is not None and self.wall_s else None

    @property
    def proxy_us_per_tx(self) -> float | None:
        if self.proxy_cpu_s is None or not self.transactions:
            return None
        return self.proxy_cpu_s * 1e6 / self.transactions


@dataclass
class Environment:
    basedir: Path
    server: MariaDBServer | None = None
    serve: ServeProcess | None = None
    targets: dict[str, Target] = field(default_factory=dict)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSQL", "QUERYBASE_"))}
    env.update(extra)
    return env


def _sysbench_common(target: Target, args: argparse.Namespace) -> list[str]:
    return [
        "--db-driver=mysql",
        f"--mysql-host={target.host}",
        f"--mysql-port={target.port}",
        f"--mysql-user={target.user}",
        f"--mysql-password={target.password}",
        f"--mysql-db={target.db}",
        "--mysql-ssl=off",
        f"--tables={args.tables}",
        f"--table-size={args.table_size}",
    ]


def start_mariadb(env: Environment, args: argparse.Namespace) -> Target:
    say(f"starting MariaDB in {env.basedir / 'mariadb'} …")
    server = MariaDBServer(env.basedir / "mariadb")
    env.server = server
    server.start()
    server.execute_sql("SET GLOBAL max_connections = 1000;")  # for large --threads
    writer = Target("prepare", HOST, server.port, DATABASE, WRITER, MARIADB_PASSWORDS[WRITER])
    say(f"sysbench prepare: {args.tables} table(s) × {args.table_size:,} rows …")
    started = time.monotonic()
    result = subprocess.run(
        ["sysbench", "oltp_read_only", *_sysbench_common(writer, args), "prepare"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"sysbench prepare failed:\n{result.stdout}\n{result.stderr}")
    server.execute_sql(" ".join(f"ANALYZE TABLE sbtest{i};" for i in range(1, args.tables + 1)))
    say(f"  loaded in {time.monotonic() - started:.0f} s")
    return Target("direct", HOST, server.port, DATABASE, READER, MARIADB_PASSWORDS[READER])


def start_querybase(env: Environment, pool_size: int, log_level: str) -> Target:
    home = env.basedir / "querybase"
    config = init_home(home, tls_mode="allow")
    assert env.server is not None
    cli_env = {"READ_PW": MARIADB_PASSWORDS[READER], "BENCH_PW": QB_PASSWORD}
    commands = [
        [
            *("source", "add", QB_SOURCE, "--engine", "mysql", "--host", env.server.host),
            *("--port", str(env.server.port), "--database", DATABASE, "--user", READER),
            *("--password-env", "READ_PW", "--tls", "disable", "--pool-size", str(pool_size)),
        ],
        ["user", "add", QB_USER, "--password-env", "BENCH_PW"],
        ["group", "add", "benchers"],
        ["group", "member", "add", "benchers", QB_USER],
        ["grant", "benchers", QB_SOURCE, "read"],
    ]
    for argv in commands:
        result = run_cli_in_process(config, *argv, env=cli_env)
        if result.returncode != 0:
            raise RuntimeError(f"querybase {' '.join(argv)} failed:\n{result.stderr}")
    listen = tomllib.loads(config.read_text())["mysql"]["listen"]
    port = int(listen.rpartition(":")[2])
    say(f"starting querybase serve, MySQL listener on port {port} …")
    env.serve = start_serve(config, env={"QUERYBASE_LOG__LEVEL": log_level})
    return Target("querybase", HOST, port, QB_SOURCE, QB_USER, QB_PASSWORD, pid=env.serve.process.pid)


def stop_all(env: Environment) -> None:
    if env.serve is not None:
        with contextlib.suppress(Exception):
            if env.serve.stop() != 0:
                env.serve.kill()
        with contextlib.suppress(Exception):
            env.serve.kill()
    if env.server is not None:
        try:
            env.server.stop()
        except Exception as exc:
            say(f"warning: stopping MariaDB failed: {exc}")


# ------------------------------------------------------------------------------------- sysbench

_TPS = re.compile(r"^\s*transactions:\s+(\d+)\s+\(([\d.]+) per sec\.\)", re.M)
_QPS = re.compile(r"^\s*queries:\s+\d+\s+\(([\d.]+) per sec\.\)", re.M)
_ERRORS = re.compile(r"^\s*ignored errors:\s+(\d+)", re.M)
_P95 = re.compile(r"^\s*95th percentile:\s+([\d.]+)", re.M)
_AVG = re.compile(r"^\s*avg:\s+([\d.]+)", re.M)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs so far, from the first line of /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return (0, 0)
    total = sum(values[:8])
    return (total - values[3] - values[4], total)


def cpu_seconds(pid: int | None) -> float | None:
    """User plus system CPU time of a process (all its threads) so far, from /proc/PID/stat."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def sysbench(
    target: Target, test: str, ps_mode: str, threads: int, seconds: int, repeat: int, args: argparse.Namespace
) -> Run:
    argv = ["sysbench", test, *_sysbench_common(target, args), f"--db-ps-mode={ps_mode}"]
    argv += [f"--threads={threads}", f"--time={seconds}", "--events=0", "--percentile=95"]
    argv += ["--report-interval=0", "--histogram=off", "run"]
    run = Run(target.name, test, ps_mode, threads, repeat, ok=False)
    cpu_before, started, ticks_before = cpu_seconds(target.pid), time.monotonic(), machine_ticks()
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, env=_clean_env(), timeout=seconds + 60, check=False
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout
        run.output = f"sysbench did not finish within {seconds + 60} s (killed)\n{out or ''}"
        return run
    run.wall_s = time.monotonic() - started
    ticks_after = machine_ticks()
    if ticks_after[1] > ticks_before[1]:
        run.machine_busy = (ticks_after[0] - ticks_before[0]) / (ticks_after[1] - ticks_before[1])
    cpu_after = cpu_seconds(target.pid)
    if cpu_before is not None and cpu_after is not None:
        run.proxy_cpu_s = cpu_after - cpu_before
    run.output = (result.stdout + result.stderr).strip()
    tps, qps, p95, avg = (r.search(result.stdout) for r in (_TPS, _QPS, _P95, _AVG))
    errors = _ERRORS.search(result.stdout)
    run.errors = int(errors.group(1)) if errors else None
    if result.returncode == 0 and tps and p95 and "FATAL" not in run.output and not run.errors:
        run.ok = True
        run.transactions, run.tps = int(tps.group(1)), float(tps.group(2))
        run.qps = float(qps.group(1)) if qps else None
        run.p95_ms = float(p95.group(1))
        run.avg_ms = float(avg.group(1)) if avg else None
    return run


# -------------------------------------------------------------------------------------- report

Case = tuple[str, str, int]  # (test, ps mode, threads)


@dataclass
class Cell:
    tps: float | None
    p95_ms: float | None
    avg_ms: float | None
    runs: list[Run]

    @property
    def failed(self) -> bool:
        return any(not r.ok for r in self.runs)


def summarize(runs: list[Run], cases: list[Case], targets: list[str]) -> dict[tuple[Case, str], Cell]:
    cells: dict[tuple[Case, str], Cell] = {}
    for case in cases:
        for name in targets:
            mine = [r for r in runs if (r.test, r.ps_mode, r.threads) == case and r.target == name]
            good = [r for r in mine if r.ok]

            def median(values: list[float | None]) -> float | None:
                present = [v for v in values if v is not None]
                return statistics.median(present) if present else None

            cells[(case, name)] = Cell(
                median([r.tps for r in good]),
                median([r.p95_ms for r in good]),
                median([r.avg_ms for r in good]),
                mine,
            )
    return cells


def _fmt(value: float | None, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [line(header), "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|", *[line(r) for r in rows]]


def _cell_tps(cell: Cell | None) -> str:
    if cell is None:
        return "—"
    if cell.tps is None:
        return "FAILED"
    spread = [r.tps for r in cell.runs if r.ok and r.tps is not None]
    text = f"{cell.tps:,.0f}"
    if len(spread) > 1 and cell.tps:
        text += f" ±{(max(spread) - min(spread)) / 2 / cell.tps * 100:.0f}%"
    return text + (" (!)" if cell.failed else "")


def _short(test: str) -> str:
    return test.removeprefix("oltp_")


def render(
    cells: dict[tuple[Case, str], Cell],
    cases: list[Case],
    names: list[str],
    args: argparse.Namespace,
    info: list[tuple[str, str]],
) -> str:
    def tps(case: Case, name: str) -> float | None:
        cell = cells.get((case, name))
        return cell.tps if cell else None

    out = [f"# sysbench: MariaDB direct vs through QueryBase ({dt.datetime.now():%Y-%m-%d %H:%M})", ""]
    out += [f"- {k}: {v}" for k, v in info]
    out += [
        f"- runs: {args.repeats} repeat(s) × {args.time} s per run, {args.tables} table(s) × "
        f"{args.table_size:,} rows, targets alternated each repeat; median shown with ± half the "
        "min–max spread over repeats" + (" (--quick smoke run: too short to compare)" if args.quick else ""),
        "",
        "## Results (median over repeats)",
        "",
        "TPS: sysbench transactions per second (point_select: 1 query per transaction; read_only:",
        "BEGIN + 14 queries + COMMIT). p95: sysbench's 95th-percentile transaction latency.",
        "",
    ]
    header = ["test", "ps-mode", "threads"]
    header += [f"{LABELS[n]} TPS" for n in names] + [f"{LABELS[n]} p95 ms" for n in names]
    if "querybase" in names and "direct" in names:
        header += ["QB/direct"]
    rows = []
    for case in cases:
        test, mode, threads = case
        row = [_short(test), mode, str(threads)]
        row += [_cell_tps(cells.get((case, n))) for n in names]
        for n in names:
            cell = cells.get((case, n))
            row.append(_fmt(cell.p95_ms if cell else None, ".2f"))
        if "querybase" in names and "direct" in names:
            ratio = _ratio(tps(case, "querybase"), tps(case, "direct"))
            row.append(_fmt(ratio, ".2f"))
        rows.append(row)
    out += _table(header, rows)
    if "querybase" in names and "direct" in names:
        out += ["", "Average latency QueryBase adds per transaction (sysbench `avg`, median):", ""]
        rows = []
        for case in cases:
            qb, direct = cells.get((case, "querybase")), cells.get((case, "direct"))
            qa = qb.avg_ms if qb else None
            da = direct.avg_ms if direct else None
            added = None if qa is None or da is None else (qa - da) * 1000
            rows.append(
                [
                    _short(case[0]),
                    case[1],
                    str(case[2]),
                    _fmt(da, ".3f"),
                    _fmt(qa, ".3f"),
                    _fmt(added, "+.0f"),
                ]
            )
        out += _table(["test", "ps-mode", "threads", "direct avg ms", "QB avg ms", "QB − direct µs"], rows)
    out += [
        "",
        "## CPU (median over repeats)",
        "",
        "busy: share of all CPUs not idle during the run (everything on the machine, other jobs",
        "included). QB core: the serve process's CPU time over the run's wall time (100% = one core).",
        "QB µs/tx: its CPU time per sysbench transaction.",
        "",
    ]

    def median_of(cell: Cell | None, attr: str, scale: float, spec: str) -> str:
        if cell is None:
            return "—"
        values = [x * scale for r in cell.runs if r.ok and (x := getattr(r, attr)) is not None]
        return _fmt(statistics.median(values) if values else None, spec)

    header = ["test", "ps-mode", "threads", *(f"busy {LABELS[n]}" for n in names)]
    if "querybase" in names:
        header += ["QB core", "QB µs/tx"]
    rows = []
    for case in cases:
        row = [_short(case[0]), case[1], str(case[2])]
        row += [median_of(cells.get((case, n)), "machine_busy", 100, ".0f") + "%" for n in names]
        if "querybase" in names:
            qb = cells.get((case, "querybase"))
            row += [
                median_of(qb, "proxy_cpu_share", 100, ".0f") + "%",
                median_of(qb, "proxy_us_per_tx", 1, ".0f"),
            ]
        rows.append([x.replace("—%", "—") for x in row])
    out += _table(header, rows)
    out.append("")
    if "querybase" in names and "direct" in names:
        out += ["## Goal (reported, never asserted)", ""]
        for test, mode, threads, minimum in GOALS:
            case = (test, mode, threads)
            if case not in cases:
                continue
            ratio = _ratio(tps(case, "querybase"), tps(case, "direct"))
            verdict = "no result" if ratio is None else ("reached" if ratio >= minimum else "NOT reached")
            out.append(
                f"- {test}, --db-ps-mode={mode}, {threads} threads: QueryBase/direct = "
                f"{_fmt(ratio, '.2f')} (goal ≥ {minimum:.2f}): {verdict}"
            )
        out.append("")
    failures = [r for cell in cells.values() for r in cell.runs if not r.ok]
    if failures:
        out += ["## Failed runs", ""]
        for r in failures:
            tail = "\n".join(r.output.splitlines()[-12:])
            out += [
                f"- {LABELS[r.target]} {r.test} --db-ps-mode={r.ps_mode} --threads={r.threads} "
                f"repeat {r.repeat}:",
                "",
                "```",
                tail,
                "```",
            ]
        out.append("")
    out += ["## Raw runs (TPS per repeat)", ""]
    rows = []
    for case in cases:
        for n in names:
            cell = cells.get((case, n))
            if cell is None:
                continue
            values = ", ".join(f"{r.tps:,.0f}" if r.ok and r.tps else "failed" for r in cell.runs)
            rows.append([_short(case[0]), case[1], str(case[2]), LABELS[n], values])
    if rows:
        out += _table(["test", "ps-mode", "threads", "target", "TPS by repeat"], rows)
    return "\n".join(out) + "\n"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_info(env: Environment) -> list[tuple[str, str]]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def output(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return "?"

    commit = output("git", "-C", str(REPO), "rev-parse", "--short", "HEAD")
    dirty = output("git", "-C", str(REPO), "status", "--porcelain", "--", "proxy", "policies")
    return [
        ("machine", f"{os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), {cpu}"),
        ("load average at start (1, 5, 15 min)", _load()),
        ("MariaDB", env.server.version if env.server and env.server._version else "?"),
        ("sysbench", output("sysbench", "--version")),
        ("QueryBase", f"{commit or '?'}{' + uncommitted changes in proxy/ or policies/' if dirty else ''}"),
        ("Python", platform.python_version()),
    ]


# ---------------------------------------------------------------------------------------- main


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def _choice_list(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        values = [v if v in choices or v.startswith("oltp_") else f"oltp_{v}" for v in values]
        if not values or any(v not in choices for v in values):
            raise argparse.ArgumentTypeError(f"a comma-separated list of {', '.join(choices)}")
        return values

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="smoke test: 3 s per run, 1 repeat, small table")
    p.add_argument("--time", type=int, help="seconds per sysbench run (default 10, --quick 3)")
    p.add_argument("--repeats", type=int, help="repeats over all cases (default 3, --quick 1)")
    p.add_argument("--threads", type=_int_list, default=[1, 16], help="thread counts (default 1,16)")
    p.add_argument(
        "--tests",
        type=_choice_list(TESTS),
        default=list(TESTS),
        help="default oltp_point_select,oltp_read_only",
    )
    p.add_argument(
        "--ps-modes", type=_choice_list(PS_MODES), default=list(PS_MODES), help="default auto,disable"
    )
    p.add_argument(
        "--targets", type=_choice_list(TARGETS), default=list(TARGETS), help="default direct,querybase"
    )
    p.add_argument("--tables", type=int, default=1, help="sysbench tables (default 1)")
    p.add_argument("--table-size", type=int, help="rows per table (default 100000, --quick 10000)")
    p.add_argument("--warmup", type=int, help="seconds of warm-up per target (default 5, --quick 1)")
    p.add_argument("--log-level", default="warning", help="querybase serve log level (default warning)")
    p.add_argument(
        "--output", type=Path, help=f"report file (default {RESULTS}, --quick {QUICK_RESULTS.name})"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) afterwards")
    p.add_argument(
        "--hold",
        action="store_true",
        help="after setup, print the connection details and wait for Ctrl-C (to profile by hand)",
    )
    args = p.parse_args(argv)
    args.output = args.output or (QUICK_RESULTS if args.quick else RESULTS)
    args.time = args.time or (3 if args.quick else 10)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.table_size = args.table_size or (10_000 if args.quick else 100_000)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    return args


@contextlib.contextmanager
def _signals_as_exit() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP all unwind as KeyboardInterrupt, so the finally blocks stop
    every server (SIGINT set explicitly: a background shell leaves it ignored)."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _check_sysbench() -> None:
    if shutil.which("sysbench") is None:
        raise RuntimeError("sysbench is not installed: `make bench-mysql` or `apt-get install sysbench`")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cases: list[Case] = [(t, m, c) for t in args.tests for m in args.ps_modes for c in args.threads]
    env = Environment(Path(tempfile.mkdtemp(prefix="querybase-bench-mysql-")))
    runs: list[Run] = []
    started = time.monotonic()
    try:
        with _signals_as_exit():
            _check_sysbench()
            targets: dict[str, Target] = {"direct": start_mariadb(env, args)}
            if "querybase" in args.targets:
                targets["querybase"] = start_querybase(env, max(args.threads) + 4, args.log_level)
            active = [n for n in TARGETS if n in targets and n in args.targets]
            env.targets = targets
            info = machine_info(env)
            for key, value in info:
                say(f"{key}: {value}")
            if args.hold:
                for t in targets.values():
                    login = f"mysql -h {t.host} -P {t.port} -u {t.user} -p{t.password} {t.db}"
                    say(f"{t.name}: {login}  pid={t.pid}")
                say("holding; Ctrl-C to stop")
                while True:
                    time.sleep(3600)
            total = len(cases) * len(active)
            say(
                f"{args.repeats} repeat(s) × {total} runs × {args.time} s ≈ "
                f"{(args.repeats * total * (args.time + 1) + len(active) * args.warmup) / 60:.1f} min"
            )
            if args.warmup:
                for name in active:
                    for mode in args.ps_modes:
                        warm = sysbench(
                            targets[name], args.tests[0], mode, max(args.threads), args.warmup, 0, args
                        )
                        say(f"warm-up {LABELS[name]} {mode}: {'ok' if warm.ok else 'FAILED'}")
                        if not warm.ok:
                            say("  " + "\n  ".join(warm.output.splitlines()[-12:]))
            for repeat in range(1, args.repeats + 1):
                for index, case in enumerate(cases):
                    # alternate who goes first, per case and per repeat: d q | q d | d q …
                    order = active if (index + repeat) % 2 else active[::-1]
                    for name in order:
                        test, mode, threads = case
                        run = sysbench(targets[name], test, mode, threads, args.time, repeat, args)
                        runs.append(run)
                        shown = (
                            f"{run.tps:10,.0f} tps  p95 {run.p95_ms:.2f} ms"
                            if run.ok and run.tps is not None and run.p95_ms is not None
                            else "FAILED"
                        )
                        what = f"{_short(test):13} ps={mode:7} t={threads:<3} {LABELS[name]:9}"
                        say(f"repeat {repeat}  {what} {shown}")
                        if not run.ok:
                            say("  " + "\n  ".join(run.output.splitlines()[-12:]))
                        if env.serve is not None and env.serve.process.poll() is not None:
                            raise RuntimeError(
                                f"querybase serve exited with {env.serve.process.returncode}:\n"
                                + "\n".join(env.serve.log.splitlines()[-40:])
                            )
            cells = summarize(runs, cases, active)
            info.append(("load average at end (1, 5, 15 min)", _load()))
            info.append(("wall time", f"{time.monotonic() - started:.0f} s"))
            report = render(cells, cases, active, args, info)
            if env.serve is not None:
                lines = env.serve.log.splitlines()
                if lines:
                    report += (
                        f"\n## QueryBase serve log ({len(lines)} lines at {args.log_level}+; last 20)\n\n"
                    )
                    report += "```\n" + "\n".join(lines[-20:]) + "\n```\n"
            say("")
            say(report)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(report, encoding="utf-8")
            say(f"written to {args.output}")
            return 1 if any(not r.ok for r in runs) else 0
    except KeyboardInterrupt:
        say("\ninterrupted; stopping everything …")
        return 130
    except Exception as exc:  # a server did not start or died: say what, then clean up
        say(f"\nerror: {exc}")
        return 2
    finally:
        stop_all(env)
        if args.keep:
            say(f"kept {env.basedir}")
        else:
            shutil.rmtree(env.basedir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
