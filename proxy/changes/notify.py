"""Webhook notifications for change-request events: one bounded queue and one worker per target.

Theory of operation (DESIGN.md §4). The statement path calls `Notifier.publish()`, which is
synchronous and only appends to in-memory queues: it never awaits, never touches the network or
the store, and never raises. Each configured `WebhookTarget` owns a bounded queue and one worker
task, so a target that hangs or refuses connections delays only its own notifications. When a
queue is full the oldest event is dropped (and logged): fresh news beats stale news.

A worker renders the event for its target's kind (generic JSON, a Slack incoming webhook, a
Google Chat webhook) and POSTs it. 2xx is delivered; connection errors, timeouts, 429 and 5xx are
retried with exponential backoff (429's `Retry-After` honoured when it is a small number of
seconds); any other status fails at once. Every attempt becomes a `NotificationDelivery` row when
a store is given; failing to record is logged, never raised.

Every attempt is also counted in `querybase_notification_deliveries_total{target, outcome}`
(delivered, retrying, failed; `dropped` for events pushed out of a full queue).

Webhook URLs carry secrets (Slack and Google Chat put the credential in the path), so logs and
recorded errors name the target, never its URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog

from proxy.config import NOTIFY_EVENTS, NotifySettings, WebhookTarget
from proxy.observe import metrics
from proxy.store.db import Store
from proxy.store.models import NotificationDelivery

log = structlog.get_logger("querybase.notify")

EVENTS = NOTIFY_EVENTS  # config validates targets' `events` filters against the same names

DELIVERED = "delivered"
RETRYING = "retrying"
FAILED = "failed"

STATEMENT_LIMIT = 2500  # characters of the statement shown in Slack and Google Chat messages
RETRY_AFTER_CAP = 60.0  # a 429's Retry-After is honoured up to this many seconds
BACKOFF_CAP = 300.0  # no wait between attempts is longer than this
_ERROR_LIMIT = 500  # characters of an error kept in a delivery row
_FIELD_LIMIT = 200  # characters of one field value in a chat message
_USER_AGENT = "QueryBase-notify/1"

_SUMMARY_VERBS = {
    "created": "created",
    "approved": "approved",
    "rejected": "rejected",
    "cancelled": "cancelled",
    "executed": "executed",
    "failed": "failed",
    "expired": "expired",
    "unknown": "has an unknown outcome",
}


@dataclass(frozen=True)
class _Job:
    event: str
    request: dict[str, Any]
    delivery_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def request_id(self) -> int | None:
        rid = self.request.get("id")
        return rid if isinstance(rid, int) and not isinstance(rid, bool) else None


@dataclass(frozen=True)
class _Attempt:
    status: int | None
    error: str | None
    retryable: bool
    delivered: bool = False
    retry_after: float | None = None


@dataclass
class _Lane:
    """One target's queue and worker, and the job its worker holds (for shutdown accounting)."""

    target: WebhookTarget
    queue: asyncio.Queue[_Job]
    worker: asyncio.Task[None] | None = None
    current: _Job | None = None
    attempt: int = 0
    dropped: int = 0


