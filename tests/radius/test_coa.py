"""CoA / Disconnect after an apply: open sessions only, the right NAS, failures reported."""

from __future__ import annotations

from collections.abc import Iterator

import pyrad.packet as P
import pytest
from helpers import LEGACY, TOWER, MemoryLedger, account, execute, make_plan, sync

from provisiond.core.radius import GroupMapping
from provisiond.settings import CoaMode
from provisiond.sim.nas import NasDouble, free_udp_port
from provisiond.targets.coa import CoaRequest, CoaSender
from provisiond.targets.radius import RadiusTarget

NAS1, NAS2, NAS3 = "127.0.0.1", "127.0.0.2", "127.0.0.3"


@pytest.fixture
def nases() -> Iterator[tuple[NasDouble, NasDouble, int]]:
    port = free_udp_port(NAS1, NAS2)
    one = NasDouble(NAS1, secret=b"secret-one", port=port).start()
    two = NasDouble(NAS2, secret=b"secret-two", port=port).start()
    yield one, two, port
    one.stop()
    two.stop()


def session(url: str, user: str, sid: str, nas: str, *, ip: str = "10.64.0.1", open_: bool = True) -> None:
    execute(
        url,
        "INSERT INTO radacct (acctsessionid, acctuniqueid, username, nasipaddress, acctstarttime, "
        "acctstoptime, framedipaddress) VALUES (:sid, :uid, :user, CAST(:nas AS inet), now(), "
        + ("NULL" if open_ else "now()") + ", CAST(:ip AS inet))",
        sid=sid, uid=f"u-{sid}", user=user, nas=nas, ip=ip,
    )


def policy(url: str) -> None:
    execute(
        url,
        "INSERT INTO nas (nasname, shortname, secret) VALUES ('127.0.0.1', 'core-1', 'secret-one'), "
        "('127.0.0.2', 'core-2', 'secret-two')",
        "INSERT INTO radgroupreply (groupname, attribute, op, value) VALUES "
        "('legacy', 'Mikrotik-Rate-Limit', '=', '10M/10M'), ('tower', 'Mikrotik-Rate-Limit', '=', '50M/50M'), "
        "('tower', 'Session-Timeout', '=', '3600'), ('blocked', 'Mikrotik-Address-List', '=', 'blocked')",
    )


def coa_target(url: str, port: int, mode: CoaMode = "coa", **kw: object) -> RadiusTarget:
    sender = CoaSender(shared_secret=None, port=port, timeout=0.3, retries=2)
    return RadiusTarget(url, groups=["legacy", "tower", "blocked"], ledger=MemoryLedger(), coa=sender,
                        coa_mode=mode, nas_secrets=True, **kw)  # type: ignore[arg-type]


BLOCKED = GroupMapping("blocked", group="Blocked", priority=0)
MAPS = [LEGACY, TOWER, BLOCKED]


def test_group_change_sends_coa_to_open_sessions_on_the_right_nas(radius_pg: str, nases: tuple[NasDouble, NasDouble, int]) -> None:
    one, two, port = nases
    policy(radius_pg)
    target = coa_target(radius_pg, port)
    start = [account("1", "alice"), account("2", "bob")]
    assert sync(target, start, MAPS)[1].followups == []  # no sessions yet
    session(radius_pg, "alice", "81a00001", NAS1, ip="10.64.0.10")
    session(radius_pg, "alice", "81a00000", NAS1, open_=False)  # closed: left alone
    session(radius_pg, "bob", "81b00001", NAS2, ip="10.64.0.20")

    moved = [account("1", "alice", groups=["Tower Hosts"]), account("2", "bob", groups=["Blocked"])]
    plan, _ = make_plan(target, moved, MAPS)
    assert sorted((f["action"], f["username"], f["acct_session_id"], f["nas"]) for f in plan.followups) == [
        ("coa", "alice", "81a00001", NAS1), ("disconnect", "bob", "81b00001", NAS2)]
    result = target.apply(plan)
    assert result.ok, result.error
    assert sorted((f["action"], f["username"], f["result"]) for f in result.followups) == [
        ("coa", "alice", "ack"), ("disconnect", "bob", "ack")]
    (coa,) = one.packets()
    assert coa.code == P.CoARequest
    assert {k: v for k, v in coa.attributes.items() if k != "Message-Authenticator"} == {
        "User-Name": ["alice"], "Acct-Session-Id": ["81a00001"], "Framed-IP-Address": ["10.64.0.10"],
        "Mikrotik-Rate-Limit": ["50M/50M"], "Session-Timeout": [3600]}
    (dis,) = two.packets()
    assert dis.code == P.DisconnectRequest
    assert {k: v for k, v in dis.attributes.items() if k != "Message-Authenticator"} == {
        "User-Name": ["bob"], "Acct-Session-Id": ["81b00001"], "Framed-IP-Address": ["10.64.0.20"]}
    assert one.dropped == two.dropped == []
    assert make_plan(target, moved, MAPS)[0].followups == ()
    target.close()


