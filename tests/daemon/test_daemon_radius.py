"""The daemon with every part: PostgreSQL billing with NOTIFY, a simulated router, a real
FreeRADIUS on PostgreSQL and a NAS double for Disconnect. One billing change must reach
the router list, FreeRADIUS's Access-Accept and the live session, without an interval pass.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import urllib.request

from harness import Billing, DaemonProc, free_port, wait_until

from provisiond.sim import RouterSim
from provisiond.sim.nas import NasDouble

sys.path.insert(0, str(Path(__file__).parent.parent / "radius"))
sys.path.insert(0, str(Path(__file__).parent.parent))

from dbservers import Server, fresh_database  # noqa: E402
from freeradius import FreeRadius, freeradius, load_schema  # noqa: E402

COA_SECRET = "coa-" + "s3cret-for-the-nas"


@pytest.fixture
def radius_db(pg_server: Server) -> Iterator[str]:
    with fresh_database(pg_server, prefix="radius") as url:
        load_schema(
            url,
            "INSERT INTO radcheck (username, attribute, op, value) "
            "VALUES ('tower1001', 'Cleartext-Password', ':=', 'pw1001')",
            "INSERT INTO radgroupreply (groupname, attribute, op, value) VALUES "
            "('tower', 'Mikrotik-Address-List', ':=', 'tower-hosts'), "
            "('tower', 'Mikrotik-Rate-Limit', ':=', '50M/50M')",
            # An open session on the NAS for the user: a policy change must disconnect it.
            "INSERT INTO radacct (acctsessionid, acctuniqueid, username, nasipaddress, "
            "acctstarttime, framedipaddress) VALUES ('81a00007', 'u-81a00007', 'tower1001', "
            "'127.0.0.1', now(), '100.64.0.1')",
        )
        yield url


@pytest.fixture
def fr(radius_db: str) -> Iterator[FreeRadius]:
    with freeradius(radius_db) as server:
        yield server


@pytest.fixture
def nas() -> Iterator[NasDouble]:
    double = NasDouble("127.0.0.1", secret=COA_SECRET.encode()).start()
    yield double
    double.stop()


def test_billing_change_reaches_router_freeradius_and_the_live_session(
    billing: Billing, router: RouterSim, config: Callable[..., Path], start: Callable[..., DaemonProc],
    radius_db: str, fr: FreeRadius, nas: NasDouble, tmp_path: Path,
) -> None:
    with billing.connect() as c:
        c.execute("INSERT INTO radius_accounts VALUES (1001, 'tower1001')")
    (tmp_path / "coa-secret").write_text(COA_SECRET + "\n")
    extra = f"""
[radius]
url = "{radius_db}"

[[radius_group]]
group = "Tower Hosts"
radius_group = "tower"
priority = 1

[coa]
mode = "disconnect"
secret_file = "{tmp_path / 'coa-secret'}"
port = {nas.port}
timeout = "1s"
retries = 2
"""
    port = free_port()
    d = start(config(daemon={"interval": "300s", "notify_channel": "provisiond",
                             "metrics_listen": f"127.0.0.1:{port}"}, extra=extra))
    d.wait_log(r"pass=1 result=ok")
    assert fr.authenticate("tower1001", "pw1001")[1].get("Mikrotik-Rate-Limit") is None

    billing.join("Tower Hosts", 1001)  # the interval is 300 s: NOTIFY drives what follows
    wait_until(lambda: any(e["address"] == "100.64.0.1" for e in router.entries("ip", "tower-hosts")),
               timeout=20, what="the router entry")
    wait_until(lambda: nas.received, timeout=20, what="the Disconnect-Request")
    code, attrs = fr.authenticate("tower1001", "pw1001")
    assert code == 2
    assert attrs["Mikrotik-Rate-Limit"] == ["50M/50M"]
    assert attrs["Framed-IP-Address"] == ["100.64.0.1"]
    packet = nas.received[0]
    assert packet.kind == "disconnect"
    assert packet.first("User-Name") == "tower1001" and packet.first("Acct-Session-Id") == "81a00007"
    d.wait_log(r"pass=2 result=ok")
    assert "pass=3 " not in d.text()  # no interval pass was needed
    assert COA_SECRET not in d.text()
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'provisiond_coa_results_total{result="ack"} 1.0' in metrics
    assert 'provisiond_changes_applied_total{action="create",target="radius"} 2.0' in metrics
