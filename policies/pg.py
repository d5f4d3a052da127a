"""PostgreSQL statement classification: SQL text in, one `Classification` out (DESIGN.md §3).

Theory of operation
-------------------
The text goes through `pglast.parse_sql`, i.e. PostgreSQL's own grammar (libpg_query), never a regex.
Each top-level statement is classified by the handler registered for its node class in `_HANDLERS`
(a dict, not an if/elif chain); a statement class with no handler is `unknown` — fail closed, never
`read`. Most handlers set a base kind and then `_scan` every node below the statement, iteratively
(no recursion on expression depth), which:

- collects tables: every `RangeVar`, schema-qualified as written, minus unqualified CTE names;
- raises the kind for what hides inside expressions: data-modifying CTEs at any depth, `SELECT … INTO`,
  `FOR UPDATE/SHARE`, and calls of guarded functions (`_FUNCTIONS`, `_FUNCTION_PREFIXES`,
  `set_config()`), matched on the function's unqualified name whatever its schema (a user function
  that shadows one of these names is flagged too: erring strict);
- classifies any other statement node nested inside (CREATE SCHEMA elements, rule actions, function
  bodies, ALTER … SET) with its own handler and keeps the stricter result.

Wrappers (EXPLAIN, PREPARE, DECLARE CURSOR, COPY (query), CREATE TABLE AS) classify their inner
statement first and then decide what it means for the wrapper. Kinds combine by `STRICTNESS`; inside
the zero class, session > transaction > read, so a SELECT calling `set_config()` says `session`. A
multi-statement message takes its strictest statement's kind and reason (first one on ties).

Deliberate choices
------------------
- `SELECT … FOR UPDATE/SHARE/…` (anywhere in the query) is a write: it takes row locks and fails in
  a read-only transaction anyway.
- `SELECT … INTO` is a write (DESIGN lists it); `CREATE TABLE AS` and `CREATE MATERIALIZED VIEW` are
  ddl, so `block_ddl` and DDL approval counts apply to them.
- `EXPLAIN` without ANALYZE runs nothing, so it is a read whatever it explains (including data-modifying
  CTEs and `EXECUTE`); only a privileged inner statement stays privileged. With ANALYZE (`ANALYZE`,
  `ANALYZE true/on/1`, anything but an explicit false) it takes the inner statement's kind.
- `RESET ALL` is session: QueryBase sets `default_transaction_read_only` in the upstream startup packet,
  which is the value RESET ALL restores, RESET ALL leaves `transaction_read_only` alone, and asyncpg's
  pool reset sends it. `RESET`/`SET … TO DEFAULT`/`FROM CURRENT` of `transaction_read_only` or
  `default_transaction_read_only` are privileged (inside a transaction they restore the built-in
  default, off); of any other setting, session.
- `client_encoding` (SET NAMES) and `standard_conforming_strings` change how the server reads later
  text: only safe values are session (`SAFE_CLIENT_ENCODINGS`, scs on); others are privileged. Such
  statements, RESET ALL and DISCARD ALL carry `lexing` in `names` (the session waits for the answer).
- `SET ROLE NONE`, `RESET ROLE` and `SET SESSION AUTHORIZATION DEFAULT` return to the login role and
  cannot raise privileges: session (Metabase sends `SET ROLE NONE`). Any other role is privileged.
- `default_transaction_read_only`/`transaction_read_only` set to a value that PostgreSQL's `parse_bool`
  reads as true is session; anything else (false spellings, non-constants, lists, garbage that would
  error) is privileged. Same for `READ ONLY`/`READ WRITE` in BEGIN, START, SET TRANSACTION and
  SET SESSION CHARACTERISTICS. `set_config()` of those settings, of `role`/`session_authorization`,
  or with a non-constant setting name is privileged; of any other setting, session.
- Two-phase commit (`PREPARE TRANSACTION`, `COMMIT PREPARED`, `ROLLBACK PREPARED`) is a write: it
  makes or settles durable transaction state outside the session.
- `CREATE EXTENSION`/`ALTER EXTENSION` are privileged: extensions install code (dblink, adminpack,
  untrusted languages). `CREATE TABLESPACE` (a server directory), `CHECKPOINT`, `LOAD`, `ALTER SYSTEM`,
  GRANT/REVOKE (of privileges and roles), `ALTER DEFAULT PRIVILEGES`, role management and
  `REASSIGN/DROP OWNED` are privileged too.
- COPY to or from a server file or PROGRAM is privileged; `COPY … FROM STDIN` is a write with
  `copy_from_stdin`; `COPY … TO STDOUT` takes the kind of its relation/query (a read, unless the query is
  a data-modifying statement with RETURNING).
- `CLOSE name`, FETCH and MOVE are reads; `CLOSE ALL` is session.
- SQL `EXECUTE` is unknown with `executes` set; its arguments are still scanned (a guarded function in
  them raises the kind). `prepares`/`executes` are only reported for a single-statement message: for a
  multi-statement one the session cannot substitute a recorded kind without lowering the others, so it
  stays unknown (held or denied).
- Constants are read through casts to text/varchar only: a cast to another type (say, a user type with
  its own output function) could change the value, so the argument counts as non-constant.
- `tables` drops every unqualified name that matches a CTE of the same statement, even where the name
  (inside that CTE's own body) means the real table: it is for people to read, not for policy.
- Text with a NUL byte is unknown: libpg_query would stop reading at the NUL, so the parser would not
  see what follows it.
- Functions are an allowlist: a call of anything but a vetted built-in (`policies/pg_functions.py`,
  generated from pg_catalog; unqualified or `pg_catalog.`-qualified) is listed in `unvetted`, and
  `decide()` fails such a read closed unless the source trusts the function. Guarded functions
  (`_FUNCTIONS`, `set_config`) keep their own kinds. What the classifier cannot see — functions
  called by views, operators, casts to user types, a user function of a built-in's name that wins
  overload resolution — rests on the read-only session and the read login's privileges.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pglast import ast, enums, parse_sql
from pglast.parser import ParseError

from policies.pg_functions import SAFE_FUNCTIONS
from policies.types import RANK, Classification, Kind

_RANK = RANK


class _Facts:
    """What one statement (and everything nested in it) does: the mutable accumulator of a classification."""

    __slots__ = (
        "copy_from_stdin", "ctes", "executes", "kind", "names", "pins", "prepares", "reason", "schemas",
        "tables", "unvetted",
    )  # fmt: skip

    def __init__(self) -> None:
        self.kind = Kind.READ
        self.reason = ""
        self.tables: set[str] = set()
        self.ctes: set[str] = set()
        self.prepares: str | None = None
        self.executes: str | None = None
        self.copy_from_stdin = False
        self.names: list[str] = []
        self.unvetted: set[str] = set()
        self.schemas: set[str] = set()  # schemas a search_path change names ("*": not known)
        self.pins: set[str] = set()  # session state that stays on the server connection (PINS)

    def note(self, kind: Kind, reason: str) -> None:
        """Raise the kind to `kind` (with its reason) if that is stricter than what is known."""
        if _RANK[kind] > _RANK[self.kind]:
            self.kind = kind
            self.reason = reason

    def absorb(self, other: _Facts) -> None:
        """Take in a nested statement's facts; the stricter kind wins."""
        self.note(other.kind, other.reason)
        self.tables |= other.tables
        self.ctes |= other.ctes
        self.names += other.names
        self.unvetted |= other.unvetted
        self.schemas |= other.schemas
        self.pins |= other.pins