def test_address_change_and_leaving_disconnect_even_in_coa_mode(radius_pg: str, nases: tuple[NasDouble, NasDouble, int]) -> None:
    one, _, port = nases
    policy(radius_pg)
    target = coa_target(radius_pg, port)
    assert sync(target, [account("1", "alice", addresses=["10.64.0.10"]), account("2", "bob")], MAPS)[1].ok
    session(radius_pg, "alice", "s-a", NAS1)
    session(radius_pg, "bob", "s-b", NAS1)
    plan, result = sync(target, [account("1", "alice", addresses=["10.64.0.11"]), account("2", "bob", groups=[])], MAPS)
    assert result.ok
    assert sorted((f["action"], f["username"], f["reason"]) for f in result.followups) == [
        ("disconnect", "alice", "Framed-IP-Address 10.64.0.10 -> 10.64.0.11"),
        ("disconnect", "bob", "Mikrotik-Rate-Limit 10M/10M -> -"),
    ]
    assert sorted(p.code for p in one.packets()) == [P.DisconnectRequest, P.DisconnectRequest]
    target.close()


def test_no_followups_when_the_reply_does_not_change_or_mode_is_off(radius_pg: str, nases: tuple[NasDouble, NasDouble, int]) -> None:
    one, _, port = nases
    policy(radius_pg)
    execute(radius_pg, "INSERT INTO radgroupreply (groupname, attribute, op, value) VALUES ('tower2', 'Mikrotik-Rate-Limit', '=', '10M/10M')")
    same = GroupMapping("tower2", group="Tower Hosts", priority=1)
    target = RadiusTarget(
        radius_pg, groups=["legacy", "tower2"], ledger=MemoryLedger(),
        coa=CoaSender(shared_secret="secret-one", port=port, timeout=0.3, retries=1), coa_mode="coa")
    assert sync(target, [account("1", "alice")], [LEGACY, same])[1].ok
    session(radius_pg, "alice", "s-a", NAS1)
    # legacy -> tower2: the same reply, nothing to tell the NAS
    _, result = sync(target, [account("1", "alice", groups=["Tower Hosts"])], [LEGACY, same])
    assert result.ok and result.followups == []
    off = RadiusTarget(radius_pg, groups=["legacy", "tower2"], ledger=MemoryLedger(),
                       coa=CoaSender(shared_secret="secret-one", port=port), coa_mode="coa",
                       coa_modes={"legacy": "off", "tower2": "off"})
    plan, result = sync(off, [account("1", "alice")], [LEGACY, same])
    assert plan.counts()["create"] == 1 and result.ok and result.followups == []
    assert one.packets() == []
    target.close()
    off.close()


