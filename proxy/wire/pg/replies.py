"""What a PostgreSQL upstream owes a client session, and what becomes of each reply (sans-IO).

Theory of operation. Every simple Query, FunctionCall and Sync the session sends upstream is
answered by exactly one ReadyForQuery; `Replies` keeps one entry per ReadyForQuery owed, in order,
saying what to do with the answer it ends:

- `PASS`: everything up to and including the ReadyForQuery goes to the client (the client's own
  messages);
- `DROP_READY`: the answer goes to the client but the ReadyForQuery does not (a Sync QueryBase
  sent itself: to end a batch the client left open, or in place of a refused Execute);
- `DROP_ALL`: the whole answer stays with QueryBase (its own query, e.g. aborting the client's
  transaction after a refusal).

`feed(chunk)` walks the upstream's bytes header by header (`BackendScanner`: bodies are never
copied), feeds the statement model (`ExtendedState`) the completions, errors and ReadyForQuery it
sees, applies the edits the model asks for (drop the completion of a Parse QueryBase added; turn
the CloseComplete of a Close sent in place of a Parse into ParseComplete) and returns a
`Relayed`: the bytes for the client, the ParameterStatus messages seen, the transaction status of
the last ReadyForQuery, and the timings of the statements those ReadyForQuery messages ended.
Bytes that cannot be judged yet (a header cut by the chunk's end, a ReadyForQuery without its
status byte, a ParameterStatus not yet whole) are held back to the next chunk, so the result is
the same however the stream is split. The common case — the client's own replies, nothing to
edit — returns the chunk unchanged.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from policies.types import Kind
from proxy.wire.pg import protocol as pgp
from proxy.wire.pg.extended import AS_PARSE_COMPLETE, ExtendedState

Timing = list[tuple[float, Kind]]  # the forwarded statements one ReadyForQuery ends: (start, kind)
PARSE_COMPLETE = b"1\x00\x00\x00\x04"


class Reply(enum.IntEnum):
    PASS = 0
    DROP_READY = 1
    DROP_ALL = 2


@dataclass
class Relayed:
    """What one chunk from the upstream amounts to."""

    data: bytes
    params: list[tuple[str, str]] = field(default_factory=list)
    status: int | None = None  # of the last ReadyForQuery in the chunk
    answered: list[Timing] = field(default_factory=list)


class Replies:
    """See the module docstring."""

    def __init__(self, model: ExtendedState) -> None:
        self.model = model
        self._owed: deque[tuple[Reply, Timing | None]] = deque()
        self._special = 0  # entries in _owed that are not PASS
        self._batch: Timing = []  # Executes forwarded since the last Sync
        self._scanner = pgp.BackendScanner()
        self._carry = b""

    # ---------------------------------------------------------------- client → upstream

    @property
    def idle(self) -> bool:
        """The upstream has answered everything sent to it."""
        return not self._owed

    def query_sent(self, t0: float, kind: Kind) -> None:
        """A simple Query or FunctionCall of the client's went upstream."""
        self._owed.append((Reply.PASS, [(t0, kind)]))

    def execute_sent(self, t0: float, kind: Kind) -> None:
        """An Execute of the client's went upstream: its Sync's ReadyForQuery ends it."""
        self._batch.append((t0, kind))

    def sync_sent(self) -> None:
        """The client's Sync went upstream."""
        self._owed.append((Reply.PASS, self._batch or None))
        self._batch = []

    def own_sync(self) -> None:
        """QueryBase's own Sync went upstream: the client sees the answer, not its ReadyForQuery."""
        self._owed.append((Reply.DROP_READY, self._batch or None))
        self._batch = []
        self._special += 1

    def own_query(self) -> None:
        """QueryBase's own simple Query went upstream: the client sees nothing of its answer."""
        self._owed.append((Reply.DROP_ALL, None))
        self._special += 1

    # ---------------------------------------------------------------- upstream → client

    def feed(self, chunk: bytes) -> Relayed:
        """The upstream sent `chunk`. Raises ProtocolViolation (malformed framing) or Desync (the
        replies do not fit what was sent)."""
        data = self._carry + chunk if self._carry else chunk
        self._carry = b""
        scanner = self._scanner
        ready, params, keep = scanner.scan(data)
        out = Relayed(b"")
        for start, end in params:
            out.params.append(pgp.parse_parameter_status(data[start + 5 : end]))
        edits = self._learn(scanner.marks, scanner.mark_offsets, ready) if scanner.marks else None
        if keep:
            data, self._carry = data[:-keep], data[-keep:]
        if edits or (self._special and (ready or (self._owed and self._owed[0][0] is Reply.DROP_ALL))):
            out.data = self._edit(data, ready, edits or (), out)
            return out
        out.data = data
        owed = self._owed
        for _ in range(min(len(ready), len(owed))):
            _, timing = owed.popleft()
            if timing is not None:
                out.answered.append(timing)
        if ready:
            out.status = ready[-1][1]
        return out

    def _learn(
        self, marks: list[int], offsets: list[int], ready: list[tuple[int, int]]
    ) -> list[tuple[int, str]] | None:
        """Feed the model the completions, errors and ReadyForQuery, in order; the completions
        it asks to edit, as (offset, edit)."""
        model = self.model
        statuses = iter(ready)
        edits: list[tuple[int, str]] | None = None
        for mark, offset in zip(marks, offsets, strict=True):
            if mark == 0x5A:
                model.ready(next(statuses)[1])
            elif mark == 0x45:
                model.error()
            else:
                edit = model.completed(bytes((mark,)))
                if edit is not None:
                    edits = edits or []
                    edits.append((offset, edit))
        marks.clear()
        offsets.clear()
        return edits

    def _edit(
        self,
        data: bytes,
        ready: list[tuple[int, int]],
        edits: list[tuple[int, str]] | tuple[()],
        out: Relayed,
    ) -> bytes:
        """Drop what QueryBase asked for itself and apply the model's edits, in stream order."""
        pieces: list[bytes] = []
        start = 0
        pending_edits = iter(edits)
        edit = next(pending_edits, None)
        for offset, status in ready:
            while edit is not None and edit[0] < offset:
                start = self._apply(data, start, edit, pieces)
                edit = next(pending_edits, None)
            out.status = status
            mode, timing = self._owed.popleft() if self._owed else (Reply.PASS, None)
            if mode is not Reply.PASS:
                self._special -= 1
            if timing is not None:
                out.answered.append(timing)
            if mode is Reply.PASS:
                pieces.append(data[start : offset + 6])
            elif mode is Reply.DROP_READY:
                pieces.append(data[start:offset])
            start = offset + 6
        while edit is not None:  # completions after the chunk's last ReadyForQuery
            start = self._apply(data, start, edit, pieces)
            edit = next(pending_edits, None)
        if not (self._owed and self._owed[0][0] is Reply.DROP_ALL):
            pieces.append(data[start:])
        return b"".join(pieces)

    @staticmethod
    def _apply(data: bytes, start: int, edit: tuple[int, str], pieces: list[bytes]) -> int:
        """One completion (five bytes at `edit`'s offset) dropped or rewritten; where to go on."""
        offset, what = edit
        pieces.append(data[start:offset])
        if what == AS_PARSE_COMPLETE:
            pieces.append(PARSE_COMPLETE)
        return offset + 5
