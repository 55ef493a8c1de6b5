"""``provisiond demo``: the whole product with no outside services.

Creates a SQLite billing database seeded with the three account groups from Sonar's
documentation (Tower Hosts, Credit Card Pending, Legacy Customers), plus Tower Blocks
(tower hosts routed a /29), and N accounts -- or,
with ``--source sonar``, the same accounts as Sonar objects served by the fake Sonar
(``python -m provisiond.sim.sonar``) -- and an empty SQLite FreeRADIUS database, starts
the RouterOS simulator as a separate process on a free loopback port, writes a config for
all of them (tower hosts get addresses from a pool, tower blocks a /29 sent as
Framed-Route, legacy customers a delegated IPv6 /56; the tower-hosts list takes the
active ones; delinquent accounts, a flag apart from their status as in Sonar, go to a
walled-garden list), then runs plan, apply and plan again
through the same code the ``plan`` and ``apply`` commands use, and ``explain`` on one
account. Only the CLI imports this module.

The demo reads like a tour: per target and list a count of what changes and a few
sample lines (``digest``); ``demo --full`` prints every line, as ``plan`` always does.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

GROUPS = ("Tower Hosts", "Credit Card Pending", "Legacy Customers", "Tower Blocks")
NAMES = (
    "Ridge Tower", "Crête Farm", "Åsa Nilsson", "Miller Ranch", "Zoë's Café", "North Silo",
    "Ólafur Co-op", "Dvořák Dairy", "Hill Church", "Łukasz Mill", "Valley School", "Ngũgĩ Store",
)

BILLING_QUERY = """
SELECT a.id AS account_id, a.name AS account_name, a.status AS status,
       g.name AS group_name, ip.address AS ip_address, r.username AS radius_username,
       st.activates_account AS active, a.delinquent AS delinquent
