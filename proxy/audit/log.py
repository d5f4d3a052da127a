"""Audit log: append-only, hash-chained events in the store, their anchor, the verifier, and the
batching writer that takes high-volume events (logins, statement verdicts) off the hot path.

Theory of operation (docs/audit.md has the user-facing version):

* Chain. Each event's `hash` is SHA-256 over the canonical JSON of its fields (id, time, kind,
  actor, source, subject, payload) together with `prev_hash`, the previous event's hash (64 zeros
  for the first). Changing, inserting or reordering any event, or deleting one that has
  successors, breaks the chain at that event, and `verify()` names the first one that does not
  fit. Appends serialise on the store's write lock (SQLite) or an advisory lock (PostgreSQL).
* Anchor. Removing the newest events leaves a shorter chain that is still internally valid, so
  after every committed append the newest (id, hash) is also written to an `Anchor` file outside
  the store (fsynced, only ever moved forward). `verify()` reads the anchor first and then
  requires the chain to hold the anchored event with that hash: a chain cut short, or cut and
  re-grown with forged events, fails there. Someone who can write the anchor file as well as the
  store can still rewind both; the anchor guards against people with access to the store only.
* Who appends. Catalog changes and change-request transitions call `append()` inside their own
  transaction, so a change without its record cannot commit; the anchor moves after that commit.
  Logins and statement verdicts go through `AuditWriter.record()`, which only puts the event on a
  bounded queue; a background task appends queued events in batches, one transaction per batch,
  in queue order, and retries with backoff while the store refuses writes. `AuditWriter.healthy`
  is a plain attribute the sessions read on the statement path: False while the store refuses
  audit writes, the anchor cannot be written, or the queue is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

import structlog
from sqlalchemy import Connection, Engine, Table, event, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from policies.types import Action, Kind, Verdict
from proxy.errors import StoreError
from proxy.store.models import AuditEvent, utcnow

if TYPE_CHECKING:
    from proxy.config import Settings
    from proxy.store.db import Store

log = structlog.get_logger("querybase.audit")

AUDIT_TABLE = cast(Table, AuditEvent.__table__)
GENESIS_HASH = "0" * 64
_CHAIN_LOCK_ID = 0x51425F41  # "QB_A": serialises appends on a shared PostgreSQL store
ANCHOR_SUFFIX = ".audit-anchor"


def as_utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; QueryBase only ever stores UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def canonical_body(
    *,
    event_id: int,
    occurred_at: datetime,
    kind: str,
    actor: str | None,
    source: str | None,
    subject: str | None,
    payload: dict[str, Any],
    prev_hash: str,
) -> dict[str, Any]:
    return {
        "id": event_id,
        "occurred_at": as_utc(occurred_at).isoformat(timespec="microseconds"),
        "kind": kind,
        "actor": actor,
        "source": source,
        "subject": subject,
        "payload": payload,
        "prev_hash": prev_hash,
    }


def canonical_dumps(body: dict[str, Any]) -> str:
    """Sorted keys, no whitespace, UTF-8 as is: the one serialisation the hash is taken over."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(
    *,
    event_id: int,
    occurred_at: datetime,
    kind: str,
    actor: str | None,
    source: str | None,
    subject: str | None,
    payload: dict[str, Any],
    prev_hash: str,
) -> bytes:
    return canonical_dumps(
        canonical_body(
            event_id=event_id,
            occurred_at=occurred_at,
            kind=kind,
            actor=actor,
            source=source,
            subject=subject,
            payload=payload,
            prev_hash=prev_hash,
        )
    ).encode()


def event_body(event: AuditEvent) -> dict[str, Any]:
    return canonical_body(
        event_id=event.id,
        occurred_at=event.occurred_at,
        kind=event.kind,
        actor=event.actor,
        source=event.source,
        subject=event.subject,
        payload=event.payload,
        prev_hash=event.prev_hash,
    )


def event_hash(event: AuditEvent) -> str:
    return hashlib.sha256(canonical_dumps(event_body(event)).encode()).hexdigest()


def export_line(event: AuditEvent) -> str:
    """One event as a JSON Lines record: the hashed body plus `hash`, canonically serialised.

    A reader re-verifies a line by removing `hash`, serialising the rest the same way (sorted keys,
    no whitespace, UTF-8) and comparing SHA-256 of it with `hash`."""
    return canonical_dumps({**event_body(event), "hash": event.hash})