def test_nak_timeout_and_unknown_nas_are_reported_not_fatal(radius_pg: str, nases: tuple[NasDouble, NasDouble, int]) -> None:
    one, two, port = nases
    policy(radius_pg)
    one.behaviour.nak.add("alice")
    two.behaviour.silent.add("bob")
    target = coa_target(radius_pg, port, mode="disconnect")
    accounts = [account("1", "alice"), account("2", "bob"), account("3", "carol")]
    assert sync(target, accounts, MAPS)[1].ok
    session(radius_pg, "alice", "s-a", NAS1)
    session(radius_pg, "bob", "s-b", NAS2)
    session(radius_pg, "carol", "s-c", NAS3)  # a NAS missing from the nas table, no shared secret
    plan, result = sync(target, [account("4", "dave")], MAPS)
    assert result.error is None and len(result.applied) == 4
    got = sorted((f["username"], f["result"], f.get("detail", "")) for f in result.followups)
    assert got == [
        ("alice", "nak", "Session-Context-Not-Found"),
        ("bob", "timeout", "no answer after 2 x 0.3s"),
        ("carol", "unknown-nas", "no secret for NAS 127.0.0.3 (nas table or [coa] secret)"),
    ]
    assert [p.first("User-Name") for p in two.packets()] == ["bob", "bob"]  # retried, then given up
    target.close()


def test_sender_uses_per_nas_secrets_and_a_wrong_secret_times_out(nases: tuple[NasDouble, NasDouble, int]) -> None:
    one, two, port = nases
    sender = CoaSender(shared_secret="secret-one", port=port, timeout=0.2, retries=1)
    reqs = [CoaRequest("disconnect", NAS1, "alice", "s1"), CoaRequest("disconnect", NAS2, "bob", "s2")]
    assert [r.outcome for r in sender.send(reqs)] == ["ack", "timeout"]  # NAS2 drops the bad authenticator
    assert two.dropped and two.packets() == []
    assert [r.outcome for r in sender.send(reqs, nas_secrets={NAS2: "secret-two"})] == ["ack", "ack"]
    assert "secret-one" not in repr(sender) and "secret-one" not in repr(sender.__dict__)


def test_an_unexpected_error_in_one_request_is_a_result_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    sender = CoaSender(shared_secret="s", port=free_udp_port(NAS1), timeout=0.2, retries=1)

    def boom(client: object, req: CoaRequest) -> object:
        raise RuntimeError("odd packet")

    monkeypatch.setattr(sender, "_build", boom)
    reqs = [CoaRequest(action="disconnect", nas=NAS1, username=u, acct_session_id="1") for u in ("a", "b")]
    results = sender.send(reqs)
    assert [(r.request.username, r.outcome) for r in results] == [("a", "error"), ("b", "error")]
    assert "odd packet" in results[0].detail


@pytest.mark.parametrize("why", ["mode disconnect", "group with check rows"])
def test_disconnect_even_when_every_changed_attribute_could_change_live(
    radius_pg: str, nases: tuple[NasDouble, NasDouble, int], why: str,
) -> None:
    """legacy -> tower changes only Mikrotik-Rate-Limit and Session-Timeout, which a CoA
    can carry (the test above gets a CoA for exactly this move); ``mode = "disconnect"``
    and a group with radgroupcheck rows must still send a Disconnect."""
    one, _, port = nases
    policy(radius_pg)
    if why == "group with check rows":
        execute(radius_pg, "INSERT INTO radgroupcheck (groupname, attribute, op, value) "
                           "VALUES ('tower', 'Simultaneous-Use', ':=', '1')")
    target = coa_target(radius_pg, port, mode="disconnect" if why == "mode disconnect" else "coa")
    assert sync(target, [account("1", "alice")], MAPS)[1].ok
    session(radius_pg, "alice", "81a00001", NAS1, ip="10.64.0.10")
    plan, result = sync(target, [account("1", "alice", groups=["Tower Hosts"])], MAPS)
    assert result.ok
    assert [(f["action"], f["username"], f["result"]) for f in result.followups] == [
        ("disconnect", "alice", "ack")]
    if why == "group with check rows":
        assert "radgroupcheck" in result.followups[0]["reason"]
    (packet,) = one.packets()
    assert packet.code == P.DisconnectRequest
    assert "Mikrotik-Rate-Limit" not in packet.attributes
    target.close()