FROM accounts a
JOIN account_statuses st ON st.name = a.status
LEFT JOIN account_groups ag ON ag.account_id = a.id
LEFT JOIN groups g ON g.id = ag.group_id
LEFT JOIN ip_assignments ip ON ip.account_id = a.id
LEFT JOIN radius_accounts r ON r.account_id = a.id
"""


# id, name, status, group ids, ips, username, delinquent
DemoAccount = tuple[int, str, str, list[int], list[str], str, bool]
STATUSES = (("active", True), ("inactive", False))  # name, activates_account


def demo_accounts(accounts: int, *, seed: int = 42) -> list[DemoAccount]:
    """The demo's accounts, the same for every source. Deterministic."""
    rnd, flags = random.Random(seed), random.Random(seed + 1)
    out: list[DemoAccount] = []
    for i in range(accounts):
        account_id = 1000 + i
        status = "inactive" if rnd.random() < 0.05 else "active"
        delinquent = flags.random() < 0.05  # a flag: most delinquent accounts stay "active"
        r = rnd.random()
        groups = [1] if r < 0.1 else [2] if r < 0.3 else [3] if r < 0.6 else [2, 3] if r < 0.65 else []
        if 1 in groups and account_id % 4 == 3:
            groups = [*groups, 4]  # a tower host with a routed /29 (tower-blocks pool)
        # 100.64.0.0/10 carrier-grade NAT space, one address per account, except tower
        # hosts: they get theirs from the tower-hosts pool. Every 20th account also has
        # an IPv6 address from 2001:db8::/32 (documentation range).
        ips = []
        if 1 not in groups:
            ips.append(f"100.{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}")
        if i % 20 == 0:
            ips.append(f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::1")
        out.append((account_id, f"{NAMES[i % len(NAMES)]} {i}", status, groups, ips,
                    f"user{account_id}", delinquent))
    return out


def seed_billing(path: Path, accounts: int, *, seed: int = 42) -> None:
    """A small Sonar-like billing schema with ``accounts`` accounts. Deterministic."""
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL,
                               delinquent BOOLEAN NOT NULL);
        CREATE TABLE account_statuses (name TEXT PRIMARY KEY, activates_account BOOLEAN NOT NULL);
        CREATE TABLE groups (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
        CREATE TABLE account_groups (account_id INTEGER, group_id INTEGER);
        CREATE TABLE ip_assignments (account_id INTEGER, address TEXT);
        CREATE TABLE radius_accounts (account_id INTEGER, username TEXT);
        """
    )
    db.executemany("INSERT INTO groups VALUES (?, ?)", list(enumerate(GROUPS, 1)))
    db.executemany("INSERT INTO account_statuses VALUES (?, ?)", STATUSES)
    acc, member, ips, radius = [], [], [], []
    for account_id, name, status, groups, addresses, username, delinquent in demo_accounts(
            accounts, seed=seed):
        acc.append((account_id, name, status, delinquent))
        member += [(account_id, g) for g in groups]
        ips += [(account_id, a) for a in addresses]
        radius.append((account_id, username))
    db.executemany("INSERT INTO accounts VALUES (?, ?, ?, ?)", acc)
    db.executemany("INSERT INTO account_groups VALUES (?, ?)", member)
    db.executemany("INSERT INTO ip_assignments VALUES (?, ?)", ips)
    db.executemany("INSERT INTO radius_accounts VALUES (?, ?)", radius)
    db.executescript(
        """
        CREATE INDEX account_groups_account ON account_groups (account_id);
        CREATE INDEX ip_assignments_account ON ip_assignments (account_id);
        CREATE INDEX radius_accounts_account ON radius_accounts (account_id);
        """
    )
    db.commit()
    db.close()


def sonar_tables(accounts: int, *, seed: int = 42) -> dict[str, list[dict[str, Any]]]:
    """The same accounts as Sonar's objects, for the fake Sonar (``--data``).

    Each account's addresses hang off one of the five owners of an account's IPs Sonar
    knows, in turn: the account itself, its RADIUS account, an inventory item at its
    address, that item's MAC-address field, or an uninventoried MAC address of it.
    """
    t: dict[str, list[dict[str, Any]]] = {
        "account_statuses": [{"id": i, "name": name, "activates_account": activates}
                             for i, (name, activates) in enumerate(STATUSES, 1)],
        "account_groups": [{"id": i, "name": g} for i, g in enumerate(GROUPS, 1)],
        "accounts": [], "radius_accounts": [], "addresses": [], "inventory_items": [],
        "inventory_model_field_data": [], "uninventoried_mac_addresses": [], "ip_assignments": [],
    }
    status_ids = {name: i for i, (name, _) in enumerate(STATUSES, 1)}
    for n, (account_id, name, status, groups, ips, username, delinquent) in enumerate(
            demo_accounts(accounts, seed=seed)):
        t["accounts"].append({"id": account_id, "name": name, "group_ids": groups,
                              "account_status_id": status_ids[status], "is_delinquent": delinquent})
        t["radius_accounts"].append({"id": 50000 + n, "username": username, "account_id": account_id})
        t["addresses"].append({"id": 60000 + n, "account_id": account_id, "serviceable": True})
        t["inventory_items"].append({"id": 70000 + n, "address_id": 60000 + n})
        mac = f"02:00:00:00:{n >> 8 & 255:02x}:{n & 255:02x}"
        t["inventory_model_field_data"].append(
            {"id": 80000 + n, "inventory_item_id": 70000 + n, "value": mac})
        owner = (("Account", account_id), ("RadiusAccount", 50000 + n),
                 ("InventoryItem", 70000 + n), ("InventoryModelFieldData", 80000 + n),
                 ("UninventoriedMacAddress", 90000 + n))[n % 5]
        if owner[0] == "UninventoriedMacAddress":
            t["uninventoried_mac_addresses"].append(
                {"id": 90000 + n, "account_id": account_id, "mac_address": mac})
        for ip in ips:
            t["ip_assignments"].append({
                "subnet": ip + ("/128" if ":" in ip else "/32"), "soft": False,
                "ipassignmentable_type": owner[0], "ipassignmentable_id": owner[1]})
    return t


RADIUS_SCHEMA = """
CREATE TABLE radcheck (id INTEGER PRIMARY KEY, username VARCHAR(64) NOT NULL DEFAULT '',
    attribute VARCHAR(64) NOT NULL DEFAULT '', op CHAR(2) NOT NULL DEFAULT '==',
    value VARCHAR(253) NOT NULL DEFAULT '');
CREATE TABLE radreply (id INTEGER PRIMARY KEY, username VARCHAR(64) NOT NULL DEFAULT '',
    attribute VARCHAR(64) NOT NULL DEFAULT '', op CHAR(2) NOT NULL DEFAULT '=',
    value VARCHAR(253) NOT NULL DEFAULT '');
CREATE TABLE radgroupcheck (id INTEGER PRIMARY KEY, groupname VARCHAR(64) NOT NULL DEFAULT '',
    attribute VARCHAR(64) NOT NULL DEFAULT '', op CHAR(2) NOT NULL DEFAULT '==',
    value VARCHAR(253) NOT NULL DEFAULT '');
CREATE TABLE radgroupreply (id INTEGER PRIMARY KEY, groupname VARCHAR(64) NOT NULL DEFAULT '',
    attribute VARCHAR(64) NOT NULL DEFAULT '', op CHAR(2) NOT NULL DEFAULT '=',
    value VARCHAR(253) NOT NULL DEFAULT '');
CREATE TABLE radusergroup (id INTEGER PRIMARY KEY, username VARCHAR(64) NOT NULL DEFAULT '',
    groupname VARCHAR(64) NOT NULL DEFAULT '', priority INT NOT NULL DEFAULT 1);
CREATE INDEX radusergroup_username ON radusergroup (username);
CREATE INDEX radreply_username ON radreply (username, attribute);
CREATE TABLE radacct (radacctid INTEGER PRIMARY KEY, acctsessionid VARCHAR(64) NOT NULL DEFAULT '',
    acctuniqueid VARCHAR(32) NOT NULL DEFAULT '' UNIQUE, username VARCHAR(64) NOT NULL DEFAULT '',
    nasipaddress VARCHAR(15) NOT NULL DEFAULT '', acctstarttime DATETIME NULL,
    acctstoptime DATETIME NULL, framedipaddress VARCHAR(15) NOT NULL DEFAULT '');
CREATE TABLE nas (id INTEGER PRIMARY KEY, nasname VARCHAR(128) NOT NULL, shortname VARCHAR(32),
    type VARCHAR(30) DEFAULT 'other', ports INT, secret VARCHAR(60) DEFAULT 'secret' NOT NULL,
    server VARCHAR(64), community VARCHAR(50), description VARCHAR(200) DEFAULT 'RADIUS Client');
INSERT INTO radgroupreply (groupname, attribute, op, value) VALUES
    ('tower', 'Mikrotik-Rate-Limit', ':=', '100M/100M'),
    ('tower', 'Mikrotik-Address-List', ':=', 'tower-hosts'),
    ('legacy', 'Mikrotik-Rate-Limit', ':=', '10M/10M'),
    ('legacy', 'Mikrotik-Address-List', ':=', 'legacy'),
    ('cc-pending', 'Mikrotik-Address-List', ':=', 'cc-pending'),
    ('cc-pending', 'Fall-Through', '=', 'Yes');
"""


def seed_radius(path: Path) -> None:
    """An empty FreeRADIUS rlm_sql database (SQLite dialect) with the demo's group replies."""
    db = sqlite3.connect(path)
    db.executescript(RADIUS_SCHEMA)
    db.commit()
    db.close()


def write_config(directory: Path, *, port: int, password_file: Path,
                 sonar: tuple[str, Path] | None = None) -> Path:
    """The demo's config; ``sonar`` = (the fake Sonar's URL, its token file) reads Sonar."""
    billing = directory / "billing.db"
    radius = directory / "radius.db"
    state = directory / "state.db"
    config = directory / "provisiond.toml"
    query = BILLING_QUERY.strip().replace('"""', "")
    if sonar is None:
        source = f'url = "sqlite:///{billing}"\nquery = """\n{query}\n"""'
    else:
        source = f'type = "sonar"\nurl = "{sonar[0]}"\ntoken_file = "{sonar[1]}"\npage_size = 100'
    config.write_text(
        f'''# Written by `provisiond demo`.
[source]
{source}

[state]
url = "sqlite:///{state}"

[[router]]
name = "core-1"
host = "127.0.0.1"
port = {port}
username = "demo"
password_file = "{password_file}"

[[address_list]]
group = "Tower Hosts"
active = true
list = "tower-hosts"

[[address_list]]
group = "Credit Card Pending"
list = "cc-pending"

[[address_list]]
group = "Legacy Customers"
list = "legacy"

[[address_list]]
delinquent = true
list = "walled-garden"

[[pool]]
name = "tower-hosts"
group = "Tower Hosts"
networks = ["100.127.0.0/16"]
exclude = ["100.127.0.1"]
hold = "24h"

# A routed /29 per tower host in Tower Blocks (instead of its single address: one IPv4
# allocation per account, the higher priority wins), sent to FreeRADIUS as Framed-Route.
[[pool]]
name = "tower-blocks"
group = "Tower Blocks"
networks = ["100.126.0.0/16"]
prefix_length = 29
radius_attribute = "Framed-Route"
priority = 1
hold = "24h"

# A delegated IPv6 /56 per legacy customer (DHCPv6-PD on the router), into the legacy
# list on /ipv6/firewall/address-list and Delegated-IPv6-Prefix in RADIUS.
[[pool]]
name = "legacy-pd"
group = "Legacy Customers"
networks = ["2001:db8:100::/40"]
prefix_length = 56
radius_attribute = "Delegated-IPv6-Prefix"
hold = "24h"

[radius]
url = "sqlite:///{radius}"

[[radius_group]]
group = "Tower Hosts"
radius_group = "tower"
priority = 1

[[radius_group]]
group = "Credit Card Pending"
radius_group = "cc-pending"
priority = 0

[[radius_group]]
group = "Legacy Customers"
radius_group = "legacy"
priority = 10
''',
        encoding="utf-8",
    )
    os.chmod(config, 0o600)
    return config


def spawn_listening(argv: list[str], pattern: str, what: str,
                    *, wait: float = 20.0) -> tuple[subprocess.Popen[str], re.Match[str]]:
    """Start ``argv`` (a simulator) and wait for its line saying where it listens."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.search(pattern, line)
        if m:
            return proc, m
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"{what} did not start")


def start_simulator(password_file: Path) -> tuple[subprocess.Popen[str], int]:
    proc, m = spawn_listening(
        [sys.executable, "-m", "provisiond.sim", "--listen", "127.0.0.1:0", "--user", "demo",
         "--password-file", str(password_file), "--name", "core-1", "--quiet"],
        r"listening on [\d.]+:(\d+)", "the RouterOS simulator",
    )
    return proc, int(m.group(1))


SAMPLE = 3  # lines shown per list / RADIUS group in the demo's tour
_SYMBOLS = {"+": "create", "-": "delete", "~": "update", "!": "conflict", "<": "return", ">": "followup"}


def digest(text: str, *, sample: int = SAMPLE) -> str:
    """A plan's text with each block of entry lines cut to a count and ``sample`` lines.

    ``  tower-hosts`` followed by 40 ``    + …`` lines becomes
    ``  tower-hosts: 40 to create`` and the first three; runs of follow-up and apply
    lines (``  > disconnect …``, ``  failed: …``) are cut the same way.
    """
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip(" "))
        block_start = i + 1
        j = block_start
        while j < len(lines) and lines[j].startswith("    "):
            j += 1
        if j > block_start and indent < 4:  # a heading with entry lines under it
            out.append(line.rstrip(":") + ": " + _counts(lines[block_start:j]))
            out.extend(_cut(lines[block_start:j], sample))
            i = j
            continue
        if indent == 2:  # a run of lines of one kind: follow-ups, failures, conflicts
            word = line.split()[0]
            j = i
            while j < len(lines) and lines[j].startswith("  " + word) and not lines[j].startswith("    "):
                j += 1
            out.extend(_cut(lines[i:j], sample))
            i = j
            continue
        out.append(line)
        i += 1
    return "\n".join(out) + "\n"


def _counts(block: list[str]) -> str:
    tally: dict[str, int] = {}
    for line in block:
        kind = _SYMBOLS.get(line.strip()[:1], "other")
        tally[kind] = tally.get(kind, 0) + 1
    words = {"create": "to create", "delete": "to delete", "update": "to update",
             "conflict": "conflict(s)", "return": "to return", "followup": "follow-up(s)",
             "other": "line(s)"}
    return ", ".join(f"{n} {words[k]}" for k, n in tally.items())


def _cut(block: list[str], sample: int) -> list[str]:
    if len(block) <= sample + 1:
        return block
    indent = block[0][: len(block[0]) - len(block[0].lstrip(" "))]
    return block[:sample] + [f"{indent}… {len(block) - sample} more (demo --full shows every line)"]


def start_sonar(data: Path, token_file: Path) -> tuple[subprocess.Popen[str], str]:
    """``python -m provisiond.sim.sonar`` on a free loopback port: (process, its URL)."""
    proc, m = spawn_listening(
        [sys.executable, "-m", "provisiond.sim.sonar", "--listen", "127.0.0.1:0",
         "--token-file", str(token_file), "--data", str(data), "--quiet"],
        r"listening on (http://[\d.]+:\d+)", "the fake Sonar",
    )
    return proc, m.group(1)


def run_demo(*, accounts: int, directory: str | None, quiet: bool, full: bool = False,
             color: str = "auto", source: str = "sql") -> int:
    from provisiond import settings as settings_mod
    from provisiond.cli.commands import cmd_apply, cmd_plan
    from provisiond.cli.console import progress_wanted
    from provisiond.cli.explain import cmd_explain

    tmp = None
    if directory is None:
        tmp = tempfile.TemporaryDirectory(prefix="provisiond-demo-")
        workdir = Path(tmp.name)
    else:
        workdir = Path(directory)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in ("billing.db", "sonar.json", "radius.db", "state.db", "state.db-wal", "state.db-shm"):
            (workdir / name).unlink(missing_ok=True)
    password = secrets.token_urlsafe(12)
    password_file = workdir / "router-password"
    password_file.write_text(password + "\n", encoding="utf-8")
    os.chmod(password_file, 0o600)
    t0 = time.monotonic()
    sonar_proc: subprocess.Popen[str] | None = None
    sonar: tuple[str, Path] | None = None
    if source == "sonar":
        data = workdir / "sonar.json"
        data.write_text(json.dumps(sonar_tables(accounts)), encoding="utf-8")
        token_file = workdir / "sonar-token"
        token_file.write_text(secrets.token_urlsafe(24) + "\n", encoding="utf-8")
        os.chmod(token_file, 0o600)
        print(f"demo: wrote {accounts} Sonar accounts to {data} in {time.monotonic() - t0:.1f}s")
        sonar_proc, sonar_url = start_sonar(data, token_file)
        sonar = (sonar_url, token_file)
        print(f"demo: fake Sonar on {sonar_url}")
    else:
        seed_billing(workdir / "billing.db", accounts)
        print(f"demo: seeded {accounts} accounts into {workdir / 'billing.db'} "
              f"in {time.monotonic() - t0:.1f}s")
    seed_radius(workdir / "radius.db")
    sim, port = start_simulator(password_file)
    try:
        config = write_config(workdir, port=port, password_file=password_file, sonar=sonar)
        print(f"demo: RouterOS simulator core-1 on 127.0.0.1:{port}; config {config}")
        settings = settings_mod.load(config)
        shape = None if full else digest
        progress = progress_wanted("text")
        steps: tuple[tuple[str, Callable[[], int]], ...] = (
            ("plan", lambda: cmd_plan(settings, fmt="text", out=None, color=color, digest=shape)),
            ("apply", lambda: cmd_apply(settings, plan_file=None, force=False, fmt="text",
                                        color=color, progress=progress, digest=shape)),
            ("plan again", lambda: cmd_plan(settings, fmt="text", out=None, color=color,
                                            digest=shape)),
        )
        codes = []
        for title, step in steps:
            print(f"\n=== provisiond {title} ===", flush=True)
            t0 = time.monotonic()
            code = _run_quietly(step) if quiet else step()
            codes.append(code)
            print(f"=== {title}: exit {code} in {time.monotonic() - t0:.2f}s ===", flush=True)
        ok = codes[1] == 0 and codes[2] == 0
        if ok and not quiet:
            # The question a support call starts with, on the first account.
            print("\n=== provisiond explain 1000 ===", flush=True)
            code = cmd_explain(settings, "1000", fmt="text", color=color, journal=3)
            print(f"=== explain: exit {code} ===", flush=True)
            ok = code == 0
        print("\ndemo: " + ("converged: the second plan has nothing to do." if ok
                            else "did NOT converge; see above."))
        if tmp is None:  # --dir: everything stays, config included
            print(f"demo: kept in {workdir}; try: provisiond --config {config} ipam list "
                  "(the simulated router stops with the demo)")
        else:
            print(f"demo: {workdir} is deleted now; --dir DIR keeps the files and the config")
        return 0 if ok else 1
    finally:
        for proc in (sim, sonar_proc):
            if proc is not None:
                proc.terminate()
                proc.wait(10)
        if tmp is not None:
            tmp.cleanup()


def _run_quietly(step: Callable[[], int]) -> int:
    """Run a step, printing only summary lines (for big demos)."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = step()
    for line in buf.getvalue().splitlines():
        if not line.startswith("    ") and not line.startswith("  "):
            print(line)
    return code