# --- constants and booleans -------------------------------------------------------------------------


# Casts that cannot turn a constant into a different setting value (others, e.g. to a user type with
# its own output function, could: a constant behind them is treated as unknown).
_TEXT_TYPES = frozenset({"text", "varchar"})


def _type_name(node: ast.TypeCast) -> str:
    names = node.typeName.names if node.typeName is not None else None
    last = names[-1] if names else None
    return (last.sval or "") if isinstance(last, ast.String) else ""


def _const(node: object) -> str | None:
    """The text of a constant (through text casts), as PostgreSQL hands it to a setting; else None."""
    while isinstance(node, ast.TypeCast) and _type_name(node) in _TEXT_TYPES:
        node = node.arg
    if not isinstance(node, ast.A_Const) or node.isnull:
        return None
    val = node.val
    if isinstance(val, ast.String):
        return val.sval
    if isinstance(val, ast.Integer):
        return str(val.ival)
    if isinstance(val, ast.Float):
        return val.fval
    if isinstance(val, ast.Boolean):
        return "true" if val.boolval else "false"
    return None


def _pg_bool(text: str | None) -> bool | None:
    """PostgreSQL's `parse_bool`: case-insensitive prefixes of true/false/yes/no, on/off (two letters
    at least), 1/0. None when PostgreSQL would reject the value."""
    if not text:
        return None
    low = text.lower()
    if "true".startswith(low) or "yes".startswith(low):
        return True
    if "false".startswith(low) or "no".startswith(low):
        return False
    if len(low) >= 2 and "on".startswith(low):
        return True
    if len(low) >= 2 and "off".startswith(low):
        return False
    return {"1": True, "0": False}.get(low)


def _all_true(args: Iterable[object] | None) -> bool:
    values = list(args or ())
    return len(values) == 1 and _pg_bool(_const(values[0])) is True


def _lifts_read_only(options: Iterable[object] | None) -> bool:
    """Whether transaction options (BEGIN, SET TRANSACTION, …) ask for anything but READ ONLY."""
    for option in options or ():
        if (
            isinstance(option, ast.DefElem)
            and option.defname == "transaction_read_only"
            and _pg_bool(_const(option.arg)) is not True
        ):
            return True
    return False


def _relation_name(node: ast.RangeVar) -> str:
    return ".".join(part for part in (node.catalogname, node.schemaname, node.relname) if part)


# --- guarded functions ------------------------------------------------------------------------------

# Every QueryBase user of a source shares its read login, and PostgreSQL shows a login the text of
# its own sessions' statements: these would show one user what the others run.
_OTHER_SESSIONS_WHY = "shows other sessions' statements (QueryBase users share the read login)"
_OTHER_SESSIONS_RELATIONS = frozenset({"pg_stat_activity", "pg_stat_statements"})

_PRIVILEGED_FUNCTIONS = (
    "pg_read_file",
    "pg_read_binary_file",
    "pg_stat_file",
    "pg_ls_dir",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_file_sync",
    "pg_logdir_ls",
    "lo_import",
    "lo_export",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_switch_wal",
    "pg_switch_xlog",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_create_restore_point",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_replication_slot_advance",
    "pg_logical_slot_get_changes",
    "pg_logical_slot_get_binary_changes",
    "pg_logical_emit_message",
    "pg_replication_origin_create",
    "pg_replication_origin_drop",
    "pg_replication_origin_advance",
    "pg_replication_origin_session_setup",
    "pg_log_backend_memory_contexts",
    "pg_import_system_collations",
)

_WRITE_FUNCTIONS = (
    "nextval",
    "setval",
    "pg_notify",
    "lo_from_bytea",
    "lo_put",
    "lo_create",
    "lo_creat",
    "lo_unlink",
    "lowrite",
    "lo_truncate",
    "lo_truncate64",
)

