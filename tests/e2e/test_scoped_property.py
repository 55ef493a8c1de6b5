"""Property: a scoped pass leaves every target exactly as a full pass would.

Two sets of targets read one PostgreSQL billing database, which has
config/billing-notify-trigger.sql installed. Set A is kept by a real ``provisiond run``
subprocess: every billing change reaches it as a NOTIFY naming the account, and it runs
scoped passes. Set B gets a full ``apply`` after every change. After each random change
(joins, leaves, address changes, renames, status changes, username changes, accounts
appearing and vanishing, a pool running out) both must hold the same router entries,
RADIUS rows and leases; A must have done it with scoped passes only, and at the end a
full plan on A finds nothing to do.

Billing addresses are drawn from each account's own range: two accounts claiming one
address is a conflict a full pass reports, not a state to converge to.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from world import QUERY, ROUTER_PASSWORD, ROUTER_USER, SCHEMA

sys.path.insert(0, str(Path(__file__).parent.parent / "radius"))

from freeradius import load_schema  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent.parent / "daemon"))

from harness import TRIGGER_SQL, DaemonProc, pg_kwargs, wait_until  # noqa: E402

from provisiond.cli import main as cli  # noqa: E402
from provisiond.sim import RouterSim, SimSettings  # noqa: E402

ACCOUNTS = (1, 2, 3, 4, 7, 10, 12, 21)  # 1 / 10 / 12 / 21: ids sharing leading digits
GROUPS = ("Tower Hosts", "Credit Card Pending", "Legacy Customers")
ANCHOR = 99  # an account outside ACCOUNTS that every mapping selects
MAPPINGS = """
[[address_list]]
group = "Tower Hosts"
list = "tower-hosts"

[[address_list]]
group = "Credit Card Pending"
list = "cc-pending"

[[address_list]]
status = "delinquent"
list = "delinquent"

[[pool]]
name = "towers"
group = "Tower Hosts"
networks = ["100.64.99.0/29"]
exclude = ["100.64.99.1"]
hold = "24h"

[[radius_group]]
group = "Tower Hosts"
radius_group = "tower"
priority = 1

[[radius_group]]
group = "Legacy Customers"
radius_group = "legacy"
priority = 5

[safety]
min_existing = 100000
"""


@dataclass
class Account:
    name: str = "Acct"
    status: str = "active"
    groups: set[str] = field(default_factory=set)
    ip: int | None = None  # host part in the account's own range, or none
    username: str = ""


@dataclass
class Side:
    """One set of targets: two routers, a RADIUS database, a state store, a config."""

    name: str
    tmp: Path
    billing_url: str
    sims: list[RouterSim] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.tmp / f"{self.name}.toml"

    @property
    def radius_url(self) -> str:
        return f"sqlite:///{self.tmp / f'{self.name}-radius.db'}"

    def reset(self) -> None:
        for sim in self.sims:
            sim.stop()
        self.sims = [RouterSim(SimSettings(username=ROUTER_USER, password=ROUTER_PASSWORD,
                                           identity=f"{self.name}-{i}", log_commands=False)).start()
                     for i in (1, 2)]
        for suffix in ("radius.db", "state.db"):
            (self.tmp / f"{self.name}-{suffix}").unlink(missing_ok=True)
        load_schema(self.radius_url)
        # Accounts vanish by the handful here: no "suspicious drop" refusals.
        lines = ["[source]", f'url = "{self.billing_url}"', f'query = """{QUERY}"""',
                 "max_account_drop = 1.0", "",
                 "[state]", f'url = "sqlite:///{self.tmp / f"{self.name}-state.db"}"', "",
                 "[radius]", f'url = "{self.radius_url}"', ""]
        for i, sim in enumerate(self.sims, 1):
            lines += ["[[router]]", f'name = "core-{i}"', 'host = "127.0.0.1"',
                      f"port = {sim.port}", f'username = "{ROUTER_USER}"',
                      f'password_file = "{self.tmp / "router-pw"}"', 'timeout = "5s"', ""]
        lines += ["[daemon]", 'interval = "300s"', 'notify_channel = "provisiond"', ""]
        self.config.write_text("\n".join(lines) + MAPPINGS, encoding="utf-8")
        self.config.chmod(0o600)

    def run_here(self, *args: str) -> tuple[int, str]:
        """``provisiond ARGS`` in this process (quicker): exit code, stdout + stderr."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["--config", str(self.config), *args])
        return code, out.getvalue() + err.getvalue()

    def apply_here(self) -> None:
        """A full ``provisiond apply`` in this process (the reference side).

        ``--force``: a belt; the anchor account (``ANCHOR``) keeps every mapped group
        matched, so neither side ever meets the unmatched-mapping rule (a scoped pass that
        would empty a group widens to a full pass, which refuses unforced).
        """
        code, out = self.run_here("apply", "--force")
        assert code == 0, f"{self.name} apply:\n{out}"

    def state(self) -> dict[str, Any]:
        routers = {
            f"core-{i}": sorted((e["list"], e["address"], e.get("comment", ""), e["disabled"])
                                for e in sim.entries("ip"))
            for i, sim in enumerate(self.sims, 1)
        }
        out: dict[str, Any] = {"routers": routers}
        engine = sa.create_engine(self.radius_url)
        with engine.connect() as c:
            out["radusergroup"] = sorted(tuple(r) for r in c.exec_driver_sql(
                "SELECT username, groupname, priority FROM radusergroup"))
            out["radreply"] = sorted(tuple(r) for r in c.exec_driver_sql(
                "SELECT username, attribute, op, value FROM radreply"))
        engine.dispose()
        state = self.tmp / f"{self.name}-state.db"
        engine = sa.create_engine(f"sqlite:///{state}")
        with engine.connect() as c:
            out["leases"] = sorted(tuple(r) for r in c.exec_driver_sql(
                "SELECT pool, address, account_id, state FROM leases"))
        engine.dispose()
        return out

    def close(self) -> None:
        for sim in self.sims:
            sim.stop()


