#!/usr/bin/env python3
"""pgbench -S against PostgreSQL directly, through PgBouncer and through QueryBase, in one run.

Theory of operation
-------------------
One throwaway PostgreSQL cluster (tests/support/localdb.py) gets the pgbench tables
(`pgbench -i -s SCALE` as qb_admin, SELECT granted to qb_reader). Three targets then serve the
same database to pgbench, each logging in over TCP with SCRAM and without TLS:

  direct     PostgreSQL itself, as qb_reader
  pgbouncer  PgBouncer, pool_mode = transaction, logging in upstream as qb_reader
  querybase  `querybase serve` (log level warning), source `bench` whose read login is qb_reader,
             user `bench` with a read grant, so every statement goes through the classifier

After a short warm-up of every target, each round runs every configuration (query mode × client
count) once on every target, the targets in a rotated order from round to round, so that slow
drifts of the machine (other jobs, thermal limits) hit all targets alike. A configuration's
result is the median over the rounds of pgbench's "tps … (without initial connection time)"
and "latency average". Ratios and the added latency (QueryBase minus direct, per transaction)
are computed from the medians. The run reports the numbers and whether the targets of
DESIGN.md §8 were reached; it never fails on a timing, only when a pgbench run fails.

PgBouncer before 1.21 has no support for protocol-level prepared statements in transaction
pooling, so `-M prepared` is not run against it there (the table says so).

Everything started here (cluster, PgBouncer, serve) is stopped on exit, Ctrl-C and SIGTERM
included, and the temporary directory is removed unless --keep is given.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.localdb import (  # noqa: E402 - needs the repository on sys.path
    DATABASE,
    HOST,
    PG_PASSWORDS,
    PostgresCluster,
    find_pg_bindir,
    free_port,
    log_tail,
)
from tests.support.querybase import ServeProcess, init_home, run_cli_in_process, start_serve  # noqa: E402

READER = "qb_reader"
QB_SOURCE = "bench"
QB_USER = "bench"
QB_PASSWORD = "bench-Secret-pw-42"
RESULTS = Path(__file__).resolve().parent / "results" / "latest-pg.md"
QUICK_RESULTS = RESULTS.with_name("latest-pg-quick.md")  # git-ignored: a smoke run is not a result
TARGET_ORDER = ("direct", "pgbouncer", "querybase")
LABELS = {"direct": "direct", "pgbouncer": "PgBouncer", "querybase": "QueryBase"}
GOALS = (  # (mode, clients, versus, minimum ratio) from DESIGN.md §8 / the issue
    ("simple", 16, "pgbouncer", 0.75),
    ("prepared", 16, "direct", 0.55),
)
PGBOUNCER_PREPARED_SINCE = (1, 21)


def say(message: str) -> None:
    print(message, flush=True)


# ------------------------------------------------------------------------------------ targets


@dataclass
class Target:
    name: str
    host: str
    port: int
    dbname: str
    user: str
    password: str
    modes: frozenset[str] = frozenset({"simple", "extended", "prepared"})
    skip_note: str = ""  # why a mode is left out
    pid: int | None = None  # the proxy process in between, whose CPU time is measured


@dataclass
class Run:
    target: str
    mode: str
    clients: int
    round: int
    ok: bool
    tps: float | None = None
    latency_ms: float | None = None
    failed_tx: int | None = None
    transactions: int | None = None
    proxy_cpu_s: float | None = None  # CPU time the proxy process (PgBouncer, serve) used
    wall_s: float | None = None
    machine_busy: float | None = None  # share of all CPUs not idle during the run (0..1)
    output: str = ""

    @property
    def proxy_cpu_share(self) -> float | None:
        """The proxy's CPU time over the run's wall time: 1.0 is one core busy all the time."""
        return self.proxy_cpu_s / self.wall_s if self.proxy_cpu_s is not None and self.wall_s else None

    @property
    def proxy_us_per_tx(self) -> float | None:
        if self.proxy_cpu_s is None or not self.transactions:
            return None
        return self.proxy_cpu_s * 1e6 / self.transactions


@dataclass
class Environment:
    basedir: Path
    cluster: PostgresCluster | None = None
    pgbouncer: subprocess.Popen[bytes] | None = None
    pgbouncer_log: Path | None = None
    pgbouncer_version: str = "not installed"
    serve: ServeProcess | None = None
    targets: dict[str, Target] = field(default_factory=dict)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "QUERYBASE_"))}
    env.update(extra)
    return env


def _pg_program(name: str) -> str:
    path = find_pg_bindir() / name
    return str(path) if path.is_file() else name


def _wait_port(port: int, alive: Any, what: str, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{what} exited at start:\n{log_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} does not listen on {port} after {timeout:.0f} s:\n{log_tail(log)}")


def find_pgbouncer() -> str | None:
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")


def _version_tuple(text: str) -> tuple[int, ...]:
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g) for g in match.groups() if g is not None) if match else (0,)


def start_cluster(env: Environment, scale: int) -> Target:
    say(f"starting PostgreSQL in {env.basedir / 'pg'} …")
    cluster = PostgresCluster(env.basedir / "pg")
    env.cluster = cluster
    cluster.start()
    say(f"loading pgbench data, scale {scale} …")
    started = time.monotonic()
    result = subprocess.run(
        [
            *(_pg_program("pgbench"), "-i", "-q", "-s", str(scale)),
            *("-h", cluster.host, "-p", str(cluster.port), "-U", "qb_admin", DATABASE),
        ],
        capture_output=True,
        text=True,
        env=_clean_env(PGPASSWORD=PG_PASSWORDS["qb_admin"], PGSSLMODE="disable"),
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pgbench -i failed:\n{result.stdout}\n{result.stderr}")
    cluster.execute_sql(
        f"GRANT SELECT ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history TO {READER};"
        "\nCHECKPOINT;"
    )
    say(f"  loaded in {time.monotonic() - started:.0f} s")
    return Target("direct", cluster.host, cluster.port, DATABASE, READER, PG_PASSWORDS[READER])


def start_pgbouncer(env: Environment, pool_size: int) -> Target | None:
    program = find_pgbouncer()
    if program is None:
        say("PgBouncer is not installed (apt-get install pgbouncer): its column is left out.")
        return None
    assert env.cluster is not None
    env.pgbouncer_version = (
        subprocess.run([program, "--version"], capture_output=True, text=True, check=False)
        .stdout.splitlines()[0]
        .strip()
    )
    prepared_ok = _version_tuple(env.pgbouncer_version) >= PGBOUNCER_PREPARED_SINCE
    home = env.basedir / "pgbouncer"
    home.mkdir()
    port = free_port()
    ini = f"""\
