"""MySQL/MariaDB statement classification: SQL text in, one `Classification` out (DESIGN.md §3).

Theory of operation
-------------------
1. `canonical()` rewrites the text, under the session's `SqlMode` (ANSI_QUOTES,
   NO_BACKSLASH_ESCAPES), into a form sqlglot's MySQL tokenizer splits exactly where the server
   does: comments become spaces; executable comments (`/*!40101 SET NAMES utf8 */`, MariaDB
   `/*M!100100 … */`) keep their content, always treated as executed, and must end at their first
   `*/` (the server skips them up to it when their version is too high); `--` not followed by
   whitespace or a control character becomes `- -`; ANSI `"…"` identifiers become backquoted;
   backslashes under NO_BACKSLASH_ESCAPES are doubled. Text the servers could read two ways
   (`--` before a non-ASCII character, non-ASCII whitespace or NUL outside quotes, a quote that
   swallows an executable comment's `*/`) raises `Ambiguous`: unknown.
2. The text is tokenized once with sqlglot's MySQL tokenizer and split into statements on `;` tokens
   (so `;` inside strings, identifiers and comments never splits).
3. Each statement is dispatched on its head keyword through `_HEADS` (a dict, not an if/elif chain).
   Statements sqlglot models (SELECT, WITH, TABLE, VALUES, INSERT, REPLACE, UPDATE, DELETE, SET,
   TRUNCATE, CREATE/ALTER/DROP of tables, views and indexes, DO) are parsed with sqlglot's MySQL
   parser and the AST is walked (`_scan`): it collects tables and raises the kind for row locks,
   `INTO @var`, nested DML, guarded functions (`_FUNCTIONS`) and unmodelled sub-nodes
   (`exp.Command` → unknown). Statements sqlglot does not model (it parses `FLUSH PRIVILEGES` or
   `SAVEPOINT s` as a column alias, falls back to `exp.Command` or fails on `LOAD DATA`, `XA`,
   `HANDLER`, `INSTALL PLUGIN` …) are decided from their leading keywords — a documented
   tokenizer-level check. A head keyword not in `_HEADS` is unknown: fail closed, never read.
4. Kinds combine by `STRICTNESS` (session > transaction > read inside its zero class, as in pg.py);
   a multi-statement message takes its strictest statement's kind and reason, and the union of tables.

Deliberate choices
------------------
- `SELECT … INTO OUTFILE/DUMPFILE` and `LOAD_FILE()` are privileged (they write/read server files).
  `LOAD DATA INFILE` without LOCAL reads a server file too, so it is privileged as well;
  `LOAD DATA LOCAL INFILE` and `LOAD XML LOCAL` are writes (the client uploads the file).
- `SELECT … INTO @var` only sets session variables: session.
- `SELECT … FOR UPDATE / FOR SHARE / LOCK IN SHARE MODE` is a write (row locks).
- `HANDLER …` (OPEN/READ/CLOSE) is a write: it keeps a low-level table handle across statements and
  reads bypass the optimizer; not worth trusting as a read.
- Statements the session treats specially are reported as facts, never left to text patterns:
  `kill` (a `KillTarget` for every KILL form; only a plain integer literal is resolvable), `uses`
  (USE), `sets` (sql_mode / character_set_client with their literal values), `schemas` (what SHOW
  names; `*` for listings of every schema). KILL is session; the session translates QueryBase's
  connection ids to upstream threads and refuses everything else (DESIGN.md §2).
- Reads may call only allowlisted built-ins (`_SAFE_FUNCTION_GROUPS`, checked on the tokens: a
  name followed by "(" that is qualified, backquoted or not vetted makes the statement unknown).
- A message where a statement other than the last changes sql_mode is classified under every
  lexing mode and takes the strictest answer.
- `SET autocommit = …` (any spelling, any value) is transaction: it moves transaction boundaries,
  which the session tracks. `SET GLOBAL`/`PERSIST`/`PERSIST_ONLY` of anything is privileged.
- `transaction_read_only`/`tx_read_only` set to 1/ON/TRUE (or 'ON'/'1'/'TRUE') is session; any
  other value (0, OFF, DEFAULT, an expression, a variable) is privileged. `… TRANSACTION READ WRITE`
  in SET or START TRANSACTION is privileged; `SET [SESSION] TRANSACTION READ ONLY / ISOLATION LEVEL`
  is session. `SET sql_log_bin`, `SET PASSWORD`, `SET ROLE`, `SET DEFAULT ROLE` and a few
  replication/identity variables (`_PRIVILEGED_VARIABLES`) are privileged.
- `EXPLAIN`/`DESCRIBE` run nothing, so they are reads (a privileged inner statement stays
  privileged); `EXPLAIN ANALYZE` and MariaDB's `ANALYZE <statement>` run the statement and take its
  kind. `ANALYZE/OPTIMIZE/REPAIR/CHECK TABLE` are writes; `CHECKSUM TABLE` is a read.
- `PREPARE s FROM 'text'` takes the kind of the text (which must be one statement) with
  `prepares=s`; `PREPARE s FROM @var` is unknown with `prepares=s`. `EXECUTE s` is unknown with
  `executes=s`. `DEALLOCATE/DROP PREPARE` is session. As in pg.py, prepares/executes are reported
  only for single-statement messages.
- XA statements are writes (durable transaction state outside the session; QueryBase's executor
  uses XA itself). `LOCK TABLES` is a write; `UNLOCK TABLES` is session. `LOCK INSTANCE FOR BACKUP`,
  FLUSH, RESET, PURGE, SHUTDOWN, RESTART, INSTALL/UNINSTALL, CHANGE MASTER/REPLICATION,
  START/STOP REPLICA/SLAVE, BINLOG, CLONE, GRANT/REVOKE and user/role/server management are
  privileged. `CREATE FUNCTION … SONAME` (a UDF from a shared library) is privileged.
- `_FUNCTIONS` names are matched case-insensitively whatever their schema.
- sqlglot logs a warning (logger "sqlglot") when it falls back to `exp.Command`; most such statements
  are dispatched before parsing, so this is rare and harmless.
- A NUL byte inside a quoted literal is data; anywhere else the text is unknown. The session hands
  over bytes invalid in the client character set as U+FFFD (always inside literals or names).

Known gaps (fail closed or rely on the backstop): compound bodies (`CREATE PROCEDURE … BEGIN …; …;
END`) are split at their inner `;` and come out unknown.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace

from sqlglot import exp
from sqlglot.dialects.mysql import MySQL
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokenizer_core import Token, TokenType

from policies.types import RANK, STRICTNESS, Classification, KillTarget, Kind

_DIALECT = MySQL()

_RANK = RANK


class _Facts:
    """What one statement does: the mutable accumulator of a classification."""

    __slots__ = (
        "ctes",
        "executes",
        "kill",
        "kind",
        "prepares",
        "reason",
        "schemas",
        "sets",
        "tables",
        "unvetted",
        "uses",
    )

    def __init__(self) -> None:
        self.kind = Kind.READ
        self.reason = ""
        self.tables: set[str] = set()
        self.ctes: set[str] = set()
        self.prepares: str | None = None
        self.executes: str | None = None
        self.kill: KillTarget | None = None
        self.uses: str | None = None
        self.sets: dict[str, str | None] = {}
        self.schemas: set[str] = set()
        self.unvetted: set[str] = set()  # user/stored functions called (lower case): a source may trust them

    def note(self, kind: Kind, reason: str) -> None:
        """Raise the kind to `kind` (with its reason) if that is stricter than what is known."""
        if _RANK[kind] > _RANK[self.kind]:
            self.kind = kind
            self.reason = reason

    def absorb(self, other: _Facts) -> None:
        self.note(other.kind, other.reason)
        self.tables |= other.tables
        self.ctes |= other.ctes
        self.schemas |= other.schemas
        self.unvetted |= other.unvetted
        self.kill = self.kill or other.kill
        self.uses = other.uses or self.uses
        self.sets.update(other.sets)


# --- lexing -----------------------------------------------------------------------------------------

_QUOTED = frozenset(
    {
        TokenType.STRING,
        TokenType.IDENTIFIER,
        TokenType.NATIONAL_STRING,
        TokenType.HEX_STRING,
        TokenType.BIT_STRING,
        TokenType.BYTE_STRING,
        TokenType.RAW_STRING,
    }
)
_COMMAND_TOKENS = frozenset(_DIALECT.tokenizer_class.COMMANDS)


@dataclass(frozen=True, slots=True)
class SqlMode:
    """The parts of a session's `sql_mode` that change how the server splits text into tokens."""

    ansi_quotes: bool = False  # "…" is an identifier, not a string
    no_backslash_escapes: bool = False  # \\ is an ordinary character inside strings


DEFAULT_MODE = SqlMode()
# sql_mode flags under which the server parses a different language: QueryBase cannot classify
# statements under them (MariaDB's ORACLE mode has its own grammar; MSSQL is refused with it).
UNSUPPORTED_MODE_FLAGS = frozenset({"ORACLE", "MSSQL"})


