"""Live client sessions of this process: who is connected, to what, doing what; and how to end one.

The front ends register a session when a client connects, update its fields as it authenticates
and runs statements, and unregister it when the connection closes. The admin API lists them and
terminates one by calling the callback the front end gave. Everything here is a dict operation or
an attribute store, because the front ends touch it on the statement path.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

# The states a front end reports; plain strings so a front end can add a finer one without a change here.
AUTHENTICATING = "authenticating"
IDLE = "idle"
ACTIVE = "active"
WAITING = "waiting"  # a held write inside hold_wait_seconds
TERMINATING = "terminating"


@dataclass(slots=True, eq=False)
class LiveSession:
    """One client connection. Mutable: the front end sets `user`, `source` and `state` as it goes."""

    id: int
    protocol: str  # "postgresql" | "mysql"
    client: str  # client address, "host:port"
    terminate: Callable[[], None] = field(repr=False)
    user: str | None = None
    source: str | None = None
    state: str = AUTHENTICATING
    since: datetime = field(default_factory=lambda: datetime.now(UTC))


class SessionRegistry:
    """The live sessions of one process, by id. Ids are unique for the life of the process."""

    def __init__(self) -> None:
        self._sessions: dict[int, LiveSession] = {}
        self._ids = itertools.count(1)

    def register(self, protocol: str, client: str, terminate: Callable[[], None]) -> LiveSession:
        session = LiveSession(next(self._ids), protocol, client, terminate)
        self._sessions[session.id] = session
        return session

    def unregister(self, session: LiveSession) -> None:
        """Forget a session; a no-op if it is already gone (closing twice is harmless)."""
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]

    def get(self, session_id: int) -> LiveSession | None:
        return self._sessions.get(session_id)

    def list(self) -> list[LiveSession]:
        return list(self._sessions.values())

    def __len__(self) -> int:
        return len(self._sessions)

    def terminate(self, session_id: int) -> bool:
        """Ask the front end to close the session; False if no such session.

        The session stays listed (state "terminating") until its front end unregisters it.
        """
        session = self._sessions.get(session_id)
        if session is None:
            return False
        session.state = TERMINATING
        session.terminate()
        return True