[databases]
{DATABASE} = host={env.cluster.host} port={env.cluster.port} dbname={DATABASE} user={READER}

[pgbouncer]
listen_addr = {HOST}
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {home / "userlist.txt"}
pool_mode = transaction
max_client_conn = 200
default_pool_size = {pool_size}
logfile = {home / "pgbouncer.log"}
log_connections = 0
log_disconnections = 0
ignore_startup_parameters = extra_float_digits
{"max_prepared_statements = 200" if prepared_ok else ""}
"""
    (home / "pgbouncer.ini").write_text(ini)
    (home / "userlist.txt").write_text(f'"{READER}" "{PG_PASSWORDS[READER]}"\n')
    (home / "pgbouncer.log").touch()
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        owner = pwd.getpwnam("postgres")
        for path in (home, *home.iterdir()):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        home.chmod(0o700)
        as_user = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
    say(f"starting {env.pgbouncer_version} on port {port} …")
    env.pgbouncer_log = home / "pgbouncer.log"
    with (home / "stderr.log").open("wb") as stderr:
        env.pgbouncer = subprocess.Popen(
            [program, str(home / "pgbouncer.ini")],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=subprocess.STDOUT,
            cwd=home,
            env=_clean_env(),
            start_new_session=True,  # a terminal's Ctrl-C is for us; we stop it ourselves
            **as_user,
        )
    proc = env.pgbouncer
    _wait_port(port, lambda: proc.poll() is None, "pgbouncer", home / "stderr.log")
    target = Target("pgbouncer", HOST, port, DATABASE, READER, PG_PASSWORDS[READER], pid=proc.pid)
    if not prepared_ok:
        target.modes = frozenset({"simple", "extended"})
        target.skip_note = (
            f"{env.pgbouncer_version} has no prepared statements in transaction pooling (needs ≥ 1.21)"
        )
    return target


def start_querybase(env: Environment, pool_size: int) -> Target:
    home = env.basedir / "querybase"
    config = init_home(home, tls_mode="allow")
    assert env.cluster is not None
    cli_env = {"READ_PW": PG_PASSWORDS[READER], "BENCH_PW": QB_PASSWORD}
    commands = [
        [
            *("source", "add", QB_SOURCE, "--engine", "postgresql", "--host", env.cluster.host),
            *("--port", str(env.cluster.port), "--database", DATABASE, "--user", READER),
            *("--password-env", "READ_PW", "--tls", "disable", "--pool-size", str(pool_size)),
        ],
        ["user", "add", QB_USER, "--password-env", "BENCH_PW"],
        ["group", "add", "benchers"],
        ["group", "member", "add", "benchers", QB_USER],
        ["grant", "benchers", QB_SOURCE, "read"],
    ]
    for args in commands:
        result = run_cli_in_process(config, *args, env=cli_env)
        if result.returncode != 0:
            raise RuntimeError(f"querybase {' '.join(args)} failed:\n{result.stderr}")
    listen = tomllib.loads(config.read_text())["postgres"]["listen"]
    port = int(listen.rpartition(":")[2])
    say(f"starting querybase serve on port {port} …")
    env.serve = start_serve(config, env={"QUERYBASE_LOG__LEVEL": "warning"})
    return Target("querybase", HOST, port, QB_SOURCE, QB_USER, QB_PASSWORD, pid=env.serve.process.pid)


def stop_all(env: Environment) -> None:
    if env.serve is not None:
        with contextlib.suppress(Exception):
            if env.serve.stop() != 0:
                env.serve.kill()
        with contextlib.suppress(Exception):
            env.serve.kill()
    if env.pgbouncer is not None and env.pgbouncer.poll() is None:
        env.pgbouncer.terminate()
        try:
            env.pgbouncer.wait(10)
        except subprocess.TimeoutExpired:
            env.pgbouncer.kill()
            env.pgbouncer.wait(10)
    if env.cluster is not None:
        try:
            env.cluster.stop()
        except Exception as exc:
            say(f"warning: stopping PostgreSQL failed: {exc}")


# -------------------------------------------------------------------------------------- pgbench

_TPS = re.compile(r"^tps = ([\d.]+) \((?:without initial connection time|excluding connections)", re.M)
_LATENCY = re.compile(r"^latency average = ([\d.]+) ms", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs so far, from the first line of /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return (0, 0)
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    return (total - values[3] - values[4], total)


def cpu_seconds(pid: int | None) -> float | None:
    """User plus system CPU time of a process (all its threads) so far, from /proc/PID/stat."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after "pid (comm)": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


