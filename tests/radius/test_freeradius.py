"""End to end with a real FreeRADIUS 3.2 on PostgreSQL: what provisiond writes is what users get."""

from __future__ import annotations

import pyrad.packet as P
from freeradius import FreeRadius
from helpers import MemoryLedger, account, execute, make_plan, sync

from provisiond.targets.radius import RadiusTarget


def test_legacy_customer_gets_group_reply_and_address_until_leaving(fr: FreeRadius, radius_pg: str) -> None:
    # what the operator set up by hand: passwords, the legacy group's policy, extras
    execute(
        radius_pg,
        "INSERT INTO radcheck (username, attribute, op, value) VALUES "
        "('alice', 'Cleartext-Password', ':=', 'a-pass'), ('bob', 'Cleartext-Password', ':=', 'b-pass')",
        "INSERT INTO radgroupreply (groupname, attribute, op, value) VALUES "
        "('legacy', 'Mikrotik-Rate-Limit', '=', '10M/50M'), ('legacy', 'Mikrotik-Address-List', '=', 'legacy')",
        "INSERT INTO radgroupreply (groupname, attribute, op, value) VALUES ('vip', 'Mikrotik-Rate-Limit', '=', '1G/1G')",
        "INSERT INTO radusergroup (username, groupname, priority) VALUES ('bob', 'vip', 9)",
        "INSERT INTO radreply (username, attribute, op, value) VALUES "
        "('bob', 'Framed-IP-Address', '=', '10.99.0.2'), ('alice', 'Reply-Message', '=', 'hello')",
    )
    assert fr.authenticate("alice", "a-pass") == (P.AccessAccept, {"Reply-Message": ["hello"]})

    ledger = MemoryLedger()
    target = RadiusTarget(radius_pg, groups=["legacy"], ledger=ledger)
    accounts = [account("1", "alice", addresses=["10.64.0.10"]), account("2", "bob", addresses=["10.64.0.20"])]
    plan, result = sync(target, accounts)
    assert result.ok, result.error
    assert [c.reason[:36] for c in plan.conflicts] == ["hand-made Framed-IP-Address row (id "]

    assert fr.authenticate("alice", "a-pass") == (
        P.AccessAccept,
        {"Reply-Message": ["hello"], "Framed-IP-Address": ["10.64.0.10"],
         "Mikrotik-Rate-Limit": ["10M/50M"], "Mikrotik-Address-List": ["legacy"]},
    )
    # bob: legacy (priority 1) sorts before his hand-made vip (9); his hand-made address stays
    assert fr.authenticate("bob", "b-pass") == (
        P.AccessAccept,
        {"Framed-IP-Address": ["10.99.0.2"], "Mikrotik-Rate-Limit": ["10M/50M"], "Mikrotik-Address-List": ["legacy"]},
    )
    assert make_plan(target, accounts)[0].changes == ()  # idempotent

    # both leave Legacy Customers
    gone = [account("1", "alice", groups=[], addresses=["10.64.0.10"]), account("2", "bob", groups=[])]
    assert sync(target, gone)[1].ok
    assert fr.authenticate("alice", "a-pass") == (P.AccessAccept, {"Reply-Message": ["hello"]})
    assert fr.authenticate("bob", "b-pass") == (
        P.AccessAccept, {"Framed-IP-Address": ["10.99.0.2"], "Mikrotik-Rate-Limit": ["1G/1G"]},
    )
    assert fr.authenticate("alice", "wrong")[0] == P.AccessReject
    assert make_plan(target, gone)[0].changes == ()
    target.close()
