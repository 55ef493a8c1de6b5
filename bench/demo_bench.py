"""Wall time and peak memory of `provisiond plan` / `apply` on the demo data.

    python bench/demo_bench.py 10000 100000

For each size: seeds the demo's SQLite billing and FreeRADIUS databases, starts the
RouterOS simulator as its own process, then runs `provisiond plan`, `apply` and `plan`
again as separate processes, timing each and reading its peak RSS from wait4().
Prints one line per command. Nothing is asserted: these are figures for the notes.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provisiond.cli import demo


def run(cmd: list[str]) -> tuple[int, float, float]:
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), time.monotonic() - start, usage.ru_maxrss / 1024


def bench(accounts: int) -> None:
    with tempfile.TemporaryDirectory(prefix="provisiond-bench-") as tmp:
        d = Path(tmp)
        demo.seed_billing(d / "billing.db", accounts)
        demo.seed_radius(d / "radius.db")
        password = secrets.token_urlsafe(12)
        (d / "pw").write_text(password)
        sim, port = demo.start_simulator(d / "pw")
        try:
            config = demo.write_config(d, port=port, password_file=d / "pw")
            base = [sys.executable, "-m", "provisiond.cli", "--config", str(config)]
            for step in ("plan", "apply", "plan"):
                code, wall, rss = run(base + [step])
                print(f"accounts={accounts:>7} step={step:<5} exit={code} wall={wall:6.1f}s peak_rss={rss:6.0f}MiB",
                      flush=True)
        finally:
            sim.terminate()
            sim.wait(10)


if __name__ == "__main__":
    for n in (int(a) for a in sys.argv[1:] or ["10000", "100000"]):
        bench(n)
