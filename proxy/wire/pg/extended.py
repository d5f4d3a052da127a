"""The upstream's prepared statements, portals and SQL cursors, as far as its replies prove them.

Theory of operation (https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-EXT-QUERY).
A portal runs the statement it was *bound from*: a later Parse of the unnamed statement, or a Close
and re-Parse of a name, changes what the name means but not what an existing portal runs. So a
verdict at Execute must be taken on the portal's own statement, and the session must know what the
server really did with every Parse and Bind — not what the client asked for. A Parse can fail
(syntax, a name that exists), and after any error the server skips every message up to Sync.

`ExtendedState` is sans-IO. The session tells it what goes upstream (`parse`, `bind`, `close`,
`sync`, `simple`, `forwarded`) and what comes back (`completed` for ParseComplete/BindComplete/
CloseComplete, `error`, `ready` for ReadyForQuery). Messages between two Syncs form a batch; a
simple Query or FunctionCall is a batch of its own (each ends with one ReadyForQuery). Within a
batch the server stops at the first error, so when an Execute runs, every Parse and Bind before it
in its batch succeeded. Across batches nothing is assumed: an entry made in an earlier batch is
trusted only once its completion arrived. `resolve()` answers an Execute with the statement the
portal runs, `Unknown` (fail closed), or `Wait` (earlier batches are still unanswered: the session
waits for their replies and asks again). Names are the raw bytes from the wire, never decoded, so
two spellings that decode alike stay two names.

Forgetting is always safe (an unknown name fails closed); believing is not. So a Close or a SQL
DEALLOCATE/CLOSE/DISCARD forgets at once, a failed or skipped Parse/Bind forgets the name it set,
and a reply that does not fit the model (`Desync`) ends the session. SQL-level names (PREPARE,
DECLARE) share the protocol's namespaces: they are recorded from the classifier's `names`, trusted
only after the batch that made them ended without an error, and `fetch:N` (FETCH/MOVE, which run a
cursor's or portal's query) is resolved like an Execute.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from policies.types import STRICTNESS, Classification, Kind

MAX_NAMES = 10_000  # statements, portals or cursors one session may keep (the server has no limit)


class State(enum.Enum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    FAILED = "failed"


class Desync(Exception):
    """The upstream's replies do not fit the messages sent: QueryBase can no longer tell what runs."""


@dataclass(eq=False)
class Entry:
    """One statement, portal or SQL name as sent upstream; `state` follows the server's replies."""

    batch: int
    state: State = State.PENDING


@dataclass(eq=False)
class Prepared(Entry):
    query: str = ""
    param_types: tuple[int, ...] = ()
    classification: Classification = field(default_factory=lambda: Classification(Kind.UNKNOWN))
    # Transaction pooling: the name the statement has on server connections, and the Parse body
    # after the name (text and parameter types, as sent) to prepare it on one that lacks it.
    server_name: bytes = b""
    parse_tail: bytes = b""


@dataclass(eq=False)
class Portal(Entry):
    statement: Prepared | None = None
    bind_raw: bytes = b""


@dataclass(eq=False)
class SqlName(Entry):
    """A SQL PREPARE or DECLARE: the kind of what it runs."""

    kind: Kind = Kind.UNKNOWN


@dataclass(frozen=True)
class Unknown:
    reason: str


@dataclass(frozen=True)
class Wait:
    pass


WAIT = Wait()

_PARSE, _BIND, _CLOSE = b"1", b"2", b"3"  # the completion each op expects

# What the session does with an op's completion before the client sees it (transaction pooling):
DROP = "drop"  # a Parse QueryBase added itself: the client never sent it
AS_PARSE_COMPLETE = "as-parse-complete"  # a Close QueryBase sent in place of a Parse it answers


@dataclass(eq=False)
class Op:
    """One message of a batch that the server answers with a completion (or skips)."""

    expects: bytes
    entry: Entry | None = None
    edit: str | None = None  # DROP, AS_PARSE_COMPLETE or None (the reply passes)
    done: Callable[[bool], None] | None = None  # told whether the server did it


K = TypeVar("K")
E = TypeVar("E", bound=Entry)


def _drop(names: dict[K, E], gone: Callable[[E], bool]) -> None:
    for name in [n for n, e in names.items() if gone(e)]:
        del names[name]


