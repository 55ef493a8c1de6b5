"""``python apply_worker.py CONFIG``: a fork server of ``provisiond apply`` processes for
the fault tests that kill or cut an apply in the middle.

It imports provisiond and the drivers an apply uses (no thread, no connection yet:
safe to fork), prints ``ready``, then for every line ``go LOGFILE`` on stdin forks a
child that will run ``provisiond --config CONFIG apply`` with its stdout and stderr in
LOGFILE, prints the child's pid, and on the next line (``run``) lets it start (so the
test knows whom to kill before the apply does anything), waits for it and prints
``exit CODE`` (``exit -9`` after a SIGKILL). The import seconds are spent once.

``PROVISIOND_TEST_PART_ROWS=N`` in its environment makes the applies journal parts of N
or more address-list changes as journal_parts rows (``store.PART_ROWS``, 200), so a test
of a few dozen accounts writes them too.
"""

from __future__ import annotations

import os
import sys

import psycopg  # noqa: F401 - warm imports, see above
import sqlalchemy.dialects.postgresql  # noqa: F401

import provisiond.core.ipam  # noqa: F401
import provisiond.engine  # noqa: F401
import provisiond.sources.sql  # noqa: F401
import provisiond.state.store  # noqa: F401
import provisiond.targets.radius  # noqa: F401
import provisiond.targets.routeros  # noqa: F401
from provisiond.cli import main as cli


def child(config: str, log: str, start: int) -> None:
    os.read(start, 1)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    code = 1
    try:
        code = cli.main(["--config", config, "apply"])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    config = sys.argv[1]
    part_rows = os.environ.get("PROVISIOND_TEST_PART_ROWS")
    if part_rows:
        provisiond.state.journal.PART_ROWS = int(part_rows)
    print("ready", flush=True)
    for line in sys.stdin:
        verb, _, log = line.strip().partition(" ")
        if verb != "go":
            break
        start, go = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(go)
            child(config, log, start)
        os.close(start)
        print(pid, flush=True)
        sys.stdin.readline()  # "run"
        os.write(go, b"x")
        os.close(go)
        _, status = os.waitpid(pid, 0)
        print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    main()
