"""Store connection: the async engine (SQLite in WAL mode, or PostgreSQL) and schema migration.

`open_store()` gives a `Store` holding the engine and a session factory; `Store.migrate()` brings
the schema to the newest Alembic revision and is safe to call on every start (it is a no-op when
up to date, and on PostgreSQL an advisory lock keeps two starting processes from racing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from proxy.errors import StoreError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_MIGRATION_LOCK_ID = 0x51425F4D  # "QB_M": pg_advisory_xact_lock key for migrations


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # The sqlite3 module's own transaction handling commits before DDL, which would leave a failed
    # migration half-applied; turn it off and let SQLAlchemy's BEGIN (below) own transactions.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


WRITE_QUEUE_TIMEOUT = 120.0  # seconds a SQLite writer waits for its turn in this process


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN")


def _sqlite_begin_immediate(conn: Connection) -> None:
    # A write transaction takes SQLite's write lock up front, so two writers queue (busy_timeout)
    # instead of the second failing with "database is locked" when it upgrades from a read.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def alembic_config(url: str | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


class Store:
    """The catalog database: an engine, a session factory and migrations."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: AsyncEngine = create_async_engine(url, pool_pre_ping=True)
        # Writes go through `write_engine`: the same engine on PostgreSQL; on SQLite a second
        # engine whose transactions begin IMMEDIATE, so readers never wait for the write lock.
        self.write_engine = self.engine
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        if self.is_sqlite:
            Path(self.engine.url.database or "").parent.mkdir(parents=True, exist_ok=True)
            # One connection: this process's writers queue for it in order (asyncio), instead of
            # racing for SQLite's file lock with busy_timeout's sleeps, which starved some of them
            # past the timeout when a client held writes as fast as it could (found by the fuzzer:
            # "database is locked", then the audit log refused everyone's statements). Other
            # processes still meet busy_timeout.
            self.write_engine = create_async_engine(
                url, pool_size=1, max_overflow=0, pool_timeout=WRITE_QUEUE_TIMEOUT
            )
            for engine, begin in ((self.engine, _sqlite_begin), (self.write_engine, _sqlite_begin_immediate)):
                event.listen(engine.sync_engine, "connect", _sqlite_connect)
                event.listen(engine.sync_engine, "begin", begin)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_sessions = async_sessionmaker(self.write_engine, expire_on_commit=False)

    def session(self) -> AsyncSession:
        """A session for reading."""
        return self._sessions()

    def write_session(self) -> AsyncSession:
        """A session for a transaction that writes (serialised with other writers on SQLite)."""
        return self._write_sessions()

    async def migrate(self) -> None:
        """Upgrade the schema to head; idempotent."""
        try:
            async with self.write_engine.begin() as conn:
                await conn.run_sync(self._upgrade)
        except (OperationalError, DBAPIError, OSError) as exc:
            raise StoreError(f"store {self.safe_url}: cannot migrate: {_first_line(exc)}") from None

    def _upgrade(self, conn: Connection) -> None:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_ID})
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")

    async def current_revision(self) -> str | None:
        async with self.engine.connect() as conn:
            return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())

    @staticmethod
    def head_revision() -> str | None:
        return ScriptDirectory.from_config(alembic_config()).get_current_head()

    async def ping(self) -> None:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except (OperationalError, DBAPIError, OSError) as exc:
            raise StoreError(f"store {self.safe_url} is unreachable: {_first_line(exc)}") from None

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    async def close(self) -> None:
        await self.engine.dispose()
        if self.write_engine is not self.engine:
            await self.write_engine.dispose()


def _first_line(exc: BaseException) -> str:
    text_ = str(getattr(exc, "orig", None) or exc)
    return text_.strip().splitlines()[0] if text_.strip() else type(exc).__name__