# ------------------------------------------------------------------------------------ anchor


class AnchorError(StoreError):
    """The anchor file cannot be read, parsed or written."""

    code = "audit_anchor"


@dataclass(frozen=True)
class AnchorRecord:
    event_id: int
    hash: str


_ANCHOR_FORMAT = "querybase-audit-anchor v1 id={:020d} hash={}\n"
_ANCHOR_LINE = re.compile(r"querybase-audit-anchor v1 id=([0-9]{20}) hash=([0-9a-f]{64})\n")
_ANCHOR_SIZE = len(_ANCHOR_FORMAT.format(0, GENESIS_HASH))


class Anchor:
    """The newest (id, hash) of the chain, in a file outside the store.

    One fixed-size record, rewritten in place with one `pwrite` and fsynced, under an exclusive
    `flock` so several writers (the batch writer, catalog transactions, a CLI process) never move
    it backwards: `advance()` only ever raises the id."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"Anchor({str(self.path)!r})"

    def read(self) -> AnchorRecord | None:
        """The anchored event, or None if the file does not exist (yet)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AnchorError(f"audit anchor {self.path}: cannot read it: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            return self._parse(os.pread(fd, _ANCHOR_SIZE + 1, 0))
        finally:
            os.close(fd)

    def advance(self, event_id: int, event_hash: str) -> bool:
        """Record (event_id, event_hash) unless the anchor already names this id or a later one.

        Returns whether the file changed. Raises AnchorError if it cannot be written or holds
        something that is not an anchor (never overwritten: it is evidence)."""
        created = not self.path.exists()
        try:
            if created:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AnchorError(f"audit anchor {self.path}: cannot write it: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            current = self._parse(os.pread(fd, _ANCHOR_SIZE + 1, 0))
            if current is not None and current.event_id >= event_id:
                return False
            record = _ANCHOR_FORMAT.format(event_id, event_hash).encode()
            os.pwrite(fd, record, 0)
            os.fsync(fd)
        except OSError as exc:
            raise AnchorError(f"audit anchor {self.path}: cannot write it: {exc.strerror}") from None
        finally:
            os.close(fd)
        if created:
            _fsync_dir(self.path.parent)
        return True

    def _parse(self, raw: bytes) -> AnchorRecord | None:
        if not raw:
            return None  # created by a writer that has not written its record yet
        match = _ANCHOR_LINE.fullmatch(raw.decode("ascii", "replace"))
        if match is None:
            raise AnchorError(f"audit anchor {self.path} is not an anchor record (damaged or replaced)")
        return AnchorRecord(int(match.group(1)), match.group(2))


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def anchor_path(settings: Settings) -> Path | None:
    """`audit.anchor_file`, else `<store file>.audit-anchor` for SQLite, else None (no anchor)."""
    if settings.audit.anchor_file is not None:
        return settings.audit.anchor_file
    prefix = "sqlite+aiosqlite:///"
    if settings.store.url.startswith(prefix):
        return Path(settings.store.url[len(prefix) :] + ANCHOR_SUFFIX)
    return None


# Direct appends (catalog, requests, tokens) only see an AsyncSession, so the anchor of a store is
# found through its engines. A weak map rather than an attribute: the Store class is not ours to
# extend, and a closed store's engines take their entry with them.
_ANCHORS: weakref.WeakKeyDictionary[Engine, Anchor] = weakref.WeakKeyDictionary()
_INFO_ANCHOR = "querybase.audit.anchor"
_INFO_HEAD = "querybase.audit.head"
_INFO_HOOKED = "querybase.audit.hooked"


def attach_anchor(store: Store, anchor: Anchor | None) -> None:
    """Make every `append()` through `store` advance `anchor` after its transaction commits."""
    for engine in {store.engine.sync_engine, store.write_engine.sync_engine}:
        if anchor is None:
            _ANCHORS.pop(engine, None)
        else:
            _ANCHORS[engine] = anchor


def configure_anchor(settings: Settings, store: Store) -> Anchor | None:
    """The anchor the settings name for this store, attached to it (None: the store has none)."""
    path = anchor_path(settings)
    anchor = Anchor(path) if path is not None else None
    attach_anchor(store, anchor)
    return anchor


def _session_anchor(session: AsyncSession) -> Anchor | None:
    bind = session.get_bind()
    engine = bind.engine if isinstance(bind, Connection) else bind
    return _ANCHORS.get(engine)


def _hook_anchor(session: AsyncSession, anchor: Anchor) -> None:
    info = session.info
    info[_INFO_ANCHOR] = anchor
    if info.get(_INFO_HOOKED):
        return
    info[_INFO_HOOKED] = True
    event.listen(session.sync_session, "before_commit", _capture_head)
    event.listen(session.sync_session, "after_commit", _advance_anchor)
    event.listen(session.sync_session, "after_rollback", _forget_head)


def _capture_head(sync_session: Session) -> None:
    # The head is read inside the transaction, under the chain lock: a savepoint that rolled back
    # an append can never leave an anchor naming an event that does not exist.
    if _INFO_ANCHOR not in sync_session.info:
        return
    row = sync_session.execute(
        select(AuditEvent.id, AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)
    ).first()
    if row is not None:
        sync_session.info[_INFO_HEAD] = (row.id, row.hash)


def _advance_anchor(sync_session: Session) -> None:
    anchor = sync_session.info.pop(_INFO_ANCHOR, None)
    head = sync_session.info.pop(_INFO_HEAD, None)
    if anchor is None or head is None:
        return
    try:
        anchor.advance(*head)
    except AnchorError as exc:
        # Committed already: the event is in the chain, only its tail protection lags.
        log.error("audit.anchor_failed", error=exc.message, event_id=head[0])


def _forget_head(sync_session: Session) -> None:
    sync_session.info.pop(_INFO_ANCHOR, None)
    sync_session.info.pop(_INFO_HEAD, None)


# ------------------------------------------------------------------------------------ append


async def _lock_chain(session: AsyncSession) -> tuple[int, str]:
    """Take the chain lock (PostgreSQL; SQLite writers hold the database write lock) and return
    the current head (0 and the genesis hash for an empty chain)."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CHAIN_LOCK_ID})
    last = (
        await session.execute(select(AuditEvent.id, AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1))
    ).first()
    return (last.id, last.hash) if last else (0, GENESIS_HASH)


async def append(
    session: AsyncSession,
    kind: str,
    *,
    actor: str | None,
    source: str | None = None,
    subject: str | None = None,
    payload: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add one event to the chain inside the caller's transaction; the store's anchor (if one is
    attached) moves to the new head once that transaction commits."""
    last_id, last_hash = await _lock_chain(session)
    event_ = AuditEvent(
        id=last_id + 1,
        occurred_at=utcnow(),
        kind=kind,
        actor=actor,
        source=source,
        subject=subject,
        payload=payload or {},
        prev_hash=last_hash,
    )
    event_.hash = event_hash(event_)
    session.add(event_)
    await session.flush()
    anchor = _session_anchor(session)
    if anchor is not None:
        _hook_anchor(session, anchor)
    return event_


class PendingEvent(NamedTuple):
    """An event accepted by `AuditWriter.record()`, not yet in the chain."""

    kind: str
    actor: str | None
    source: str | None
    subject: str | None
    payload: dict[str, Any] | None
    at: float  # time.time() when it was recorded


def _batch_rows(batch: list[PendingEvent], prev_id: int, prev_hash: str) -> list[dict[str, Any]]:
    """The chained rows of `batch` after (prev_id, prev_hash): plain dicts for one executemany.
    Pure CPU (canonical JSON and SHA-256 per event), so the writer runs it off the event loop."""
    rows = []
    for pending in batch:
        prev_id += 1
        occurred_at = datetime.fromtimestamp(pending.at, UTC)
        payload = pending.payload or {}
        fields: dict[str, Any] = {
            "event_id": prev_id,
            "occurred_at": occurred_at,
            "kind": pending.kind,
            "actor": pending.actor,
            "source": pending.source,
            "subject": pending.subject,
            "prev_hash": prev_hash,
        }
        try:
            body = canonical_json(payload=payload, **fields)
        except (TypeError, ValueError):
            # A caller's bug must not wedge the queue; the event is kept, its payload replaced.
            log.error("audit.unserialisable_payload", kind=pending.kind)
            payload = {"unserialisable_payload": repr(payload)[:2000]}
            body = canonical_json(payload=payload, **fields)
        digest = hashlib.sha256(body).hexdigest()
        rows.append(
            {
                "id": prev_id,
                "occurred_at": occurred_at,
                "kind": pending.kind,
                "actor": pending.actor,
                "source": pending.source,
                "subject": pending.subject,
                "payload": payload,
                "prev_hash": prev_hash,
                "hash": digest,
            }
        )
        prev_hash = digest
    return rows


async def append_batch(session: AsyncSession, batch: list[PendingEvent]) -> tuple[int, str]:
    """Append `batch` in order inside the caller's transaction; return the new head (id, hash).

    Unlike `append()`, this does not move the anchor: the caller does, after its commit."""
    prev_id, prev_hash = await _lock_chain(session)
    rows = await asyncio.to_thread(_batch_rows, batch, prev_id, prev_hash)
    await session.execute(insert(AUDIT_TABLE), rows)  # Core executemany, no ORM objects
    return rows[-1]["id"], rows[-1]["hash"]


def coalesce(batch: list[PendingEvent]) -> list[PendingEvent]:
    """Merge a batch's forwarded `statement` events that are the same statement of the same
    session (actor, source, connection, kind, text) into the first of them, with `count` and
    `last_at` (ISO time of the last one) in its payload. Every verdict stays in the record;
    repeated reads — prepared statements, ORM queries — cost one row per batch instead of one
    each. Deterministic: a retried batch coalesces the same way. Holds, denials, writes and every
    other kind are never merged."""
    out: list[PendingEvent] = []
    merged: dict[tuple[Any, ...], int] = {}
    counts: dict[int, tuple[int, float]] = {}
    for pending in batch:
        payload = pending.payload
        if pending.kind == "statement" and payload and payload.get("verdict") == "forward":
            key = (
                pending.actor,
                pending.source,
                pending.subject,
                payload.get("kind"),
                payload.get("statement"),
            )
            at = merged.get(key)
            if at is not None:
                count, _ = counts.get(at, (1, 0.0))
                counts[at] = (count + 1, pending.at)
                continue
            merged[key] = len(out)
        out.append(pending)
    for at, (count, last) in counts.items():
        first = out[at]
        payload = {**(first.payload or {}), "count": count, "last_at": _iso(last)}
        out[at] = first._replace(payload=payload)
    return out


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="microseconds")


async def _already_appended(session: AsyncSession, pending: PendingEvent) -> tuple[int, str] | None:
    """The stored copy of `pending`, if a commit that reported failure had in fact succeeded."""
    at = datetime.fromtimestamp(pending.at, UTC)
    rows = (
        await session.scalars(
            select(AuditEvent).where(AuditEvent.occurred_at == at, AuditEvent.kind == pending.kind)
        )
    ).all()
    for row in rows:
        if (row.actor, row.source, row.subject, row.payload) == (
            pending.actor,
            pending.source,
            pending.subject,
            pending.payload or {},
        ):
            return row.id, row.hash
    return None


# ------------------------------------------------------------------------------------ verify


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    events: int
    first_bad_id: int | None = None
    problem: str | None = None
    head_id: int | None = None
    anchor_file: str | None = None
    anchored_id: int | None = None
    note: str | None = None  # why the end of the chain was not checked against an anchor

    def describe(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.events} events" if self.events else "no events"
        if self.first_bad_id is None:
            return f"audit chain cannot be checked: {self.problem}"
        return f"audit chain broken at event #{self.first_bad_id}: {self.problem}"


async def iter_events(
    session: AsyncSession,
    batch: int = 1000,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> AsyncIterator[AuditEvent]:
    """Events in id order, `batch` rows per query (keyset paging: memory stays bounded);
    `since`/`until` keep those that occurred at or after / before the given moments."""
    last_id = 0
    while True:
        query = select(AuditEvent).where(AuditEvent.id > last_id)
        if since is not None:
            query = query.where(AuditEvent.occurred_at >= as_utc(since))
        if until is not None:
            query = query.where(AuditEvent.occurred_at < as_utc(until))
        rows = (await session.scalars(query.order_by(AuditEvent.id).limit(batch))).all()
        if not rows:
            return
        for row in rows:
            yield row
        last_id = rows[-1].id
        session.expunge_all()  # the identity map would otherwise keep every row of the walk


async def verify(
    session: AsyncSession, anchor: Anchor | None = None, *, no_anchor_reason: str | None = None
) -> VerifyResult:
    """Walk the chain in id order and report the first event that does not fit; then check the
    chain's end against `anchor` (read first, so events appended during the walk never look
    like a forged tail)."""
    anchored: AnchorRecord | None = None
    note = no_anchor_reason
    if anchor is not None:
        try:
            anchored = anchor.read()
        except AnchorError as exc:
            return VerifyResult(False, 0, None, exc.message, anchor_file=str(anchor.path))
        if anchored is None:
            note = f"no anchor file {anchor.path} yet: removal of the newest events cannot be detected"
    anchor_file = str(anchor.path) if anchor is not None else None
    anchored_id = anchored.event_id if anchored is not None else None

    def broken(event_id: int, problem: str) -> VerifyResult:
        return VerifyResult(False, count, event_id, problem, anchor_file=anchor_file, anchored_id=anchored_id)

    prev_hash, prev_id, count = GENESIS_HASH, 0, 0
    hash_at_anchor: str | None = None
    async for event_ in iter_events(session):
        count += 1
        if event_.id != prev_id + 1:
            return broken(event_.id, f"event(s) missing after #{prev_id}")
        if event_.prev_hash != prev_hash:
            return broken(event_.id, "previous-hash link broken (event deleted, inserted or reordered)")
        if event_hash(event_) != event_.hash:
            return broken(event_.id, "content does not match its hash (modified)")
        if anchored is not None and event_.id == anchored.event_id:
            hash_at_anchor = event_.hash
        prev_hash, prev_id = event_.hash, event_.id
    if anchored is not None:
        if prev_id < anchored.event_id:
            missing = (
                f"#{prev_id + 1}"
                if prev_id + 1 == anchored.event_id
                else f"#{prev_id + 1}..#{anchored.event_id}"
            )
            return broken(
                prev_id + 1,
                f"event(s) {missing} removed from the end of the chain "
                f"(the anchor {anchor_file} records #{anchored.event_id})",
            )
        if hash_at_anchor != anchored.hash:
            return broken(
                anchored.event_id,
                f"does not match the anchor {anchor_file} (the end of the chain was cut and rewritten "
                f"at or before this event)",
            )
    return VerifyResult(
        True,
        count,
        head_id=prev_id or None,
        anchor_file=anchor_file,
        anchored_id=anchored_id,
        note=note,
    )


async def verify_store(store: Store, settings: Settings) -> VerifyResult:
    """`verify()` of `store` against the anchor its settings name (the CLI and the admin API)."""
    path = anchor_path(settings)
    if path is None:
        reason = (
            "audit.anchor_file is not set: removal of the newest events from this PostgreSQL "
            "store cannot be detected"
        )
        async with store.session() as session:
            return await verify(session, no_anchor_reason=reason)
    async with store.session() as session:
        return await verify(session, Anchor(path))


# ------------------------------------------------------------------------------------ writer


class AuditUnavailable(StoreError):
    """The audit log cannot take events now, so actions that must be recorded are refused."""

    code = "audit_unavailable"


HealthHook = Callable[[bool, str | None], None]

RETRY_INITIAL = 0.1
RETRY_MAX = 5.0
WRITE_TIMEOUT = 30.0  # one batch transaction; longer counts as a failure and is retried
CLOSE_GRACE = 5.0


class AuditWriter:
    """Batches events from the hot path into the chain, off the hot path.

    Contract with the sessions: `healthy` is a plain attribute. If it was True when checked, a
    `record()` made before the next `await` is accepted (the queue turns the writer unhealthy when
    its last free slot is taken, not after), and an accepted event is written unless the process
    dies or `close()` gives up on an unreachable store (which logs how many were not written).
    `record()` on a full queue drops the event, counts it in `dropped` and logs an error; that
    happens only to callers that went on while unhealthy (reads under `on_failure = "allow"`).

    Backpressure: once the queue passes three quarters of its size, `congested` is True until it
    has drained to half; sessions then stop reading their clients (after the statement at hand)
    and wait for `room()`, so load beyond what the store can record slows clients down instead
    of filling the queue and refusing statements.
    """

    def __init__(
        self,
        store: Store,
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
        on_failure: Literal["block", "allow"] = "block",
        anchor: Anchor | None = None,
        on_health_change: HealthHook | None = None,
        retry_initial: float = RETRY_INITIAL,
        retry_max: float = RETRY_MAX,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.on_failure = on_failure
        self.anchor = anchor
        self.on_health_change = on_health_change
        self.healthy = True
        self.reason: str | None = None  # why not healthy
        self.congested = False  # the queue is filling faster than the store takes it: slow down
        self._high_water = max(1, queue_size * 3 // 4)
        self._low_water = queue_size // 2
        self._room = asyncio.Event()
        self._room.set()
        self.written = 0
        self.dropped = 0
        self._queue: asyncio.Queue[PendingEvent] = asyncio.Queue(queue_size)
        self._queue_size = queue_size
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._store_error: str | None = None
        self._anchor_error: str | None = None
        self._full = False
        self._closed = False
        self._stopping = False
        self._idle = False
        self._inflight = 0
        self._last_head: tuple[int, str] | None = None
        self._dropped_reported = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, store: Store, *, on_health_change: HealthHook | None = None
    ) -> AuditWriter:
        """A writer per the [audit] settings, with the store's anchor configured and attached."""
        return cls(
            store,
            queue_size=settings.audit.queue_size,
            batch_size=settings.audit.batch_size,
            on_failure=settings.audit.on_failure,
            anchor=configure_anchor(settings, store),
            on_health_change=on_health_change,
        )

    @property
    def depth(self) -> int:
        """Events accepted and not yet committed (queued plus the batch being written)."""
        return self._queue.qsize() + self._inflight

    # the hot path -----------------------------------------------------------------------------

    def record(
        self,
        kind: str,
        *,
        actor: str | None,
        source: str | None = None,
        subject: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> None:
        """Accept one event for the chain without waiting (see the class docstring)."""
        if self._closed:
            self._drop(kind)
            return
        try:
            self._queue.put_nowait(PendingEvent(kind, actor, source, subject, payload, time.time()))
        except asyncio.QueueFull:
            self._drop(kind)
            return
        if self._queue.full():
            self._full = True
            self._refresh_health()
        elif not self.congested and self._queue.qsize() >= self._high_water:
            self.congested = True
            self._room.clear()
            log.warning("audit.congested", queued=self._queue.qsize(), queue_size=self._queue_size)

    async def room(self) -> None:
        """Return once the writer is no longer congested (or at once if it is not)."""
        await self._room.wait()

    def _uncongest(self) -> None:
        if self.congested and (self._queue.qsize() <= self._low_water or self._closed):
            self.congested = False
            self._room.set()

    def admits(self, *, read: bool) -> bool:
        """May an action go ahead now? Writes, holds and approvals only while healthy; reads also
        while unhealthy when `audit.on_failure = "allow"`."""
        return self.healthy or (read and self.on_failure == "allow")

    def check(self, *, read: bool = False) -> None:
        """Raise AuditUnavailable, with the reason, unless `admits(read=read)`."""
        if not self.admits(read=read):
            what = "statements" if read else "writes and approvals"
            raise AuditUnavailable(
                f"audit log unavailable ({self.reason}): {what} are refused until it recovers"
            )

    def _drop(self, kind: str) -> None:
        self.dropped += 1
        if self.dropped == self._dropped_reported + 1:  # once per episode, not once per event
            log.error(
                "audit.event_dropped",
                kind=kind,
                reason="writer closed" if self._closed else "queue full",
                queue_size=self._queue_size,
            )

    # health -----------------------------------------------------------------------------------

    def _refresh_health(self) -> None:
        reason = (
            "writer closed"
            if self._closed
            else self._store_error
            or self._anchor_error
            or (f"audit queue full ({self._queue_size} events waiting)" if self._full else None)
        )
        healthy = reason is None
        self.reason = reason
        if healthy == self.healthy:
            return
        self.healthy = healthy
        if healthy:
            lost = self.dropped - self._dropped_reported
            self._dropped_reported = self.dropped
            log.info("audit.healthy", dropped_while_unhealthy=lost)
        else:
            log.error("audit.unhealthy", reason=reason)
        if self.on_health_change is not None:
            try:
                self.on_health_change(healthy, reason)
            except Exception:  # a hook's bug must not stop the writer
                log.exception("audit.health_hook_failed")

    # lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Anchor the current head if the anchor does not exist yet, then start writing."""
        if self._task is not None:
            return
        if self.anchor is not None:
            await self._check_anchor_at_start(self.anchor)
        self._task = asyncio.create_task(self._run(), name="audit-writer")
        self._task.add_done_callback(self._stopped)

    async def _check_anchor_at_start(self, anchor: Anchor) -> None:
        try:
            anchored = await asyncio.to_thread(anchor.read)
        except AnchorError as exc:
            self._anchor_error = exc.message
            self._refresh_health()
            return
        async with self.store.session() as session:
            head = (
                await session.execute(
                    select(AuditEvent.id, AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)
                )
            ).first()
        if anchored is None and head is not None:
            # Trust on first use: whatever the chain held before the anchor existed is unanchored.
            await self._advance(head.id, head.hash)
            log.warning("audit.anchor_created", anchor=str(anchor.path), event_id=head.id)
        elif anchored is not None and (head is None or head.id < anchored.event_id):
            log.error(
                "audit.chain_shorter_than_anchor",
                anchor=str(anchor.path),
                anchored_id=anchored.event_id,
                head_id=head.id if head is not None else 0,
            )

    def _stopped(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("audit.writer_crashed", error=repr(task.exception()))
            self._closed = True
            self._refresh_health()
            self._uncongest()

    async def flush(self, timeout: float) -> bool:  # noqa: ASYNC109 - the budget is the API
        """Wait until every event accepted so far is committed; False if `timeout` passed first."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float) -> None:  # noqa: ASYNC109 - the budget is the API
        """Flush (up to `timeout`), then stop. Events still unwritten are logged as an error."""
        if self._closed and self._task is None:
            return
        drained = await self.flush(timeout) if self._task is not None else self._queue.empty()
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None and not task.done():
            if self._idle:
                task.cancel()  # waiting for the queue: nothing in flight
            done, _ = await asyncio.wait({task}, timeout=CLOSE_GRACE)
            if not done:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        left = self.depth
        if left or not drained:
            log.error("audit.events_not_written", count=left, reason=self._store_error or self._anchor_error)
        # Closed is not a failure worth an error line: later record() calls are dropped and logged.
        self._closed = True
        self.healthy, self.reason = False, "writer closed"
        self._uncongest()  # nobody may wait for room that will never come

    # the background task ----------------------------------------------------------------------

    async def _run(self) -> None:
        batch: list[PendingEvent] = []
        delay = self._retry_initial
        failed_before = False
        while True:
            if not batch:
                if self._stopping and self._queue.empty():
                    return
                first = await self._next_event(delay)
                if first is None:  # waited with the anchor behind: retry it, then wait again
                    if self._last_head is not None:
                        await self._advance(*self._last_head)
                    self._refresh_health()
                    delay = (
                        self._retry_initial if self._anchor_error is None else min(delay * 2, self._retry_max)
                    )
                    continue
                batch = [first]
                while len(batch) < self.batch_size:
                    try:
                        batch.append(self._queue.get_nowait())
                    except asyncio.QueueEmpty:
                        break
                self._inflight = len(batch)
                failed_before = False
            try:
                head = await asyncio.wait_for(self._commit(batch, failed_before), WRITE_TIMEOUT)
            except Exception as exc:  # whatever refused the write, the batch stays
                failed_before = True
                if self._store_error is None:
                    log.error("audit.write_failed", error=_first_line(exc), events=len(batch))
                self._store_error = f"store {self.store.safe_url} refuses audit writes: {_first_line(exc)}"
                self._refresh_health()
                if self._stopping:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                delay = min(delay * 2, self._retry_max)
                continue
            self.written += len(batch)
            self._store_error = None
            delay = self._retry_initial
            if head is not None:
                self._last_head = head
                await self._advance(*head)
            if self._full and self._queue.qsize() <= self._queue_size // 2:
                self._full = False
            self._uncongest()
            self._refresh_health()
            self._inflight = 0
            for _ in batch:
                self._queue.task_done()
            batch = []

    async def _next_event(self, retry_after: float) -> PendingEvent | None:
        """The next queued event; None after `retry_after` seconds if the anchor is behind."""
        self._idle = True
        try:
            if self._anchor_error is None:
                return await self._queue.get()
            try:
                return await asyncio.wait_for(self._queue.get(), retry_after)
            except TimeoutError:
                return None
        finally:
            self._idle = False

    async def _commit(self, batch: list[PendingEvent], failed_before: bool) -> tuple[int, str] | None:
        rows = coalesce(batch)
        async with self.store.write_session() as session, session.begin():
            if failed_before:
                # The last attempt may have committed and only lost its answer: never append twice.
                done = await _already_appended(session, rows[-1])
                if done is not None:
                    return done
            return await append_batch(session, rows)

    async def _advance(self, event_id: int, event_hash: str) -> None:
        if self.anchor is None:
            return
        try:
            await asyncio.to_thread(self.anchor.advance, event_id, event_hash)
        except AnchorError as exc:
            if self._anchor_error is None:
                log.error("audit.anchor_failed", error=exc.message, event_id=event_id)
            self._anchor_error = exc.message
        else:
            self._anchor_error = None


def _first_line(exc: BaseException) -> str:
    text_ = str(getattr(exc, "orig", None) or exc).strip()
    return text_.splitlines()[0] if text_ else type(exc).__name__


# what the wire sessions record ------------------------------------------------------------------

MAX_AUDITED_TEXT = 4096  # statement text kept per event; longer text is cut (with its length noted)
_READ_KINDS = frozenset({Kind.READ, Kind.TRANSACTION, Kind.SESSION})


def audit_statement(
    writer: AuditWriter | None,
    *,
    protocol: str,
    user: str,
    source: str,
    connection: str,
    verdict: Verdict,
    text: str,
    record: bool = True,
) -> str | None:
    """Record one statement verdict from a wire session. Returns why the statement must be refused
    instead, when the audit log cannot take it: reads (forwarded read/transaction/session
    statements) only under `on_failure = "block"`; writes, holds and denials always."""
    if writer is None:
        return None
    if not writer.healthy:
        read = verdict.action is Action.FORWARD and verdict.kind in _READ_KINDS
        if not writer.admits(read=read):
            what = "statements" if read else "writes"
            return f"audit log unavailable ({writer.reason}): {what} are refused until it recovers"
    if record:
        payload: dict[str, Any] = {
            "protocol": protocol,
            "kind": verdict.kind.value,
            "verdict": verdict.action.value,
            "statement": text[:MAX_AUDITED_TEXT],
        }
        if len(text) > MAX_AUDITED_TEXT:
            payload["statement_length"] = len(text)
        writer.record("statement", actor=user, source=source, subject=connection, payload=payload)
    return None


def audit_login(
    writer: AuditWriter | None,
    *,
    protocol: str,
    user: str,
    client: str,
    source: str | None = None,
    failure: str | None = None,
) -> None:
    """Record a wire login: `login.succeeded`, or `login.failed` with the reason (never a secret)."""
    if writer is None:
        return
    payload: dict[str, Any] = {"protocol": protocol, "client": client}
    if failure is not None:
        payload["reason"] = failure
    kind = "login.failed" if failure is not None else "login.succeeded"
    writer.record(kind, actor=user or None, source=source, subject=client, payload=payload)


# configuration ----------------------------------------------------------------------------------


def settings_fingerprint(settings: Any) -> dict[str, str]:
    """`section.key` → SHA-256 of its value, for every setting. Hashes, never values: the store
    URL or a webhook URL may hold a secret, and the audit log must not."""
    flat: dict[str, str] = {}
    for section, body in settings.model_dump(mode="json").items():
        for key, value in (body or {}).items():
            canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            flat[f"{section}.{key}"] = hashlib.sha256(canonical.encode()).hexdigest()
    return flat


async def record_configuration(
    session: AsyncSession, settings: Any, *, config_path: str
) -> AuditEvent | None:
    """Append `config.changed` when the settings differ from those of the last recorded start (or
    none was recorded), naming the keys that changed; nothing when they are the same."""
    current = settings_fingerprint(settings)
    previous_event = await session.scalar(
        select(AuditEvent).where(AuditEvent.kind == "config.changed").order_by(AuditEvent.id.desc()).limit(1)
    )
    previous: dict[str, str] = (
        previous_event.payload.get("settings", {}) if previous_event is not None else {}
    )
    changed = sorted(k for k in current.keys() | previous.keys() if current.get(k) != previous.get(k))
    if not changed:
        return None
    return await append(
        session,
        "config.changed",
        actor=None,
        subject=config_path,
        payload={"changed": changed, "settings": current, "first": previous_event is None},
    )
