"""The state store is private: it holds every account's name and address.

A SQLite store, its -wal/-shm and the daemon's lock file are created 0600 and the
directories provisiond creates for them 0700, whatever the umask (checked in a child
process with umask 000); check-config warns when existing ones are wider.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from world import World

CHILD = """
import json, os, sys
from datetime import UTC, datetime
from pathlib import Path
from provisiond.daemon.leader import for_store
from provisiond.state.store import StateStore, state_files
url = sys.argv[1]
store = StateStore.open(url)
import sqlite3
reader = sqlite3.connect(state_files(url)[0])  # keeps -wal/-shm alive past the store's connection
reader.execute("SELECT count(*) FROM reads").fetchall()
store.record_read(3, 3, datetime.now(UTC))
lock = for_store(url)
assert lock.acquire()
modes = {p.name: oct(p.stat().st_mode & 0o777) for p in state_files(url) if p.exists()}
db = state_files(url)[0]
modes.update({p.name: oct(p.stat().st_mode & 0o777) for p in (db.parent, db.parent.parent)})
lock.release()
store.close()
print(json.dumps(modes))
"""


def test_state_files_and_new_directories_are_private_whatever_the_umask(tmp_path: Path) -> None:
    db = tmp_path / "new" / "dirs" / "state.db"
    done = subprocess.run([sys.executable, "-c", CHILD, f"sqlite:///{db}"], capture_output=True, text=True,
                          timeout=60, preexec_fn=lambda: os.umask(0), check=False)
    assert done.returncode == 0, done.stderr
    modes = json.loads(done.stdout)
    assert modes == {"state.db": "0o600", "state.db-wal": "0o600", "state.db-shm": "0o600",
                     "state.db.lock": "0o600", "dirs": "0o700", "new": "0o700"}


def test_check_config_warns_when_the_state_store_is_wider(world: World) -> None:
    world.router("core-1")
    world.account(1042, "Ridge Tower", groups=["Tower Hosts"], ips=["100.64.10.5"])
    world.write_config(lists=(("group", "Tower Hosts", "tower-hosts"),))  # every mapping matches
    assert world.run("apply")[0] == 0
    db = world.tmp / "state.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    code, out, _ = world.run("check-config")
    assert code == 0 and "state.url" not in out, out
    os.chmod(db, 0o644)
    code, out, _ = world.run("check-config")
    assert code == 0, out
    assert (f"warning: state.url: {db} has mode 0644: other users can read every account's name and "
            f"address in it; chmod 600 {db}") in out
    world.assert_converged()
