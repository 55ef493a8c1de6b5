"""The end-to-end world used by tests/e2e: a real PostgreSQL billing database, simulated routers over TCP,
a SQLite state store and a config file; the CLI runs in-process (``world.run``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from provisiond.cli import main as cli
from provisiond.sim import RouterSim, SimSettings

ROUTER_USER = "provisiond"
ROUTER_PASSWORD = "S3cret-r0uter-pw"

SCHEMA = """
CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL);
CREATE TABLE groups (id SERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE account_groups (account_id INTEGER REFERENCES accounts(id) ON DELETE CASCADE,
                             group_id INTEGER REFERENCES groups(id));
CREATE TABLE ip_assignments (account_id INTEGER REFERENCES accounts(id) ON DELETE CASCADE,
                             address TEXT);
CREATE TABLE radius_accounts (account_id INTEGER REFERENCES accounts(id) ON DELETE CASCADE,
                              username TEXT);
INSERT INTO groups (name) VALUES ('Tower Hosts'), ('Credit Card Pending'), ('Legacy Customers');
"""

QUERY = """SELECT a.id AS account_id, a.name AS account_name, a.status AS status,
       g.name AS group_name, ip.address AS ip_address, r.username AS radius_username
FROM accounts a
LEFT JOIN account_groups ag ON ag.account_id = a.id
LEFT JOIN groups g ON g.id = ag.group_id
LEFT JOIN ip_assignments ip ON ip.account_id = a.id
LEFT JOIN radius_accounts r ON r.account_id = a.id"""

LISTS = (
    ("group", "Tower Hosts", "tower-hosts"),
    ("group", "Credit Card Pending", "cc-pending"),
    ("status", "delinquent", "delinquent"),
)


class World:
    def __init__(self, tmp: Path, billing_url: str) -> None:
        self.tmp = tmp
        self.billing_url = billing_url
        self.engine = sa.create_engine(billing_url)
        with self.engine.begin() as c:
            c.exec_driver_sql(SCHEMA)
        self.sims: dict[str, RouterSim] = {}
        self.config = tmp / "provisiond.toml"
        self.state_url = f"sqlite:///{tmp / 'state.db'}"
        (tmp / "router-pw").write_text(ROUTER_PASSWORD + "\n")
        os.chmod(tmp / "router-pw", 0o600)

    # -- routers --------------------------------------------------------------------

    def router(self, name: str, **settings: Any) -> RouterSim:
        sim = RouterSim(SimSettings(username=ROUTER_USER, password=ROUTER_PASSWORD,
                                    identity=name, log_commands=False, **settings)).start()
        self.sims[name] = sim
        return sim

    def entries(self, router: str = "core-1", list_name: str | None = None, menu: str = "ip") -> dict[str, dict[str, str]]:
        """address -> row for a list (or all lists) on a simulated router."""
        return {e["address"]: e for e in self.sims[router].entries(menu, list_name)}

    # -- billing --------------------------------------------------------------------

    def account(
        self,
        account_id: int,
        name: str,
        *,
        status: str = "active",
        groups: Iterable[str] = (),
        ips: Iterable[str] = (),
        usernames: Iterable[str] = (),
    ) -> None:
        with self.engine.begin() as c:
            c.execute(sa.text("DELETE FROM accounts WHERE id = :i"), {"i": account_id})
            c.execute(sa.text("INSERT INTO accounts VALUES (:i, :n, :s)"),
                      {"i": account_id, "n": name, "s": status})
            for g in groups:
                c.execute(sa.text("INSERT INTO account_groups SELECT :i, id FROM groups WHERE name = :g"),
                          {"i": account_id, "g": g})
            for ip in ips:
                c.execute(sa.text("INSERT INTO ip_assignments VALUES (:i, :a)"), {"i": account_id, "a": ip})
            for u in usernames:
                c.execute(sa.text("INSERT INTO radius_accounts VALUES (:i, :u)"), {"i": account_id, "u": u})

    def remove_account(self, account_id: int) -> None:
        with self.engine.begin() as c:
            c.execute(sa.text("DELETE FROM accounts WHERE id = :i"), {"i": account_id})

    def sql(self, statement: str, **params: Any) -> None:
        with self.engine.begin() as c:
            c.execute(sa.text(statement), params)

    # -- config and CLI -------------------------------------------------------------

    def write_config(self, *, safety: dict[str, Any] | None = None, query: str = QUERY,
                     source_extra: str = "", routers: dict[str, dict[str, Any]] | None = None,
                     lists: Iterable[tuple[str, str, str]] = LISTS, extra: str = "") -> Path:
        safety = safety or {"max_delete_ratio": 0.3, "max_update_ratio": 0.3, "min_existing": 10}
        out = [
            "[source]",
            f'url = "{self.billing_url}"',
            f'query = """{query}"""',
            source_extra,
            "[state]",
            f'url = "{self.state_url}"',
            "",
        ]
        for name, sim in self.sims.items():
            more = (routers or {}).get(name, {})
            out += ["[[router]]", f'name = "{name}"', 'host = "127.0.0.1"', f"port = {sim.port}",
                    f'username = "{ROUTER_USER}"', f'password_file = "{self.tmp / "router-pw"}"',
                    "connect_timeout = \"2s\"", "timeout = \"5s\""]
            out += [f"{k} = {json.dumps(v)}" for k, v in more.items()]
            out.append("")
        for selector, value, list_name in lists:
            out += ["[[address_list]]", f'{selector} = "{value}"', f'list = "{list_name}"', ""]
        out += ["[safety]"] + [f"{k} = {v}" for k, v in safety.items()] + ["", extra]
        self.config.write_text("\n".join(out) + "\n", encoding="utf-8")
        os.chmod(self.config, 0o600)
        return self.config

    def run(self, *args: str) -> tuple[int, str, str]:
        """Run ``provisiond --config <config> ARGS`` in-process: (exit code, stdout, stderr)."""
        if not self.config.exists():
            self.write_config()
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["--config", str(self.config), *args])
        return code, out.getvalue(), err.getvalue()

    def plan_json(self) -> tuple[int, dict[str, Any]]:
        code, out, err = self.run("plan", "--format", "json")
        assert code in (0, 2), err
        return code, json.loads(out)

    def assert_converged(self) -> None:
        """Idempotence: a second pass plans nothing."""
        code, out, err = self.run("plan")
        assert code == 0, out + err
        assert "Plan: 0 to create, 0 to update, 0 to delete" in out

    def close(self) -> None:
        for sim in self.sims.values():
            sim.stop()
        self.engine.dispose()