# Client character sets QueryBase can read as the server does, with the Python codec for each: in
# all of them every byte of a non-ASCII character is >= 0x80, so quotes, backslashes and
# comment markers are the ASCII bytes they look like. Multibyte sets whose characters can contain
# 0x5C or a quote (sjis, cp932, big5, gbk, gb18030) are refused, as are the rest (fail closed).
SAFE_CLIENT_CHARSETS = {
    "utf8mb4": "utf-8",
    "utf8mb3": "utf-8",
    "utf8": "utf-8",
    "latin1": "latin-1",
    "ascii": "latin-1",
    "binary": "latin-1",
}


def sql_mode_flags(value: str) -> frozenset[str]:
    """The flags of an `sql_mode` value as the server reports it (comma-separated, any case)."""
    return frozenset(flag.strip().upper() for flag in value.split(",") if flag.strip())


def lexing_mode(value: str) -> SqlMode:
    """The lexing-relevant part of an `sql_mode` value (`ANSI` implies `ANSI_QUOTES`)."""
    flags = sql_mode_flags(value)
    return SqlMode(
        ansi_quotes=bool(flags & {"ANSI_QUOTES", "ANSI"}),
        no_backslash_escapes="NO_BACKSLASH_ESCAPES" in flags,
    )


class Ambiguous(Exception):
    """The text can be read in more than one way by the servers QueryBase fronts: unknown."""


_EXEC_COMMENT = re.compile(r"/\*M?!\d{0,6}")  # the marker only, matched at a known position
_COMMENT_END_AFTER_DASHES = frozenset(" \t\n\r\f\v")


def _quoted_end(sql: str, i: int, backslash: bool) -> int:
    """Index just past the quoted string/identifier starting at `sql[i]`, as the server scans it:
    the quote doubled is one quote; `\\` escapes the next character when `backslash`."""
    quote = sql[i]
    j = i + 1
    n = len(sql)
    while j < n:
        c = sql[j]
        if c == "\\" and backslash:
            j += 2
        elif c == quote:
            if j + 1 < n and sql[j + 1] == quote:
                j += 2
            else:
                return j + 1
        else:
            j += 1
    raise Ambiguous(f"unterminated {quote}-quoted text")


def _dash_comment(sql: str, i: int) -> bool:
    """Whether the `--` at `sql[i]` starts a comment. The server's rule: only when the next byte is
    ASCII whitespace or a control character (or the text ends). A non-ASCII character there is
    read differently by different character sets' tables: ambiguous, so refused."""
    if i + 2 >= len(sql):
        return True
    after = sql[i + 2]
    if after in _COMMENT_END_AFTER_DASHES or ord(after) < 32 or ord(after) == 127:
        return True
    if ord(after) > 127:
        raise Ambiguous("`--` followed by a non-ASCII character")
    return False


# Where canonical() has something to decide: quotes, comment starts, `*` (of `*/`), NUL, non-ASCII.
_SPECIAL = re.compile("[\"'`#\\-/*\x00]|[^\x00-\x7f]")


def canonical(sql: str, mode: SqlMode = DEFAULT_MODE) -> str:
    """The text as the server will tokenize it under `mode`, rewritten so that sqlglot's MySQL
    tokenizer (which knows neither mode) reads exactly the same token boundaries:

    - comments (`#`, `-- `, `/* */`, optimizer hints) become one space; executable comments
      (`/*!NNNNN … */`, MariaDB `/*M!NNNNN … */`) keep their content, which the server runs — and
      must end at the first `*/` whether or not the server runs them (else ambiguous);
    - `--` that is not a comment (`SELECT 1 --1`) becomes `- -`, as the server reads it;
    - `"…"` under ANSI_QUOTES becomes a backquoted identifier; under NO_BACKSLASH_ESCAPES a
      backslash in a string is doubled, so it stays one ordinary character;
    - non-ASCII whitespace outside quotes (which Python calls space and the server does not) and
      anything else the servers could read two ways raise `Ambiguous`.
    """
    out: list[str] = []
    i = 0
    n = len(sql)
    backslash = not mode.no_backslash_escapes
    exec_end = -1  # inside an executable comment: where its `*/` is
    while i < n:
        if exec_end >= 0 and i >= exec_end:
            if i != exec_end:
                raise Ambiguous("an executable comment's `*/` falls inside a quoted text or comment")
            out.append(" ")
            i += 2
            exec_end = -1
            continue
        found = _SPECIAL.search(sql, i)  # copy ordinary text in one piece
        j = found.start() if found is not None else n
        if 0 <= exec_end < j:
            j = exec_end
        if j > i:
            out.append(sql[i:j])
            i = j
            continue
        c = sql[i]
        if c == "'" or (c == '"' and not mode.ansi_quotes):
            j = _quoted_end(sql, i, backslash)
            body = sql[i:j].replace("\x00", "\ufffd")  # a NUL byte in a literal is data
            out.append(body if backslash else body.replace("\\", "\\\\"))
            i = j
        elif c == '"':  # ANSI_QUOTES: an identifier
            j = _quoted_end(sql, i, False)
            name = sql[i + 1 : j - 1].replace('""', '"')
            out.append("`" + name.replace("`", "``") + "`")
            i = j
        elif c == "`":
            j = _quoted_end(sql, i, False)
            out.append(sql[i:j])
            i = j
        elif c == "#" or (c == "-" and sql.startswith("--", i) and _dash_comment(sql, i)):
            j = sql.find("\n", i)
            j = n if j < 0 else j
            if exec_end >= 0 and j > exec_end:
                raise Ambiguous("a line comment runs past an executable comment's `*/`")
            out.append(" ")
            i = j
        elif c == "-" and sql.startswith("--", i):
            out.append("- ")
            i += 1
        elif c == "/" and sql.startswith("/*", i):
            marker = _EXEC_COMMENT.match(sql, i)
            if exec_end >= 0:
                raise Ambiguous("a comment inside an executable comment")
            end = sql.find("*/", i + 2)
            if end < 0:
                raise Ambiguous("unterminated comment")
            if marker is not None:
                exec_end = end
                i = marker.end()
            else:
                i = end + 2
            out.append(" ")
        elif c == "\x00":
            raise Ambiguous("a NUL byte outside quotes")
        elif ord(c) > 127 and c.isspace():
            raise Ambiguous(f"non-ASCII whitespace U+{ord(c):04X} outside quotes")
        else:
            out.append(c)
            i += 1
    if exec_end >= 0:
        raise Ambiguous("unterminated executable comment")
    return "".join(out)


_MODE: ContextVar[SqlMode] = ContextVar("mysql_sql_mode", default=DEFAULT_MODE)


def _tokenize(sql: str) -> list[Token]:
    return list(_DIALECT.tokenize(sql))


def tokenize(sql: str) -> list[Token]:
    """The tokens of `sql` as the server reads it in the default sql_mode (for the
    literal-insensitive cache level, policies/cache.py). Raises on ambiguous or unreadable text."""
    return _tokenize(canonical(sql))


def _split(tokens: Sequence[Token]) -> list[list[Token]]:
    statements: list[list[Token]] = []
    current: list[Token] = []
    for token in tokens:
        if token.token_type is TokenType.SEMICOLON:
            if current:
                statements.append(current)
            current = []
        else:
            current.append(token)
    if current:
        statements.append(current)
    return statements


def _word(token: Token) -> str:
    """A token's text upper-cased, or "" for quoted strings/identifiers (never keywords)."""
    return "" if token.token_type in _QUOTED else token.text.upper()


class _Stmt:
    """One statement: its tokens, its words (with sqlglot's raw command text re-tokenized) and text."""

    __slots__ = ("text", "tokens", "words")

    def __init__(self, tokens: list[Token], sql: str) -> None:
        first = tokens[0]
        if first.token_type in _COMMAND_TOKENS:
            # sqlglot keeps the rest of a "command" (CALL, PREPARE, LOCK TABLES, REPLACE, …) as one
            # raw string token; re-tokenize it so its words are words again. Only the head token's
            # position is then meaningful; handlers of command heads do not slice by position.
            rest = tokens[1].text if len(tokens) > 1 else ""
            self.text = f"{first.text} {rest}"
            self.tokens = [first, *_tokenize(rest)]
        else:
            self.text = sql[first.start : tokens[-1].end + 1]
            self.tokens = tokens
        # A multi-word command head ("LOCK TABLES") stays one word, aligned with its one token.
        self.words = [" ".join(_word(token).split()) for token in self.tokens]

    def word(self, index: int) -> str:
        return self.words[index] if index < len(self.words) else ""

    def has(self, *words: str) -> bool:
        """Whether `words` occur as consecutive words anywhere in the statement."""
        span = len(words)
        return any(tuple(self.words[i : i + span]) == words for i in range(len(self.words) - span + 1))


