"""Test harness for the daemon: a PostgreSQL billing database with the notify trigger,
a RouterOS simulator, a config file, and ``provisiond run`` as a real subprocess."""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from provisiond.cli.demo import BILLING_QUERY

REPO = Path(__file__).resolve().parents[2]
TRIGGER_SQL = REPO / "config" / "billing-notify-trigger.sql"
CHANNEL = "provisiond"

SCHEMA = """
CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL,
                       delinquent BOOLEAN NOT NULL DEFAULT false);
CREATE TABLE account_statuses (name TEXT PRIMARY KEY, activates_account BOOLEAN NOT NULL);
INSERT INTO account_statuses VALUES ('active', true), ('inactive', false);
CREATE TABLE groups (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE account_groups (account_id INTEGER, group_id INTEGER);
CREATE TABLE ip_assignments (account_id INTEGER, address TEXT);
CREATE TABLE radius_accounts (account_id INTEGER, username TEXT);
"""
QUERY = BILLING_QUERY  # the demo's schema and query: one source of truth
GROUPS = {"Tower Hosts": 1, "Legacy Customers": 2, "Credit Card Pending": 3}


def pg_kwargs(url: str) -> dict[str, Any]:
    u = make_url(url)
    return {"host": u.host, "port": u.port, "user": u.username, "dbname": u.database,
            "autocommit": True}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Billing:
    """The billing database: accounts 1000.. with an address each."""

    def __init__(self, url: str, accounts: int = 20) -> None:
        self.url = url
        with self.connect() as c:
            c.execute(SCHEMA)
            for name, gid in GROUPS.items():
                c.execute("INSERT INTO groups VALUES (%s, %s)", (gid, name))
            with c.cursor() as cur:
                cur.executemany("INSERT INTO accounts (id, name, status) VALUES (%s, %s, 'active')",
                                [(1000 + i, f"Account {i}") for i in range(accounts)])
                cur.executemany("INSERT INTO ip_assignments VALUES (%s, %s)",
                                [(1000 + i, self.address(1000 + i)) for i in range(accounts)])
            c.execute(TRIGGER_SQL.read_text())

    @staticmethod
    def address(account: int) -> str:
        i = account - 1000
        return f"100.64.{i >> 8}.{i & 255}"

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(**pg_kwargs(self.url))

    def join(self, group: str, *accounts: int) -> None:
        with self.connect() as c, c.cursor() as cur:
            cur.executemany("INSERT INTO account_groups VALUES (%s, %s)",
                            [(a, GROUPS[group]) for a in accounts])

    def add(self, accounts: Sequence[int], *groups: str, address: bool = True) -> None:
        """New active accounts in ``groups``, with a billing address each or none (for a
        pool); one statement per table, so the trigger sends a NOTIFY for each."""
        ids = list(accounts)
        with self.connect() as c, c.transaction():
            c.execute("INSERT INTO accounts (id, name, status) SELECT a, 'Account ' || (a - 1000), "
                      "'active' FROM unnest(%s::int[]) AS a", (ids,))
            if address:
                c.execute("INSERT INTO ip_assignments SELECT * FROM unnest(%s::int[], %s::text[])",
                          (ids, [self.address(a) for a in ids]))
            c.execute("INSERT INTO account_groups SELECT a, g FROM unnest(%s::int[]) AS a, "
                      "unnest(%s::int[]) AS g", (ids, [GROUPS[g] for g in groups]))

    def leave(self, group: str, *accounts: int) -> None:
        with self.connect() as c:
            c.execute("DELETE FROM account_groups WHERE group_id = %s AND account_id = ANY(%s)",
                      (GROUPS[group], list(accounts)))


def write_config(
    directory: Path,
    *,
    billing_url: str,
    router_port: int | None = None,
    password_file: Path,
    routers: Sequence[tuple[str, int]] = (),
    username: str = "admin",
    router_options: dict[str, Any] | None = None,
    state_url: str | None = None,
    lists: dict[str, str] | None = None,
    daemon: dict[str, Any] | None = None,
    name: str = "provisiond.toml",
    extra: str = "",
) -> Path:
    """``router_port``: one router, core-1; ``routers``: (name, port) each. Every router
    is logged in to as ``username``."""
    lists = lists if lists is not None else {"Tower Hosts": "tower-hosts"}
    routers = [("core-1", router_port)] if router_port is not None else list(routers)
    state_url = state_url or f"sqlite:///{directory / 'state.db'}"
    settings = {"interval": "300s", "jitter": 0, "debounce": "0.3s", "retry_max": "2s"}
    settings.update(daemon or {})
    lines = [
        "[source]", f'url = "{billing_url}"', f'query = """{QUERY}"""', "",
        "[state]", f'url = "{state_url}"', "",
    ]
    for router, port in routers:
        lines += ["[[router]]", f'name = "{router}"', 'host = "127.0.0.1"', f"port = {port}",
                  f'username = "{username}"', f'password_file = "{password_file}"', 'timeout = "5s"',
                  'connect_timeout = "2s"']
        lines += [f"{key} = {_toml(value)}" for key, value in (router_options or {}).items()]
        lines.append("")
    for group, list_name in lists.items():
        lines += ["[[address_list]]", f'group = "{group}"', f'list = "{list_name}"', ""]
    lines.append(extra)
    lines.append("[daemon]")
    for key, value in settings.items():
        if value is None:
            continue
        lines.append(f"{key} = {_toml(value)}")
    path = directory / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return f'"{value}"'


def new_password(directory: Path) -> tuple[str, Path]:
    password = "pw-" + secrets.token_hex(12)
    path = directory / "router-password"
    path.write_text(password + "\n", encoding="utf-8")
    path.chmod(0o600)
    return password, path


class DaemonProc:
    """``python -m provisiond.cli -vv --config F run``; stderr goes to a file we can poll."""

    def __init__(self, config: Path, *, log: Path, env: dict[str, str] | None = None,
                 verbosity: str = "-vv") -> None:
        self.log = log
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"
        self._err = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "provisiond.cli", verbosity, "--config", str(config), "run"],
            stdout=subprocess.DEVNULL, stderr=self._err, env=full_env, cwd=REPO,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_log(self, pattern: str, *, timeout: float = 15.0, after: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` in the log past offset ``after``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.text(), after)
            if m:
                return m
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode} before {pattern!r}:\n"
                                     + self.text()[-4000:])
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout}s:\n" + self.text()[-4000:])
            time.sleep(0.05)

    def mark(self) -> int:
        return len(self.text())

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._err.close()
        return self.proc.returncode


def wait_until(check: Callable[[], Any], *, timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