class _HideTargetUrls(logging.Filter):
    """Drop httpx's own INFO line ('HTTP Request: POST <url> ...') for our targets' secret URLs."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__()
        self.urls = urls

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        return not any(url in message for url in self.urls)


class Notifier:
    """Fan change-request events out to the configured webhook targets, off the statement path."""

    def __init__(
        self,
        settings: NotifySettings,
        store: Store | None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._transport = transport
        self._lanes = [_Lane(t, asyncio.Queue(maxsize=settings.queue_size)) for t in settings.targets]
        self._client: httpx.AsyncClient | None = None
        self._url_filter: _HideTargetUrls | None = None
        self._closed = False

    @property
    def dropped(self) -> dict[str, int]:
        """Events dropped per target because its queue was full."""
        return {lane.target.name: lane.dropped for lane in self._lanes}

    async def start(self) -> None:
        """Start one worker task per target; a no-op with no targets or when already started."""
        if not self._lanes or self._client is not None or self._closed:
            return
        urls = [lane.target.url for lane in self._lanes]
        self._url_filter = _HideTargetUrls([*urls, *(str(httpx.URL(url)) for url in urls)])
        logging.getLogger("httpx").addFilter(self._url_filter)
        timeout = httpx.Timeout(self._settings.timeout_seconds)
        self._client = httpx.AsyncClient(
            transport=self._transport,
            timeout=timeout,
            follow_redirects=False,
            headers={"User-Agent": _USER_AGENT},
        )
        for lane in self._lanes:
            lane.worker = asyncio.create_task(self._work(lane), name=f"notify:{lane.target.name}")

    def publish(self, event: str, request: dict[str, Any]) -> None:
        """Queue `event` for every target that wants it. Synchronous; never blocks, never raises.

        Call it from the event loop's thread. The request dict is copied (as JSON) now, so the
        caller may reuse it.
        """
        try:
            self._publish(event, request)
        except Exception:
            with contextlib.suppress(Exception):
                log.exception("notify.publish_error", notify_event=repr(event)[:64])

    def _publish(self, event: str, request: dict[str, Any]) -> None:
        if not self._lanes:
            return
        if self._closed:
            log.warning("notify.closed", notify_event=event, request_id=_safe_id(request))
            return
        if event not in EVENTS:
            log.warning("notify.unknown_event", notify_event=repr(event)[:64], request_id=_safe_id(request))
            return
        job = _Job(event, _snapshot(request))
        for lane in self._lanes:
            wanted = lane.target.events
            if wanted is not None and event not in wanted:
                continue
            if lane.queue.full():
                oldest = lane.queue.get_nowait()
                lane.queue.task_done()
                lane.dropped += 1
                metrics.NOTIFICATIONS.labels(lane.target.name, "dropped").inc()
                log.warning(
                    "notify.queue_full_dropped_oldest",
                    target=lane.target.name,
                    request_id=oldest.request_id,
                    notify_event=oldest.event,
                    queue_size=lane.queue.maxsize,
                )
            lane.queue.put_nowait(job)

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - the budget is the API
        """Deliver what is queued for up to `timeout` seconds, then cancel the workers.

        Events still queued or in flight at the deadline are recorded as failed (attempt 0 if
        never tried) and logged. Later `publish()` calls are ignored.
        """
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        # Keep a slice of the budget for cancelling and for recording what was left behind.
        reserve = min(0.5, max(timeout, 0.0) / 4)
        workers = [lane.worker for lane in self._lanes if lane.worker is not None]
        joins = [asyncio.create_task(lane.queue.join()) for lane in self._lanes if lane.worker is not None]
        try:
            if joins:
                await asyncio.wait(joins, timeout=max(deadline - reserve - loop.time(), 0.0))
        finally:
            for task in (*joins, *workers):
                task.cancel()
            await asyncio.gather(*joins, *workers, return_exceptions=True)
            await self._close_client()
            leftover = self._leftovers()
            for lane, job, _ in leftover:
                log.warning(
                    "notify.dropped_at_close",
                    target=lane.target.name,
                    request_id=job.request_id,
                    notify_event=job.event,
                )
            for lane, _, _ in leftover:
                metrics.NOTIFICATIONS.labels(lane.target.name, FAILED).inc()
            if leftover:
                rows = [
                    _row(lane, job, n, FAILED, None, "not delivered: notifier closed")
                    for lane, job, n in leftover
                ]
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(deadline - loop.time(), 0.05)):
                        await self._record_many(rows)

    def _leftovers(self) -> list[tuple[_Lane, _Job, int]]:
        """Jobs not finished: each lane's in-flight job (at the attempt it reached) and its queue."""
        leftover: list[tuple[_Lane, _Job, int]] = []
        for lane in self._lanes:
            if lane.current is not None:
                leftover.append((lane, lane.current, lane.attempt))
                lane.current = None
            while not lane.queue.empty():
                leftover.append((lane, lane.queue.get_nowait(), 0))
                lane.queue.task_done()
            lane.worker = None
        return leftover

    async def _close_client(self) -> None:
        if self._url_filter is not None:
            logging.getLogger("httpx").removeFilter(self._url_filter)
            self._url_filter = None
        if self._client is not None:
            client, self._client = self._client, None
            try:
                await client.aclose()
            except Exception:
                log.exception("notify.client_close_error")

    # worker -------------------------------------------------------------------------------------

    async def _work(self, lane: _Lane) -> None:
        while True:
            job = await lane.queue.get()
            lane.current, lane.attempt = job, 0
            try:
                await self._deliver(lane, job)
            except asyncio.CancelledError:
                raise  # close() accounts for lane.current
            except Exception:
                # A bug here must cost one notification, not the target's worker.
                log.exception("notify.worker_error", target=lane.target.name, request_id=job.request_id)
            lane.current = None
            lane.queue.task_done()

    async def _deliver(self, lane: _Lane, job: _Job) -> None:
        target = lane.target
        attempts = self._settings.max_attempts
        for attempt in range(1, attempts + 1):
            lane.attempt = attempt
            result = await self._post(target, job)
            if result.delivered:
                await self._record(lane, job, attempt, DELIVERED, result.status, None)
                log.info(
                    "notify.delivered",
                    target=target.name,
                    request_id=job.request_id,
                    notify_event=job.event,
                    attempt=attempt,
                )
                return
            if not result.retryable or attempt == attempts:
                await self._record(lane, job, attempt, FAILED, result.status, result.error)
                log.warning(
                    "notify.failed",
                    target=target.name,
                    request_id=job.request_id,
                    notify_event=job.event,
                    attempt=attempt,
                    http_status=result.status,
                    error=result.error,
                )
                return
            delay = min(self._settings.backoff_seconds * 2 ** (attempt - 1), BACKOFF_CAP)
            if result.retry_after is not None:
                delay = result.retry_after
            await self._record(lane, job, attempt, RETRYING, result.status, result.error)
            log.info(
                "notify.retrying",
                target=target.name,
                request_id=job.request_id,
                notify_event=job.event,
                attempt=attempt,
                http_status=result.status,
                error=result.error,
                delay_seconds=round(delay, 3),
            )
            await asyncio.sleep(delay)

    async def _post(self, target: WebhookTarget, job: _Job) -> _Attempt:
        """One POST of the rendered event; never raises (but for cancellation)."""
        client = self._client
        if client is None:
            return _Attempt(None, "notifier is not started", retryable=False)
        try:
            content = json.dumps(render(target.kind, job.event, job.request), allow_nan=False)
        except Exception as exc:
            error = f"cannot render the {target.kind} payload: {_describe(exc, target.url)}"
            return _Attempt(None, error, retryable=False)
        headers = {
            "Content-Type": "application/json",
            "X-QueryBase-Event": job.event,
            "X-QueryBase-Delivery": job.delivery_id,  # the same on every attempt: receivers may dedupe
        }
        try:
            # httpx's timeout bounds each phase; this bounds the whole attempt (a slow drip too).
            async with asyncio.timeout(self._settings.timeout_seconds):
                response = await client.post(target.url, content=content, headers=headers)
        except TimeoutError:
            return _Attempt(None, f"timed out after {self._settings.timeout_seconds:g} s", retryable=True)
        except httpx.TransportError as exc:  # connect/read/write errors and httpx's own timeouts
            return _Attempt(None, _describe(exc, target.url), retryable=True)
        except Exception as exc:
            return _Attempt(None, _describe(exc, target.url), retryable=False)
        status = response.status_code
        if 200 <= status < 300:
            return _Attempt(status, None, retryable=False, delivered=True)
        snippet = " ".join(response.text[:200].split())
        error = _clip(_scrub(f"HTTP {status}" + (f": {snippet}" if snippet else ""), target.url))
        if status == 429:
            return _Attempt(status, error, retryable=True, retry_after=_retry_after(response.headers))
        return _Attempt(status, error, retryable=status >= 500)

    # recording ----------------------------------------------------------------------------------

    async def _record(
        self, lane: _Lane, job: _Job, attempt: int, outcome: str, status: int | None, error: str | None
    ) -> None:
        metrics.NOTIFICATIONS.labels(lane.target.name, outcome).inc()
        await self._record_many([_row(lane, job, attempt, outcome, status, error)])

    async def _record_many(self, rows: list[NotificationDelivery]) -> None:
        if self._store is None or not rows:
            return
        try:
            async with self._store.write_session() as session, session.begin():
                session.add_all(rows)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "notify.record_failed",
                targets=sorted({r.target for r in rows}),
                request_ids=sorted({r.request_id for r in rows if r.request_id is not None}),
                error=_clip(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"),
            )