def _parse(text: str, tokens: list[Token] | None = None) -> exp.Expr:
    """Parse one statement (its tokens if already lexed) with sqlglot's MySQL grammar.

    Raises ParseError/TokenError on failure."""
    if tokens is None:
        tokens = _tokenize(text)
    parsed = [node for node in _DIALECT.parser().parse(tokens, text) if node is not None]
    if len(parsed) != 1:
        raise ParseError(f"expected one statement, got {len(parsed)}")
    return parsed[0]


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "parse error"


# --- the AST walk -----------------------------------------------------------------------------------

_FUNCTIONS: dict[str, tuple[Kind, str]] = {
    "LOAD_FILE": (Kind.PRIVILEGED, "LOAD_FILE() reads a server file"),
    "SYS_EXEC": (Kind.PRIVILEGED, "sys_exec() runs a server process"),
    "SYS_EVAL": (Kind.PRIVILEGED, "sys_eval() runs a server process"),
    "GET_LOCK": (Kind.SESSION, "GET_LOCK() takes a named lock"),
    "RELEASE_LOCK": (Kind.SESSION, "RELEASE_LOCK() releases a named lock"),
    "RELEASE_ALL_LOCKS": (Kind.SESSION, "RELEASE_ALL_LOCKS() releases named locks"),
    "NEXTVAL": (Kind.WRITE, "NEXTVAL() advances a sequence"),
    "SETVAL": (Kind.WRITE, "SETVAL() sets a sequence"),
}
_DML_NODES = (exp.Insert, exp.Update, exp.Delete, exp.Merge)

# Functions a read may call (DESIGN.md §3: an allowlist; unknown functions fail closed). Built-ins
# of MySQL 8 and MariaDB 10/11 vetted by category: they compute values from their arguments or
# the session and touch no table, file, lock, replication state or other session. Some are also
# classified in `_FUNCTIONS` (named locks are session; LOAD_FILE is privileged). Words of the
# grammar that sqlglot's tokenizer hands over as plain names before "(" are listed with them.
# Deliberately absent: BENCHMARK (burns the server's CPU for as long as the caller likes),
# MASTER_POS_WAIT / MASTER_GTID_WAIT / SOURCE_POS_WAIT / WAIT_FOR_EXECUTED_GTID_SET (replication
# waits), ROLES_GRAPHML (reads the grant tables), sys_exec/sys_eval-style UDFs, and every
# stored or loadable function. SLEEP is allowed: it only holds the caller's own statement.
_SAFE_FUNCTION_GROUPS = {
    "string": """ASCII BIN BIT_LENGTH CHAR CHAR_LENGTH CHARACTER_LENGTH CHR CONCAT CONCAT_WS ELT
        EXPORT_SET EXTRACTVALUE FIELD FIND_IN_SET FORMAT FROM_BASE64 HEX INSERT INSTR LCASE LEFT
        LENGTH LENGTHB LOCATE LOWER LPAD LTRIM MAKE_SET MID NATURAL_SORT_KEY OCT OCTET_LENGTH ORD
        POSITION QUOTE REGEXP_INSTR REGEXP_LIKE REGEXP_REPLACE REGEXP_SUBSTR REPEAT REPLACE REVERSE
        RIGHT RPAD RTRIM SFORMAT SOUNDEX SPACE STRCMP SUBSTR SUBSTRING SUBSTRING_INDEX TO_BASE64
        TO_CHAR TRIM UCASE UNHEX UPPER UPDATEXML WEIGHT_STRING CAST CONVERT COLLATION CHARSET
        COERCIBILITY COLUMN_ADD COLUMN_CHECK COLUMN_CREATE COLUMN_DELETE COLUMN_EXISTS COLUMN_GET
        COLUMN_JSON COLUMN_LIST""",
    "numeric": """ABS ACOS ASIN ATAN ATAN2 BIT_COUNT CEIL CEILING CONV COS COT CRC32 CRC32C DEGREES
        EXP FLOOR GREATEST LEAST LN LOG LOG10 LOG2 MOD PI POW POWER RADIANS RAND ROUND SIGN SIN
        SQRT TAN TRUNCATE""",
    "date and time": """ADDDATE ADDTIME ADD_MONTHS CONVERT_TZ CURDATE CURRENT_DATE CURRENT_TIME
        CURRENT_TIMESTAMP CURTIME DATE DATE_ADD DATE_FORMAT DATE_SUB DATEDIFF DAY DAYNAME
        DAYOFMONTH DAYOFWEEK DAYOFYEAR EXTRACT FORMAT_PICO_TIME FROM_DAYS FROM_UNIXTIME GET_FORMAT
        HOUR LAST_DAY LOCALTIME LOCALTIMESTAMP MAKEDATE MAKETIME MICROSECOND MINUTE MONTH MONTHNAME
        NOW PERIOD_ADD PERIOD_DIFF QUARTER SEC_TO_TIME SECOND STR_TO_DATE SUBDATE SUBTIME SYSDATE
        TIME TIME_FORMAT TIME_TO_SEC TIMEDIFF TIMESTAMP TIMESTAMPADD TIMESTAMPDIFF TO_DAYS
        TO_SECONDS UNIX_TIMESTAMP UTC_DATE UTC_TIME UTC_TIMESTAMP WEEK WEEKDAY WEEKOFYEAR YEAR
        YEARWEEK""",
    "aggregate and window": """ANY_VALUE AVG BIT_AND BIT_OR BIT_XOR COUNT GROUP_CONCAT
        JSON_ARRAYAGG JSON_OBJECTAGG MAX MEDIAN MIN STD STDDEV STDDEV_POP STDDEV_SAMP SUM VAR_POP
        VAR_SAMP VARIANCE PERCENTILE_CONT PERCENTILE_DISC CUME_DIST DENSE_RANK FIRST_VALUE LAG
        LAST_VALUE LEAD NTH_VALUE NTILE PERCENT_RANK RANK ROW_NUMBER GROUPING""",
    "control flow": "IF IFNULL NULLIF COALESCE ISNULL NVL NVL2 INTERVAL DEFAULT VALUES VALUE",
    "json": """JSON_ARRAY JSON_ARRAY_APPEND JSON_ARRAY_INSERT JSON_ARRAY_INTERSECT JSON_COMPACT
        JSON_CONTAINS JSON_CONTAINS_PATH JSON_DEPTH JSON_DETAILED JSON_EQUALS JSON_EXISTS
        JSON_EXTRACT JSON_INSERT JSON_KEY_VALUE JSON_KEYS JSON_LENGTH JSON_LOOSE JSON_MERGE
        JSON_MERGE_PATCH JSON_MERGE_PRESERVE JSON_NORMALIZE JSON_OBJECT JSON_OBJECT_FILTER_KEYS
        JSON_OBJECT_TO_ARRAY JSON_OVERLAPS JSON_PRETTY JSON_QUERY JSON_QUOTE JSON_REMOVE
        JSON_REPLACE JSON_SCHEMA_VALID JSON_SCHEMA_VALIDATION_REPORT JSON_SEARCH JSON_SET
        JSON_STORAGE_FREE JSON_STORAGE_SIZE JSON_TABLE JSON_TYPE JSON_UNQUOTE JSON_VALID
        JSON_VALUE""",
    "session information": """CONNECTION_ID CURRENT_ROLE CURRENT_USER DATABASE FOUND_ROWS
        ICU_VERSION LAST_INSERT_ID ROW_COUNT SCHEMA SESSION_USER SYSTEM_USER USER VERSION""",
    "hashing and encryption": """AES_DECRYPT AES_ENCRYPT COMPRESS KDF MD5 RANDOM_BYTES SHA SHA1
        SHA2 STATEMENT_DIGEST STATEMENT_DIGEST_TEXT UNCOMPRESS UNCOMPRESSED_LENGTH
        VALIDATE_PASSWORD_STRENGTH""",
    "identifiers and addresses": """BIN_TO_UUID UUID_TO_BIN IS_UUID UUID UUID_SHORT SYS_GUID
        INET_ATON INET_NTOA INET6_ATON INET6_NTOA IS_IPV4 IS_IPV6 IS_IPV4_COMPAT IS_IPV4_MAPPED
        NAME_CONST""",
    "spatial constructors": """POINT LINESTRING POLYGON MULTIPOINT MULTILINESTRING MULTIPOLYGON
        GEOMETRYCOLLECTION GEOMCOLLECTION""",
    "sequences (read)": "LASTVAL",
    "named locks (session, see _FUNCTIONS)": """GET_LOCK RELEASE_LOCK RELEASE_ALL_LOCKS IS_FREE_LOCK
        IS_USED_LOCK""",
    "sleep": "SLEEP",
    "grammar words before (": "MATCH AGAINST COLUMNS NESTED PATH ORDINALITY OVER WITHIN",
}
_SAFE_FUNCTIONS = frozenset(name for group in _SAFE_FUNCTION_GROUPS.values() for name in group.split())
_SAFE_FUNCTION_PREFIXES = ("ST_", "MBR")  # spatial functions: pure
_CALL_NAMES = frozenset({TokenType.VAR, TokenType.IDENTIFIER})
# Keywords (as sqlglot's tokenizer types them) that precede "(" in MySQL's grammar without being a
# function call.
_GRAMMAR_WORDS = """ALL AND ANY AS BETWEEN BINARY BY CASE COLLATE CROSS DISTINCT DISTINCTROW DIV ELSE
    END ESCAPE EXCEPT EXISTS FOR FORCE FROM FULL HAVING IGNORE IN INDEX INNER INTERSECT INTERVAL INTO
    IS JOIN KEY LATERAL LIKE LIMIT NATURAL NOT NULL OFFSET ON OR ORDINALITY OUTER OVER PARTITION
    RECURSIVE REGEXP RLIKE ROW ROWS SELECT SEPARATOR SET SOME TABLE THEN UNION UNIQUE USE USING VALUES
    WHEN WHERE WINDOW WITH XOR"""