def pgbench(target: Target, mode: str, clients: int, seconds: int, round_no: int) -> Run:
    argv = [_pg_program("pgbench"), "-n", "-S", "-M", mode, "-c", str(clients), "-j", str(min(clients, 2))]
    argv += ["-T", str(seconds), "-h", target.host, "-p", str(target.port), "-U", target.user, target.dbname]
    env = _clean_env(PGPASSWORD=target.password, PGSSLMODE="disable", PGGSSENCMODE="disable")
    run = Run(target.name, mode, clients, round_no, ok=False)
    cpu_before, started, ticks_before = cpu_seconds(target.pid), time.monotonic(), machine_ticks()
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=seconds + 60, check=False
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout
        run.output = f"pgbench did not finish within {seconds + 60} s (killed)\n{out or ''}"
        return run
    run.output = (result.stdout + result.stderr).strip()
    tps, latency = _TPS.search(result.stdout), _LATENCY.search(result.stdout)
    failed = _FAILED.search(result.stdout)
    run.failed_tx = int(failed.group(1)) if failed else None
    run.wall_s = time.monotonic() - started
    ticks_after = machine_ticks()
    if ticks_after[1] > ticks_before[1]:
        run.machine_busy = (ticks_after[0] - ticks_before[0]) / (ticks_after[1] - ticks_before[1])
    cpu_after = cpu_seconds(target.pid)
    if cpu_before is not None and cpu_after is not None:
        run.proxy_cpu_s = cpu_after - cpu_before
    processed = _PROCESSED.search(result.stdout)
    run.transactions = int(processed.group(1)) if processed else None
    if result.returncode == 0 and tps and latency and not run.failed_tx:
        run.ok, run.tps, run.latency_ms = True, float(tps.group(1)), float(latency.group(1))
    return run