# payloads -----------------------------------------------------------------------------------------


def render(kind: str, event: str, request: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body for one event sent to a target of `kind` (json, slack, google_chat)."""
    renderer = _RENDERERS.get(kind)
    if renderer is None:
        raise ValueError(f"unknown webhook kind {kind!r}")
    return renderer(event, request)


def summary(event: str, request: Mapping[str, Any]) -> str:
    """One line, e.g. 'QueryBase request #12 on shop approved by bob (1/1 approvals)'."""
    line = f"QueryBase request #{_text(request.get('id'))} on {_text(request.get('source'))}"
    line += f" {_SUMMARY_VERBS.get(event, event)}"
    actor = request.get("actor")
    if actor:
        line += f" by {_text(actor)}"
    if event == "approved" and _approvals(request) is not None:
        line += f" ({_approvals(request)} approvals)"
    rows = request.get("rows_affected")
    if event == "executed" and rows is not None:
        line += f", {_text(rows)} row{'' if rows == 1 else 's'} affected"
    error = request.get("error")
    if event == "failed" and error:
        line += f": {_first_line(_text(error), _FIELD_LIMIT)}"
    return line


def _render_json(event: str, request: Mapping[str, Any]) -> dict[str, Any]:
    return {"event": event, "request": dict(request), "sent_at": _now_iso()}


def _fields(event: str, request: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs shown by the chat renderers, in order; absent values left out."""
    pairs = [
        ("Source", request.get("source")),
        ("Requester", request.get("requester")),
        ("Status", request.get("status")),
        ("Kind", request.get("kind")),
        ("Approvals", _approvals(request)),
        ("By", request.get("actor")),
        ("Rows affected", request.get("rows_affected")),
        ("Created", request.get("created_at")),
    ]
    return [(label, _first_line(_text(value), _FIELD_LIMIT)) for label, value in pairs if value is not None]


def _statement(request: Mapping[str, Any]) -> str:
    text = _text(request.get("statement"))
    return text if len(text) <= STATEMENT_LIMIT else text[: STATEMENT_LIMIT - 1] + "…"


def _render_slack(event: str, request: Mapping[str, Any]) -> dict[str, Any]:
    # https://api.slack.com/messaging/webhooks and Block Kit: section text ≤ 3000 characters,
    # ≤ 10 fields of ≤ 2000 characters each; mrkdwn needs &, < and > escaped.
    headline = _slack_escape(summary(event, request))
    url = request.get("url")
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        headline = f"<{_slack_escape(url)}|{headline}>"
    # Escape first, then cut: escaping can make the text five times longer.
    statement = _slack_escape(_text(request.get("statement")).replace("```", "`\u200b``"), STATEMENT_LIMIT)
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{headline}*"}},
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": f"```{statement}```" if statement else "_(no statement)_"},
            "fields": [
                {"type": "mrkdwn", "text": f"*{label}*\n{_slack_escape(value)}"}
                for label, value in _fields(event, request)[:10]
            ],
        },
    ]
    notes = _notes(request)
    if notes:
        blocks.append(
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": f"*{label}:* {_slack_escape(value, 2000)}"}
                    for label, value in notes
                ],
            }
        )
    return {"text": _slack_escape(summary(event, request)), "blocks": blocks}