_GRAMMAR_BEFORE_PAREN = frozenset(_GRAMMAR_WORDS.split())
# Type names that take "(" where a read may name a type (CAST/CONVERT); reserved words, so never
# an unqualified stored function. (sqlglot's own type tokens include LIST, STRUCT, MAP …, which
# MySQL does not reserve: a stored function may be called so.)
_TYPE_NAMES = """CHAR NCHAR BINARY VARCHAR VARBINARY DECIMAL DEC NUMERIC FIXED FLOAT DOUBLE REAL DATETIME
    TIME TIMESTAMP INT INTEGER SIGNED UNSIGNED"""
_TYPE_WORDS = frozenset(_TYPE_NAMES.split())


def _closing(tokens: Sequence[Token], open_at: int) -> int:
    """Index of the ")" matching the "(" at `open_at` (len(tokens) if none)."""
    depth = 0
    for index in range(open_at, len(tokens)):
        kind = tokens[index].token_type
        if kind is TokenType.L_PAREN:
            depth += 1
        elif kind is TokenType.R_PAREN:
            depth -= 1
            if depth == 0:
                return index
    return len(tokens)


def _check_calls(stmt: _Stmt, facts: _Facts) -> None:
    """A statement that would otherwise pass (read, session, transaction) may call only allowlisted
    functions: a name followed by "(" that is qualified (`db.f(`, a stored function), backquoted,
    or not a vetted built-in makes it unknown, with the function named in the reason. A keyword
    before "(" must be a vetted built-in, a type name or a word of the grammar."""
    tokens = stmt.tokens
    for index in range(len(tokens) - 1):
        token = tokens[index]
        if tokens[index + 1].token_type is not TokenType.L_PAREN:
            continue
        upper = token.text.upper()
        if token.token_type not in _CALL_NAMES:
            if (
                upper in _TYPE_WORDS
                or not upper.replace("_", "").isalnum()
                or upper in _SAFE_FUNCTIONS
                or upper in _GRAMMAR_BEFORE_PAREN
            ):
                continue
            facts.note(Kind.UNKNOWN, f"function {token.text}() is not known to be safe")
            return
        before = tokens[index - 1] if index else None
        if before is not None and before.token_type is TokenType.DOT and index >= 2:
            # A stored function: unvetted (decide() fails the read closed unless the source trusts it).
            facts.unvetted.add(f"{tokens[index - 2].text.strip('`')}.{token.text.strip('`')}".lower())
            continue
        if before is not None and _word(before) == "AS":
            continue  # a derived table's column list: `(SELECT …) AS d (a, b)`
        after = _closing(tokens, index + 1)
        if (
            token.text in facts.ctes
            and after + 2 < len(tokens)
            and _word(tokens[after + 1]) == "AS"
            and tokens[after + 2].token_type is TokenType.L_PAREN
        ):
            continue  # a CTE's column list: `WITH c (a, b) AS (…)`
        if token.token_type is TokenType.IDENTIFIER or not (
            upper in _SAFE_FUNCTIONS or upper.startswith(_SAFE_FUNCTION_PREFIXES)
        ):
            facts.unvetted.add(token.text.strip("`").lower())


def _table_name(node: exp.Table) -> str | None:
    parts = [node.args.get(key) for key in ("catalog", "db", "this")]
    if not isinstance(parts[2], exp.Identifier):
        return None  # INTO @var, table functions, …
    return ".".join(part.name for part in parts if isinstance(part, exp.Identifier))


def _function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).upper()
    return node.sql_name().upper()


def _scan(root: exp.Expr, facts: _Facts) -> None:
    """Walk every node under `root` (iteratively): tables, CTE names, and what hides in expressions."""
    for node in root.walk():
        if isinstance(node, exp.Table):
            name = _table_name(node)
            if name:
                facts.tables.add(name)
                parts = name.lower().split(".")
                if parts[-1] == "processlist" or (len(parts) > 1 and parts[-2] == "performance_schema"):
                    facts.note(Kind.PRIVILEGED, f"{name} {OTHER_SESSIONS_WHY}")
        elif isinstance(node, exp.CTE):
            facts.ctes.add(node.alias_or_name)
        elif isinstance(node, exp.Lock):
            facts.note(Kind.WRITE, "SELECT … FOR UPDATE/SHARE takes row locks")
        elif isinstance(node, exp.Into):
            if isinstance(node.this, exp.Table) and isinstance(node.this.this, exp.Parameter):
                facts.note(Kind.SESSION, "SELECT … INTO @var sets session variables")
            else:
                facts.note(Kind.WRITE, "SELECT … INTO")
        elif isinstance(node, exp.PropertyEQ) and isinstance(node.this, exp.Parameter):
            facts.note(Kind.SESSION, "assigns a user variable")
        elif isinstance(node, exp.Func):
            found = _FUNCTIONS.get(_function_name(node))
            if found is not None:
                facts.note(*found)
        elif isinstance(node, _DML_NODES):  # WITH … UPDATE, or DML nested anywhere
            facts.note(Kind.WRITE, node.key.upper())
        elif isinstance(node, exp.Command):
            facts.note(Kind.UNKNOWN, f"unmodelled {node.name} inside a statement")


def _parsed(
    text: str,
    facts: _Facts,
    expected: tuple[type[exp.Expr], ...],
    tokens: list[Token] | None = None,
) -> exp.Expr | None:
    """Parse `text` and walk it; an unexpected root (e.g. sqlglot's Command fallback) is unknown."""
    try:
        root = _parse(text, tokens)
    except (ParseError, TokenError) as exc:
        facts.note(Kind.UNKNOWN, _first_line(str(exc)))
        return None
    if not isinstance(root, expected):
        facts.note(Kind.UNKNOWN, f"unrecognised {type(root).__name__} statement")
        return None
    _scan(root, facts)
    return root


# --- handlers ---------------------------------------------------------------------------------------

_Handler = Callable[[_Stmt, _Facts], None]
_QUERIES = (exp.Query, exp.Values)


def _fixed(kind: Kind, reason: str) -> _Handler:
    def handle(stmt: _Stmt, facts: _Facts) -> None:
        facts.note(kind, reason)

    return handle


def _query(stmt: _Stmt, facts: _Facts) -> None:
    """SELECT / WITH / TABLE / VALUES / (…): a read unless something inside says otherwise."""
    words = stmt.words
    for index, word in enumerate(words):
        if word == "INTO" and stmt.word(index + 1) in {"OUTFILE", "DUMPFILE"}:
            facts.note(Kind.PRIVILEGED, f"SELECT … INTO {stmt.word(index + 1)} writes a server file")
            prefix = stmt.text[: stmt.tokens[index].start - stmt.tokens[0].start]
            sub = _Facts()  # tables, best effort
            _parsed(prefix, sub, _QUERIES)
            facts.tables |= sub.tables
            return
    into = _trailing_into_vars(stmt)
    if into is not None:
        facts.note(Kind.SESSION, "SELECT … INTO @var sets session variables")
        _parsed(into, facts, _QUERIES)
    else:
        _parsed(stmt.text, facts, (*_QUERIES, *_DML_NODES), stmt.tokens)


def _trailing_into_vars(stmt: _Stmt) -> str | None:
    """`SELECT … FROM t INTO @a, @b` (INTO after FROM, which sqlglot rejects): the text without it."""
    words, tokens = stmt.words, stmt.tokens
    for index in range(len(words) - 1, 0, -1):
        if words[index] == "INTO" and tokens[index + 1 : index + 2] and words[index + 1] == "@":
            rest = words[index + 1 :]
            if all(
                word in {"@", ","} or tokens[index + 1 + k].token_type is TokenType.VAR
                for k, word in enumerate(rest)
            ):
                return stmt.text[: tokens[index].start - tokens[0].start]
            return None
    return None


def _dml(label: str) -> _Handler:
    def handle(stmt: _Stmt, facts: _Facts) -> None:
        facts.note(Kind.WRITE, label)
        _parsed(stmt.text, facts, _DML_NODES, stmt.tokens)

    return handle


