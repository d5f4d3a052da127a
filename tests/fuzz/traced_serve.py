"""`querybase serve` with memory instruments, for the login-path investigation (tests/fuzz/logins.py).

    python tests/fuzz/traced_serve.py SNAPSHOT_DIR --config CONFIG serve

A thread watches SNAPSHOT_DIR: for every NAME.request file it runs a full gc.collect(), reads
VmRSS, and writes NAME.json (RSS, OS threads, gc object count, tracemalloc's traced memory) and, when
tracemalloc runs (QB_TRACEMALLOC=N frames, default off), NAME.snap, a tracemalloc snapshot.
Everything else is the ordinary `proxy.cli.main`.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def _watch(directory: Path) -> None:
    while True:
        for request in sorted(directory.glob("*.request")):
            name = request.stem
            t0 = time.monotonic()
            collected = gc.collect()
            facts: dict[str, object] = {
                "rss_kib": _status("VmRSS"),
                "threads": _status("Threads"),
                "gc_collected": collected,
                "gc_objects": len(gc.get_objects()),
                "gc_seconds": round(time.monotonic() - t0, 3),
            }
            if tracemalloc.is_tracing():
                facts["traced_current"], facts["traced_peak"] = tracemalloc.get_traced_memory()
                tracemalloc.take_snapshot().dump(str(directory / f"{name}.snap"))
            (directory / f"{name}.json").write_text(json.dumps(facts))
            request.unlink()
        time.sleep(0.05)


def main() -> int:
    directory = Path(sys.argv[1])
    frames = int(os.environ.get("QB_TRACEMALLOC", "0"))
    if frames:
        tracemalloc.start(frames)
    threading.Thread(target=_watch, args=(directory,), daemon=True, name="snapshots").start()
    from proxy.cli import main as cli_main

    return cli_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