def _render_google_chat(event: str, request: Mapping[str, Any]) -> dict[str, Any]:
    # https://developers.google.com/workspace/chat/api/reference/rest/v1/cards — card text takes a
    # small HTML subset (<b>, <i>, <a href>, <br>, <font>), so values are HTML-escaped.
    widgets: list[dict[str, Any]] = [
        {"decoratedText": {"topLabel": label, "text": _chat_html(value)}}
        for label, value in _fields(event, request)
    ]
    sections: list[dict[str, Any]] = [{"widgets": widgets}] if widgets else []
    statement = _statement(request)
    if statement:
        sections.append(
            {
                "header": "Statement",
                "widgets": [{"textParagraph": {"text": _chat_html(statement)}}],
            }
        )
    notes = _notes(request)
    if notes:
        sections.append(
            {
                "widgets": [
                    {"decoratedText": {"topLabel": label, "text": _chat_html(value), "wrapText": True}}
                    for label, value in notes
                ]
            }
        )
    url = request.get("url")
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        sections.append(
            {
                "widgets": [
                    {
                        "buttonList": {
                            "buttons": [{"text": "Open request", "onClick": {"openLink": {"url": url}}}]
                        }
                    }
                ]
            }
        )
    card: dict[str, Any] = {
        "header": {
            "title": f"QueryBase request #{_text(request.get('id'))}",
            "subtitle": f"{_text(request.get('source'))}: {_SUMMARY_VERBS.get(event, event)}",
        },
        "sections": sections,
    }
    return {
        "text": summary(event, request),
        "cardsV2": [{"cardId": f"querybase-{_text(request.get('id'))}-{event}", "card": card}],
    }