_FUNCTIONS: dict[str, tuple[Kind, str]] = {
    **{name: (Kind.PRIVILEGED, "reaches the server's files or processes") for name in _PRIVILEGED_FUNCTIONS},
    **{name: (Kind.WRITE, "writes") for name in _WRITE_FUNCTIONS},
    **{
        name: (Kind.PRIVILEGED, _OTHER_SESSIONS_WHY)
        for name in ("pg_stat_get_activity", "pg_stat_get_backend_activity", "pg_stat_statements")
    },
    # They run SQL given as text, which the classifier cannot see.
    **{
        name: (Kind.UNKNOWN, "runs SQL text the classifier cannot see")
        for name in (
            "query_to_xml",
            "query_to_xmlschema",
            "query_to_xml_and_xmlschema",
            "cursor_to_xml",
            "cursor_to_xmlschema",
            "ts_stat",
            "ts_rewrite",
        )
    },
    # Index maintenance that writes even inside a read-only transaction.
    **{
        name: (Kind.WRITE, "changes an index even in a read-only transaction")
        for name in (
            "brin_summarize_new_values",
            "brin_summarize_range",
            "brin_desummarize_range",
            "gin_clean_pending_list",
        )
    },
    "pg_stat_statements_reset": (Kind.PRIVILEGED, "resets server statistics"),
}

_FUNCTION_PREFIXES: tuple[tuple[str, Kind, str], ...] = (
    ("pg_ls_", Kind.PRIVILEGED, "lists server directories"),
    ("dblink", Kind.PRIVILEGED, "connects to other servers"),
    ("pg_stat_reset", Kind.PRIVILEGED, "resets server statistics"),
    ("pg_advisory", Kind.SESSION, "takes or releases advisory locks"),
    ("pg_try_advisory", Kind.SESSION, "takes advisory locks"),
)

# Built-ins the guards above classify themselves (exact names): not "unvetted" when called
# unqualified or in pg_catalog — a same-named function in another schema still is.
_GUARDED_BUILTINS = frozenset(
    {*_FUNCTIONS, "set_config"}
    | {
        f"pg_{try_}advisory_{what}"
        for try_ in ("", "try_")
        for what in ("lock", "lock_shared", "xact_lock", "xact_lock_shared")
    }
    | {"pg_advisory_unlock", "pg_advisory_unlock_shared", "pg_advisory_unlock_all"}
)

# Advisory locks held by the session (the *_xact_* ones end with the transaction).
_SESSION_LOCKS = frozenset(
    f"pg_{try_}advisory_{what}" for try_ in ("", "try_") for what in ("lock", "lock_shared")
)

_READ_ONLY_SETTINGS = frozenset({"default_transaction_read_only", "transaction_read_only"})
_RESET_KINDS = {
    enums.VariableSetKind.VAR_RESET: "RESET {}",
    enums.VariableSetKind.VAR_SET_DEFAULT: "SET {} TO DEFAULT",
    enums.VariableSetKind.VAR_SET_CURRENT: "SET {} FROM CURRENT",
}