def _replace(stmt: _Stmt, facts: _Facts) -> None:
    facts.note(Kind.WRITE, "REPLACE")
    # REPLACE has INSERT's grammar (without ON DUPLICATE KEY UPDATE), which sqlglot models.
    _parsed("INSERT" + stmt.text[len("REPLACE") :], facts, (exp.Insert,))


def _do(stmt: _Stmt, facts: _Facts) -> None:
    facts.note(Kind.WRITE, "DO")
    # DO evaluates expressions like SELECT without a result; parse it as one to see its functions.
    _parsed("SELECT" + stmt.text[len("DO") :], facts, (exp.Select,))


def _call(stmt: _Stmt, facts: _Facts) -> None:
    facts.note(Kind.WRITE, "CALL")
    # `CALL p(args)` reads like a function call: parse it as `SELECT p(args)` to see guarded functions
    # in the arguments. A parse failure leaves it a write (the keyword decided it).
    sub = _Facts()
    if _parsed("SELECT " + stmt.text[len("CALL") :], sub, (exp.Select,)) is not None:
        facts.note(sub.kind, sub.reason)
    facts.sets.update(_UNSEEN_SETTINGS)  # a routine may SET sql_mode or NAMES: read them back after


def _truncate(stmt: _Stmt, facts: _Facts) -> None:
    facts.note(Kind.WRITE, "TRUNCATE")
    _parsed(stmt.text, facts, (exp.TruncateTable,), stmt.tokens)


# SET ------------------------------------------------------------------------------------------------

_READ_ONLY_VARIABLES = frozenset({"transaction_read_only", "tx_read_only"})
_PRIVILEGED_VARIABLES = frozenset(
    {
        "sql_log_bin",
        "sql_log_off",
        "password",
        "gtid_next",
        "gtid_purged",
        "pseudo_thread_id",
        "pseudo_slave_mode",
        "pseudo_replica_mode",
        "read_only",
        "super_read_only",
        "offline_mode",
        "sql_replica_skip_counter",
        "sql_slave_skip_counter",
        "rand_seed1",
        "insert_id",
    }
)
_GLOBAL_SCOPES = frozenset({"GLOBAL", "PERSIST", "PERSIST_ONLY"})
_TRUE_VALUES = frozenset({"1", "ON", "TRUE"})


def _is_true(value: exp.Expr | None) -> bool:
    """Whether `value` is a constant MySQL reads as boolean true for a system variable."""
    if isinstance(value, exp.Boolean):
        return bool(value.this)
    if isinstance(value, exp.Literal | exp.Var):
        return str(value.this).upper() in _TRUE_VALUES
    if isinstance(value, exp.Column) and not value.table:
        return value.name.upper() in _TRUE_VALUES
    return False


SQL_MODE = "sql_mode"
CLIENT_CHARSET = "character_set_client"
# Session variables that change how the server lexes later text (DESIGN.md §3, binding rules).
_LEXING_VARIABLES = {SQL_MODE: SQL_MODE, CLIENT_CHARSET: CLIENT_CHARSET}


# Statements that may change the lexing settings in a way the classifier cannot see (a routine's
# body, text from a variable) report them with unknown values: the session reads them back.
_UNSEEN_SETTINGS: dict[str, str | None] = {SQL_MODE: None, CLIENT_CHARSET: None}


def _literal_setting(value: exp.Expr | None) -> str | None:
    """A SET value the classifier can read (`'ANSI_QUOTES'`, `utf8mb4`), lower-cased for charsets
    by the caller; None for DEFAULT, variables and expressions."""
    if isinstance(value, exp.Literal) and value.is_string:
        return str(value.this)
    if isinstance(value, exp.Var) and str(value.this).upper() != "DEFAULT":
        return str(value.this)
    if isinstance(value, exp.Column) and not value.table and not value.this.args.get("quoted"):
        return value.name if value.name.upper() != "DEFAULT" else None
    if isinstance(value, exp.Column) and not value.table:
        return value.name
    return None


def _set_item(item: exp.Expr, facts: _Facts) -> None:
    if not isinstance(item, exp.SetItem):
        facts.note(Kind.UNKNOWN, f"unrecognised SET item {type(item).__name__}")
        return
    scope = str(item.args.get("kind") or "").upper()
    if scope in {"NAMES", "CHARACTER SET"}:
        facts.note(Kind.SESSION, f"SET {scope}")
        facts.sets[CLIENT_CHARSET] = _literal_setting(item.this)
        return
    if scope == "TRANSACTION":
        modes = " ".join(str(mode.name).upper() for mode in item.expressions)
        if item.args.get("global_"):
            facts.note(Kind.PRIVILEGED, "SET GLOBAL TRANSACTION")
        elif "READ WRITE" in modes:
            facts.note(Kind.PRIVILEGED, "SET TRANSACTION READ WRITE lifts the read-only backstop")
        else:
            facts.note(Kind.SESSION, "SET TRANSACTION")
        return
    assignment = item.this
    if not isinstance(assignment, exp.EQ | exp.PropertyEQ):
        facts.note(Kind.UNKNOWN, "unrecognised SET form")
        return
    target, value = assignment.this, assignment.expression
    _scan(value, facts)  # LOAD_FILE() and friends in the value
    if isinstance(target, exp.Parameter):
        facts.note(Kind.SESSION, "SET @user_variable")
        return
    if isinstance(target, exp.SessionParameter):
        scope = str(target.args.get("kind") or scope).upper()
        name = target.name.lower()
    elif isinstance(target, exp.Column):
        name = target.name.lower()
    else:
        facts.note(Kind.UNKNOWN, f"unrecognised SET target {type(target).__name__}")
        return
    if name in _LEXING_VARIABLES:
        facts.sets[_LEXING_VARIABLES[name]] = _literal_setting(value)
    if scope in _GLOBAL_SCOPES:
        facts.note(Kind.PRIVILEGED, f"SET {scope} {name} changes the server")
    elif name in _READ_ONLY_VARIABLES:
        if _is_true(value):
            facts.note(Kind.SESSION, f"SET {name} on")
        else:
            facts.note(Kind.PRIVILEGED, f"SET {name} off lifts the read-only backstop")
    elif name in _PRIVILEGED_VARIABLES:
        facts.note(Kind.PRIVILEGED, f"SET {name} needs administrative privileges")
    elif name == "autocommit":
        facts.note(Kind.TRANSACTION, "SET autocommit")
    else:
        facts.note(Kind.SESSION, f"SET {name}")


def _set(stmt: _Stmt, facts: _Facts) -> None:
    second = stmt.word(1)
    if second in {"ROLE", "PASSWORD"} or (second == "DEFAULT" and stmt.word(2) == "ROLE"):
        label = "SET DEFAULT ROLE" if second == "DEFAULT" else f"SET {second}"
        facts.note(Kind.PRIVILEGED, f"{label} changes who the session is")
        return
    if second == "STATEMENT":
        # MariaDB: SET STATEMENT var=value[, ...] FOR stmt — the stricter of the assignments (as a
        # session SET) and the inner statement. FOR is found as a word (never inside a string).
        at = next((i for i in range(2, len(stmt.words)) if stmt.words[i] == "FOR"), None)
        if at is None or at < 3:
            facts.note(Kind.UNKNOWN, "SET STATEMENT without FOR")
            return
        base = stmt.tokens[0].start
        assignments = stmt.text[stmt.tokens[2].start - base : stmt.tokens[at].start - base]
        facts.absorb(_statement_text(f"SET SESSION {assignments}"))
        facts.absorb(_statement_text(stmt.text[stmt.tokens[at].end + 1 - base :]))
        return
    if second == "RESOURCE":
        facts.note(Kind.UNKNOWN, f"SET {second} is not classified")
        return
    sub = _Facts()
    root = _parsed(stmt.text, sub, (exp.Set,), stmt.tokens)
    if root is None:
        facts.absorb(sub)  # unknown, with the parser's reason
        return
    for item in root.expressions:
        _set_item(item, facts)


# transactions ---------------------------------------------------------------------------------------


def _start(stmt: _Stmt, facts: _Facts) -> None:
    if stmt.word(1) != "TRANSACTION":
        facts.note(Kind.PRIVILEGED, f"START {stmt.word(1)} controls replication")
    elif stmt.has("READ", "WRITE"):
        facts.note(Kind.PRIVILEGED, "START TRANSACTION READ WRITE lifts the read-only backstop")
    else:
        facts.note(Kind.TRANSACTION, "START TRANSACTION")


def _begin(stmt: _Stmt, facts: _Facts) -> None:
    if stmt.word(1) not in {"", "WORK"}:  # BEGIN NOT ATOMIC … is a compound statement
        facts.note(Kind.UNKNOWN, f"unrecognised BEGIN {stmt.word(1)}")
    else:
        facts.note(Kind.TRANSACTION, "BEGIN")


