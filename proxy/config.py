"""Configuration: one TOML file plus QUERYBASE_<SECTION>__<KEY> overrides, validated into one frozen object.

Where the file lives: `--config PATH`, else `$QUERYBASE_CONFIG`, else `./querybase.toml`. Relative
paths inside it are relative to the file's directory, and so are the defaults (store, key, TLS
files), so a config directory is self-contained. Anything wrong — an unknown key, a bad address,
an unreadable file — raises `ConfigError` whose message is one line naming the key and the problem.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from proxy.errors import ConfigError

ENV_PREFIX = "QUERYBASE_"
CONFIG_ENV = "QUERYBASE_CONFIG"
SECRET_KEY_ENV = "QUERYBASE_SECRET_KEY"  # noqa: S105 - a variable name
DEFAULT_CONFIG_NAME = "querybase.toml"

_DOTTED_NUMBERS = re.compile(r"[0-9.]+")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class ListenAddress(BaseModel):
    """A TCP listen address; `str()` gives it back in the config's HOST:PORT form."""

    model_config = ConfigDict(frozen=True)

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(value: str) -> ListenAddress | None:
    """Parse `HOST:PORT` or `[IPV6]:PORT`; the empty string means the listener is disabled."""
    text = value.strip()
    if not text:
        return None
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{value!r} is not [IPV6]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{value!r} is not HOST:PORT")
        # A name that looks like a dotted quad must be a valid one (RFC 1123 §2.1).
        if _DOTTED_NUMBERS.fullmatch(host) or not _HOSTNAME.fullmatch(host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"{host!r} is not a host name or IP address") from None
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
    return ListenAddress(host=host, port=int(port_text))


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StoreSettings(_Section):
    url: str

    @field_validator("url")
    @classmethod
    def _supported_url(cls, url: str) -> str:
        if not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            scheme = url.partition("://")[0] or url
            raise ValueError(
                f"unsupported store URL scheme {scheme!r}: use sqlite+aiosqlite:///PATH "
                "or postgresql+asyncpg://USER@HOST/DB"
            )
        return url


class SecretsSettings(_Section):
    key_file: Path