_RENDERERS = {"json": _render_json, "slack": _render_slack, "google_chat": _render_google_chat}


def _approvals(request: Mapping[str, Any]) -> str | None:
    if request.get("approvals") is None:
        return None
    return f"{_text(request.get('approvals'))}/{_text(request.get('approvals_required'))}"


def _notes(request: Mapping[str, Any]) -> list[tuple[str, str]]:
    notes = []
    for label, key in (("Comment", "comment"), ("Error", "error")):
        value = request.get(key)
        if value:
            notes.append((label, _clip(_text(value), _FIELD_LIMIT * 5)))
    return notes


# helpers ------------------------------------------------------------------------------------------


def _snapshot(request: Any) -> dict[str, Any]:
    """A JSON-safe deep copy of the caller's dict (odd values become strings)."""
    if not isinstance(request, Mapping):
        return {"value": _text(request)}
    try:
        copied = json.loads(json.dumps(dict(request), default=str, allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        copied = {str(k): _text(v) for k, v in request.items()}
    return copied if isinstance(copied, dict) else {"value": _text(copied)}


def _safe_id(request: Any) -> Any:
    try:
        rid = request.get("id") if isinstance(request, Mapping) else None
    except Exception:
        return None
    return rid if isinstance(rid, int | str) else None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__}>"


def _first_line(text: str, limit: int) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return _clip(line, limit)


def _clip(text: str, limit: int = _ERROR_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


_SLACK_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _chat_html(text: str) -> str:
    """Text for a Google Chat card: its HTML subset, so escape <, > and & and keep line breaks."""
    return html.escape(text, quote=False).replace("\n", "<br>")


def _slack_escape(text: str, limit: int | None = None) -> str:
    """Escape for Slack mrkdwn; with `limit`, cut (never inside an entity) to at most limit + 1 chars."""
    if limit is None:
        return "".join(_SLACK_ESCAPES.get(ch, ch) for ch in text)
    out: list[str] = []
    size = 0
    for ch in text:
        piece = _SLACK_ESCAPES.get(ch, ch)
        if size + len(piece) > limit:
            out.append("…")
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


def _scrub(text: str, url: str) -> str:
    return text.replace(url, "<webhook url>")


def _describe(exc: BaseException, url: str) -> str:
    detail = str(exc)
    return _clip(_scrub(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__, url))


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds from a Retry-After header, when it is a plain number; capped at RETRY_AFTER_CAP."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP-date, or garbage: fall back to our own backoff
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, RETRY_AFTER_CAP)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _row(
    lane: _Lane, job: _Job, attempt: int, outcome: str, status: int | None, error: str | None
) -> NotificationDelivery:
    return NotificationDelivery(
        request_id=job.request_id,
        event=job.event,
        target=lane.target.name,
        attempt=attempt,
        outcome=outcome,
        http_status=status,
        error=error,
    )


__all__ = ["EVENTS", "Notifier", "render", "summary"]