def _release(stmt: _Stmt, facts: _Facts) -> None:
    if stmt.word(1) == "SAVEPOINT":
        facts.note(Kind.TRANSACTION, "RELEASE SAVEPOINT")
    else:
        facts.note(Kind.UNKNOWN, f"unrecognised RELEASE {stmt.word(1)}")


# wrappers -------------------------------------------------------------------------------------------

_EXPLAINABLE = frozenset({"SELECT", "WITH", "TABLE", "VALUES", "(", "INSERT", "REPLACE", "UPDATE", "DELETE"})


def _inner(stmt: _Stmt, start: int) -> _Facts | None:
    """Classify the statement inside a wrapper (EXPLAIN …, ANALYZE …), found at or after `start`."""
    for index in range(start, len(stmt.words)):
        if stmt.words[index] in _EXPLAINABLE:
            offset = stmt.tokens[index].start - stmt.tokens[0].start
            return _statement_text(stmt.text[offset:])
    return None


def _explain(stmt: _Stmt, facts: _Facts) -> None:
    analyze = stmt.word(1) == "ANALYZE"
    inner = _inner(stmt, 1)
    if inner is None:  # DESCRIBE t [col], EXPLAIN FOR CONNECTION n: tables are best effort
        sub = _Facts()
        if _parsed(stmt.text, sub, (exp.Describe,)) is not None:
            facts.tables |= sub.tables
        return
    facts.tables |= inner.tables
    facts.ctes |= inner.ctes
    if analyze:
        facts.note(inner.kind, f"EXPLAIN ANALYZE runs {inner.reason}" if inner.reason else "")
    elif inner.kind is Kind.PRIVILEGED:
        facts.note(inner.kind, inner.reason)


def _analyze(stmt: _Stmt, facts: _Facts) -> None:
    inner = None if stmt.word(1) in {"TABLE", "NO_WRITE_TO_BINLOG", "LOCAL"} else _inner(stmt, 1)
    if inner is None:
        facts.note(Kind.WRITE, "ANALYZE TABLE")
        start = 2 if stmt.word(1) == "TABLE" else 3
        facts.tables |= _names_after(stmt, start)
        return
    # MariaDB's ANALYZE <statement> runs it.
    facts.absorb(inner)
    facts.note(inner.kind, f"ANALYZE runs {inner.reason}" if inner.reason else "")


# Statement names that are keywords of PREPARE/EXECUTE's own grammar: `EXECUTE IMMEDIATE 'text'`
# must never be mistaken for executing a statement named "immediate".
_KEYWORD_STATEMENT_NAMES = frozenset({"IMMEDIATE", "USING", "FROM"})


def _statement_name(stmt: _Stmt, facts: _Facts) -> str | None:
    """The (case-insensitive, so lower-cased) statement name of PREPARE/EXECUTE/DEALLOCATE."""
    index = 2 if stmt.words[0] in {"DEALLOCATE", "DROP"} else 1
    token = stmt.tokens[index] if index < len(stmt.tokens) else None
    if token is None or (
        token.token_type not in (TokenType.VAR, TokenType.IDENTIFIER) and not token.text.isidentifier()
    ):
        facts.note(Kind.UNKNOWN, f"{stmt.words[0]} without a statement name")
        return None
    if token.token_type is not TokenType.IDENTIFIER and token.text.upper() in _KEYWORD_STATEMENT_NAMES:
        facts.note(Kind.UNKNOWN, f"{stmt.words[0]} of a statement named {token.text.upper()}, a keyword")
        return None
    return token.text.lower()


def _text_source(tokens: Sequence[Token], label: str, facts: _Facts) -> Classification | None:
    """The statement `PREPARE … FROM 'text'` / `EXECUTE IMMEDIATE 'text'` gives the server, classified
    under the session's sql_mode (it is new text to the server); None (unknown) if not a literal."""
    literals = [token for token in tokens if token.token_type is not TokenType.INTRODUCER]
    if not literals or any(token.token_type is not TokenType.STRING for token in literals):
        facts.note(Kind.UNKNOWN, f"{label} from a variable or expression: text not visible")
        return None
    inner = classify("".join(token.text for token in literals), _MODE.get())
    if inner.statements != 1:
        facts.note(Kind.UNKNOWN, f"{label} of {inner.statements} statements")
        return None
    facts.tables |= set(inner.tables)
    facts.schemas |= set(inner.schemas)
    facts.sets.update(inner.sets)
    facts.kill = facts.kill or inner.kill  # the session translates or refuses it
    facts.uses = inner.uses or facts.uses
    facts.note(inner.kind, inner.reason)
    return inner


def _prepare(stmt: _Stmt, facts: _Facts) -> None:
    name = _statement_name(stmt, facts)
    if name is None:
        return
    facts.prepares = name
    if stmt.word(2) != "FROM":
        facts.note(Kind.UNKNOWN, f"PREPARE {name} without FROM")
        return
    _text_source(stmt.tokens[3:], f"PREPARE {name}", facts)


def _execute(stmt: _Stmt, facts: _Facts) -> None:
    if stmt.word(1) == "IMMEDIATE":
        # MariaDB: EXECUTE IMMEDIATE 'text' [USING …] runs the text at once, like PREPARE + EXECUTE.
        using = next((i for i in range(2, len(stmt.words)) if stmt.words[i] == "USING"), len(stmt.words))
        if _text_source(stmt.tokens[2:using], "EXECUTE IMMEDIATE", facts) is None:
            facts.sets.update(_UNSEEN_SETTINGS)  # text not visible: it may change them
        facts.note(Kind.SESSION, "EXECUTE IMMEDIATE")
        return
    name = _statement_name(stmt, facts)
    if name is None:
        return
    facts.executes = name
    facts.note(Kind.UNKNOWN, f"EXECUTE {name}: what it runs was recorded at PREPARE")


def _deallocate(stmt: _Stmt, facts: _Facts) -> None:
    facts.note(Kind.SESSION, "DEALLOCATE PREPARE")


# keyword-decided statements -------------------------------------------------------------------------


def _name_at(tokens: Sequence[Token], index: int) -> tuple[str, int]:
    """The (possibly qualified) name starting at `tokens[index]` and the index after it; "" if none."""
    if index >= len(tokens) or tokens[index].token_type in _QUOTED - {TokenType.IDENTIFIER}:
        return "", index + 1
    token = tokens[index]
    if token.token_type is not TokenType.IDENTIFIER and not token.text.replace("$", "_").isidentifier():
        return "", index + 1
    parts = [token.text]
    index += 1
    while index + 1 < len(tokens) and tokens[index].token_type is TokenType.DOT:
        parts.append(tokens[index + 1].text)
        index += 2
    return ".".join(parts), index


def _names_after(stmt: _Stmt, start: int, limit: int | None = None) -> set[str]:
    """The leading name of each comma-separated item from `tokens[start]` (best effort, for `tables`)."""
    names: list[str] = []
    tokens = stmt.tokens
    index = start
    depth = 0
    expect_name = True
    while index < len(tokens) and (limit is None or len(names) < limit):
        kind = tokens[index].token_type
        if expect_name and depth == 0:
            name, index = _name_at(tokens, index)
            if name:
                names.append(name)
            expect_name = False
            continue
        if kind is TokenType.L_PAREN:
            depth += 1
        elif kind is TokenType.R_PAREN:
            depth -= 1
        elif kind is TokenType.COMMA and depth == 0:
            expect_name = True
        index += 1
    return set(names)


_OPTIONS = frozenset({"QUICK", "FAST", "MEDIUM", "EXTENDED", "CHANGED", "FOR", "UPGRADE", "USE_FRM"})


def _table_maintenance(label: str, kind: Kind) -> _Handler:
    def handle(stmt: _Stmt, facts: _Facts) -> None:
        facts.note(kind, label)
        start = 1
        while stmt.word(start) in {"NO_WRITE_TO_BINLOG", "LOCAL", "TABLE", "TABLES"}:
            start += 1
        facts.tables |= {name for name in _names_after(stmt, start) if name.upper() not in _OPTIONS}

    return handle


def _lock(stmt: _Stmt, facts: _Facts) -> None:
    head = stmt.words[0]
    if head == "LOCK" and stmt.word(1) == "INSTANCE":
        facts.note(Kind.PRIVILEGED, "LOCK INSTANCE FOR BACKUP")
    elif head == "LOCK TABLES" or stmt.word(1) in {"TABLE", "TABLES"}:
        facts.note(Kind.WRITE, "LOCK TABLES")
        facts.tables |= _names_after(stmt, 1 if head == "LOCK TABLES" else 2)
    else:
        facts.note(Kind.UNKNOWN, f"unrecognised LOCK {stmt.word(1)}")


def _unlock(stmt: _Stmt, facts: _Facts) -> None:
    facts.note(Kind.SESSION, " ".join(stmt.words[:2]) if stmt.words[0] == "UNLOCK" else stmt.words[0])


