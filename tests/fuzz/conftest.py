"""One `querybase serve` with both listeners for the fuzz tests of this directory (tests/fuzz/target.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzz.target import Target, fuzz_gateway
from tests.support.localdb import MariaDBServer, PostgresCluster


@pytest.fixture(scope="module")
def fuzz_target(
    pg_server: PostgresCluster, mariadb_server: MariaDBServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    with fuzz_gateway(pg_server, mariadb_server, tmp_path_factory.mktemp("fuzzhome")) as target:
        yield target
