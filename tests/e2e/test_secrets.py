"""Secrets never appear in any output of any command, at any verbosity, in either log format.

Distinctive router passwords (from a file, inline, and a wrong one that is refused),
billing and RADIUS database passwords (in the URL and from a file) and the CoA secret
are configured; then every command runs (check-config, plan, plan --format json, plan
--out, apply --plan, apply, apply --format json, explain, history, ipam list/show, a
billing outage, and the daemon as a real subprocess) with -vv, in text and JSON logs.
Every stdout, stderr, saved plan file and the state store's bytes are searched for every
secret. PostgreSQL trusts loopback here, so passwords in URLs are accepted and unused.
"""

from __future__ import annotations

import re

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from world import ROUTER_USER, World

sys.path.insert(0, str(Path(__file__).parent.parent / "radius"))
sys.path.insert(0, str(Path(__file__).parent.parent))

from dbservers import Server, fresh_database  # noqa: E402
from freeradius import load_schema  # noqa: E402

from provisiond.sim import RouterSim, SimSettings  # noqa: E402
from provisiond.sim.nas import NasDouble  # noqa: E402

EDGE_PASSWORD = "Edge-inline-Pw-7Kp2Qx"  # inline in the config
WRONG_PASSWORD = "Wrong-Pw-5tTq9Zr"  # what the config says for lab-1, which wants another
LAB_PASSWORD = "Lab-real-Pw-3hY8Lm"
BILLING_PASSWORD = "Bill-db-Pw-4hZ6Wd"
RADIUS_PASSWORD = "Rad-db-Pw-8mW1Ks"
COA_SECRET = "Coa-Secret-3nV5Jb"


@pytest.fixture
def radius_db(pg_server: Server) -> Iterator[str]:
    with fresh_database(pg_server, prefix="radius") as url:
        load_schema(
            url,
            "INSERT INTO radgroupreply (groupname, attribute, op, value) VALUES "
            "('tower', 'Mikrotik-Rate-Limit', ':=', '50M/50M')",
            "INSERT INTO radacct (acctsessionid, acctuniqueid, username, nasipaddress, "
            "acctstarttime, framedipaddress) VALUES ('81a00007', 'u-81a00007', 'ridge', "
            "'127.0.0.1', now(), '100.64.10.5')",
        )
        yield url


def _with_password(url: str, password: str) -> str:
    return url.replace("postgres@", f"postgres:{password}@", 1)


def _config(world: World, radius_url: str, nas: NasDouble, *, billing_url: str | None = None) -> Path:
    (world.tmp / "radius-pw").write_text(RADIUS_PASSWORD + "\n")
    os.chmod(world.tmp / "radius-pw", 0o600)
    extra = f"""
[radius]
url = "{radius_url}"
password_file = "{world.tmp / 'radius-pw'}"

[[radius_group]]
group = "Tower Hosts"
radius_group = "tower"
priority = 1

[coa]
mode = "disconnect"
secret = "{COA_SECRET}"
port = {nas.port}
timeout = "1s"
retries = 1
"""
    path = world.write_config(extra=extra, routers={"edge-1": {"password": EDGE_PASSWORD},
                                                    "lab-1": {"password": WRONG_PASSWORD}})
    text = path.read_text()
    # edge-1 and lab-1 take their password inline, not from the file.
    for name in ("edge-1", "lab-1"):
        head = text.index(f'name = "{name}"')
        start = text.index("password_file", head)
        end = text.index("\n", start)
        text = text[:start] + text[end + 1:]
    text = text.replace(f'url = "{world.billing_url}"', f'url = "{_with_password(billing_url or world.billing_url, BILLING_PASSWORD)}"', 1)
    path.write_text(text)
    return path


def _leaks(text: str) -> list[str]:
    secrets = (world_router_password(), EDGE_PASSWORD, WRONG_PASSWORD, LAB_PASSWORD, BILLING_PASSWORD,
               RADIUS_PASSWORD, COA_SECRET)
    return [s for s in secrets if s in text]