class ListenerSettings(_Section):
    listen: ListenAddress | None

    @field_validator("listen", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_listen(value)
        if isinstance(value, ListenAddress) or value is None:
            return value
        raise ValueError("must be a string HOST:PORT (empty to disable)")


class AdminSettings(ListenerSettings):
    token_ttl_seconds: int = Field(default=900, ge=60, le=7 * 24 * 3600)


NOTIFY_EVENTS = ("created", "approved", "rejected", "cancelled", "executed", "failed", "expired", "unknown")


class WebhookTarget(_Section):
    """One notification destination: generic JSON, a Slack incoming webhook or a Google Chat webhook.

    Webhook URLs carry secrets: give `url_env` (the name of an environment variable holding the
    URL) instead of `url` to keep them out of the file; `build_settings` resolves it.
    """

    name: str = Field(min_length=1, max_length=63)
    kind: Literal["json", "slack", "google_chat"] = "json"
    url: str = Field(repr=False)
    events: list[str] | None = None  # None: every event

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("is not an http:// or https:// URL")  # the URL itself may be secret
        return url

    @field_validator("events")
    @classmethod
    def _known_events(cls, events: list[str] | None) -> list[str] | None:
        unknown = sorted(set(events or ()) - set(NOTIFY_EVENTS))
        if unknown:
            raise ValueError(f"unknown events {unknown} (known: {', '.join(NOTIFY_EVENTS)})")
        return events


class NotifySettings(_Section):
    targets: list[WebhookTarget] = Field(default_factory=list)
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    max_attempts: int = Field(default=5, ge=1, le=20)
    backoff_seconds: float = Field(default=1.0, ge=0, le=300)
    queue_size: int = Field(default=1000, ge=1)

    @field_validator("targets")
    @classmethod
    def _unique_names(cls, targets: list[WebhookTarget]) -> list[WebhookTarget]:
        names = [t.name for t in targets]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ValueError(f"target names must be unique: {', '.join(doubled)}")
        return targets


class AuditSettings(_Section):
    """The audit writer (docs/audit.md): what happens when the audit log cannot take events."""

    on_failure: Literal["block", "allow"] = "block"
    queue_size: int = Field(default=10_000, ge=1, le=10_000_000)
    batch_size: int = Field(default=500, ge=1, le=100_000)
    anchor_file: Path | None = None  # None: `<store file>.audit-anchor` on SQLite, none on PostgreSQL

    @field_validator("on_failure", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("anchor_file", mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any) -> Any:
        return None if value == "" else value


class TLSSettings(_Section):
    mode: Literal["allow", "require", "disable"] = "allow"
    cert_file: Path
    key_file: Path


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console", "auto"] = "auto"
    # The share of forwarded reads that get a `statement` log line (holds, denials, writes and
    # errors are always logged): 1.0 logs every read, 0.01 one in a hundred, 0 none.
    read_sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class ServerSettings(_Section):
    shutdown_timeout: float = Field(default=30.0, ge=0, le=3600)


class Settings(_Section):
    """Everything QueryBase reads from its configuration; passed in, never global."""

    config_path: Path = Field(exclude=True)
    server: ServerSettings
    store: StoreSettings
    secrets: SecretsSettings
    postgres: ListenerSettings
    mysql: ListenerSettings
    admin: AdminSettings
    tls: TLSSettings
    log: LogSettings
    notify: NotifySettings
    audit: AuditSettings

    @property
    def base_dir(self) -> Path:
        return self.config_path.parent


_SQLITE = "sqlite+aiosqlite:///"
SECTIONS = ("server", "store", "secrets", "postgres", "mysql", "admin", "tls", "log", "notify", "audit")


def defaults(base_dir: Path) -> dict[str, dict[str, Any]]:
    """The default value of every key, for a config file living in `base_dir`."""
    return {
        "server": {"shutdown_timeout": 30.0},
        "store": {"url": "sqlite+aiosqlite:///querybase.db"},
        "secrets": {"key_file": "querybase.key"},
        "postgres": {"listen": "127.0.0.1:15432"},
        "mysql": {"listen": "127.0.0.1:13306"},
        "admin": {"listen": "127.0.0.1:18080", "token_ttl_seconds": 900},
        "tls": {"mode": "allow", "cert_file": "tls/server.crt", "key_file": "tls/server.key"},
        "log": {"level": "info", "format": "auto", "read_sample_rate": 1.0},
        "notify": {
            "targets": [],
            "timeout_seconds": 5.0,
            "max_attempts": 5,
            "backoff_seconds": 1.0,
            "queue_size": 1000,
        },
        "audit": {"on_failure": "block", "queue_size": 10_000, "batch_size": 500, "anchor_file": ""},
    }


def resolve_config_path(cli_value: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """`--config`, else `$QUERYBASE_CONFIG`, else `./querybase.toml`, as an absolute path."""
    env = os.environ if environ is None else environ
    raw = cli_value or env.get(CONFIG_ENV) or DEFAULT_CONFIG_NAME
    return Path(raw).expanduser().absolute()


def _env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, str], tuple[str, str]]:
    """(section, key) -> (value, variable name) for every QUERYBASE_<SECTION>__<KEY> variable."""
    found: dict[tuple[str, str], tuple[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        found[(section, key)] = (value, name)
    return found


def _show(name: str) -> str:
    """A name from the file as it can be printed on one line (quoted if it is not plain)."""
    return name if name.isprintable() and name.strip() == name and name else repr(name)


def _describe(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, merge and validate the configuration; raise ConfigError with one clear line."""
    env = os.environ if environ is None else environ
    path = path.absolute()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (run `querybase init`)") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: TOML syntax error: {exc}") from None
    return build_settings(path, raw, env)


def _resolve_webhook_urls(targets: Any, environ: Mapping[str, str], path: Path) -> None:
    """`url_env = "VAR"` in a notify target: the URL comes from that environment variable."""
    if not isinstance(targets, list):
        return
    for index, target in enumerate(targets):
        if not isinstance(target, dict) or "url_env" not in target:
            continue
        where = f"notify.targets.{index} ({target.get('name', '?')})"
        var = target.pop("url_env")
        if "url" in target:
            raise ConfigError(f"{where}: give url or url_env, not both (in {path})")
        if not isinstance(var, str) or var not in environ:
            raise ConfigError(f"{where}: url_env names {var!r}, which is not set in the environment")
        target["url"] = environ[var]


def build_settings(path: Path, raw: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
    """Validate file contents `raw` (as parsed TOML) plus environment overrides for file `path`."""
    base_dir = path.parent
    merged = defaults(base_dir)
    origin: dict[tuple[str, str], str] = {}
    for section, body in raw.items():
        if section not in merged:
            raise ConfigError(f"{_show(section)}: unknown section (known: {', '.join(SECTIONS)}) in {path}")
        if not isinstance(body, dict):
            raise ConfigError(f"{section}: must be a [{section}] table in {path}")
        for key, value in body.items():
            if key not in merged[section]:
                known = ", ".join(merged[section])
                raise ConfigError(f"{section}.{_show(key)}: unknown key (known: {known}) in {path}")
            merged[section][key] = value
    for (section, key), (value, var) in sorted(_env_overrides(environ).items()):
        if section not in merged or key not in merged[section]:
            raise ConfigError(f"{var}: no such setting {section}.{key}")
        merged[section][key] = value
        origin[(section, key)] = var
    for section, key in (
        ("secrets", "key_file"),
        ("tls", "cert_file"),
        ("tls", "key_file"),
        ("audit", "anchor_file"),
    ):
        value = merged[section][key]
        if isinstance(value, str) and value:
            merged[section][key] = str((base_dir / Path(value).expanduser()).absolute())
    _resolve_webhook_urls(merged["notify"].get("targets"), environ, path)
    url = merged["store"]["url"]
    if isinstance(url, str) and url.startswith(_SQLITE) and not url[len(_SQLITE) :].startswith("/"):
        merged["store"]["url"] = _SQLITE + str(base_dir / url[len(_SQLITE) :])
    try:
        return Settings(config_path=path, **merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(str(p) for p in first["loc"])
        where = origin.get((loc[0], loc[1])) if len(loc) >= 2 else None
        message = first["msg"].removeprefix("Value error, ")
        suffix = f" (from {where})" if where else f" (in {path})"
        raise ConfigError(f"{_describe(loc)}: {message}{suffix}") from None


DEFAULT_CONFIG_TEXT = """\
# QueryBase configuration. Every key can be overridden by an environment variable
# QUERYBASE_<SECTION>__<KEY>, e.g. QUERYBASE_POSTGRES__LISTEN=0.0.0.0:15432.
# Relative paths are relative to this file's directory. See docs/configuration.md.

[server]
# On SIGTERM/SIGINT: stop accepting, let running statements finish for up to this many seconds,
# then close every session (idle ones at once, with the protocol's shutdown error).
shutdown_timeout = 30.0

[store]
# sqlite+aiosqlite:///PATH (embedded, default) or postgresql+asyncpg://USER:PASS@HOST/DB (shared)
url = "sqlite+aiosqlite:///querybase.db"

[secrets]
# 32-byte key sealing source passwords (created 0600 by `querybase init`);
# QUERYBASE_SECRET_KEY (base64) takes precedence.
key_file = "querybase.key"

[postgres]
listen = "127.0.0.1:15432"   # empty string disables the listener

[mysql]
listen = "127.0.0.1:13306"

[admin]
listen = "127.0.0.1:18080"
token_ttl_seconds = 900      # lifetime of a JWT from POST /api/v1/auth/token

[notify]
# Webhooks for change-request events: created, approved, rejected, cancelled, executed, failed,
# expired, unknown. `url_env = "VAR"` reads a (secret) webhook URL from the environment.
# targets = [
#   { name = "ops", kind = "slack", url = "https://hooks.slack.com/services/..." },
#   { name = "audit", kind = "json", url_env = "AUDIT_HOOK_URL", events = ["executed", "failed"] },
# ]
targets = []
timeout_seconds = 5.0        # per delivery attempt
max_attempts = 5             # then the delivery is recorded as failed
backoff_seconds = 1.0        # doubled after every failed attempt
queue_size = 1000            # events waiting for delivery; beyond this the oldest are dropped (and logged)

[audit]
# Every login, statement verdict, catalog change, review and execution is a hash-chained event
# in the store (docs/audit.md). Logins and verdicts are written in batches from a bounded queue.
on_failure = "block"         # block | allow: may reads go on while the audit log cannot take events?
                             # (writes, holds and approvals always stop)
queue_size = 10000           # events waiting to be written; when full, the audit log counts as down
batch_size = 500             # events per write transaction
anchor_file = ""             # newest (id, hash) kept outside the store, so cutting the chain's end
                             # is detected; "" = <store file>.audit-anchor for SQLite, none for
                             # PostgreSQL (set a path on storage the database's admins cannot write)

[tls]
mode = "allow"               # allow | require | disable
cert_file = "tls/server.crt"
key_file = "tls/server.key"

[log]
level = "info"               # debug | info | warning | error
format = "auto"              # json | console | auto (console on a terminal, else json)
read_sample_rate = 1.0       # share of forwarded reads logged (0.0-1.0); holds, denials, writes always
"""
