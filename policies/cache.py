"""Bounded LRU caches in front of the classifiers (DESIGN.md §8).

The first level is keyed by exact statement text. A second level, consulted on an exact miss, is
keyed by a literal-insensitive form — the token stream with every literal replaced by its token
type (PostgreSQL: libpg_query's scanner; MySQL: the classifier's tokenizer) — so `pgbench -M simple`'s
ever-changing literals do not pay for a full parse each time. DESIGN.md §8 allows a
literal-insensitive key only where the verdict cannot depend on a constant, so that level serves
only single-statement SELECT/INSERT/UPDATE/DELETE/WITH/VALUES/TABLE messages that do not mention
`set_config` — the one place inside such statements where the classifier reads a constant
(`set_config('default_transaction_read_only', 'off', …)`). Statements like `SET x = off`,
`EXPLAIN (ANALYZE false)` or `BEGIN READ WRITE` never reach it. Equal keys mean the same tokens
but for literals — the same relation, schema and function names, spelt the same way — so a verdict
computed for one text holds for every text in its class. (pglast's fingerprint is not such a key:
it ignores a relation's schema, so `secret.creds` and `creds` would share a verdict; issue 10.)

Texts longer than `MAX_CACHED_TEXT` are classified every time, so the caches' memory stays bounded.
The caches count their own hits and misses (`cache_info()`, `FingerprintLevel.hits/misses`) at no
extra cost per statement; `proxy.observe.metrics.sync()` copies them into Prometheus counters.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable

from pglast.parser import scan
from sqlglot.tokenizer_core import TokenType

from policies import mysql, pg
from policies.types import Classification

CACHE_SIZE = 10_000
MAX_CACHED_TEXT = 8 * 1024  # characters


class CachedClassifier:
    """A classifier behind an LRU by exact text; `cache_info()` reports hits, misses and size."""

    __slots__ = ("_cached", "_classify", "_max_text")

    def __init__(
        self,
        classify: Callable[[str], Classification],
        maxsize: int = CACHE_SIZE,
        max_text: int = MAX_CACHED_TEXT,
    ) -> None:
        self._classify = classify
        self._cached = functools.lru_cache(maxsize=maxsize)(classify)
        self._max_text = max_text

    def __call__(self, sql: str) -> Classification:
        if len(sql) > self._max_text:
            return self._classify(sql)
        return self._cached(sql)

    def cache_info(self) -> functools._CacheInfo:
        return self._cached.cache_info()

    def cache_clear(self) -> None:
        self._cached.cache_clear()


_CONSTANT_FREE_HEADS = ("select", "insert", "update", "delete", "with", "values", "table")
_PG_LITERALS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})


class FingerprintLevel:
    """The second-level cache described in the module docstring: `classify` behind an LRU keyed by
    `key(sql)`, a literal-insensitive form (None: not eligible, classify every time)."""

    __slots__ = ("_classify", "_entries", "_maxsize", "hits", "misses")

    def __init__(
        self, classify: Callable[[str], Classification] = pg.classify, maxsize: int = CACHE_SIZE
    ) -> None:
        self._classify = classify
        self._entries: OrderedDict[str, Classification] = OrderedDict()
        self._maxsize = maxsize
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def eligible(sql: str) -> bool:
        head = sql.lstrip()[:6].lower()
        return head.startswith(_CONSTANT_FREE_HEADS) and "\x00" not in sql and "set_config" not in sql.lower()

    def key(self, sql: str) -> str | None:
        """PostgreSQL: the scanner's tokens of an eligible statement, literals replaced by their kind."""
        if not self.eligible(sql):
            return None
        try:
            tokens = scan(sql)
        except Exception:  # the scanner's own errors: the full classifier reports them
            return None
        return "\x1f".join(
            token.name if token.name in _PG_LITERALS else sql[token.start : token.end + 1] for token in tokens
        )

    def classify(self, sql: str) -> Classification:
        key = self.key(sql)
        if key is None:
            return self._classify(sql)
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return found
        self.misses += 1
        result = self._classify(sql)
        if result.statements == 1:
            self._entries[key] = result
            if len(self._entries) > self._maxsize:
                self._entries.popitem(last=False)
        return result


_MYSQL_LITERALS = frozenset(
    {
        TokenType.NUMBER,
        TokenType.STRING,
        TokenType.HEX_STRING,
        TokenType.BIT_STRING,
        TokenType.BYTE_STRING,
        TokenType.NATIONAL_STRING,
        TokenType.NATIONAL_RAW_STRING,
        TokenType.RAW_STRING,
        TokenType.HEREDOC_STRING,
        TokenType.UNICODE_STRING,
    }
)
_MYSQL_CONSTANT_FREE_HEADS = frozenset(
    {
        TokenType.SELECT,
        TokenType.INSERT,
        TokenType.UPDATE,
        TokenType.DELETE,
        TokenType.REPLACE,
        TokenType.WITH,
        TokenType.VALUES,
        TokenType.TABLE,
    }
)


class MySQLFingerprintLevel(FingerprintLevel):
    """The second-level MySQL cache: keyed by the statement's tokens (from the classifier's own
    tokenizer) with every literal replaced by its token type, for single SELECT/INSERT/UPDATE/
    DELETE/REPLACE/WITH/VALUES/TABLE statements without comments. The MySQL classifier reads a
    constant only in `SET` (read-only variables) and `PREPARE … FROM 'text'`, which never reach
    this level; executable comments (`/*! … */`, which the classifier unwraps) are excluded with
    every `/*`. Tokenizing costs about a tenth of a full classification."""

    __slots__ = ()

    def __init__(self, maxsize: int = CACHE_SIZE) -> None:
        super().__init__(mysql.classify, maxsize)

    def key(self, sql: str) -> str | None:
        """The literal-insensitive key, or None when the text is not eligible."""
        if "/*" in sql or "\x00" in sql:
            return None
        try:
            tokens = mysql.tokenize(sql)
        except Exception:  # the tokenizer's own errors: the full classifier reports them
            return None
        if not tokens or tokens[0].token_type not in _MYSQL_CONSTANT_FREE_HEADS:
            return None
        parts = []
        last = len(tokens) - 1
        for index, token in enumerate(tokens):
            kind = token.token_type
            if kind is TokenType.SEMICOLON and index != last:
                return None  # several statements
            parts.append(kind.name if kind in _MYSQL_LITERALS else f"{kind.name}:{token.text}")
        return "\x1f".join(parts)


pg_fingerprint_level = FingerprintLevel()
classify_pg_cached = CachedClassifier(pg_fingerprint_level.classify)
mysql_fingerprint_level = MySQLFingerprintLevel()
classify_mysql_cached = CachedClassifier(mysql_fingerprint_level.classify)


@functools.lru_cache(maxsize=1024)
def classify_mysql_in_mode(sql: str, mode: mysql.SqlMode) -> Classification:
    """MySQL sessions whose sql_mode changes lexing (ANSI_QUOTES, NO_BACKSLASH_ESCAPES): by exact
    text and mode only (the literal-insensitive level tokenizes in the default mode)."""
    return mysql.classify(sql, mode)