class Billing:
    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url)
        with self.engine.begin() as c:
            c.exec_driver_sql(SCHEMA)
        with psycopg.connect(**pg_kwargs(url)) as c:
            c.execute(TRIGGER_SQL.read_text())

    def write(self, aid: int, acct: Account | None) -> None:
        with self.engine.begin() as c:
            c.execute(sa.text("DELETE FROM accounts WHERE id = :i"), {"i": aid})
            if acct is None:
                return
            c.execute(sa.text("INSERT INTO accounts VALUES (:i, :n, :s)"),
                      {"i": aid, "n": acct.name, "s": acct.status})
            for g in sorted(acct.groups):
                c.execute(sa.text("INSERT INTO account_groups SELECT :i, id FROM groups "
                                  "WHERE name = :g"), {"i": aid, "g": g})
            if acct.ip is not None:
                c.execute(sa.text("INSERT INTO ip_assignments VALUES (:i, :a)"),
                          {"i": aid, "a": f"100.65.{aid}.{acct.ip}"})
            if acct.username:
                c.execute(sa.text("INSERT INTO radius_accounts VALUES (:i, :u)"),
                          {"i": aid, "u": acct.username})

    def clear(self) -> None:
        with self.engine.begin() as c:
            c.exec_driver_sql("DELETE FROM accounts")


accounts = st.builds(
    Account,
    name=st.sampled_from(["Ridge", "Crête Farm", "Zoë's Café", "Old Mill"]),
    status=st.sampled_from(["active", "delinquent"]),
    groups=st.sets(st.sampled_from(GROUPS), max_size=3),
    ip=st.one_of(st.none(), st.integers(1, 3)),
    username=st.sampled_from(["", "u{}", "u{}-b"]),
)
initial = st.dictionaries(st.sampled_from(ACCOUNTS), accounts, min_size=3, max_size=6)
# One change: an account and its new billing state (None: it vanishes from billing).
changes = st.lists(st.tuples(st.sampled_from(ACCOUNTS), st.one_of(st.none(), accounts)),
                   min_size=1, max_size=8)


@pytest.fixture(scope="module")
def sides(tmp_path_factory: pytest.TempPathFactory, pg_server: Any) -> Iterator[tuple[Billing, Side, Side]]:
    from dbservers import fresh_database

    tmp = tmp_path_factory.mktemp("scoped-property")
    (tmp / "router-pw").write_text(ROUTER_PASSWORD + "\n")
    (tmp / "router-pw").chmod(0o600)
    with fresh_database(pg_server) as url:
        billing = Billing(url)
        a, b = Side("scoped", tmp, url), Side("full", tmp, url)
        try:
            yield billing, a, b
        finally:
            a.close()
            b.close()
            billing.engine.dispose()


def _named(aid: int, acct: Account | None) -> Account | None:
    if acct is None or "{}" not in acct.username:
        return acct
    return Account(acct.name, acct.status, set(acct.groups), acct.ip, acct.username.format(aid))


PASS = re.compile(r"pass=(\d+) result=(\w+) duration=\S+ changes=\d+( scope=\d+)?")


@settings(max_examples=5, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(start=initial, steps=changes)
def test_scoped_passes_leave_what_full_passes_leave(
    sides: tuple[Billing, Side, Side], start: dict[int, Account],
    steps: list[tuple[int, Account | None]], tmp_path_factory: pytest.TempPathFactory,
) -> None:
    billing, scoped, full = sides
    billing.clear()
    scoped.reset()
    full.reset()
    # Never changed, in every mapped group: no list or RADIUS group ever empties.
    billing.write(ANCHOR, Account("Anchor", "delinquent", set(GROUPS), 1, "anchor"))
    for aid, acct in start.items():
        billing.write(aid, _named(aid, acct))
    full.apply_here()
    daemon = DaemonProc(scoped.config, log=tmp_path_factory.mktemp("daemon") / "daemon.log")
    try:
        daemon.wait_log(r"listening for billing changes")
        daemon.wait_log(r"pass=1 result=ok")
        assert scoped.state() == full.state()
        for aid, acct in steps:
            billing.write(aid, _named(aid, acct))  # the trigger tells the daemon
            full.apply_here()
            want = full.state()
            try:
                wait_until(lambda: scoped.state() == want, timeout=10,
                           what=f"the daemon's passes after changing account {aid}")
            except AssertionError:
                assert scoped.state() == want, daemon.text()[-3000:]
        passes = PASS.findall(daemon.text())
        assert passes[0][:2] == ("1", "ok") and not passes[0][2]  # the start-up full pass
        assert all(result == "ok" and scope for _, result, scope in passes[1:]), passes
    finally:
        daemon.stop()
    code, out = scoped.run_here("plan", "--format", "json")
    assert code == 0, out
    assert not any(t["changes"] for t in json.loads(out)["targets"])
    # Idempotent: a scoped pass for the last account changed plans nothing.
    code, out = scoped.run_here("plan", "--account", str(steps[-1][0]))
    assert code == 0, out
