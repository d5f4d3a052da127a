"""The one error tree: every QueryBase error knows its PostgreSQL SQLSTATE, MySQL errno and API code.

Protocol renderers (ErrorResponse, ERR packet, JSON error body) read these class attributes, so a
new failure mode is one new subclass, never a new string comparison somewhere else.
"""

from __future__ import annotations


class QueryBaseError(Exception):
    """Root of every error QueryBase reports to a person, a client or the API."""

    sqlstate: str = "XX000"  # internal_error
    mysql_errno: int = 1105  # ER_UNKNOWN_ERROR
    code: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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