# -------------------------------------------------------------------------------------- report


@dataclass
class Cell:
    tps: float | None
    latency_ms: float | None
    runs: list[Run]
    skipped: str = ""

    @property
    def failed(self) -> bool:
        return any(not r.ok for r in self.runs)


Cells = dict[tuple[str, int, str], "Cell"]  # (mode, clients, target) → result


def summarize(runs: list[Run], targets: dict[str, Target], modes: list[str], clients: list[int]) -> Cells:
    cells: Cells = {}
    for mode in modes:
        for c in clients:
            for name, target in targets.items():
                mine = [r for r in runs if (r.mode, r.clients, r.target) == (mode, c, name)]
                good = [r for r in mine if r.ok]
                cells[(mode, c, name)] = Cell(
                    statistics.median(r.tps for r in good if r.tps is not None) if good else None,
                    statistics.median(r.latency_ms for r in good if r.latency_ms is not None)
                    if good
                    else None,
                    mine,
                    skipped="" if mode in target.modes else "n/a",
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
    if cell.skipped:
        return cell.skipped
    if cell.tps is None:
        return "FAILED"
    spread = [r.tps for r in cell.runs if r.ok and r.tps is not None]
    text = f"{cell.tps:,.0f}"
    if len(spread) > 1 and cell.tps:
        text += f" ±{(max(spread) - min(spread)) / 2 / cell.tps * 100:.0f}%"
    return text + (" (!)" if cell.failed else "")


def render(
    cells: Cells,
    targets: dict[str, Target],
    modes: list[str],
    clients: list[int],
    args: argparse.Namespace,
    info: list[tuple[str, str]],
) -> str:
    names = [n for n in TARGET_ORDER if n in targets]

    def get(m: str, c: int, n: str) -> Cell | None:
        return cells.get((m, c, n))

    def tps(m: str, c: int, n: str) -> float | None:
        cell = cells.get((m, c, n))
        return cell.tps if cell else None

    def lat(m: str, c: int, n: str) -> float | None:
        cell = cells.get((m, c, n))
        return cell.latency_ms if cell else None

    out = [f"# pgbench -S: direct vs PgBouncer vs QueryBase ({dt.datetime.now():%Y-%m-%d %H:%M})", ""]
    out += [f"- {k}: {v}" for k, v in info]
    out += [
        f"- runs: {args.rounds} round(s) × {args.seconds} s per run, targets rotated each round; "
        "median TPS shown with ± half the min–max spread over rounds"
        + (" (--quick smoke run: too short to compare)" if args.quick else ""),
        "",
        "## Throughput (TPS, median)",
        "",
    ]
    header = ["mode", "clients", *(LABELS[n] for n in names)]
    if "querybase" in targets:
        header += ["QB/direct"] + (["QB/PgBouncer"] if "pgbouncer" in targets else [])
    rows = []
    for m in modes:
        for c in clients:
            row = [m, str(c), *(_cell_tps(get(m, c, n)) for n in names)]
            if "querybase" in targets:
                row.append(_fmt(_ratio(tps(m, c, "querybase"), tps(m, c, "direct")), ".2f"))
                if "pgbouncer" in targets:
                    row.append(_fmt(_ratio(tps(m, c, "querybase"), tps(m, c, "pgbouncer")), ".2f"))
            rows.append(row)
    out += _table(header, rows)
    out += ["", "## Latency (pgbench `latency average`, ms, median)", ""]
    header = ["mode", "clients", *(LABELS[n] for n in names)]
    if "querybase" in targets and "direct" in targets:
        header.append("QB − direct (µs)")
    rows = []
    for m in modes:
        for c in clients:
            row = [m, str(c)]
            for n in names:
                cell = get(m, c, n)
                row.append(cell.skipped if cell and cell.skipped else _fmt(lat(m, c, n), ".3f"))
            if "querybase" in targets and "direct" in targets:
                qb, direct = lat(m, c, "querybase"), lat(m, c, "direct")
                row.append(_fmt(None if qb is None or direct is None else (qb - direct) * 1000, "+.0f"))
            rows.append(row)
    out += _table(header, rows)
    out += ["", "At c=1 the latency difference is the time QueryBase adds per transaction.", ""]
    out += [
        "## CPU (median over rounds)",
        "",
        "busy: share of all CPUs not idle during the run (everything on the machine, other",
        "jobs included; near 100% means the run was CPU-bound). core: the proxy process's CPU time",
        "over the run's wall time (100% = one core). µs/tx: the proxy's CPU time per transaction.",
        "",
    ]
    header = ["mode", "clients", *(f"busy {LABELS[n]}" for n in names)]
    proxies = [n for n in names if targets[n].pid is not None]
    for n in proxies:
        header += [f"{LABELS[n]} core", f"{LABELS[n]} µs/tx"]
    rows = []

    def median_of(cell: Cell | None, value: Callable[[Run], float | None], scale: float, spec: str) -> str:
        if cell is None or cell.skipped:
            return "n/a"
        values = [x for r in cell.runs if r.ok and (x := value(r)) is not None]
        return _fmt(statistics.median(values) * scale if values else None, spec)

    for m in modes:
        for c in clients:
            row = [m, str(c)]
            row += [median_of(get(m, c, n), lambda r: r.machine_busy, 100, ".0f") + "%" for n in names]
            for n in proxies:
                row.append(median_of(get(m, c, n), lambda r: r.proxy_cpu_share, 100, ".0f") + "%")
                row.append(median_of(get(m, c, n), lambda r: r.proxy_us_per_tx, 1, ".1f"))
            rows.append(row)
    out += _table(header, [[x.replace("n/a%", "n/a").replace("—%", "—") for x in r] for r in rows])
    out.append("")
    if "querybase" in targets:
        out += ["## Goals (DESIGN.md §8; reported, never asserted)", ""]
        for mode, c, versus, minimum in GOALS:
            if mode not in modes or c not in clients or versus not in targets:
                continue
            ratio = _ratio(tps(mode, c, "querybase"), tps(mode, c, versus))
            verdict = "no result" if ratio is None else ("reached" if ratio >= minimum else "NOT reached")
            out.append(
                f"- `-M {mode}`, c={c}: QueryBase/{LABELS[versus]} = {_fmt(ratio, '.2f')} "
                f"(goal ≥ {minimum:.2f}): {verdict}"
            )
        out.append("")
    notes = [t.skip_note for t in targets.values() if t.skip_note]
    failures = [r for cell in cells.values() for r in cell.runs if not r.ok]
    if notes or failures:
        out += ["## Notes", ""]
        out += [f"- n/a: {n}" for n in notes]
        for r in failures:
            tail = "\n".join(r.output.splitlines()[-8:])
            out += [
                f"- FAILED run: {LABELS[r.target]} -M {r.mode} c={r.clients} round {r.round}:",
                "",
                "```",
                tail,
                "```",
            ]
        out.append("")
    out += ["## Raw runs (TPS per round)", ""]
    rows = []
    for m in modes:
        for c in clients:
            for n in names:
                cell = get(m, c, n)
                if cell is None or cell.skipped:
                    continue
                values = ", ".join(f"{r.tps:,.0f}" if r.ok and r.tps else "failed" for r in cell.runs)
                rows.append([m, str(c), LABELS[n], values])
    if rows:
        out += _table(["mode", "clients", "target", "TPS by round"], rows)
    return "\n".join(out) + "\n"


def machine_info(env: Environment) -> list[tuple[str, str]]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "proxy", "policies"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    pgbench_version = subprocess.run(
        [_pg_program("pgbench"), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return [
        ("machine", f"{os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), {cpu}"),
        ("load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
        ("PostgreSQL", env.cluster.version if env.cluster else "?"),
        ("pgbench", pgbench_version),
        ("PgBouncer", env.pgbouncer_version),
        ("QueryBase", f"{commit or '?'}{' + uncommitted changes in proxy/ or policies/' if dirty else ''}"),
        ("Python", platform.python_version()),
    ]


# ---------------------------------------------------------------------------------------- main


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def _mode_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in ("simple", "prepared", "extended") for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of simple, extended, prepared")
    return values


def _target_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in TARGET_ORDER for v in values):
        raise argparse.ArgumentTypeError(f"a comma-separated list of {', '.join(TARGET_ORDER)}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="smoke test: 3 s per run, 1 round, 1 s warm-up")
    p.add_argument("--seconds", type=int, help="seconds per pgbench run (default 8, --quick 3)")
    p.add_argument("--rounds", type=int, help="rounds over all configurations (default 3, --quick 1)")
    p.add_argument("--clients", type=_int_list, default=[1, 16], help="client counts (default 1,16)")
    p.add_argument("--modes", type=_mode_list, default=["simple", "prepared"], help="default simple,prepared")
    p.add_argument("--targets", type=_target_list, default=list(TARGET_ORDER), help="default: all three")
    p.add_argument("--scale", type=int, default=10, help="pgbench scale factor (default 10)")
    p.add_argument("--warmup", type=int, help="seconds of warm-up per target (default 3, --quick 1)")
    p.add_argument(
        "--output", type=Path, help=f"report file (default {RESULTS}, --quick {QUICK_RESULTS.name})"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) afterwards")
    p.add_argument(
        "--pool-size",
        type=int,
        help="upstream connections of PgBouncer and QueryBase (default: max clients + 4); fewer "
        "than the clients measures transaction pooling",
    )
    args = p.parse_args(argv)
    args.output = args.output or (QUICK_RESULTS if args.quick else RESULTS)
    args.seconds = args.seconds or (3 if args.quick else 8)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    return args


@contextlib.contextmanager
def _signals_as_exit() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP all unwind as KeyboardInterrupt, so the finally blocks stop
    every server. SIGINT is set explicitly: a shell that starts us in the background leaves it
    ignored."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _basedir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="querybase-bench-"))
    if os.geteuid() == 0:
        path.chmod(0o711)  # PostgreSQL and PgBouncer run as `postgres` and must enter it
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs = [(m, c) for m in args.modes for c in args.clients]
    env = Environment(_basedir())
    runs: list[Run] = []
    pool_size = args.pool_size or max(args.clients) + 4
    started = time.monotonic()
    try:
        with _signals_as_exit():
            targets: dict[str, Target] = {"direct": start_cluster(env, args.scale)}
            if "pgbouncer" in args.targets:
                bouncer = start_pgbouncer(env, pool_size)
                if bouncer is not None:
                    targets["pgbouncer"] = bouncer
            if "querybase" in args.targets:
                targets["querybase"] = start_querybase(env, pool_size)
            env.targets = targets
            info = machine_info(env)
            for key, value in info:
                say(f"{key}: {value}")
            total = sum(
                1 for m, _ in configs for t in targets.values() if t.name in args.targets and m in t.modes
            )
            say(
                f"{args.rounds} round(s) × {total} runs × {args.seconds} s ≈ "
                f"{args.rounds * total * (args.seconds + 1) / 60:.1f} min"
            )
            active = [n for n in TARGET_ORDER if n in targets and n in args.targets]
            if args.warmup:
                for name in active:
                    warm = pgbench(targets[name], "simple", max(args.clients), args.warmup, 0)
                    say(f"warm-up {LABELS[name]}: {'ok' if warm.ok else 'FAILED'}")
                    if not warm.ok:
                        say(warm.output)
            for round_no in range(1, args.rounds + 1):
                shift = (round_no - 1) % len(active)
                order = active[shift:] + active[:shift]
                for mode, clients in configs:
                    for name in order:
                        target = targets[name]
                        if mode not in target.modes:
                            continue
                        run = pgbench(target, mode, clients, args.seconds, round_no)
                        runs.append(run)
                        shown = f"{run.tps:10,.0f} tps  {run.latency_ms:.3f} ms" if run.ok else "FAILED"
                        say(f"round {round_no}  -M {mode:8} c={clients:<3} {LABELS[name]:10} {shown}")
                        if not run.ok:
                            say("  " + "\n  ".join(run.output.splitlines()[-8:]))
                        if env.serve is not None and env.serve.process.poll() is not None:
                            raise RuntimeError(
                                f"querybase serve exited with {env.serve.process.returncode}:\n"
                                + "\n".join(env.serve.log.splitlines()[-40:])
                            )
            chosen = {n: targets[n] for n in active}
            cells = summarize(runs, chosen, args.modes, args.clients)
            info.append(("load average at end", " ".join(f"{x:.2f}" for x in os.getloadavg())))
            info.append(("wall time", f"{time.monotonic() - started:.0f} s"))
            report = render(cells, chosen, args.modes, args.clients, args, info)
            if env.serve is not None:
                lines = env.serve.log.splitlines()
                if lines:
                    report += f"\n## QueryBase serve log ({len(lines)} lines at warning+; last 20)\n\n"
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
