"""Billing (PostgreSQL) -> plan -> apply on simulated RouterOS routers, through the CLI.

Every test ends by proving idempotence: a second pass plans nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from world import ROUTER_PASSWORD, World

GOLDEN = Path(__file__).parent / "golden"


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("PROVISIOND_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"differs from golden file {path}"


def _seed(world: World) -> None:
    world.account(1042, "Ridge Tower", groups=["Tower Hosts"], ips=["100.64.10.5"])
    world.account(1043, "Crête Farm", groups=["Credit Card Pending", "Tower Hosts"], ips=["100.64.10.6"])
    world.account(1044, "Zoë's Café", status="delinquent", groups=["Legacy Customers"], ips=["100.64.10.7"])
    world.account(1045, "No Address", groups=["Tower Hosts"])
    world.account(1046, "Ungrouped", ips=["100.64.10.9"])


def test_plan_apply_plan_golden_and_exit_codes(world: World) -> None:
    world.router("core-1")
    _seed(world)
    code, out, err = world.run("plan")
    assert code == 2, err
    _golden("plan_initial.txt", out)
    code, doc = world.plan_json()
    assert code == 2
    assert doc.pop("created_at")
    for target in doc["targets"]:
        target.pop("checksum")
        target.pop("observed_checksum")
    _golden("plan_initial.json", json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    assert world.entries() == {}, "plan must write nothing"

    code, out, err = world.run("apply")
    assert code == 0, out + err
    assert "core-1: ok: 4 created, 0 updated, 0 deleted, 0 failed" in out
    rows = world.entries()
    assert rows["100.64.10.5"]["list"] == "tower-hosts"
    assert rows["100.64.10.5"]["comment"] == "provisiond:1042 Ridge Tower"
    assert {(r["list"], a) for a, r in world.entries("core-1", "tower-hosts").items()} == {
        ("tower-hosts", "100.64.10.5"), ("tower-hosts", "100.64.10.6")}
    world.assert_converged()


def test_group_changes_become_deletes_and_name_changes_updates(world: World) -> None:
    world.router("core-1")
    _seed(world)
    assert world.run("apply")[0] == 0
    world.account(1042, "Ridge Tower", groups=[], ips=["100.64.10.5"])  # left Tower Hosts
    world.account(1043, "Crête Farm & Sons", groups=["Credit Card Pending", "Tower Hosts"], ips=["100.64.10.6"])
    code, out, _ = world.run("plan")
    assert code == 2
    assert '- tower-hosts 100.64.10.5  acct 1042 "Ridge Tower"' in out
    assert ('~ tower-hosts 100.64.10.6  acct 1043 "Crête Farm & Sons"  '
            '(comment: "provisiond:1043 Crête Farm" -> "provisiond:1043 Crête Farm & Sons")') in out
    assert world.run("apply")[0] == 0
    assert "100.64.10.5" not in world.entries("core-1", "tower-hosts")
    assert world.entries("core-1", "cc-pending")["100.64.10.6"]["comment"] == "provisiond:1043 Crête Farm & Sons"
    world.assert_converged()


def test_hand_made_dynamic_and_unmanaged_entries_are_never_touched(world: World) -> None:
    sim = world.router("core-1")
    sim.add_entry("ip", list_name="tower-hosts", address="192.0.2.50", comment="NOC hand-added", dynamic=False)
    sim.add_entry("ip", list_name="tower-hosts", address="192.0.2.51", dynamic=False)
    sim.add_entry("ip", list_name="tower-hosts", address="192.0.2.52", dynamic=True)
    sim.add_entry("ip", list_name="other-list", address="192.0.2.53", comment="provisiond:9 forged", dynamic=False)
    _seed(world)
    assert world.run("apply")[0] == 0
    # Billing keeps knowing "Credit Card Pending" (else emptying cc-pending needs --force).
    world.account(1047, "Stays Pending", groups=["Credit Card Pending"])
    world.remove_account(1042)
    world.remove_account(1043)
    assert world.run("apply")[0] == 0
    tower = world.entries("core-1", "tower-hosts")
    assert set(tower) == {"192.0.2.50", "192.0.2.51", "192.0.2.52"}
    assert tower["192.0.2.52"]["dynamic"] == "true"
    assert "192.0.2.53" in world.entries("core-1", "other-list")
    world.assert_converged()


def test_reads_only_managed_lists_with_one_filtered_print_per_family(world: World) -> None:
    sim = world.router("core-1")
    _seed(world)
    sim.reset_history()
    sim.reset_load()
    assert world.run("plan")[0] == 2
    prints = [c for c in sim.history if c.path.endswith("/print")]
    # One print per family over the managed lists, with a proplist: one scan each.
    assert [c.path for c in prints] == ["/ip/firewall/address-list/print", "/ipv6/firewall/address-list/print"]
    for c in prints:
        assert ".proplist" in dict(c.attributes), c
        assert c.queries == ("?list=cc-pending", "?list=delinquent", "?#|", "?list=tower-hosts", "?#|"), c
    assert dict(sim.load.scans) == {"ip": 1, "ipv6": 1}
    assert world.run("apply")[0] == 0
    world.assert_converged()


def test_conflict_with_unowned_entry_is_reported_not_failed(world: World) -> None:
    sim = world.router("core-1")
    sim.add_entry("ip", list_name="tower-hosts", address="100.64.10.5", comment="hand", dynamic=False)
    _seed(world)
    code, out, _ = world.run("plan")
    assert code == 2
    assert ('! tower-hosts 100.64.10.5  acct 1042 "Ridge Tower": conflict: '
            "entry not created by provisiond (comment 'hand')") in out
    code, out, err = world.run("apply")
    assert code == 0, out + err
    assert world.entries("core-1", "tower-hosts")["100.64.10.5"]["comment"] == "hand"
    # A hand-made entry that appears before the next apply is found by apply's own read.
    world.account(1047, "Late Tower", groups=["Tower Hosts"], ips=["100.64.10.77"])
    sim.add_entry("ip", list_name="tower-hosts", address="100.64.10.77", comment="raced", dynamic=False)
    code, out, err = world.run("apply")
    assert code == 0, out + err
    assert ('! tower-hosts 100.64.10.77  acct 1047 "Late Tower": conflict: '
            "entry not created by provisiond (comment 'raced')") in out
    assert world.entries("core-1", "tower-hosts")["100.64.10.77"]["comment"] == "raced"
    code, out, _ = world.run("plan")
    assert code == 0  # only the (reported) conflicts remain: nothing to change
    assert out.count("conflict:") == 2


def test_ipv6_goes_to_the_ipv6_menu_normalised(world: World) -> None:
    world.router("core-1")
    world.account(2001, "Six Tower", groups=["Tower Hosts"], ips=["2001:DB8:0:0::10", "2001:db8:1::/48"])
    code, out, _ = world.run("plan")
    assert "+ tower-hosts 2001:db8::10/128" in out
    assert "+ tower-hosts 2001:db8:1::/48" in out
    assert world.run("apply")[0] == 0
    assert set(world.entries("core-1", "tower-hosts", menu="ipv6")) == {"2001:db8::10/128", "2001:db8:1::/48"}
    assert world.entries("core-1", "tower-hosts", menu="ip") == {}
    world.assert_converged()


def test_non_ascii_names_survive_in_comments(world: World) -> None:
    world.router("core-1")
    world.account(3001, "Ngũgĩ Dvořák Łukasz 東京", groups=["Tower Hosts"], ips=["100.64.20.1"])
    assert world.run("apply")[0] == 0
    assert world.entries("core-1", "tower-hosts")["100.64.20.1"]["comment"] == "provisiond:3001 Ngũgĩ Dvořák Łukasz 東京"
    world.assert_converged()


def test_safety_threshold_refuses_then_force_applies(world: World) -> None:
    world.router("core-1")
    for i in range(20):
        world.account(4000 + i, f"T{i}", groups=["Tower Hosts"], ips=[f"100.64.30.{i + 1}"])
    assert world.run("apply")[0] == 0
    for i in range(10):
        world.remove_account(4000 + i)
    code, out, _ = world.run("plan")
    assert code == 2
    assert ("REFUSED: apply will refuse this without --force: tower-hosts: 10 deletes of 20 "
            "existing entries (50.0%) exceeds max_delete_ratio 30.0%") in out
    code, out, _ = world.run("apply")
    assert code == 1
    assert ("REFUSED: tower-hosts: 10 deletes of 20 existing entries (50.0%) exceeds "
            "max_delete_ratio 30.0%") in out
    assert len(world.entries("core-1", "tower-hosts")) == 20, "a refused plan writes nothing"
    code, out, _ = world.run("apply", "--force")
    assert code == 0, out
    assert len(world.entries("core-1", "tower-hosts")) == 10
    world.assert_converged()


def test_saved_plan_applies_exactly_and_stale_plan_is_refused(world: World) -> None:
    sim = world.router("core-1")
    _seed(world)
    plan_file = world.tmp / "plan.json"
    assert world.run("plan", "--out", str(plan_file))[0] == 2
    world.account(1050, "After Plan", groups=["Tower Hosts"], ips=["100.64.10.50"])
    code, out, err = world.run("apply", "--plan", str(plan_file))
    assert code == 0, out + err
    assert "100.64.10.50" not in world.entries("core-1", "tower-hosts"), "apply --plan applies only the plan"
    assert "100.64.10.5" in world.entries("core-1", "tower-hosts")

    assert world.run("plan", "--out", str(plan_file))[0] == 2
    edited = json.loads(plan_file.read_text())
    edited["targets"][0]["changes"][0]["address"] = "192.0.2.99"
    (world.tmp / "edited.json").write_text(json.dumps(edited))
    code, out, err = world.run("apply", "--plan", str(world.tmp / "edited.json"))
    assert code == 1 and "core-1: FAILED: the saved plan's changes do not match its checksum" in out
    entry_id = world.entries("core-1", "tower-hosts")["100.64.10.5"][".id"]
    sim.remove_entry("ip", entry_id)  # the router changes behind the plan's back
    code, out, err = world.run("apply", "--plan", str(plan_file))
    assert code == 1
    assert "core-1: FAILED: its managed entries changed since the plan was made" in out
    assert "100.64.10.50" not in world.entries("core-1", "tower-hosts")
    assert world.run("apply")[0] == 0
    world.assert_converged()


def test_failing_source_writes_nothing(world: World) -> None:
    world.router("core-1")
    _seed(world)
    world.write_config(query="SELECT * FROM no_such_table")
    code, out, err = world.run("apply")
    assert code == 1
    assert "billing read from" in err and "nothing written" in err
    assert world.entries() == {}
    world.write_config(query="SELECT id AS account_id FROM accounts")
    code, out, err = world.run("apply")
    assert code == 1
    assert "no column(s) account_name, status, group_name, ip_address, radius_username" in err
    assert world.entries() == {}
    assert not (world.tmp / "state.db").exists(), "a failed read writes nothing, not even the state store"
    world.write_config()
    assert world.run("apply")[0] == 0
    world.assert_converged()


def test_billing_read_timeout_writes_nothing(world: World) -> None:
    world.router("core-1")
    _seed(world)
    from world import QUERY

    world.write_config(query=QUERY + " WHERE (SELECT count(*) FROM pg_sleep(5)) = 1",
                       source_extra='timeout = "1s"')
    code, out, err = world.run("apply")
    assert code == 1
    assert "canceling statement due to statement timeout" in err and "nothing written" in err
    assert world.entries() == {}
    assert not (world.tmp / "state.db").exists(), "a failed read writes nothing, not even the state store"


def test_suspicious_drop_in_accounts_writes_nothing(world: World) -> None:
    world.router("core-1")
    for i in range(10):
        world.account(5000 + i, f"A{i}", groups=["Tower Hosts"], ips=[f"100.64.40.{i + 1}"])
    assert world.run("apply")[0] == 0
    for i in range(8):
        world.remove_account(5000 + i)
    code, out, err = world.run("apply")
    assert code == 1
    assert "billing returned 2 accounts, last good read had 10" in err
    assert len(world.entries("core-1", "tower-hosts")) == 10


def test_bad_rows_are_skipped_and_named(world: World) -> None:
    world.router("core-1")
    world.account(6001, "Good", groups=["Tower Hosts"], ips=["100.64.50.1"])
    world.account(6002, "Typo", groups=["Tower Hosts"], ips=["100.64.500.1"])
    code, out, err = world.run("plan")
    assert code == 2
    assert "note: skipped billing row: account 6002: not an IP address or network: '100.64.500.1'" in out
    assert "+ tower-hosts 100.64.50.1" in out
    assert world.run("apply")[0] == 0
    world.assert_converged()
    # A typo on an account that is already provisioned keeps its entry this pass.
    world.account(6001, "Good", groups=["Tower Hosts"], ips=["100.64.50.1x"])
    code, out, _ = world.run("apply")
    assert code == 0 and "account 6001: not an IP address" in out
    assert "100.64.50.1" in world.entries("core-1", "tower-hosts")


def test_one_router_down_does_not_stop_the_others(world: World) -> None:
    world.router("core-1")
    down = world.router("edge-1")
    _seed(world)
    world.write_config()
    down.set_down(True)
    code, out, err = world.run("plan")
    assert code == 1
    assert "edge-1: FAILED: cannot connect to 127.0.0.1:" in out
    assert "core-1 (routeros): 4 to create" in out
    code, out, err = world.run("apply")
    assert code == 1
    assert "core-1: ok: 4 created" in out
    assert len(world.sims["core-1"].entries("ip")) == 4
    down.set_down(False)
    assert world.run("apply")[0] == 0
    assert len(world.sims["edge-1"].entries("ip")) == 4
    world.assert_converged()


def test_wrong_password_names_the_router_and_hides_the_secret(world: World) -> None:
    world.router("core-1")
    _seed(world)
    (world.tmp / "router-pw").write_text("wrong-password-xyz\n")
    code, out, err = world.run("-vv", "plan")
    assert code == 1
    assert "core-1: FAILED: login to 127.0.0.1:" in out and "invalid user name or password (6)" in out
    assert "wrong-password-xyz" not in out + err
    (world.tmp / "router-pw").write_text(ROUTER_PASSWORD + "\n")
    code, out, err = world.run("-vv", "apply")
    assert code == 0
    assert ROUTER_PASSWORD not in out + err
    world.assert_converged()


@pytest.mark.parametrize("version", ["7.17.2", "7.18.2"])
def test_empty_and_non_empty_replies_on_both_sides_of_7_18(world: World, version: str) -> None:
    world.router("core-1", version=version)
    world.assert_converged()
    _seed(world)
    assert world.run("apply")[0] == 0
    world.assert_converged()


def test_surplus_owned_duplicates_are_removed(world: World) -> None:
    sim = world.router("core-1")
    _seed(world)
    assert world.run("apply")[0] == 0
    # Configs imported from old RouterOS versions can hold duplicates (ROUTEROS.md §2.3).
    table = sim.state.tables["ip"]
    with sim.state.lock:
        table.add({"list": "tower-hosts", "address": "100.64.10.5", "comment": "provisiond:1042 Ridge Tower",
                   "disabled": "no"}, dynamic=False, allow_duplicate=True)
    code, out, _ = world.run("plan")
    assert code == 2 and '- tower-hosts 100.64.10.5  acct 1042 "Ridge Tower"' in out
    assert world.run("apply")[0] == 0
    assert sum(1 for e in sim.entries("ip", "tower-hosts") if e["address"] == "100.64.10.5") == 1
    world.assert_converged()


def test_tls_with_fingerprint_pinning(world: World, certificate: tuple[Path, Path, str]) -> None:
    cert, key, fingerprint = certificate
    world.router("core-1", tls_cert=cert, tls_key=key)
    _seed(world)
    world.write_config(routers={"core-1": {"tls": True, "fingerprint": fingerprint}})
    assert world.run("apply")[0] == 0
    assert len(world.sims["core-1"].entries("ip")) == 4
    world.assert_converged()
    world.write_config(routers={"core-1": {"tls": True, "fingerprint": "00" * 32}})
    code, out, _ = world.run("plan")
    assert code == 1 and "does not match the pinned one" in out


def test_tls_without_verification_still_encrypts(world: World, certificate: tuple[Path, Path, str]) -> None:
    cert, key, _ = certificate
    sim = world.router("core-1", tls_cert=cert, tls_key=key)
    _seed(world)
    world.write_config(routers={"core-1": {"tls": True, "tls_verify": False}})
    code, out, _ = world.run("check-config")
    assert code == 0 and "tls_verify = false without a fingerprint accepts any certificate" in out
    assert world.run("apply")[0] == 0
    assert len(sim.entries("ip")) == 4
    world.assert_converged()


def test_tls_with_ca_file(world: World, certificate: tuple[Path, Path, str]) -> None:
    cert, key, _ = certificate
    world.router("core-1", tls_cert=cert, tls_key=key)
    _seed(world)
    world.write_config(routers={"core-1": {"tls": True, "ca_file": str(cert)}})
    assert world.run("apply")[0] == 0
    world.assert_converged()
    world.write_config(routers={"core-1": {"tls": True}})  # system store: not trusted
    code, out, _ = world.run("plan")
    assert code == 1 and "certificate verify failed" in out


def test_unreadable_password_file_fails_only_that_router(world: World) -> None:
    world.router("core-1")
    world.router("edge-1")
    _seed(world)
    world.write_config(routers={"edge-1": {"password_file": str(world.tmp / "missing-pw")}})
    # password_file replaces the default one: rewrite by hand
    text = world.config.read_text().replace(
        f'password_file = "{world.tmp / "router-pw"}"\nconnect_timeout = "2s"\ntimeout = "5s"\npassword_file',
        'connect_timeout = "2s"\ntimeout = "5s"\npassword_file')
    world.config.write_text(text)
    code, out, err = world.run("apply")
    assert code == 1
    assert "edge-1: FAILED: router edge-1: password_file: cannot read" in out
    assert "core-1: ok: 4 created" in out


def test_apply_writes_nothing_once_the_leader_lock_is_lost(world: World) -> None:
    from provisiond import settings as settings_mod
    from provisiond.engine import Reconciler

    world.router("core-1")
    _seed(world)
    rec = Reconciler(settings_mod.load(world.write_config()), readonly=False)
    try:
        checks = iter([True, False])  # still leader when the pass starts, not when writing
        result = rec.apply(rec.plan(), may_write=lambda: next(checks))
    finally:
        rec.close()
    assert not result.ok
    assert [r.error for r in result.results] == ["core-1: not applied: lost the leader lock"]
    assert world.entries() == {}
