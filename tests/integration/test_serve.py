"""`querybase serve` as a real process: migrate, become ready, stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.querybase import admin_url, base_env, init_home, run_cli, start_serve

pytestmark = pytest.mark.integration


def _events(log: str) -> list[str]:
    return [json.loads(line)["event"] for line in log.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_becomes_ready_and_stops_cleanly(tmp_path: Path, signum: int) -> None:
    config = init_home(tmp_path / "qb")
    serve = start_serve(config)
    try:
        assert httpx.get(f"{serve.admin_url}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{serve.admin_url}/readyz").json() == {"status": "ready"}
    finally:
        code = serve.stop(signum)
    assert code == 0, serve.log
    events = _events(serve.log)
    assert events.index("ready") < events.index("stopping") < events.index("stopped")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{serve.admin_url}/healthz", timeout=1)


def test_serve_migrates_a_fresh_store(tmp_path: Path) -> None:
    # A store file that does not exist yet: serve creates and migrates it (init only made the key).
    config = init_home(tmp_path / "qb")
    (tmp_path / "qb" / "querybase.db").unlink()
    serve = start_serve(config)
    assert serve.stop() == 0, serve.log
    listed = run_cli(config, "user", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []  # schema present, no users: init was not rerun


def test_serve_refuses_an_occupied_admin_port(tmp_path: Path) -> None:
    config = init_home(tmp_path / "qb")
    host, port = admin_url(config).removeprefix("http://").split(":")
    with socket.create_server((host, int(port))):
        result = run_cli(config, "serve", timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"querybase: error: admin.listen: cannot listen on {host}:{port}: Address already in use"
    )


def test_serve_refuses_a_broken_certificate(tmp_path: Path) -> None:
    config = init_home(tmp_path / "qb")
    (tmp_path / "qb" / "tls" / "server.crt").write_text("not a certificate\n")
    result = run_cli(config, "serve", timeout=30)
    assert result.returncode == 1
    assert "are not a usable certificate and key" in result.stderr.splitlines()[-1]


def test_serve_without_key_names_the_setting(tmp_path: Path) -> None:
    config = init_home(tmp_path / "qb")
    (tmp_path / "qb" / "querybase.key").unlink()
    result = run_cli(config, "serve", timeout=30)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("querybase: error: secrets.key_file: cannot read ")


def test_serve_with_tls_disabled_needs_no_certificate(tmp_path: Path) -> None:
    config = init_home(tmp_path / "qb", tls_mode="disable")
    for name in ("server.crt", "server.key"):
        (tmp_path / "qb" / "tls" / name).unlink()
    serve = start_serve(config)
    assert serve.stop() == 0, serve.log


def test_listeners_can_be_disabled(tmp_path: Path) -> None:
    config = init_home(tmp_path / "qb")
    env = {"QUERYBASE_ADMIN__LISTEN": "", "QUERYBASE_POSTGRES__LISTEN": "", "QUERYBASE_MYSQL__LISTEN": ""}
    with subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "--config", str(config), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=base_env(env),
        text=True,
    ) as process:
        assert process.stdout is not None
        ready = None
        for line in process.stdout:
            if '"event": "ready"' in line:
                ready = json.loads(line)
                break
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    assert ready is not None
    assert ready["admin"] is None


def test_readyz_needs_a_reachable_source(tmp_path: Path) -> None:
    config = init_home(tmp_path / "qb")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    added = run_cli(
        config,
        *("source", "add", "gone", "--engine", "postgresql", "--host", "127.0.0.1", "--port", str(dead_port)),
        *("--database", "x", "--user", "x", "--no-password"),
    )
    assert added.returncode == 0, added.stderr
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "--config", str(config), "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=base_env(),
    )
    try:
        url = f"{admin_url(config)}/readyz"
        answer: httpx.Response | None = None
        for _ in range(200):
            try:
                answer = httpx.get(url, timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert answer is not None
        assert answer.status_code == 503
        body = answer.json()
        assert body["code"] == "upstream_connect"
        assert f"gone (127.0.0.1:{dead_port}" in body["message"]
        assert httpx.get(f"{admin_url(config)}/healthz").status_code == 200  # alive, just not ready
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0


def _config_events(config: Path) -> list[dict[str, object]]:
    db = config.parent / "querybase.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT payload FROM audit_events WHERE kind = 'config.changed' ORDER BY id"
        ).fetchall()
    return [json.loads(payload) for (payload,) in rows]


def test_configuration_changes_are_audited(tmp_path: Path) -> None:
    config = init_home(tmp_path / "qb")
    for extra_env in ({}, {}, {"QUERYBASE_LOG__READ_SAMPLE_RATE": "0.5", "QUERYBASE_AUDIT__BATCH_SIZE": "7"}):
        serve = start_serve(config, env=extra_env)
        assert serve.stop() == 0, serve.log
    events = _config_events(config)
    assert len(events) == 2  # the first start, then the start with other settings; not the repeat
    assert events[0]["first"] is True
    assert events[1]["changed"] == ["audit.batch_size", "log.read_sample_rate"]
    assert all(len(str(h)) == 64 for h in events[1]["settings"].values())  # type: ignore[union-attr]
    assert "0.5" not in json.dumps(events[1])  # values are hashed, never stored