def world_router_password() -> str:
    from world import ROUTER_PASSWORD

    return ROUTER_PASSWORD


def test_no_secret_in_any_output(world: World, radius_db: str) -> None:
    world.router("core-1")
    world.sims["edge-1"] = RouterSim(SimSettings(username=ROUTER_USER, password=EDGE_PASSWORD,
                                                 log_commands=False)).start()
    world.sims["lab-1"] = RouterSim(SimSettings(username=ROUTER_USER, password=LAB_PASSWORD,
                                                log_commands=False)).start()
    world.account(1042, "Ridge Tower", groups=["Tower Hosts"], ips=["100.64.10.5"], usernames=["ridge"])
    world.account(1043, "Crête Farm", groups=["Credit Card Pending"], ips=["100.64.10.6"])
    nas = NasDouble("127.0.0.1", secret=COA_SECRET.encode()).start()
    outputs: dict[str, str] = {}
    try:
        path = _config(world, radius_db, nas)
        plan_file = world.tmp / "plan.json"
        for fmt in ("text", "json"):
            for args in (["check-config"], ["plan"], ["plan", "--format", "json"],
                         ["plan", "--out", str(plan_file)], ["apply", "--plan", str(plan_file)],
                         ["explain", "1042"], ["history"], ["history", "--format", "json"],
                         ["ipam", "list"], ["ipam", "show", "1042"]):
                code, out, err = world.run("-vv", "--log-format", fmt, *args)
                outputs[f"{fmt} {' '.join(args)}"] = f"{code}\n{out}\n{err}"
            outputs[f"{fmt} plan file"] = plan_file.read_text()
            # The next round has something to apply again: ridge leaves and comes back.
            world.account(1042, "Ridge Tower", groups=[] if fmt == "text" else ["Tower Hosts"],
                          ips=["100.64.10.5"], usernames=["ridge"])
            code, out, err = world.run("-vv", "--log-format", fmt, "apply", "--format", "json")
            outputs[f"{fmt} apply"] = f"{code}\n{out}\n{err}"
        assert nas.received, "the CoA path ran (a Disconnect went out)"
        # Billing down, with its password in the URL.
        _config(world, radius_db, nas, billing_url="postgresql+psycopg://postgres@127.0.0.1:9/nothing")
        for fmt in ("text", "json"):
            code, out, err = world.run("-vv", "--log-format", fmt, "apply")
            assert code == 1
            outputs[f"{fmt} billing down"] = f"{out}\n{err}"
        _config(world, radius_db, nas)
        for fmt in ("text", "json"):
            outputs[f"{fmt} daemon"] = _daemon(path, fmt)
    finally:
        nas.stop()
    outputs["state store bytes"] = (world.tmp / "state.db").read_bytes().decode("latin-1")
    # The runs did what they should: the checks below look at real output.
    assert "lab-1" in outputs["text plan"] and "refused" in outputs["text plan"]
    assert "pass=1 result=" in outputs["text daemon"] and '"level": "debug"' in outputs["json daemon"]
    assert "+ tower-hosts 100.64.10.5" in outputs["text history"]
    leaks = {name: _leaks(text) for name, text in outputs.items() if _leaks(text)}
    assert leaks == {}


def _daemon(config: Path, fmt: str) -> str:
    """``provisiond -vv --log-format FMT run`` until its first pass ends, then SIGTERM."""
    log = config.with_name(f"daemon-{fmt}.log")
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "provisiond.cli", "-vv", "--log-format", fmt,
                                 "--config", str(config), "run"], stdout=subprocess.PIPE, stderr=err)
        try:
            deadline = time.monotonic() + 60
            # JSON lines carry the pass's key=value pairs as fields of their own; pass
            # numbers go on from the previous daemon's (the state store keeps them).
            first_pass = r"pass=\d+ result=" if fmt == "text" else r'"pass": \d+, "result": '
            while not re.search(first_pass, log.read_text(errors="replace")):
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out.decode(errors="replace") + log.read_text(errors="replace")
