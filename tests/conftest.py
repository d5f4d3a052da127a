"""Session fixtures running real PostgreSQL and MariaDB servers (tests/support/localdb.py), shared by
the integration, adversarial and fuzz tests.

The servers start on first request and stop when the session ends, whatever happened; tests that
do not ask for them start nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.localdb import MariaDBServer, PostgresCluster


@contextlib.contextmanager
def _server_basedir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """A fresh directory for a server. As root, PostgreSQL runs as `postgres`, which cannot enter
    pytest's temp tree (mode 0700), so the directory goes under the system temp dir instead, with
    only search permission for others, and is removed afterwards."""
    if os.geteuid() != 0:
        yield tmp_path_factory.mktemp(name)
        return
    path = Path(tempfile.mkdtemp(prefix=f"querybase-{name}-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster with the qb_* roles and database qbtest (see localdb.PG_PASSWORDS)."""
    with (
        _server_basedir(tmp_path_factory, "pg") as basedir,
        PostgresCluster(basedir / "pg") as cluster,
    ):
        yield cluster


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    """A MariaDB server with qb_native, qb_reader and database qbtest (see MARIADB_PASSWORDS)."""
    with (
        _server_basedir(tmp_path_factory, "mariadb") as basedir,
        MariaDBServer(basedir / "mariadb") as server,
    ):
        yield server


@pytest.fixture
def localdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty directory a test may give to its own PostgresCluster or MariaDBServer."""
    with _server_basedir(tmp_path_factory, "localdb") as basedir:
        yield basedir / "server"


# Strings that must never appear in a `serve` log: every password the tests use, and parameter
# values that the change-request tests bind (statement text is not logged either).
BOUND_VALUES = ("naïve ✓",)


def _secrets() -> set[str]:
    from tests.support import localdb, myfront, pgfront, querybase

    found = {querybase.ADMIN_PASSWORD, *localdb.PG_PASSWORDS.values(), *localdb.MARIADB_PASSWORDS.values()}
    found |= set(pgfront.PASSWORDS.values()) | set(myfront.PASSWORDS.values())
    found |= {f"{user}-Secret-pw-42" for user in ("pia", "olga", "pat")}  # test_changes_pg's extra users
    found |= set(BOUND_VALUES)
    return {s for s in found if s}


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_serve_logs() -> Iterator[None]:
    """After the whole run: scan every `serve` log the tests wrote for a password or bound value."""
    yield
    from tests.support.querybase import SERVE_LOGS

    secrets = _secrets()
    leaks = []
    for path in SERVE_LOGS:
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        leaks += [f"{path}: {secret!r}" for secret in secrets if secret in text]
    assert not leaks, "secrets in serve logs:\n" + "\n".join(leaks)
