"""The one error tree: every QueryBase error knows its PostgreSQL SQLSTATE, MySQL errno and API code.

Protocol renderers read these attributes — `proxy.wire.pg.protocol.error_response` (ErrorResponse:
`sqlstate`, `message`, `detail`, `hint`), `proxy.wire.mysql.protocol.err_payload` (ERR packet:
`mysql_errno`, `mysql_sqlstate`, `mysql_message`) and admin_api/errors.py (JSON body: `code`) — so
a new failure mode is one new subclass, never a new string comparison somewhere else. `Refused`
and its subclasses are what a client gets in place of its statement's own answer (the verdicts);
`PoolTimeout` and `UpstreamConnectError` what it gets when no upstream connection can be had.
"""

from __future__ import annotations


class QueryBaseError(Exception):
    """Root of every error QueryBase reports to a person, a client or the API."""

    sqlstate: str = "XX000"  # internal_error
    mysql_errno: int = 1105  # ER_UNKNOWN_ERROR
    mysql_sqlstate: str | None = None  # None: `sqlstate` when it has five characters, else HY000
    code: str = "internal"
    detail: str = ""  # PostgreSQL's DETAIL and HINT fields
    hint: str = ""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def mysql_message(self) -> str:
        """The text of the MySQL ERR packet (one line: MySQL has no detail or hint)."""
        return self.message


class ConfigError(QueryBaseError):
    """The configuration (file, environment or referenced files) is unusable."""

    code = "config"


class SecretError(QueryBaseError):
    """A secret could not be sealed or unsealed: missing or wrong key, tampered ciphertext."""

    code = "secret"


class CatalogError(QueryBaseError):
    """A catalog operation (users, groups, sources, grants) was refused."""

    code = "catalog"


class NotFound(CatalogError):
    sqlstate = "42704"  # undefined_object
    mysql_errno = 1133  # ER_PASSWORD_NO_MATCH ("Can't find any matching row")
    code = "not_found"


class AlreadyExists(CatalogError):
    sqlstate = "42710"  # duplicate_object
    mysql_errno = 1396  # ER_CANNOT_USER
    code = "conflict"


class InvalidInput(CatalogError):
    sqlstate = "22023"  # invalid_parameter_value
    mysql_errno = 1210  # ER_WRONG_ARGUMENTS
    code = "invalid"


class StoreError(QueryBaseError):
    """The catalog store is unreachable or its schema cannot be brought up to date."""

    sqlstate = "58000"  # system_error
    code = "store"


class Unauthorized(QueryBaseError):
    """No valid credentials: a bad password, an unknown, expired or revoked token."""

    sqlstate = "28000"  # invalid_authorization_specification
    mysql_errno = 1045  # ER_ACCESS_DENIED_ERROR
    code = "unauthorized"


class Forbidden(QueryBaseError):
    """The caller is known but may not do this (not an admin, not an approver of that source...)."""

    sqlstate = "42501"  # insufficient_privilege
    mysql_errno = 1227  # ER_SPECIFIC_ACCESS_DENIED_ERROR
    code = "forbidden"


class StateConflict(QueryBaseError):
    """The change request is not in a state that allows this (approve a rejected one, cancel twice...)."""

    sqlstate = "55000"  # object_not_in_prerequisite_state
    mysql_errno = 1105
    code = "state_conflict"


class PoolTimeout(QueryBaseError):
    """No upstream connection became free within the source's pool timeout."""

    sqlstate = "53300"  # too_many_connections
    mysql_errno = 1040  # ER_CON_COUNT_ERROR
    code = "pool_timeout"


class UpstreamConnectError(QueryBaseError):
    """The upstream could not be reached or refused QueryBase's login."""

    sqlstate = "08001"  # sqlclient_unable_to_establish_sqlconnection
    mysql_errno = 2003  # CR_CONN_HOST_ERROR
    code = "upstream_connect"


# --- verdicts: what a client gets in place of its statement's own answer ------------------------


class Refused(QueryBaseError):
    """QueryBase answered a statement itself: the database never saw it."""

    mysql_sqlstate = "HY000"


class Denied(Refused):
    """Policy refused the statement (the message names the level it needs)."""

    sqlstate = "42501"  # insufficient_privilege
    mysql_errno = 1142  # ER_TABLEACCESS_DENIED_ERROR
    mysql_sqlstate = "42000"
    code = "forbidden"

    def __init__(self, message: str, *, mysql_errno: int | None = None) -> None:
        super().__init__(message)
        if mysql_errno is not None:
            self.mysql_errno = mysql_errno


class DeniedPrivileged(Denied):
    """A privileged statement (roles, server files, other sessions…) refused below `write`."""

    mysql_errno = 1227  # ER_SPECIFIC_ACCESS_DENIED_ERROR


class Held(Refused):
    """The write is held as change request `request_id`; it runs once an approver approves it."""

    sqlstate = "QB001"  # QueryBase's own class: the statement did not run, a request exists
    mysql_errno = 9001  # QueryBase's own errno (SQLSTATE HY000)
    code = "held"
    detail = "The statement did not run. It runs once, exactly as sent, when an approver approves it."

    def __init__(self, request_id: int, source: str, state: str = "", *, why: str = "") -> None:
        super().__init__(
            f'write held for approval as change request #{request_id} on source "{source}"'
            + (f" ({state})" if state else "")
        )
        self.request_id = request_id
        self.why = why  # why a statement QueryBase could not classify was held (MySQL shows it)
        self.hint = f"Review it with `querybase` or the admin API (change request {request_id})."

    @property
    def mysql_message(self) -> str:
        return (
            self.message
            + (f" [{self.why}]" if self.why else "")
            + "; it did not run and runs once, exactly as sent, when an approver approves it"
        )


class HoldFailed(Refused):
    """The write could not be stored as a change request: it did not run, and nothing is held."""

    sqlstate = "58000"  # system_error
    code = "hold_failed"

    def __init__(self, why: str) -> None:
        super().__init__(f"the write could not be held for approval: {why}")


class AuditUnavailable(Refused):
    """The audit log cannot record the statement's verdict, so it is refused, not run."""

    sqlstate = "58000"  # system_error
    code = "audit_unavailable"


class WaitCancelled(Refused):
    """Waiting mode: the client cancelled (or KILLed) the statement; its change request too."""

    sqlstate = "57014"  # query_canceled
    mysql_errno = 1317  # ER_QUERY_INTERRUPTED
    mysql_sqlstate = "70100"
    code = "cancelled"


class ApprovedButFailed(Refused):
    """Waiting mode: the request was approved and ran, and the database refused it."""

    code = "execution_failed"

    def __init__(self, message: str, *, sqlstate: str | None, mysql_errno: int | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate or "XX000"
        self.mysql_errno = mysql_errno or 1105
