"""Prometheus metrics: every `querybase_*` metric, pre-bound label sets for the hot path, exposition.

Theory of operation. The metric objects below are module-level, as prometheus_client intends;
they belong to `REGISTRY` (not the library's global default registry). Code on the statement path
never calls `.labels()` per statement: a session asks once, at login, for its `StatementMetrics`
(a table of pre-bound children for its protocol and source) and then pays one counter increment
when it decides a statement and one histogram observation when the statement's response ends.

Several processes. When `PROMETHEUS_MULTIPROC_DIR` names a writable, empty directory in the
environment of the process *before it starts* (prometheus_client picks its value class at import),
every metric lives in per-process mmap files there and `exposition()` merges the files of all
processes: counters and histograms are summed; gauges say how they merge (`livesum` for things
that are currently open somewhere, so a dead worker's connections vanish once
`mark_process_dead(pid)` has run for it). Without the variable, one plain registry is served.

Figures other components keep themselves (the classification caches' hit counts) are copied in
by `sync()`, which the /metrics route runs at every scrape and the executor's background sweep
runs every few seconds in every process, so the per-process files stay current too.

See docs/observability.md for the list of metrics and what they mean.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import Gauge as Gauge  # re-exported: sessions annotate their pre-bound children
from prometheus_client import values as _values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.multiprocess import mark_process_dead as _mark_process_dead
from prometheus_client.registry import Collector

from policies import cache as classify_cache
from policies.types import Action, Kind

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Whether prometheus_client chose its multiprocess value class (decided when it was imported).
MULTIPROCESS: bool = bool(getattr(_values.ValueClass, "_multiprocess", False))
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST

# `_created` samples double the series count and nothing here reads them.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)

# How a gauge merges over processes; `livesum`: the sum over processes that are still running.
GaugeMode = Literal["livesum", "livemax", "mostrecent", "sum", "max"]

# Buckets (seconds).
STATEMENT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
OVERHEAD_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)
CHECKOUT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30)
DECISION_BUCKETS = (10, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 172800, 604800)
EXECUTION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300)

# QueryBase's own processing time is observed for one statement in OVERHEAD_SAMPLE per session
# (the first one included), so the statement path pays for it only every OVERHEAD_SAMPLE-th time.
OVERHEAD_SAMPLE = 16

PROTOCOLS = ("postgresql", "mysql")
LOGIN_FAILURE_REASONS = (
    "wrong_password",  # a known, active user gave a wrong password
    "unknown_user",  # no such user, or the user is disabled
    "rate_limited",  # too many recent failures for the user or the client address
    "no_grant",  # authenticated, but no grant on the source asked for
    "unknown_source",  # no such source (or one of the other protocol)
    "tls_required",  # plaintext login where TLS is required
    "upstream",  # the source's upstream could not be reached or had no free connection
    "protocol",  # a malformed or unsupported login exchange, or a login timeout
    "internal",  # a bug in QueryBase (logged as login_crashed)
)
NOTIFY_OUTCOMES = ("delivered", "retrying", "failed", "dropped")


def _counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
    return Counter(name, doc, list(labels), registry=REGISTRY)


def _gauge(name: str, doc: str, labels: Iterable[str] = (), mode: GaugeMode = "livesum") -> Gauge:
    return Gauge(name, doc, list(labels), registry=REGISTRY, multiprocess_mode=mode)


def _histogram(name: str, doc: str, labels: Iterable[str], buckets: tuple[float, ...]) -> Histogram:
    return Histogram(name, doc, list(labels), registry=REGISTRY, buckets=buckets)


# ---------------------------------------------------------------------------------- clients

CLIENT_CONNECTIONS_ACCEPTED = _counter(
    "querybase_client_connections_accepted",
    "Client TCP connections accepted, before login.",
    ["protocol"],
)
CLIENT_CONNECTIONS_OPEN = _gauge(
    "querybase_client_connections_open",
    "Client TCP connections open now (logged in or not).",
    ["protocol"],
)
CLIENT_SESSIONS = _counter(
    "querybase_client_sessions",
    "Client sessions that logged in and were attached to a source.",
    ["protocol", "source", "tls"],
)
CLIENT_SESSIONS_OPEN = _gauge(
    "querybase_client_sessions_open",
    "Logged-in client sessions open now.",
    ["protocol", "source", "tls"],
)
LOGIN_FAILURES = _counter(
    "querybase_login_failures",
    "Client logins refused, by reason (see docs/observability.md).",
    ["protocol", "reason"],
)

# ------------------------------------------------------------------------------- statements

STATEMENTS = _counter(
    "querybase_statements",
    "Statements (protocol messages that run SQL) decided, by kind and verdict (forward, hold, deny).",
    ["protocol", "source", "kind", "verdict"],
)
STATEMENT_DURATION = _histogram(
    "querybase_statement_duration_seconds",
    "Statement time as the client sees it: from the message's arrival to the end of its response.",
    ["protocol", "source", "verdict"],
    STATEMENT_BUCKETS,
)
STATEMENT_OVERHEAD = _histogram(
    "querybase_statement_overhead_seconds",
    f"QueryBase's own processing of a forwarded statement before it goes upstream "
    f"(sampled: one statement in {OVERHEAD_SAMPLE} per session).",
    ["protocol"],
    OVERHEAD_BUCKETS,
)

# ---------------------------------------------------------------------------- upstream pool

POOL_LABELS = ("source", "role")
POOL_SIZE = _gauge("querybase_pool_size", "Configured maximum upstream connections.", POOL_LABELS)
POOL_IDLE = _gauge("querybase_pool_idle_connections", "Upstream connections idle in the pool.", POOL_LABELS)
POOL_IN_USE = _gauge(
    "querybase_pool_in_use_connections", "Upstream connections held by client sessions.", POOL_LABELS
)
POOL_OPENING = _gauge(
    "querybase_pool_opening_connections", "Upstream connections being opened now.", POOL_LABELS
)
POOL_WAITING = _gauge(
    "querybase_pool_waiting_clients", "Client sessions waiting for an upstream connection.", POOL_LABELS
)
POOL_CHECKOUT_WAIT = _histogram(
    "querybase_pool_checkout_wait_seconds",
    "Time a client session waited for an upstream connection (including opening a new one).",
    POOL_LABELS,
    CHECKOUT_BUCKETS,
)
POOL_CHECKOUT_TIMEOUTS = _counter(
    "querybase_pool_checkout_timeouts",
    "Checkouts that gave up after the pool timeout (the client got 'too many connections').",
    POOL_LABELS,
)
POOL_CONNECT_ERRORS = _counter(
    "querybase_pool_connect_errors",
    "Failed attempts to open an upstream connection.",
    POOL_LABELS,
)
POOL_PINNED = _gauge(
    "querybase_pool_pinned_sessions",
    "Client sessions in transaction mode kept on one upstream connection (state that cannot move).",
    POOL_LABELS,
)
POOL_PINS = _counter(
    "querybase_pool_pins",
    "Client sessions pinned to their upstream connection, by what pinned them.",
    (*POOL_LABELS, "reason"),
)
POOL_SETTINGS_APPLIED = _counter(
    "querybase_pool_settings_applied",
    "Checkouts that had to carry a client's session settings to the upstream connection first.",
    POOL_LABELS,
)

# -------------------------------------------------------------------------- change requests

CHANGE_REQUESTS = _counter(
    "querybase_change_requests",
    "Change-request transitions into a status (pending when created, approved, rejected, "
    "cancelled, expired, succeeded, failed, unknown).",
    ["source", "status"],
)
CHANGE_REQUEST_DECISION = _histogram(
    "querybase_change_request_decision_seconds",
    "Time from a change request's creation to its decision (the completing approval, or a rejection).",
    ["source", "decision"],
    DECISION_BUCKETS,
)
EXECUTIONS = _counter(
    "querybase_change_request_executions",
    "Executions of approved change requests by outcome (succeeded, failed, unknown); "
    "recovered=yes when resolved by crash recovery.",
    ["source", "outcome", "recovered"],
)
EXECUTION_DURATION = _histogram(
    "querybase_change_request_execution_seconds",
    "Time to execute an approved change request on its source.",
    ["source"],
    EXECUTION_BUCKETS,
)
NOTIFICATIONS = _counter(
    "querybase_notification_deliveries",
    "Webhook delivery attempts by outcome (delivered, retrying, failed; dropped when the queue was full).",
    ["target", "outcome"],
)

# ------------------------------------------------------------------------------ other parts

CACHE_HITS = _counter(
    "querybase_classification_cache_hits",
    "Classification cache hits (level exact: by statement text; fingerprint: PostgreSQL's literal-free key).",
    ["protocol", "level"],
)
CACHE_MISSES = _counter(
    "querybase_classification_cache_misses",
    "Classification cache misses.",
    ["protocol", "level"],
)
CACHE_ENTRIES = _gauge(
    "querybase_classification_cache_entries", "Entries in the classification caches.", ["protocol", "level"]
)
AUDIT_QUEUE_DEPTH = _gauge(
    "querybase_audit_queue_depth",
    "Audit events waiting to be written to the store (set by the audit writer).",
)


# ------------------------------------------------------------------------- hot-path binding


@dataclass(frozen=True, slots=True)
class StatementMetrics:
    """Pre-bound children for one (protocol, source): what a session touches per statement.

    `counted[(kind, action)]` is the statements counter child; `duration[action]` the duration
    histogram child; `overhead` the (sampled) overhead histogram child.
    """

    counted: dict[tuple[Kind, Action], Counter]
    duration: dict[Action, Histogram]
    overhead: Histogram


_STATEMENT_METRICS: dict[tuple[str, str], StatementMetrics] = {}


def statement_metrics(protocol: str, source: str) -> StatementMetrics:
    """The pre-bound children for (protocol, source); built once per process and pair."""
    found = _STATEMENT_METRICS.get((protocol, source))
    if found is None:
        found = StatementMetrics(
            counted={
                (kind, action): STATEMENTS.labels(protocol, source, kind.value, action.value)
                for kind in Kind
                for action in Action
            },
            duration={action: STATEMENT_DURATION.labels(protocol, source, action.value) for action in Action},
            overhead=STATEMENT_OVERHEAD.labels(protocol),
        )
        _STATEMENT_METRICS[(protocol, source)] = found
    return found


def tls_label(on_tls: bool) -> str:
    return "yes" if on_tls else "no"


def login_failed(protocol: str, reason: str) -> None:
    """Count a refused login; `reason` is one of LOGIN_FAILURE_REASONS."""
    LOGIN_FAILURES.labels(protocol, reason).inc()


# --------------------------------------------------------------------------- scraped figures


@dataclass
class _CacheSync:
    protocol: str
    level: str
    hits: int = 0
    misses: int = 0


_cache_seen: dict[tuple[str, str], _CacheSync] = {}


def _cache_figures() -> list[tuple[str, str, int, int, int]]:
    """(protocol, level, hits, misses, entries) of every classification cache, read now."""
    figures = []
    for protocol, classifier in (
        ("postgresql", classify_cache.classify_pg_cached),
        ("mysql", classify_cache.classify_mysql_cached),
    ):
        info = classifier.cache_info()
        figures.append((protocol, "exact", info.hits, info.misses, info.currsize))
    for protocol, level in (
        ("postgresql", classify_cache.pg_fingerprint_level),
        ("mysql", classify_cache.mysql_fingerprint_level),
    ):
        figures.append((protocol, "fingerprint", level.hits, level.misses, len(level)))
    return figures


def sync() -> None:
    """Copy figures other components keep (classification caches) into the metrics.

    Counters advance by what changed since the last call in this process, so running it at every
    scrape and from a periodic task never counts anything twice.
    """
    for protocol, level, hits, misses, entries in _cache_figures():
        seen = _cache_seen.setdefault((protocol, level), _CacheSync(protocol, level))
        if hits < seen.hits or misses < seen.misses:  # the cache was cleared: start over
            seen.hits = seen.misses = 0
        if hits > seen.hits:
            CACHE_HITS.labels(protocol, level).inc(hits - seen.hits)
        if misses > seen.misses:
            CACHE_MISSES.labels(protocol, level).inc(misses - seen.misses)
        seen.hits, seen.misses = hits, misses
        CACHE_ENTRIES.labels(protocol, level).set(entries)


def exposition(extra: Iterable[Collector] = ()) -> bytes:
    """The text exposition of every metric (merged over all processes in multiprocess mode),
    plus the `extra` collectors (figures read at scrape time, e.g. from the store)."""
    sync()
    registry: CollectorRegistry
    if MULTIPROCESS:
        registry = CollectorRegistry(auto_describe=True)
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = CollectorRegistry(auto_describe=True)
        registry.register(_Forward(REGISTRY))
    for collector in extra:
        registry.register(collector)
    return prometheus_client.generate_latest(registry)


class _Forward(Collector):
    """Serve another registry's metrics from a scrape registry (so extras can be added per scrape)."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        return self._source.collect()


def mark_process_dead(pid: int) -> None:
    """Multiprocess mode: forget the `live*` gauges of a worker process that has exited."""
    if MULTIPROCESS:
        _mark_process_dead(pid, os.environ.get(MULTIPROC_ENV))  # type: ignore[no-untyped-call]


def metric_names() -> set[str]:
    """Every sample name QueryBase can expose (with _total, _bucket, _sum and _count forms)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        base = family.name
        if family.type == "counter":
            names.add(base + "_total")
        elif family.type == "histogram":
            names.update({base + "_bucket", base + "_sum", base + "_count"})
        else:
            names.add(base)
    names.update(SCRAPED_METRICS)
    return names


# Families produced at scrape time by admin_api/metrics.py (not in REGISTRY).
SCRAPED_METRICS = (
    "querybase_change_requests_current",
    "querybase_change_requests_oldest_pending_seconds",
)
