"""What both protocols' client sessions share: flow control to and from the upstream, task
bookkeeping, waiting for a held statement's decision, giving the upstream back.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from policies.types import Kind, Level, SourcePolicy
from proxy.observe.sessions import IDLE, WAITING, LiveSession
from proxy.upstream.base import RelayUpstream
from proxy.upstream.pool import Pool

if TYPE_CHECKING:
    from proxy.audit.log import AuditWriter
    from proxy.changes.service import ChangeService, Waited


class RelaySession(asyncio.BaseProtocol):
    """Flow control and task bookkeeping for a client session relaying to one upstream.

    Subclasses add `asyncio.Protocol` or `asyncio.BufferedProtocol` for how they receive bytes.
    """

    upstream: Any  # the protocol's upstream connection (a RelayUpstream)

    def __init__(self) -> None:
        self._paused: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        # What every protocol's session knows about itself.
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.user = ""
        self.source = ""
        self.level: Level | None = None
        self.policy = SourcePolicy()
        self.on_tls = False
        self.hold_wait = 0  # the source's hold_wait_seconds (waiting mode)
        self.waiting: asyncio.Event | None = None  # set (cancel, KILL QUERY) to withdraw a waited request
        self.entry: LiveSession | None = None  # this session in the admin API's registry
        self._ready = False
        self._closed = False
        self._busy = False
        self._sql_prepared: dict[str, Kind] = {}  # SQL PREPARE names → the kind they were prepared as

    async def _wait_for_request(self, changes: ChangeService, request_id: int, reason: str) -> Waited:
        """Waiting mode: wait for the held request to end (or be withdrawn through `waiting`),
        showing the session as waiting in the registry meanwhile."""
        self.waiting = asyncio.Event()
        if self.entry is not None:
            self.entry.state = WAITING
        try:
            return await changes.wait_for_decision(
                self.user, request_id, self.hold_wait, self.waiting, reason
            )
        finally:
            self.waiting = None
            if self.entry is not None:
                self.entry.state = IDLE

    # The client's write buffer is full: stop reading the upstream, and the other way round.
    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and not self.upstream.broken:
            self.upstream.transport.resume_reading()

    def upstream_pause_writing(self) -> None:
        self._pause("upstream")

    def upstream_resume_writing(self) -> None:
        self._resume("upstream")

    def _pause(self, reason: str) -> None:
        """Stop reading from the client until every reason given is resumed."""
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused.add(reason)

    def _resume(self, reason: str) -> None:
        self._paused.discard(reason)
        if not self._paused and self.transport is not None and not self._closed:
            self.transport.resume_reading()

    def _process(self) -> None:
        """Act on what the client sent (the protocol's own session implements it)."""
        raise NotImplementedError

    def _audit_backpressure(self, writer: AuditWriter | None) -> None:
        """The audit writer is congested: stop reading this client until it has room again."""
        if writer is not None and writer.congested and "audit" not in self._paused:
            self._pause("audit")
            self._spawn(self._await_audit_room(writer))

    async def _await_audit_room(self, writer: AuditWriter) -> None:
        await writer.room()
        self._resume("audit")
        self._process()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    @staticmethod
    async def _give_back(upstream: RelayUpstream, pool: Pool[Any], busy: bool) -> None:
        """Return the upstream to its pool; if the client left mid-statement, stop that statement
        upstream and close the connection instead of reusing it."""
        if busy and not upstream.broken:
            await upstream.stop_running()
        await pool.release(upstream, reusable=not busy)
