"""One `querybase serve` with both listeners for the fuzz tests of this directory (tests/fuzz/target.py),
shared by them (each test reads the log from where it stood when the test began)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzz.target import Target, fuzz_gateway
from tests.support.localdb import MariaDBServer, PostgresCluster


@pytest.fixture(scope="session")
def fuzz_target(
    pg_server: PostgresCluster, mariadb_server: MariaDBServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    with fuzz_gateway(pg_server, mariadb_server, tmp_path_factory.mktemp("fuzzhome")) as target:
        yield target
