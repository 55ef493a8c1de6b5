"""``python apply_worker.py CONFIG``: a warm ``provisiond apply`` for the SIGKILL matrix.

Imports provisiond and the drivers an apply uses, prints ``ready``, waits for a line
on stdin, then runs ``provisiond --config CONFIG apply`` in this process and exits
with its code. The test starts the next workers while the current trial runs, so the
seconds of imports are not what the random kill moments land in.
"""

from __future__ import annotations

import sys

import psycopg  # noqa: F401 - warm imports, see above
import sqlalchemy.dialects.postgresql  # noqa: F401

import provisiond.core.ipam  # noqa: F401
import provisiond.engine  # noqa: F401
import provisiond.sources.sql  # noqa: F401
import provisiond.state.store  # noqa: F401
import provisiond.targets.routeros  # noqa: F401
from provisiond.cli import main as cli

print("ready", flush=True)
sys.stdin.readline()
sys.exit(cli.main(["--config", sys.argv[1], "apply"]))
