"""GET /metrics: the Prometheus exposition of proxy.observe.metrics, plus change-request figures read
from the store.

Served at the root of the admin listener (not under /api/v1) and without authentication, like
/healthz: Prometheus scrapes it. Bind the admin listener to an address only your monitoring can
reach. Change requests open now (by source and status) and the age of the oldest pending one
come from the store at every scrape, so they are right however many processes share the store;
if the store cannot answer, those two families are left out and the rest is served.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import structlog
from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from admin_api.audit import EXTRA as AUDIT_EXTRA
from admin_api.deps import Ctx
from proxy.audit.log import AuditWriter, as_utc
from proxy.observe import metrics
from proxy.store.db import Store
from proxy.store.models import ChangeRequest, RequestStatus, Source, utcnow

log = structlog.get_logger("querybase.admin.metrics")

router = APIRouter(tags=["health"])

OPEN_STATUSES = (RequestStatus.PENDING, RequestStatus.APPROVED, RequestStatus.EXECUTING)


class _StoreFigures(Collector):
    """One scrape's change-request figures (already read) as gauge families."""

    def __init__(
        self, counts: dict[tuple[str, str], int], oldest: dict[str, datetime], now: datetime
    ) -> None:
        self.counts, self.oldest, self.now = counts, oldest, now

    def collect(self) -> Iterable[Metric]:
        current = GaugeMetricFamily(
            "querybase_change_requests_current",
            "Change requests open now (pending, approved, executing), by source, from the store.",
            labels=["source", "status"],
        )
        for (source, status), count in sorted(self.counts.items()):
            current.add_metric([source, status], count)
        oldest = GaugeMetricFamily(
            "querybase_change_requests_oldest_pending_seconds",
            "Age of the oldest pending change request, by source (absent when none is pending).",
            labels=["source"],
        )
        for source, created in sorted(self.oldest.items()):
            oldest.add_metric([source], max((self.now - created).total_seconds(), 0.0))
        return [current, oldest]


async def store_figures(store: Store) -> _StoreFigures:
    """Read the open change requests per source and status, and the oldest pending per source."""
    counts: dict[tuple[str, str], int] = {}
    oldest: dict[str, datetime] = {}
    async with store.session() as session:
        rows = await session.execute(
            select(Source.name, ChangeRequest.status, func.count(), func.min(ChangeRequest.created_at))
            .join(Source, Source.id == ChangeRequest.source_id)
            .where(ChangeRequest.status.in_(OPEN_STATUSES))
            .group_by(Source.name, ChangeRequest.status)
        )
        for name, status, count, first in rows.all():
            counts[(name, status.value)] = count
            if status is RequestStatus.PENDING and first is not None:
                oldest[name] = as_utc(first)
        sources = await session.execute(select(Source.name))
        for (name,) in sources.all():  # zero rather than absent, so alerts see the series
            for status in OPEN_STATUSES:
                counts.setdefault((name, status.value), 0)
    return _StoreFigures(counts, oldest, utcnow())


@router.get("/metrics", response_class=Response, summary="Prometheus metrics (text exposition format)")
async def prometheus_metrics(ctx: Ctx) -> Response:
    writer = ctx.extras.get(AUDIT_EXTRA)
    if isinstance(writer, AuditWriter):
        metrics.AUDIT_QUEUE_DEPTH.set(writer.depth)
    extra: list[Collector] = []
    try:
        extra.append(await store_figures(ctx.store))
    except Exception as exc:
        log.warning("metrics_store_unavailable", error=f"{type(exc).__name__}: {str(exc)[:200]}")
    return Response(metrics.exposition(extra), media_type=metrics.CONTENT_TYPE)
