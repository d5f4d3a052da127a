"""The function allowlist (policies/pg_functions.py) against a real PostgreSQL catalog (issue 10, class 6)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from policies.pg_functions import SAFE_FUNCTIONS
from tests.support.localdb import PostgresCluster

pytestmark = pytest.mark.integration

GENERATOR = Path(__file__).resolve().parents[2] / "scripts" / "gen_pg_functions.py"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_pg_functions", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_allowed_function_cannot_write_on_this_server(pg_server: PostgresCluster) -> None:
    """Every allowed name exists here and each of its overloads is IMMUTABLE or STABLE, unless it is
    one of the vetted VOLATILE reads; nothing that runs SQL text or writes is allowed."""
    gen = _generator()
    rows = pg_server.execute_sql(
        "SELECT CASE WHEN nspname = 'pg_catalog' THEN proname ELSE nspname || '.' || proname END, "
        "bool_and(provolatile IN ('i', 's')) FROM pg_proc JOIN pg_namespace n ON n.oid = pronamespace "
        "WHERE nspname IN ('pg_catalog', 'information_schema') GROUP BY 1"
    )
    stable = dict(line.split("|") for line in rows.splitlines() if line)
    missing = sorted(name for name in SAFE_FUNCTIONS if name not in stable)
    assert not missing, f"allowed but not on this server: {missing[:10]}"
    volatile = sorted(n for n in SAFE_FUNCTIONS if stable[n] != "t" and n not in gen.VETTED_VOLATILE)
    assert not volatile, f"volatile and not vetted: {volatile}"
    for name in (
        "query_to_xml",
        "ts_stat",
        "ts_rewrite",
        "nextval",
        "set_config",
        "brin_summarize_new_values",
        "gin_clean_pending_list",
        "lo_import",
        "pg_read_file",
        "dblink",
        "table_to_xml",
        "cursor_to_xml",
    ):
        assert name not in SAFE_FUNCTIONS, name  # fmt: skip


def test_the_generated_list_is_what_the_generator_makes_here(
    pg_server: PostgresCluster, tmp_path: Path
) -> None:
    """policies/pg_functions.py is up to date with scripts/gen_pg_functions.py for this server."""
    gen = _generator()
    rows = pg_server.execute_sql(gen.QUERY)
    expected = set()
    for line in rows.splitlines():
        name, stable = line.split("|")
        if name not in gen.EXCLUDED and (stable == "t" or name in gen.VETTED_VOLATILE):
            expected.add(name)
    assert expected == set(SAFE_FUNCTIONS)
