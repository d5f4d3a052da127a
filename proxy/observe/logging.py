"""Logging setup: structlog events, JSON when not on a terminal, to stderr; per-session sampling of reads.

Secrets never reach a log call in the first place (no password, secret, SCRAM message, MySQL
scramble or bound parameter value is passed to one). As a second line of defence the renderer
replaces the value of any field whose name says it holds such a thing (`_redact`), for structlog
events and stdlib records alike.

Sessions bind their context (conn, protocol, client, then user and source) to their own bound
logger, and log one `statement` line per statement; `ReadSampler` decides which forwarded reads
get theirs (`[log] read_sample_rate`).
"""

from __future__ import annotations

import itertools
import logging
import sys

import structlog

from proxy.config import LogSettings

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


REDACTED = "[redacted]"
# Field names that never carry a value into a log line, and fragments that mark such a name.
_SECRET_FIELDS = frozenset(
    {
        "auth_response",
        "authorization",
        "bind",
        "bind_values",
        "client_final",
        "client_first",
        "client_proof",
        "nonce",
        "parameters",
        "param_values",
        "proof",
        "salt",
        "scramble",
        "verifier",
    }
)
_SECRET_FRAGMENTS = ("password", "passwd", "secret", "token", "scramble", "credential")

# Connection ids for log context: unique within the process, in order of arrival.
connection_ids = itertools.count(1)


def _redact(_logger: object, _name: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    for key in list(event):
        lowered = key.lower()
        if lowered in _SECRET_FIELDS or any(fragment in lowered for fragment in _SECRET_FRAGMENTS):
            event[key] = REDACTED
    return event


class ReadSampler:
    """Which forwarded reads get a log line: a deterministic share `rate` of them per session.

    An accumulator rather than a random draw: at 0.25 exactly every fourth read is logged, so
    the cost is one addition and one comparison per read.
    """

    __slots__ = ("_credit", "_rate")

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._credit = 0.0

    def __call__(self) -> bool:
        rate = self._rate
        if rate >= 1.0:
            return True
        if rate <= 0.0:
            return False
        self._credit += rate
        if self._credit >= 1.0 - 1e-9:  # tolerance: ten steps of 0.1 make 0.9999999999999999
            self._credit -= 1.0
            return True
        return False


def _drop_color_message(
    _logger: object, _name: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    event.pop("color_message", None)  # uvicorn's duplicate of the message with ANSI colours
    return event


def configure(settings: LogSettings) -> None:
    """Route structlog and the stdlib loggers (uvicorn, alembic) through one renderer on stderr."""
    use_json = settings.format == "json" or (settings.format == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[settings.level]),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(), _drop_color_message],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _redact,  # last before rendering: structlog events and stdlib records (with extras)
                *([structlog.processors.format_exc_info] if use_json else []),
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[settings.level])
    # Alembic announces every migration step at INFO; only its warnings matter to an operator.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # sqlglot warns "'<statement text>' contains unsupported syntax" for what it parses as a
    # Command: statement text (and any secret in it) does not belong in the log, and the
    # classifier already fails such text closed.
    logging.getLogger("sqlglot").setLevel(logging.ERROR)