def _load(stmt: _Stmt, facts: _Facts) -> None:
    what = stmt.word(1)
    if what not in {"DATA", "XML"}:
        facts.note(Kind.WRITE, f"LOAD {what}")
        return
    if "TABLE" in stmt.words:
        facts.tables |= _names_after(stmt, stmt.words.index("TABLE") + 1, limit=1)
    if "LOCAL" in stmt.words[: stmt.words.index("INFILE") if "INFILE" in stmt.words else len(stmt.words)]:
        facts.note(Kind.WRITE, f"LOAD {what} LOCAL INFILE")
    else:
        facts.note(Kind.PRIVILEGED, f"LOAD {what} INFILE reads a server file")


def _handler(stmt: _Stmt, facts: _Facts) -> None:
    facts.note(Kind.WRITE, "HANDLER keeps a low-level table handle")
    if stmt.word(2) == "OPEN":
        facts.tables |= _names_after(stmt, 1, limit=1)


def _kill(stmt: _Stmt, facts: _Facts) -> None:
    """KILL [HARD|SOFT] [CONNECTION|QUERY [ID]] id, KILL [HARD|SOFT] USER name: a `KillTarget`.
    Only a plain integer literal names a connection the session can translate; anything else
    (an expression, a user, MariaDB's query id) is reported with `thread=None`."""
    words = stmt.words
    index = 1
    form = ["KILL"]
    if stmt.word(index) in {"HARD", "SOFT"}:
        form.append(words[index])
        index += 1
    query_only = False
    resolvable = True
    if stmt.word(index) in {"CONNECTION", "QUERY", "USER"}:
        form.append(words[index])
        query_only = words[index] == "QUERY"
        resolvable = words[index] != "USER"
        index += 1
        if query_only and stmt.word(index) == "ID":
            form.append("ID")
            resolvable = False
    rest = stmt.tokens[index:]
    thread = None
    if resolvable and len(rest) == 1 and rest[0].token_type is TokenType.NUMBER and rest[0].text.isdigit():
        thread = int(rest[0].text)
    facts.kill = KillTarget(thread=thread, query_only=query_only, form=" ".join(form))
    facts.note(Kind.SESSION, f"{' '.join(form)} (the session translates connection ids)")


def _use(stmt: _Stmt, facts: _Facts) -> None:
    name, end = _name_at(stmt.tokens, 1)
    if not name or "." in name or end != len(stmt.tokens):
        facts.note(Kind.UNKNOWN, "unrecognised USE")
        return
    facts.uses = name
    facts.schemas.add(name)
    facts.note(Kind.SESSION, "USE")


# SHOW forms that list objects of every schema at once.
_SHOW_EVERY_SCHEMA = frozenset({"DATABASES", "SCHEMAS"})
_SHOW_ROUTINES = frozenset({"FUNCTION", "PROCEDURE", "PACKAGE"})
# SHOW forms whose first FROM/IN names a table (then an optional second names its schema).
_SHOW_OF_TABLE = frozenset({"COLUMNS", "FIELDS", "INDEX", "INDEXES", "KEYS"})
_SHOW_CREATE_SCHEMA = frozenset({"DATABASE", "SCHEMA"})


# Every QueryBase user of a source shares its read login, and the server shows a login its own
# threads' statements: these would show one user what the others run.
OTHER_SESSIONS_WHY = "shows other sessions' statements (QueryBase users share the read login)"


def _show(stmt: _Stmt, facts: _Facts) -> None:
    """SHOW is a read; it reports the schemas and tables it looks at (for a source's schema
    allowlist) and what its WHERE clause evaluates (subqueries and functions, as in a SELECT)."""
    words = stmt.words
    index = 1
    while stmt.word(index) in {"FULL", "EXTENDED", "GLOBAL", "SESSION", "STORAGE"}:
        index += 1
    what = stmt.word(index)
    if what == "PROCESSLIST":
        facts.note(Kind.PRIVILEGED, f"SHOW PROCESSLIST {OTHER_SESSIONS_WHY}")
    if what in _SHOW_EVERY_SCHEMA or (what in _SHOW_ROUTINES and "STATUS" in words):
        facts.schemas.add("*")
    if what == "CREATE":
        obj = stmt.word(index + 1)
        at = index + 2
        while stmt.word(at) in {"IF", "NOT", "EXISTS", "BODY"}:
            at += 1
        name, _ = _name_at(stmt.tokens, at)
        if name:
            (facts.schemas if obj in _SHOW_CREATE_SCHEMA else facts.tables).add(name)
    table_first = what in _SHOW_OF_TABLE
    for at, word in enumerate(words):
        if word == "WHERE":
            base = stmt.tokens[0].start
            condition = stmt.text[stmt.tokens[at].start - base :]
            sub = _Facts()
            _parsed("SELECT 1 FROM DUAL " + condition, sub, (exp.Select,))  # noqa: S608 - parsed, never run
            sub.tables.discard("DUAL")
            facts.absorb(sub)
            break
        if word in {"FROM", "IN"} and at > index:
            name, _ = _name_at(stmt.tokens, at + 1)
            if name:
                (facts.tables if table_first else facts.schemas).add(name)
                table_first = False
    facts.note(Kind.READ, "")


def _change(stmt: _Stmt, facts: _Facts) -> None:
    facts.note(Kind.PRIVILEGED, f"CHANGE {stmt.word(1)} controls replication")


_PRIVILEGED_OBJECTS = {
    "USER": "user management",
    "ROLE": "role management",
    "SERVER": "CREATE/ALTER SERVER stores connection credentials",
    "INSTANCE": "ALTER INSTANCE",
    "RESOURCE": "resource groups",
}
_DDL_OBJECTS = frozenset(
    {
        "TABLE",
        "TABLES",
        "VIEW",
        "INDEX",
        "DATABASE",
        "SCHEMA",
        "PROCEDURE",
        "FUNCTION",
        "TRIGGER",
        "EVENT",
        "SEQUENCE",
        "TABLESPACE",
        "LOGFILE",
        "SPATIAL",
        "PACKAGE",
        "SYNONYM",
    }
)
_PARSED_DDL = frozenset({"TABLE", "VIEW", "INDEX"})


def _object_type(stmt: _Stmt) -> tuple[str, int]:
    """The object word of CREATE/ALTER/DROP/RENAME, skipping modifiers and `DEFINER = user@host`."""
    index = 1
    words = stmt.words
    while index < len(words):
        word = words[index]
        if word == "DEFINER":
            index += 2  # DEFINER =
            index += 1  # user (or CURRENT_USER)
            if stmt.word(index) == "(":
                index += 2
            if stmt.word(index) == "@":
                index += 2
            continue
        if word in _PRIVILEGED_OBJECTS or word in _DDL_OBJECTS or word == "PREPARE":
            return word, index
        if word == "" and stmt.tokens[index].token_type is TokenType.IDENTIFIER:
            return "", index
        index += 1
    return "", index


def _ddl(stmt: _Stmt, facts: _Facts) -> None:
    head = stmt.words[0]
    obj, _ = _object_type(stmt)
    if obj == "PREPARE" and head == "DROP":
        facts.note(Kind.SESSION, "DROP PREPARE")
        return
    if obj in _PRIVILEGED_OBJECTS:
        facts.note(Kind.PRIVILEGED, f"{head} {obj}: {_PRIVILEGED_OBJECTS[obj]}")
        return
    if obj == "FUNCTION" and "SONAME" in stmt.words:
        facts.note(Kind.PRIVILEGED, "CREATE FUNCTION … SONAME loads a server library")
        return
    if obj not in _DDL_OBJECTS:
        facts.note(Kind.UNKNOWN, f"unrecognised {head} statement")
        return
    facts.note(Kind.DDL, f"{head} {obj}")
    if head == "RENAME":
        facts.tables |= _rename_tables(stmt)
    elif obj in _PARSED_DDL:
        # A parse failure of DDL is still DDL (the keywords decided it); tables are best effort.
        sub = _Facts()
        if _parsed(stmt.text, sub, (exp.Create, exp.Drop, exp.Alter)) is not None:
            sub.kind = Kind.DDL if _RANK[sub.kind] < _RANK[Kind.DDL] else sub.kind
            facts.absorb(sub)


def _rename_tables(stmt: _Stmt) -> set[str]:
    """RENAME TABLE a TO b, c TO d: every name on either side."""
    names = _names_after(stmt, 2)
    for index, word in enumerate(stmt.words):
        if word == "TO":
            names |= _names_after(stmt, index + 1, limit=1)
    return names


_READ = _fixed(Kind.READ, "")
_PRIVILEGED_HEADS = {
    "GRANT": "GRANT",
    "REVOKE": "REVOKE",
    "FLUSH": "FLUSH",
    "RESET": "RESET",
    "PURGE": "PURGE",
    "SHUTDOWN": "SHUTDOWN",
    "RESTART": "RESTART",
    "INSTALL": "INSTALL loads server code",
    "UNINSTALL": "UNINSTALL",
    "STOP": "STOP controls replication",
    "BINLOG": "BINLOG replays binary log events",
    "CLONE": "CLONE",
    "IMPORT": "IMPORT TABLE reads server files",
}

