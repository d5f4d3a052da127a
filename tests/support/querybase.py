"""Running the real `querybase` program in tests: CLI invocations and a `serve` subprocess."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.localdb import free_port

ADMIN_PASSWORD = "admin-test-password"
READY_TIMEOUT = 30.0
# Every `serve` log this test run wrote: tests/integration/conftest.py scans them for secrets.
SERVE_LOGS: list[Path] = []


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test process environment without any QUERYBASE_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUERYBASE_")}
    env.update(extra or {})
    return env


def run_cli(
    config: Path,
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run `querybase --config CONFIG ARGS…` as a real subprocess and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", "--config", str(config), *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=base_env(env),
        timeout=timeout,
        check=False,
    )


def run_cli_in_process(
    config: Path,
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """The same as `run_cli`, but calling `proxy.cli.main` in this process (ten times faster).

    The CLI reads only `sys.stdin`, `sys.stdout`, `sys.stderr` and `os.environ`, which are swapped
    for the call; argparse usage errors surface as SystemExit(2) and are returned as exit code 2.
    """
    from proxy.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_stdin = dict(os.environ), sys.stdin
    os.environ.clear()
    os.environ.update(base_env(env))
    sys.stdin = io.StringIO(stdin or "")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["--config", str(config), *args])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.stdin = saved_stdin
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["querybase", *args], code, out.getvalue(), err.getvalue())


def write_config(home: Path, *, tls_mode: str = "allow", extra: str = "") -> Path:
    """A config in `home` with every listener on a free port."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "querybase.toml"
    config.write_text(
        f"""
[postgres]
listen = "127.0.0.1:{free_port()}"
[mysql]
listen = "127.0.0.1:{free_port()}"
[admin]
listen = "127.0.0.1:{free_port()}"
[tls]
mode = "{tls_mode}"
[log]
format = "json"
{extra}
""",
        encoding="utf-8",
    )
    return config


def init_home(home: Path, **config_options: str) -> Path:
    """Write a config and run `querybase init` on it; returns the config path."""
    config = write_config(home, **config_options)
    result = run_cli_in_process(config, "init", env={"QUERYBASE_ADMIN_PASSWORD": ADMIN_PASSWORD})
    assert result.returncode == 0, result.stderr
    return config


@dataclass
class ServeProcess:
    """A running `querybase serve`; its stderr (the JSON log) is kept in a file."""

    config: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    admin_url: str
    _stopped: bool = field(default=False)

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout)
        finally:
            self._stopped = True

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def admin_url(config: Path) -> str:
    text = config.read_text(encoding="utf-8")
    section = text.split("[admin]", 1)[1]
    address = section.split('listen = "', 1)[1].split('"', 1)[0]
    return f"http://{address}"


def start_serve(config: Path, env: dict[str, str] | None = None) -> ServeProcess:
    """Start `querybase serve` and wait until /readyz answers 200 (or the process dies)."""
    log_path = config.parent / f"serve-{time.monotonic_ns()}.log"
    SERVE_LOGS.append(log_path)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "--config", str(config), "serve"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=base_env(env),
        )
    serve = ServeProcess(config, process, log_path, admin_url(config))
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"querybase serve exited with {process.returncode}:\n{serve.log}")
        try:
            if httpx.get(f"{serve.admin_url}/readyz", timeout=1.0).status_code == 200:
                return serve
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    serve.kill()
    raise RuntimeError(f"querybase serve not ready after {READY_TIMEOUT}s:\n{serve.log}")