# Settings that change how the server reads the text of later statements. QueryBase reads text as
# the server does only with standard_conforming_strings on and a client encoding whose multibyte
# characters never contain an ASCII byte (a trail byte 0x5C would be a backslash to one reader and
# part of a character to the other): anything else is privileged, and the session reads nothing
# after a change until the upstream has answered it (`LEXING` in `Classification.names`).
LEXING = "lexing"
# In `Classification.names`: the statement sets, resets or discards session settings somewhere
# (SET, RESET, set_config, DISCARD), whatever its overall kind: transaction pooling reads the
# settings back before the server connection serves anyone else.
SETTINGS = "settings"
_LEXING_SETTINGS = frozenset({"client_encoding", "standard_conforming_strings"})
# PostgreSQL's encoding names (and the aliases people use), compared as PostgreSQL does: lower
# case, letters and digits only. SJIS, BIG5, GBK, GB18030, UHC and JOHAB are not here.
SAFE_CLIENT_ENCODINGS = frozenset(
    {"utf8", "unicode", "sqlascii", "koi8r", "koi8u", "koi8", "eucjp", "eucjis2004", "euckr", "euccn"}
    | {f"latin{n}" for n in range(1, 11)}
    | {f"iso8859{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15, 16)}
    | {f"win{n}" for n in (866, 874, 1250, 1251, 1252, 1253, 1254, 1255, 1256, 1257, 1258)}
    | {f"windows{n}" for n in (866, 874, 1250, 1251, 1252, 1253, 1254, 1255, 1256, 1257, 1258)}
)


def clean_encoding_name(name: str) -> str:
    """PostgreSQL's comparison form of an encoding name: `UTF-8` → `utf8`."""
    return "".join(ch for ch in name.lower() if ch.isascii() and ch.isalnum())


def _path_schemas(value: str) -> set[str]:
    """The schemas a search_path value can name: the value as one name (how a SET argument is
    quoted) and its comma-separated parts as PostgreSQL splits a list (quotes keep case and
    commas, unquoted parts fold to lower case). Checking both errs strict."""
    names = {value}
    part, quoted, i = "", False, 0
    parts: list[str] = []
    while i < len(value):
        ch = value[i]
        if quoted:
            if ch == '"' and value[i + 1 : i + 2] == '"':
                part += '"'
                i += 1
            elif ch == '"':
                quoted = False
            else:
                part += ch
        elif ch == '"':
            quoted = True
        elif ch == ",":
            parts.append(part)
            part = ""
        elif not ch.isspace():
            part += ch.lower()
        i += 1
    parts.append(part)
    names |= {p for p in parts if p}
    return names


def _lexing_refusal(setting: str, value: str | None) -> str:
    """Why setting `setting` to the constant `value` (None: not a constant) is privileged, or ""."""
    if setting == "standard_conforming_strings":
        if _pg_bool(value) is True:
            return ""
        return "standard_conforming_strings off changes how the server reads strings"
    if value is not None and clean_encoding_name(value) in SAFE_CLIENT_ENCODINGS:
        return ""
    return f"client_encoding {value or '(not a constant)'} is not one QueryBase reads as the server does"


_IDENTITY_SETTINGS = frozenset({"role", "session_authorization"})


def _check_function(node: ast.FuncCall, facts: _Facts) -> None:
    names = node.funcname or ()
    last = names[-1] if names else None
    if not isinstance(last, ast.String):
        facts.unvetted.add("(a function without a name)")
        return
    _vet_function(names, facts)
    name = (last.sval or "").lower()
    if name == "set_config":
        _check_set_config(node.args or (), facts)
        return
    if name in _FUNCTIONS:
        kind, why = _FUNCTIONS[name]
        facts.note(kind, f"{name}() {why}")
        return
    if name in _SESSION_LOCKS:
        facts.pins.add("a session-level advisory lock")
    for prefix, kind, why in _FUNCTION_PREFIXES:
        if name.startswith(prefix):
            facts.note(kind, f"{name}() {why}")
            return


def _vet_function(names: tuple[Any, ...], facts: _Facts) -> None:
    """Reads may call only vetted built-ins (`SAFE_FUNCTIONS`, called unqualified or in pg_catalog);
    any other function is recorded in `unvetted`. Names compare as PostgreSQL compares them: exactly,
    after the parser's case folding of unquoted names."""
    parts = [(part.sval or "") if isinstance(part, ast.String) else "?" for part in names]
    name = parts[-1] or ""
    schema = parts[-2] if len(parts) > 1 else None
    if schema in (None, "pg_catalog"):
        vetted = name in SAFE_FUNCTIONS or name in _GUARDED_BUILTINS
    else:
        vetted = schema == "information_schema" and f"information_schema.{name}" in SAFE_FUNCTIONS
    if not vetted:
        facts.unvetted.add(".".join(parts))


def _check_set_config(args: tuple[Any, ...], facts: _Facts) -> None:
    facts.names.append(SETTINGS)
    setting = _const(args[0]) if args else None
    if setting is None:
        facts.note(Kind.PRIVILEGED, "set_config() with a setting name that is not a constant")
        return
    setting = setting.lower()  # setting names are case-insensitive
    if setting in _READ_ONLY_SETTINGS:
        if len(args) > 1 and _pg_bool(_const(args[1])) is True:
            facts.note(Kind.SESSION, f"set_config({setting})")
        else:
            facts.note(Kind.PRIVILEGED, f"set_config({setting}) can lift the read-only backstop")
    elif setting in _IDENTITY_SETTINGS:
        facts.note(Kind.PRIVILEGED, f"set_config({setting}) changes who the session is")
    elif setting == "search_path":
        value = _const(args[1]) if len(args) > 1 else None
        facts.schemas |= _path_schemas(value) if value is not None else {"*"}
        facts.note(Kind.SESSION, "set_config(search_path)")
    elif setting in _LEXING_SETTINGS:
        facts.names.append(LEXING)
        why = _lexing_refusal(setting, _const(args[1]) if len(args) > 1 else None)
        facts.note(Kind.PRIVILEGED if why else Kind.SESSION, why or f"set_config({setting})")
    else:
        facts.note(Kind.SESSION, f"set_config({setting})")


# --- the walk ---------------------------------------------------------------------------------------

_DML = {ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt}
_STATEMENT_CLASSES = frozenset(
    cls
    for name, cls in vars(ast).items()
    if name.endswith("Stmt") and isinstance(cls, type) and issubclass(cls, ast.Node)
)
_LOCK_STRENGTH = {
    enums.LockClauseStrength.LCS_FORKEYSHARE: "FOR KEY SHARE",
    enums.LockClauseStrength.LCS_FORSHARE: "FOR SHARE",
    enums.LockClauseStrength.LCS_FORNOKEYUPDATE: "FOR NO KEY UPDATE",
    enums.LockClauseStrength.LCS_FORUPDATE: "FOR UPDATE",
}


def _children(node: ast.Node, skip: Iterable[str] = ()) -> list[object]:
    skipped = set(skip)
    return [getattr(node, name) for name in node if name not in skipped]


def _check_select(node: ast.SelectStmt, facts: _Facts) -> None:
    if node.intoClause is not None:
        facts.note(Kind.WRITE, "SELECT INTO creates a table")
    for clause in node.lockingClause or ():
        strength = _LOCK_STRENGTH.get(clause.strength, "FOR UPDATE/SHARE")
        facts.note(Kind.WRITE, f"SELECT … {strength} takes row locks")


def _visit_range_var(node: ast.RangeVar, facts: _Facts) -> bool:
    facts.tables.add(_relation_name(node))
    if node.relpersistence == "t":  # CREATE TEMP TABLE / VIEW / SEQUENCE, SELECT … INTO TEMP
        facts.pins.add("a temporary table, view or sequence")
    if node.relname in _OTHER_SESSIONS_RELATIONS:
        facts.note(Kind.PRIVILEGED, f"{node.relname} {_OTHER_SESSIONS_WHY}")
    return True  # nothing below a RangeVar but its alias


def _visit_function(node: ast.FuncCall, facts: _Facts) -> bool:
    _check_function(node, facts)
    return False


def _visit_cte(node: ast.CommonTableExpr, facts: _Facts) -> bool:
    if node.ctename:
        facts.ctes.add(node.ctename)
    return False


def _visit_select(node: ast.SelectStmt, facts: _Facts) -> bool:
    _check_select(node, facts)
    return False


def _visit_dml(node: ast.Node, facts: _Facts) -> bool:
    facts.note(Kind.WRITE, "data-modifying CTE")
    return False


def _visit_statement(node: ast.Node, facts: _Facts) -> bool:
    facts.absorb(_statement(node))
    return True  # its handler has walked it


# What `_scan` does on meeting a node of these classes; True means "do not descend".
_VISITORS: dict[type, Callable[[Any, _Facts], bool]] = {
    **dict.fromkeys(_STATEMENT_CLASSES, _visit_statement),
    **dict.fromkeys(_DML, _visit_dml),
    ast.SelectStmt: _visit_select,
    ast.RangeVar: _visit_range_var,
    ast.FuncCall: _visit_function,
    ast.CommonTableExpr: _visit_cte,
}


def _scan(items: Iterable[object], facts: _Facts) -> None:
    """Walk every node below a statement (iteratively), collecting tables and raising the kind."""
    stack = [item for item in items if isinstance(item, (ast.Node, tuple))]
    while stack:
        item = stack.pop()
        if isinstance(item, tuple):
            stack.extend(value for value in item if isinstance(value, (ast.Node, tuple)))
            continue
        visit = _VISITORS.get(type(item))
        if visit is not None and visit(item, facts):
            continue
        for name in item:
            value = getattr(item, name)
            if isinstance(value, (ast.Node, tuple)):
                stack.append(value)


# --- statement handlers -----------------------------------------------------------------------------

_Handler = Callable[[Any, _Facts], None]


def _statement(node: ast.Node | None) -> _Facts:
    facts = _Facts()
    handler = _HANDLERS.get(type(node))
    if handler is None:
        facts.note(Kind.UNKNOWN, f"unrecognised statement {type(node).__name__}")
    else:
        handler(node, facts)
    return facts


def _fixed(kind: Kind, reason: str | Callable[[Any], str]) -> _Handler:
    """A handler for statements whose kind does not depend on their content (beyond what `_scan` finds)."""

    def handle(node: Any, facts: _Facts) -> None:
        facts.note(kind, reason(node) if callable(reason) else reason)
        _scan(_children(node), facts)

    return handle


def _select(node: ast.SelectStmt, facts: _Facts) -> None:
    _check_select(node, facts)
    _scan(_children(node), facts)


def _explain_analyzes(options: Iterable[object] | None) -> bool:
    """Whether EXPLAIN runs the statement: ANALYZE with no value or anything but an explicit false."""
    for option in options or ():
        if isinstance(option, ast.DefElem) and option.defname == "analyze":
            arg = option.arg
            if isinstance(arg, ast.Integer):
                value = str(arg.ival)
            elif isinstance(arg, ast.Boolean):
                value = "true" if arg.boolval else "false"
            else:
                value = getattr(arg, "sval", "true") if arg is not None else "true"
            if str(value).lower() not in {"false", "off", "0"}:
                return True
    return False


def _explain(node: ast.ExplainStmt, facts: _Facts) -> None:
    inner = _statement(node.query)
    facts.tables |= inner.tables
    facts.ctes |= inner.ctes
    if _explain_analyzes(node.options):
        facts.note(inner.kind, f"EXPLAIN ANALYZE {inner.reason}" if inner.reason else "")
        facts.executes = inner.executes
        facts.pins |= inner.pins
    elif inner.kind is Kind.PRIVILEGED:
        facts.note(inner.kind, inner.reason)


def _prepare(node: ast.PrepareStmt, facts: _Facts) -> None:
    facts.absorb(_statement(node.query))
    facts.prepares = node.name
    facts.names.append(f"prepare:{node.name}")
    facts.pins.add("a SQL prepared statement")


def _execute(node: ast.ExecuteStmt, facts: _Facts) -> None:
    facts.note(Kind.UNKNOWN, f"EXECUTE {node.name}: what it runs was recorded at PREPARE")
    facts.executes = node.name
    _scan(_children(node), facts)


def _declare_cursor(node: ast.DeclareCursorStmt, facts: _Facts) -> None:
    facts.absorb(_statement(node.query))
    facts.names.append(f"declare:{node.portalname}")
    if (node.options or 0) & _CURSOR_OPT_HOLD:
        facts.pins.add("a WITH HOLD cursor")


_CURSOR_OPT_HOLD = 0x0020  # parsenodes.h: the cursor outlives its transaction


def _fetch(node: ast.FetchStmt, facts: _Facts) -> None:
    # FETCH and MOVE run the cursor's query — and any portal's, protocol-level ones included.
    facts.note(Kind.READ, "")
    facts.names.append(f"fetch:{node.portalname}")


def _deallocate(node: ast.DeallocateStmt, facts: _Facts) -> None:
    facts.note(Kind.SESSION, "DEALLOCATE")
    facts.names.append(f"deallocate:{node.name if node.name is not None else '*'}")


def _discard(node: ast.DiscardStmt, facts: _Facts) -> None:
    facts.names.append(SETTINGS)
    facts.note(Kind.SESSION, "DISCARD")
    if node.target == enums.DiscardMode.DISCARD_ALL:
        facts.names += ["deallocate:*", "close:*", LEXING]


def _copy(node: ast.CopyStmt, facts: _Facts) -> None:
    direction = "FROM" if node.is_from else "TO"
    if node.is_program:
        facts.note(Kind.PRIVILEGED, f"COPY {direction} PROGRAM runs a server process")
    elif node.filename is not None:
        facts.note(Kind.PRIVILEGED, f"COPY {direction} a server file")
    elif node.is_from:
        facts.note(Kind.WRITE, "COPY FROM")
        facts.copy_from_stdin = True
    if node.query is not None:
        facts.absorb(_statement(node.query))
    _scan(_children(node, skip=("query",)), facts)


def _create_table_as(node: ast.CreateTableAsStmt, facts: _Facts) -> None:
    is_matview = node.objtype == enums.ObjectType.OBJECT_MATVIEW
    facts.note(Kind.DDL, "CREATE MATERIALIZED VIEW" if is_matview else "CREATE TABLE AS")
    query = node.query
    if isinstance(query, ast.ExecuteStmt):
        _scan(_children(query), facts)  # what EXECUTE runs is a preparable query: ddl covers it
    else:
        facts.absorb(_statement(query))
    _scan(_children(node, skip=("query",)), facts)


def _set_multi(node: ast.VariableSetStmt, facts: _Facts) -> None:
    name = node.name or ""
    if name == "TRANSACTION SNAPSHOT":
        facts.note(Kind.TRANSACTION, "SET TRANSACTION SNAPSHOT")
        return
    label = "SET TRANSACTION" if name == "TRANSACTION" else "SET SESSION CHARACTERISTICS AS TRANSACTION"
    if _lifts_read_only(node.args):
        facts.note(Kind.PRIVILEGED, f"{label} READ WRITE lifts the read-only backstop")
    elif name == "TRANSACTION":
        facts.note(Kind.TRANSACTION, label)
    elif name == "SESSION CHARACTERISTICS":
        facts.note(Kind.SESSION, label)
    else:
        facts.note(Kind.UNKNOWN, f"unrecognised SET {name}")


def _variable_set(node: ast.VariableSetStmt, facts: _Facts) -> None:
    facts.names.append(SETTINGS)
    kind = node.kind
    name = (node.name or "").lower()  # setting names are case-insensitive, even quoted
    if name in _LEXING_SETTINGS or kind == enums.VariableSetKind.VAR_RESET_ALL:
        facts.names.append(LEXING)
    if kind == enums.VariableSetKind.VAR_RESET_ALL:
        # transaction_read_only is not reset by RESET ALL; default_transaction_read_only goes back
        # to the value of the upstream startup packet (on, for read roles).
        facts.note(Kind.SESSION, "RESET ALL")
    elif kind in _RESET_KINDS and name in _READ_ONLY_SETTINGS:
        # Inside a transaction, `RESET transaction_read_only` and `SET … TO DEFAULT` restore the
        # built-in default (off), not the startup value: they lift the backstop.
        facts.note(Kind.PRIVILEGED, f"{_RESET_KINDS[kind].format(name)} can lift the read-only backstop")
    elif kind in _RESET_KINDS:
        facts.note(Kind.SESSION, _RESET_KINDS[kind].format(name))
    elif kind == enums.VariableSetKind.VAR_SET_MULTI:
        _set_multi(node, facts)
    elif kind != enums.VariableSetKind.VAR_SET_VALUE:
        facts.note(Kind.UNKNOWN, f"unrecognised SET form {kind}")
    elif name in _READ_ONLY_SETTINGS:
        if _all_true(node.args):
            facts.note(Kind.SESSION, f"SET {name} on")
        else:
            facts.note(Kind.PRIVILEGED, f"SET {name} off lifts the read-only backstop")
    elif name == "search_path":
        facts.note(Kind.SESSION, "SET search_path")
        for arg in node.args or ():
            value = _const(arg)
            facts.schemas |= _path_schemas(value) if value is not None else {"*"}
    elif name in _LEXING_SETTINGS:
        args = node.args or ()
        value = _const(args[0]) if len(args) == 1 else None
        why = _lexing_refusal(name, value)
        facts.note(Kind.PRIVILEGED if why else Kind.SESSION, why or f"SET {name}")
    elif name == "role":
        # PostgreSQL compares the value with "none" case-sensitively: SET ROLE 'NONE' names a role.
        args = node.args or ()
        if len(args) == 1 and _const(args[0]) == "none":
            facts.note(Kind.SESSION, "SET ROLE NONE")
        else:
            facts.note(Kind.PRIVILEGED, "SET ROLE changes who the session is")
    elif name == "session_authorization":
        facts.note(Kind.PRIVILEGED, "SET SESSION AUTHORIZATION changes who the session is")
    else:
        facts.note(Kind.SESSION, f"SET {name}")


_TRANSACTION_LABELS = {
    enums.TransactionStmtKind.TRANS_STMT_BEGIN: "BEGIN",
    enums.TransactionStmtKind.TRANS_STMT_START: "START TRANSACTION",
    enums.TransactionStmtKind.TRANS_STMT_COMMIT: "COMMIT",
    enums.TransactionStmtKind.TRANS_STMT_ROLLBACK: "ROLLBACK",
    enums.TransactionStmtKind.TRANS_STMT_SAVEPOINT: "SAVEPOINT",
    enums.TransactionStmtKind.TRANS_STMT_RELEASE: "RELEASE",
    enums.TransactionStmtKind.TRANS_STMT_ROLLBACK_TO: "ROLLBACK TO SAVEPOINT",
}
_TWO_PHASE_LABELS = {
    enums.TransactionStmtKind.TRANS_STMT_PREPARE: "PREPARE TRANSACTION",
    enums.TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED: "COMMIT PREPARED",
    enums.TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED: "ROLLBACK PREPARED",
}


def _transaction(node: ast.TransactionStmt, facts: _Facts) -> None:
    kind = node.kind
    if kind in _TWO_PHASE_LABELS:
        facts.note(Kind.WRITE, f"{_TWO_PHASE_LABELS[kind]} (two-phase commit)")
    elif kind not in _TRANSACTION_LABELS:
        facts.note(Kind.UNKNOWN, f"unrecognised transaction statement {kind}")
    elif _lifts_read_only(node.options):
        facts.note(Kind.PRIVILEGED, f"{_TRANSACTION_LABELS[kind]} READ WRITE lifts the read-only backstop")
    else:
        facts.note(Kind.TRANSACTION, _TRANSACTION_LABELS[kind])


def _close(node: ast.ClosePortalStmt, facts: _Facts) -> None:
    if node.portalname is None:
        facts.note(Kind.SESSION, "CLOSE ALL")
    facts.names.append(f"close:{node.portalname if node.portalname is not None else '*'}")


def _object_type(value: Any) -> str:
    """`ObjectType.OBJECT_MATVIEW` → "MATVIEW": enough to tell people what a DDL statement touches."""
    name = getattr(value, "name", "")
    return name.removeprefix("OBJECT_").replace("_", " ") if isinstance(name, str) else ""


def _grant(node: Any) -> str:
    return "GRANT" if node.is_grant else "REVOKE"


def _pinning(handler: _Handler, why: str) -> _Handler:
    """`handler`, and the statement leaves state on its server connection (`pins`)."""

    def handle(node: Any, facts: _Facts) -> None:
        handler(node, facts)
        facts.pins.add(why)

    return handle


_READ = _fixed(Kind.READ, "")

_HANDLERS: dict[type, _Handler] = {
    # reads
    ast.SelectStmt: _select,
    ast.VariableShowStmt: _READ,
    ast.FetchStmt: _fetch,
    ast.ReturnStmt: _READ,  # only inside CREATE FUNCTION … RETURN
    ast.ClosePortalStmt: _close,
    # wrappers
    ast.ExplainStmt: _explain,
    ast.PrepareStmt: _prepare,
    ast.ExecuteStmt: _execute,
    ast.DeclareCursorStmt: _declare_cursor,
    ast.CopyStmt: _copy,
    ast.CreateTableAsStmt: _create_table_as,
    # writes
    ast.InsertStmt: _fixed(Kind.WRITE, "INSERT"),
    ast.UpdateStmt: _fixed(Kind.WRITE, "UPDATE"),
    ast.DeleteStmt: _fixed(Kind.WRITE, "DELETE"),
    ast.MergeStmt: _fixed(Kind.WRITE, "MERGE"),
    ast.CallStmt: _fixed(Kind.WRITE, "CALL"),
    ast.DoStmt: _pinning(_fixed(Kind.WRITE, "DO"), "a DO block (it can change anything in the session)"),
    ast.TruncateStmt: _fixed(Kind.WRITE, "TRUNCATE"),
    ast.LockStmt: _fixed(Kind.WRITE, "LOCK"),
    ast.VacuumStmt: _fixed(Kind.WRITE, lambda node: "VACUUM" if node.is_vacuumcmd else "ANALYZE"),
    ast.ClusterStmt: _fixed(Kind.WRITE, "CLUSTER"),
    ast.ReindexStmt: _fixed(Kind.WRITE, "REINDEX"),
    ast.RefreshMatViewStmt: _fixed(Kind.WRITE, "REFRESH MATERIALIZED VIEW"),
    ast.NotifyStmt: _fixed(Kind.WRITE, "NOTIFY"),
    # transaction and session
    ast.TransactionStmt: _transaction,
    ast.ConstraintsSetStmt: _fixed(Kind.TRANSACTION, "SET CONSTRAINTS"),
    ast.VariableSetStmt: _variable_set,
    ast.DiscardStmt: _discard,
    ast.DeallocateStmt: _deallocate,
    ast.ListenStmt: _pinning(_fixed(Kind.SESSION, "LISTEN"), "LISTEN"),
    ast.UnlistenStmt: _fixed(Kind.SESSION, "UNLISTEN"),
    # privileged
    ast.GrantStmt: _fixed(Kind.PRIVILEGED, _grant),
    ast.GrantRoleStmt: _fixed(Kind.PRIVILEGED, _grant),
    ast.AlterDefaultPrivilegesStmt: _fixed(Kind.PRIVILEGED, "ALTER DEFAULT PRIVILEGES"),
    ast.AlterSystemStmt: _fixed(Kind.PRIVILEGED, "ALTER SYSTEM"),
    ast.CreateRoleStmt: _fixed(Kind.PRIVILEGED, "CREATE ROLE"),
    ast.AlterRoleStmt: _fixed(Kind.PRIVILEGED, "ALTER ROLE"),
    ast.AlterRoleSetStmt: _fixed(Kind.PRIVILEGED, "ALTER ROLE … SET"),
    ast.DropRoleStmt: _fixed(Kind.PRIVILEGED, "DROP ROLE"),
    ast.ReassignOwnedStmt: _fixed(Kind.PRIVILEGED, "REASSIGN OWNED"),
    ast.DropOwnedStmt: _fixed(Kind.PRIVILEGED, "DROP OWNED"),
    ast.LoadStmt: _pinning(_fixed(Kind.PRIVILEGED, "LOAD loads a server library"), "LOAD"),
    ast.CreateExtensionStmt: _fixed(Kind.PRIVILEGED, "CREATE EXTENSION installs code"),
    ast.AlterExtensionStmt: _fixed(Kind.PRIVILEGED, "ALTER EXTENSION runs its scripts"),
    ast.AlterExtensionContentsStmt: _fixed(Kind.PRIVILEGED, "ALTER EXTENSION … ADD/DROP"),
    ast.CreateTableSpaceStmt: _fixed(Kind.PRIVILEGED, "CREATE TABLESPACE uses a server directory"),
    ast.CheckPointStmt: _fixed(Kind.PRIVILEGED, "CHECKPOINT"),
    # ddl with a better name than the generic one below
    ast.CreateStmt: _fixed(Kind.DDL, "CREATE TABLE"),
    ast.IndexStmt: _fixed(Kind.DDL, "CREATE INDEX"),
    ast.ViewStmt: _fixed(Kind.DDL, "CREATE VIEW"),
    ast.CreatedbStmt: _fixed(Kind.DDL, "CREATE DATABASE"),
    ast.DropdbStmt: _fixed(Kind.DDL, "DROP DATABASE"),
    ast.CommentStmt: _fixed(Kind.DDL, "COMMENT"),
    ast.SecLabelStmt: _fixed(Kind.DDL, "SECURITY LABEL"),
    ast.RuleStmt: _fixed(Kind.DDL, "CREATE RULE"),
    ast.DefineStmt: _fixed(Kind.DDL, lambda node: f"CREATE {_object_type(node.kind)}"),
    ast.DropStmt: _fixed(Kind.DDL, lambda node: f"DROP {_object_type(node.removeType)}"),
    ast.AlterTableStmt: _fixed(Kind.DDL, lambda node: f"ALTER {_object_type(node.objtype)}"),
    ast.RenameStmt: _fixed(Kind.DDL, lambda node: f"ALTER {_object_type(node.renameType)} … RENAME"),
}

_DDL_STATEMENTS = (
    ast.AlterCollationStmt,
    ast.AlterDatabaseRefreshCollStmt,
    ast.AlterDatabaseSetStmt,
    ast.AlterDatabaseStmt,
    ast.AlterDomainStmt,
    ast.AlterEnumStmt,
    ast.AlterEventTrigStmt,
    ast.AlterFdwStmt,
    ast.AlterForeignServerStmt,
    ast.AlterFunctionStmt,
    ast.AlterObjectDependsStmt,
    ast.AlterObjectSchemaStmt,
    ast.AlterOpFamilyStmt,
    ast.AlterOperatorStmt,
    ast.AlterOwnerStmt,
    ast.AlterPolicyStmt,
    ast.AlterPublicationStmt,
    ast.AlterSeqStmt,
    ast.AlterStatsStmt,
    ast.AlterSubscriptionStmt,
    ast.AlterTSConfigurationStmt,
    ast.AlterTSDictionaryStmt,
    ast.AlterTableMoveAllStmt,
    ast.AlterTableSpaceOptionsStmt,
    ast.AlterTypeStmt,
    ast.AlterUserMappingStmt,
    ast.CompositeTypeStmt,
    ast.CreateAmStmt,
    ast.CreateCastStmt,
    ast.CreateConversionStmt,
    ast.CreateDomainStmt,
    ast.CreateEnumStmt,
    ast.CreateEventTrigStmt,
    ast.CreateFdwStmt,
    ast.CreateForeignServerStmt,
    ast.CreateForeignTableStmt,
    ast.CreateFunctionStmt,
    ast.CreateOpClassStmt,
    ast.CreateOpFamilyStmt,
    ast.CreatePLangStmt,
    ast.CreatePolicyStmt,
    ast.CreatePublicationStmt,
    ast.CreateRangeStmt,
    ast.CreateSchemaStmt,
    ast.CreateSeqStmt,
    ast.CreateStatsStmt,
    ast.CreateSubscriptionStmt,
    ast.CreateTransformStmt,
    ast.CreateTrigStmt,
    ast.CreateUserMappingStmt,
    ast.DropSubscriptionStmt,
    ast.DropTableSpaceStmt,
    ast.DropUserMappingStmt,
    ast.ImportForeignSchemaStmt,
    ast.ReplicaIdentityStmt,
)


def _ddl_label(class_name: str) -> str:
    """`CreateForeignTableStmt` → "CREATE FOREIGN TABLE" (a readable label from the node class name)."""
    label = ""
    for previous, char in zip(" " + class_name, class_name.removesuffix("Stmt"), strict=False):
        label += " " + char if char.isupper() and previous.islower() else char
    return label.upper()


for _cls in _DDL_STATEMENTS:
    _HANDLERS[_cls] = _fixed(Kind.DDL, _ddl_label(_cls.__name__))


# --- entry point ------------------------------------------------------------------------------------


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "parse error"


def _classify_statements(statements: tuple[ast.RawStmt, ...]) -> Classification:
    strictest: _Facts | None = None
    tables: set[str] = set()
    names: list[str] = []
    unvetted: set[str] = set()
    schemas: set[str] = set()
    pins: set[str] = set()
    copy_from_stdin = False
    for raw in statements:
        facts = _statement(raw.stmt)
        pins |= facts.pins
        names += facts.names
        unvetted |= facts.unvetted
        schemas |= facts.schemas
        schemas |= {table.split(".")[-2] for table in facts.tables if "." in table}
        tables |= {table for table in facts.tables if table not in facts.ctes}
        copy_from_stdin = copy_from_stdin or facts.copy_from_stdin
        if strictest is None or _RANK[facts.kind] > _RANK[strictest.kind]:
            strictest = facts
    assert strictest is not None
    single = len(statements) == 1
    return Classification(
        kind=strictest.kind,
        tables=tuple(sorted(tables)),
        statements=len(statements),
        reason=strictest.reason,
        prepares=strictest.prepares if single else None,
        executes=strictest.executes if single else None,
        copy_from_stdin=copy_from_stdin,
        names=tuple(names),
        unvetted=tuple(sorted(unvetted)),
        schemas=tuple(sorted(schemas)),
        pins=tuple(
            sorted(
                pins | ({"the pg_temp schema"} if any(s.startswith("pg_temp") for s in schemas) else set())
            )
        ),
    )


def classify(sql: str) -> Classification:
    """Classify one protocol message's SQL text (possibly several statements). Never raises."""
    if "\x00" in sql:
        return Classification(kind=Kind.UNKNOWN, reason="statement text contains a NUL byte")
    try:
        statements = parse_sql(sql)
    except ParseError as exc:
        return Classification(kind=Kind.UNKNOWN, reason=_first_line(str(exc.args[0]) if exc.args else ""))
    except Exception as exc:  # e.g. lone surrogates cannot be encoded for the parser
        return Classification(kind=Kind.UNKNOWN, reason=f"cannot parse: {_first_line(str(exc))}")
    if not statements:
        return Classification(kind=Kind.READ, statements=0)
    try:
        return _classify_statements(statements)
    except Exception as exc:  # fail closed: a classifier bug must never make a statement a read
        return Classification(
            kind=Kind.UNKNOWN,
            statements=len(statements),
            reason=f"classifier error: {type(exc).__name__}: {_first_line(str(exc))}",
        )


def controls_transactions(sql: str) -> bool:
    """Whether the text begins, ends or prepares transactions itself (BEGIN, COMMIT, ROLLBACK,
    SAVEPOINT, PREPARE TRANSACTION…): the executor runs a change request in one transaction of
    its own and refuses such text."""
    try:
        statements = parse_sql(sql)
    except Exception:  # unparseable text fails in the database, not here
        return False
    return any(isinstance(raw.stmt, ast.TransactionStmt) for raw in statements)