_HEADS: dict[str, _Handler] = {
    # reads
    "SELECT": _query,
    "WITH": _query,
    "TABLE": _query,
    "VALUES": _query,
    "(": _query,
    "SHOW": _show,
    "HELP": _READ,
    "CHECKSUM": _table_maintenance("CHECKSUM TABLE", Kind.READ),
    "DESCRIBE": _explain,
    "DESC": _explain,
    "EXPLAIN": _explain,
    # writes
    "INSERT": _dml("INSERT"),
    "UPDATE": _dml("UPDATE"),
    "DELETE": _dml("DELETE"),
    "REPLACE": _replace,
    "DO": _do,
    "CALL": _call,
    "TRUNCATE": _truncate,
    "LOAD": _load,
    "HANDLER": _handler,
    "LOCK": _lock,
    "LOCK TABLES": _lock,
    "XA": _fixed(Kind.WRITE, "XA (two-phase commit)"),
    "ANALYZE": _analyze,
    "OPTIMIZE": _table_maintenance("OPTIMIZE TABLE", Kind.WRITE),
    "REPAIR": _table_maintenance("REPAIR TABLE", Kind.WRITE),
    "CHECK": _table_maintenance("CHECK TABLE", Kind.WRITE),
    "CACHE": _fixed(Kind.WRITE, "CACHE INDEX"),
    # prepared statements
    "PREPARE": _prepare,
    "EXECUTE": _execute,
    "DEALLOCATE": _deallocate,
    # transactions and session
    "BEGIN": _begin,
    "START": _start,
    "COMMIT": _fixed(Kind.TRANSACTION, "COMMIT"),
    "ROLLBACK": _fixed(Kind.TRANSACTION, "ROLLBACK"),
    "SAVEPOINT": _fixed(Kind.TRANSACTION, "SAVEPOINT"),
    "RELEASE": _release,
    "SET": _set,
    "USE": _use,
    "UNLOCK": _unlock,
    "UNLOCK TABLES": _unlock,
    "KILL": _kill,
    # ddl (and the privileged objects among them)
    "CREATE": _ddl,
    "ALTER": _ddl,
    "DROP": _ddl,
    "RENAME": _ddl,
    "CHANGE": _change,
    **{head: _fixed(Kind.PRIVILEGED, reason) for head, reason in _PRIVILEGED_HEADS.items()},
}


# --- entry point ------------------------------------------------------------------------------------


def _statement(stmt: _Stmt) -> _Facts:
    facts = _Facts()
    handler = _HEADS.get(stmt.words[0]) if stmt.words else None
    if handler is None:
        head = stmt.words[0] if stmt.words else "?"
        facts.note(Kind.UNKNOWN, f"unrecognised statement {head or stmt.tokens[0].text!r}")
    else:
        handler(stmt, facts)
    if STRICTNESS[facts.kind] == 0:
        _check_calls(stmt, facts)
    facts.schemas |= _routine_schemas(stmt.tokens)
    return facts


def _routine_schemas(tokens: Sequence[Token]) -> set[str]:
    """Schemas of qualified routine calls (`db.f(…)`, `CALL db.p(…)`), for the schema allowlist."""
    return {
        tokens[i].text
        for i in range(len(tokens) - 3)
        if tokens[i].token_type in _CALL_NAMES
        and tokens[i + 1].token_type is TokenType.DOT
        and tokens[i + 2].token_type in _CALL_NAMES
        and tokens[i + 3].token_type is TokenType.L_PAREN
    }


def _statement_text(text: str) -> _Facts:
    """Classify one statement given as (already canonical) text: the inside of a wrapper."""
    try:
        chunks = _split(_tokenize(text))
    except TokenError as exc:
        facts = _Facts()
        facts.note(Kind.UNKNOWN, _first_line(str(exc)))
        return facts
    result = _Facts()
    for chunk in chunks:
        result.absorb(_statement(_Stmt(chunk, text)))
    return result


def _classify_statements(chunks: list[list[Token]], sql: str) -> tuple[Classification, set[str]]:
    """The message's classification, and the lexing settings that a statement other than the last
    may change (the server reads the statements after it under the new setting)."""
    midway: set[str] = set()
    strictest: _Facts | None = None
    tables: set[str] = set()
    schemas: set[str] = set()
    unvetted: set[str] = set()
    sets: dict[str, str | None] = {}
    kill: KillTarget | None = None
    uses: str | None = None
    last = len(chunks) - 1
    for index, chunk in enumerate(chunks):
        facts = _statement(_Stmt(chunk, sql))
        unvetted |= facts.unvetted
        if facts.sets and index != last:
            midway |= set(facts.sets)
        tables |= {table for table in facts.tables if table not in facts.ctes}
        schemas |= facts.schemas
        sets.update(facts.sets)
        kill = kill or facts.kill
        uses = facts.uses or uses
        if strictest is None or _RANK[facts.kind] > _RANK[strictest.kind]:
            strictest = facts
    assert strictest is not None
    single = len(chunks) == 1
    return Classification(
        kind=strictest.kind,
        tables=tuple(sorted(tables)),
        statements=len(chunks),
        reason=strictest.reason,
        prepares=strictest.prepares if single else None,
        executes=strictest.executes if single else None,
        kill=kill,
        uses=uses,
        sets=tuple(sorted(sets.items())),
        schemas=tuple(sorted(schemas)),
        unvetted=tuple(sorted(unvetted)),
    ), midway


_ALL_MODES = tuple(SqlMode(a, b) for a in (False, True) for b in (False, True))


def classify(sql: str, mode: SqlMode = DEFAULT_MODE) -> Classification:
    """Classify one protocol message's SQL text (possibly several statements), lexed as the server
    does under the session's `mode`. Never raises.

    When a statement other than the last may change the lexing settings (`SET sql_mode = …; …`,
    as MariaDB Connector/J sends at connect), the server reads the rest under the new setting:
    the message is classified under every lexing mode and takes the strictest answer (unknown if
    they disagree on the number of statements); after a change of character set, only ASCII may
    follow."""
    c, midway = _classify_in(sql, mode)
    if not midway:
        return c
    if CLIENT_CHARSET in midway and not sql.isascii():
        return replace(c, kind=Kind.UNKNOWN, reason="non-ASCII text after a change of character set")
    if SQL_MODE in midway:
        for other in _ALL_MODES:
            if other != mode:
                alt, _ = _classify_in(sql, other)
                if alt.statements != c.statements:
                    return replace(
                        c, kind=Kind.UNKNOWN, reason="the statements after SET sql_mode read differently"
                    )
                if _RANK[alt.kind] > _RANK[c.kind]:
                    c = replace(c, kind=alt.kind, reason=alt.reason)
    return c


def _classify_in(sql: str, mode: SqlMode) -> tuple[Classification, set[str]]:
    try:
        sql = canonical(sql, mode)
        chunks = _split(_tokenize(sql))
    except Ambiguous as exc:
        return Classification(kind=Kind.UNKNOWN, reason=f"ambiguous text: {exc}"), set()
    except Exception as exc:  # TokenError, and anything the tokenizer may raise on odd text
        return Classification(kind=Kind.UNKNOWN, reason=_first_line(str(exc))), set()
    if not chunks:
        return Classification(kind=Kind.READ, statements=0), set()
    token = _MODE.set(mode)
    try:
        return _classify_statements(chunks, sql)
    except Exception as exc:  # fail closed: a classifier bug must never make a statement a read
        reason = f"classifier error: {type(exc).__name__}: {_first_line(str(exc))}"
        return Classification(kind=Kind.UNKNOWN, statements=len(chunks), reason=reason), set()
    finally:
        _MODE.reset(token)


__all__ = ["classify"]


def count_placeholders(sql: str) -> int:
    """How many `?` parameters a statement for COM_STMT_PREPARE has (quotes and comments skipped)."""
    try:
        tokens = _tokenize(canonical(sql))
    except Exception:  # the tokenizer's own errors: the caller then fails the PREPARE
        return -1
    return sum(1 for token in tokens if token.token_type is TokenType.PLACEHOLDER)


_TRANSACTION_HEADS = frozenset(
    {
        "BEGIN",
        "START",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT",
        "RELEASE",
        "XA",
        "LOCK TABLES",
        "UNLOCK TABLES",
        "LOCK",
        "UNLOCK",
    }
)


def controls_transactions(sql: str) -> bool:
    """Whether the text begins, ends or locks transactions itself (or changes autocommit): the
    executor runs a change request in one transaction of its own and refuses such text."""
    try:
        sql = canonical(sql)
        chunks = _split(_tokenize(sql))
    except Exception:  # unreadable text fails in the database, not here
        return False
    for chunk in chunks:
        words = _Stmt(chunk, sql).words
        if words and (words[0] in _TRANSACTION_HEADS or (words[0] == "SET" and "AUTOCOMMIT" in words)):
            return True
    return False
