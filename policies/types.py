"""The values policy trades in: statement kinds, classifications, grant levels and verdicts.

Pure data, shared by both dialects' classifiers, `decide()` and the sessions that act on verdicts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.StrEnum):
    """What a statement does (DESIGN.md §3). Ordered by strictness in `STRICTNESS`."""

    READ = "read"
    TRANSACTION = "transaction"
    SESSION = "session"
    WRITE = "write"
    DDL = "ddl"
    UNKNOWN = "unknown"
    PRIVILEGED = "privileged"


# A message with several statements takes the verdict of its strictest one.
STRICTNESS = {
    Kind.READ: 0,
    Kind.TRANSACTION: 0,
    Kind.SESSION: 0,
    Kind.WRITE: 1,
    Kind.DDL: 2,
    Kind.UNKNOWN: 3,
    Kind.PRIVILEGED: 4,
}


# A total order for picking "the strictest statement" of a message: STRICTNESS, with ties among
# the verdict-free kinds broken so the result is deterministic (read < transaction < session).
_TIE_BREAK = {Kind.READ: 0, Kind.TRANSACTION: 1, Kind.SESSION: 2}
RANK = {kind: STRICTNESS[kind] * 10 + _TIE_BREAK.get(kind, 0) for kind in Kind}


class Level(enum.StrEnum):
    """Grant levels: read < propose < write are cumulative; approve is separate."""

    READ = "read"
    PROPOSE = "propose"
    WRITE = "write"
    APPROVE = "approve"


@dataclass(frozen=True, slots=True)
class KillTarget:
    """A MySQL `KILL` as parsed: `thread` is the literal connection id it names, or None when it
    names anything else (an expression, `USER x`, MariaDB's `QUERY ID n`); `query_only` for
    `KILL QUERY`; `form` is the normalised spelling, for messages."""

    thread: int | None
    query_only: bool
    form: str


@dataclass(frozen=True, slots=True)
class Classification:
    """The classifier's answer for one protocol message (possibly several statements).

    - `kind`: the strictest kind over all statements in the message.
    - `tables`: relations the message touches, as written (schema-qualified if it was), sorted, unique.
    - `statements`: how many statements the message holds (0 for an empty query).
    - `reason`: for anything but a plain read, why (e.g. "data-modifying CTE", "COPY FROM",
      "set_config(default_transaction_read_only)"); for `unknown`, the parser's message.
    - `prepares`: for SQL `PREPARE name AS stmt`, the statement name (`kind` is the inner
      statement's kind).
    - `executes`: for SQL `EXECUTE name`, the statement name; the classifier cannot know what it
      runs, so `kind` is `unknown` and the session substitutes the kind it recorded at PREPARE.
    - `copy_from_stdin`: COPY … FROM STDIN (the client will stream CopyData).
    - `names`: what the message does to SQL-level names the wire protocol shares (PostgreSQL:
      prepared statements and cursors, which Bind/Execute can reach and FETCH can run), in order:
      `prepare:N`, `deallocate:N` / `deallocate:*`, `declare:N`, `close:N` / `close:*`, `fetch:N`,
      and `lexing` for statements that change how the server reads later text (client_encoding,
      standard_conforming_strings, RESET ALL, DISCARD ALL), and `settings` for statements that
      change session settings anywhere in them (SET, RESET, set_config, DISCARD). Collected over
      every statement.
    - `pins` (PostgreSQL): session state the message leaves on its server connection that cannot be
      carried to another one (temporary objects, LISTEN, session advisory locks, WITH HOLD cursors,
      SQL PREPARE, DO, LOAD), as short phrases. Transaction pooling keeps such a client on its
      connection for the rest of its session (docs/pooling.md).
    - `unvetted`: functions the statement calls that are not vetted built-ins (user, extension or
      unvetted volatile functions), sorted. `decide()` fails such reads closed unless the source
      trusts every one of them (`SourcePolicy.trusted_functions`).
    """

    kind: Kind
    tables: tuple[str, ...] = ()
    statements: int = 1
    reason: str = ""
    prepares: str | None = None
    executes: str | None = None
    copy_from_stdin: bool = False
    names: tuple[str, ...] = ()
    unvetted: tuple[str, ...] = ()
    kill: KillTarget | None = None
    uses: str | None = None
    sets: tuple[tuple[str, str | None], ...] = ()
    schemas: tuple[str, ...] = ()
    pins: tuple[str, ...] = ()


class Action(enum.StrEnum):
    FORWARD = "forward"
    HOLD = "hold"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the session does with a statement, and why (for the client's message and the audit)."""

    action: Action
    kind: Kind
    reason: str = ""
    needed: Level | None = None  # for DENY: the level that would have allowed it


@dataclass(frozen=True, slots=True)
class SourcePolicy:
    """The parts of a source's settings that decide() reads."""

    block_ddl: bool = False
    trusted_functions: frozenset[str] = frozenset()  # functions (as `unvetted` names them) reads may call
