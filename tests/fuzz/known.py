"""Log findings that are known, reported, still unfixed bugs in files this suite does not own.

Each entry: an id, the file the bug is in, and a predicate over one log line. The fuzz summary
counts lines matching an entry under "known" instead of failing on them, so that the fuzzer keeps
finding *new* problems while these wait for their fix; each one also has a deterministic test in
tests/fuzz/test_robustness.py marked xfail(strict=True), which starts failing (XPASS) the
day the bug is fixed — remove the entry here then. Nothing may be added here without such a test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Known:
    id: str
    where: str
    matches: Callable[[str], bool]


# Empty: the four bugs the fuzzer found on 2026-12-04 were fixed (see docs/fuzzing.md).
KNOWN: tuple[Known, ...] = ()


def known_issue(line: str) -> str | None:
    for known in KNOWN:
        if known.matches(line):
            return known.id
    return None