@dataclass(eq=False)
class Batch:
    id: int
    ops: deque[Op] = field(default_factory=deque)
    sql: list[SqlName] = field(default_factory=list)  # SQL names made in this batch
    errored: bool = False


class ExtendedState:
    """See the module docstring."""

    def __init__(self) -> None:
        self.statements: dict[bytes, Prepared] = {}
        self.portals: dict[bytes, Portal] = {}
        self.sql_prepared: dict[str, SqlName] = {}
        self.cursors: dict[str, SqlName] = {}
        self._next = 0
        self._open: Batch | None = None  # the extended batch being sent (no Sync yet)
        self._unanswered: deque[Batch] = deque()  # sent, ReadyForQuery not yet received

    # ---------------------------------------------------------------- client → upstream

    @property
    def batch_open(self) -> bool:
        """Extended messages have been sent since the last Sync."""
        return self._open is not None

    @property
    def open_batch(self) -> Batch | None:
        """The extended batch being sent; its `errored` turns true when the server rejects a
        message of it (and skips the rest)."""
        return self._open

    def _batch(self) -> Batch:
        if self._open is None:
            self._next += 1
            self._open = Batch(self._next)
            self._unanswered.append(self._open)
        return self._open

    def parse(
        self,
        name: bytes,
        query: str,
        param_types: tuple[int, ...],
        c: Classification,
        *,
        server_name: bytes = b"",
        parse_tail: bytes = b"",
        edit: str | None = None,
        done: Callable[[bool], None] | None = None,
    ) -> None:
        """A Parse of `name` goes upstream (as itself, under `server_name`, or answered by a Close
        in its place: `edit`); `done` learns whether the server did it."""
        batch = self._batch()
        entry = Prepared(
            batch.id,
            query=query,
            param_types=param_types,
            classification=c,
            server_name=server_name,
            parse_tail=parse_tail,
        )
        self._limit(self.statements, name)
        # A named Parse over an existing name fails at the server; the new entry then fails too
        # and the name is forgotten (the server keeps the old statement, which we stop trusting).
        self.statements[name] = entry
        self._forget_sql_name(self.sql_prepared, name)
        self._op(batch, Op(_CLOSE if edit == AS_PARSE_COMPLETE else _PARSE, entry, edit, done))

    def prepare_again(self, done: Callable[[bool], None]) -> None:
        """QueryBase sends a Parse of a statement the client prepared earlier, on a server
        connection that lacks it; the client expects no reply to it."""
        self._op(self._batch(), Op(_PARSE, None, DROP, done))

    def new_connection(self) -> None:
        """A transaction-pooled client moves to another server connection (everything sent has
        been answered). Named statements follow it (re-prepared under their server names where
        needed); portals, cursors, SQL names and the unnamed statement stay with the old one."""
        if self._unanswered or self._open is not None:
            raise Desync("the client moved to another server connection with replies outstanding")
        self.statements = {
            name: entry
            for name, entry in self.statements.items()
            if name and entry.server_name and entry.state is State.CONFIRMED
        }
        self.portals.clear()
        self.sql_prepared.clear()
        self.cursors.clear()

    def bind(self, portal: bytes, statement: bytes, raw: bytes) -> None:
        batch = self._batch()
        entry = Portal(batch.id, statement=self.statements.get(statement), bind_raw=raw)
        self._limit(self.portals, portal)
        self.portals[portal] = entry
        self._forget_sql_name(self.cursors, portal)
        self._op(batch, Op(_BIND, entry))

    def close(self, target: bytes, name: bytes) -> None:
        batch = self._batch()
        if target == b"S":
            self.statements.pop(name, None)
            self._forget_sql_name(self.sql_prepared, name)
        else:
            self.portals.pop(name, None)
            self._forget_sql_name(self.cursors, name)
        self._op(batch, Op(_CLOSE))

    def extended(self) -> None:
        """Any other extended message (Describe, Execute, Flush): it belongs to the open batch."""
        self._batch()

    def sync(self) -> None:
        self._batch()
        self._open = None

    def simple(self) -> None:
        """A simple Query or FunctionCall: a batch of its own."""
        if self._open is not None:
            raise Desync("a simple Query or FunctionCall inside an unfinished extended batch")
        self._batch()
        self._open = None

    def forwarded(self, c: Classification) -> None:
        """A statement with classification `c` goes upstream in the current batch (its SQL names)."""
        batch = self._unanswered[-1] if self._unanswered else self._batch()
        for item in c.names:
            verb, _, name = item.partition(":")
            if verb == "prepare":
                self._remember(batch, self.sql_prepared, name, c.kind)
                self._forget_protocol_name(self.statements, name)
            elif verb == "declare":
                self._remember(batch, self.cursors, name, c.kind)
                self._forget_protocol_name(self.portals, name)
            elif verb == "deallocate":
                self._forget_everywhere(self.sql_prepared, self.statements, name)
            elif verb == "close":
                self._forget_everywhere(self.cursors, self.portals, name)

    def _remember(self, batch: Batch, names: dict[str, SqlName], name: str, kind: Kind) -> None:
        if len(names) >= MAX_NAMES and name not in names:
            names.clear()
        entry = SqlName(batch.id, kind=kind)
        names[name] = entry
        batch.sql.append(entry)

    def _op(self, batch: Batch, op: Op) -> None:
        if batch.errored and op.entry is not None:
            op.entry.state = State.FAILED  # the server skips it
        batch.ops.append(op)

    @staticmethod
    def _limit(names: dict[bytes, Prepared] | dict[bytes, Portal], name: bytes) -> None:
        if len(names) >= MAX_NAMES and name not in names:
            names.clear()  # forgetting is safe: what is not known fails closed

    # Protocol names are bytes in the client's encoding, SQL names are text: they can only be
    # compared exactly when ASCII (every encoding QueryBase reads is ASCII-compatible). Forgetting
    # compares loosely (case-insensitively; anything non-ASCII forgets every candidate).

    @staticmethod
    def _forget_sql_name(names: dict[str, SqlName], wire_name: bytes) -> None:
        """A protocol name may equal a SQL name: forget every SQL name it could be."""
        if not names:
            return
        if not wire_name.isascii():
            names.clear()
            return
        text = wire_name.decode("ascii").lower()
        for name in [n for n in names if n.lower() == text]:
            del names[name]

    @staticmethod
    def _forget_protocol_name(names: dict[bytes, Prepared] | dict[bytes, Portal], name: str) -> None:
        if not name.isascii():
            names.clear()
            return
        low = name.lower()
        for wire in [w for w in names if w.isascii() and w.decode("ascii").lower() == low]:
            del names[wire]

    def _forget_everywhere(
        self,
        sql: dict[str, SqlName],
        protocol: dict[bytes, Prepared] | dict[bytes, Portal],
        name: str,
    ) -> None:
        if name == "*":
            sql.clear()
            protocol.clear()
        else:
            sql.pop(name, None)
            self._forget_protocol_name(protocol, name)

    # ---------------------------------------------------------------- upstream → client

    def completed(self, type_byte: bytes) -> str | None:
        """ParseComplete, BindComplete or CloseComplete: the oldest op still waiting succeeded.
        Returns what to do with the reply (None: pass it; DROP; AS_PARSE_COMPLETE)."""
        if not self._unanswered or not self._unanswered[0].ops:
            raise Desync(f"the upstream sent {type_byte!r} with nothing waiting for it")
        op = self._unanswered[0].ops.popleft()
        if op.expects != type_byte:
            raise Desync(f"the upstream answered {type_byte!r} where {op.expects!r} was due")
        entry = op.entry
        if entry is not None and entry.state is State.PENDING:
            entry.state = State.CONFIRMED
        if op.done is not None:
            op.done(True)
        return op.edit

    def error(self) -> None:
        """An ErrorResponse: the oldest unanswered batch skips the rest of its messages."""
        if self._unanswered:
            self._unanswered[0].errored = True

    def ready(self, status: int) -> None:
        """ReadyForQuery: the oldest batch is over. What it did not confirm did not happen."""
        if not self._unanswered:
            raise Desync("the upstream sent ReadyForQuery with nothing waiting for it")
        batch = self._unanswered.popleft()
        if batch is self._open:
            raise Desync("the upstream ended a batch before its Sync")
        for op in batch.ops:
            if op.entry is not None:
                op.entry.state = State.FAILED
            if op.done is not None:
                op.done(False)
        for sql in batch.sql:
            sql.state = State.FAILED if batch.errored else State.CONFIRMED
        ended = batch.id if status == ord("I") else -1  # out of any transaction: portals are gone
        _drop(self.statements, lambda e: e.state is State.FAILED)
        _drop(self.sql_prepared, lambda e: e.state is State.FAILED)
        _drop(self.portals, lambda e: e.state is State.FAILED or e.batch <= ended)
        _drop(self.cursors, lambda e: e.state is State.FAILED or e.batch <= ended)

    def settled(self) -> bool:
        """Every batch before the open one has been answered."""
        return not self._unanswered or (len(self._unanswered) == 1 and self._unanswered[0] is self._open)

    # ---------------------------------------------------------------- decisions

    def _trusted(self, entry: Entry, batch_id: int) -> bool | None:
        """True: the server holds what `entry` says; False: it does not; None: not known yet."""
        if entry.state is State.CONFIRMED:
            return True
        if entry.state is State.FAILED:
            return False
        return True if entry.batch == batch_id else None

    def resolve(self, portal_name: bytes) -> Portal | Unknown | Wait:
        """What an Execute of `portal_name` (in the open batch) runs."""
        current = self._batch().id
        portal = self.portals.get(portal_name)
        shown = portal_name.decode("utf-8", "replace")
        if portal is None:
            return Unknown(f'portal "{shown}" was not bound through QueryBase (or no longer exists)')
        trusted = self._trusted(portal, current)
        if trusted is None:
            return WAIT
        if not trusted:
            return Unknown(f'portal "{shown}" was not created at the server')
        statement = portal.statement
        if statement is None:
            return Unknown(f'portal "{shown}" was bound from a statement QueryBase did not see prepared')
        trusted = self._trusted(statement, current)
        if trusted is None:
            return WAIT
        if not trusted:
            return Unknown(f'the statement of portal "{shown}" was not prepared at the server')
        return portal

    def sql_kind(self, verb: str, name: str) -> Kind | Unknown | Wait:
        """The kind of what SQL `EXECUTE name` (verb "execute") or `FETCH name` (verb "fetch") runs.
        Only the open extended batch counts as "the same batch": a simple Query is a batch of its
        own, so for it nothing unconfirmed is trusted."""
        batch = self._open.id if self._open is not None else -1
        names: dict[str, SqlName] = self.sql_prepared if verb == "execute" else self.cursors
        entry = names.get(name)
        if entry is not None:
            trusted = self._trusted(entry, -1)  # SQL names are never trusted before their batch ends
            if trusted is None:
                return WAIT
            if trusted:
                return entry.kind
        protocol: dict[bytes, Prepared] | dict[bytes, Portal]
        protocol = self.statements if verb == "execute" else self.portals
        found = protocol.get(name.encode("ascii")) if name.isascii() else None
        if found is not None:
            trusted = self._trusted(found, batch)
            if trusted is None:
                return WAIT
            if trusted:
                statement = found if isinstance(found, Prepared) else found.statement
                if statement is not None and self._trusted(statement, batch):
                    c = statement.classification
                    # Its unvetted functions are not checked against the source's trust here.
                    return (
                        Kind.UNKNOWN
                        if c.unvetted and STRICTNESS[c.kind] < STRICTNESS[Kind.UNKNOWN]
                        else c.kind
                    )
        what = "prepared statement" if verb == "execute" else "cursor or portal"
        return Unknown(f'{what} "{name}" was not made through QueryBase (or no longer exists)')

    def with_sql_names(self, c: Classification) -> Classification | Wait:
        """`c` with the kinds that SQL EXECUTE and FETCH/MOVE run folded in (strictest wins)."""
        targets = [("execute", c.executes)] if c.executes is not None else []
        targets += [("fetch", item[6:]) for item in c.names if item.startswith("fetch:")]
        if not targets:
            return c
        if c.executes is None and c.kind is Kind.UNKNOWN:
            return c
        kinds: list[Kind] = []
        for verb, name in targets:
            found = self.sql_kind(verb, name)
            if isinstance(found, Wait):
                return WAIT
            if isinstance(found, Unknown):
                return replace(c, kind=Kind.UNKNOWN, reason=found.reason)
            kinds.append(found)
        # SQL EXECUTE is unknown until what it runs is known, unless its arguments made it stricter.
        base = Kind.READ if c.executes is not None and c.kind is Kind.UNKNOWN else c.kind
        strictest = max([base, *kinds], key=STRICTNESS.__getitem__)
        if strictest is c.kind:
            return c
        reason = c.reason if strictest is base else f"runs a {strictest.value} statement"
        return replace(c, kind=strictest, reason=reason)
