"""``plan``/``apply --target`` (exactly the scope, saved plans keep it) and ``explain ACCOUNT``."""

from __future__ import annotations

import json

from world import World


def _three_routers(world: World) -> None:
    for name in ("core-1", "core-2", "edge-1"):
        world.router(name)
    world.account(1, "One", groups=["Tower Hosts"], ips=["100.64.0.1"])
    world.account(2, "Two", groups=["Credit Card Pending"], ips=["100.64.0.2"])
    world.write_config()


def _targets(doc: dict[str, object]) -> list[str]:
    return [t["target"] for t in doc["targets"]]  # type: ignore[index,union-attr]


def test_target_plans_and_applies_exactly_its_scope(world: World) -> None:
    _three_routers(world)
    code, out, err = world.run("plan", "--target", "core-*", "--format", "json")
    assert code == 2, err
    doc = json.loads(out)
    assert _targets(doc) == ["core-1", "core-2"]
    assert doc["scope"] == {"targets": ["core-*"], "resolved": ["core-1", "core-2"]}
    code, out, err = world.run("plan", "-t", "edge-1", "-t", "core-2")
    assert code == 2, err
    assert out.startswith("Scope: edge-1, core-2 -> core-2, edge-1 (other targets not planned")
    assert "core-1 (routeros)" not in out and "on 2 of 2 target(s)" in out

    code, out, err = world.run("apply", "--target", "core-1")
    assert code == 0, out + err
    assert set(world.entries("core-1")) == {"100.64.0.1", "100.64.0.2"}
    assert world.entries("core-2") == {} and world.entries("edge-1") == {}
    code, out, _ = world.run("plan", "--target", "core-1")
    assert code == 0 and "Plan: 0 to create, 0 to update, 0 to delete on 0 of 1 target(s)." in out

    # A typo is an error, not an empty (converged-looking) plan.
    code, out, err = world.run("plan", "--target", "core-9")
    assert code == 1 and "--target 'core-9' matches no target (targets: core-1, core-2, edge-1)" in err


def test_saved_scoped_plan_applies_only_its_scope(world: World) -> None:
    _three_routers(world)
    plan_file = world.tmp / "edge.json"
    code, out, err = world.run("plan", "--target", "edge-*", "--out", str(plan_file))
    assert code == 2, err
    saved = json.loads(plan_file.read_text())
    assert saved["scope"]["targets"] == ["edge-*"] and _targets(saved) == ["edge-1"]
    # The saved plan brings its scope; narrowing it again on the command line is refused.
    code, _, err = world.run("apply", "--plan", str(plan_file), "--target", "core-1")
    assert code == 1 and "--target cannot narrow a saved plan" in err
    code, out, err = world.run("apply", "--plan", str(plan_file))
    assert code == 0, out + err
    assert out.startswith("Scope: edge-* -> edge-1")
    assert set(world.entries("edge-1")) == {"100.64.0.1", "100.64.0.2"}
    assert world.entries("core-1") == {} and world.entries("core-2") == {}
    # A target slipped into a scoped plan file is refused before anything is written.
    doc = json.loads(json.dumps(saved))
    doc["targets"].append({**saved["targets"][0], "target": "core-1"})
    plan_file.write_text(json.dumps(doc))
    code, _, err = world.run("apply", "--plan", str(plan_file))
    assert code == 1 and "core-1: in the saved plan but outside its scope (edge-*)" in err
    assert world.entries("core-1") == {}
    assert world.run("apply")[0] == 0
    world.assert_converged()


def test_safety_applies_to_what_is_in_scope(world: World) -> None:
    world.router("core-1")
    world.router("core-2")
    for i in range(1, 13):
        world.account(i, f"A{i}", groups=["Tower Hosts"], ips=[f"100.64.0.{i}"])
    world.write_config()
    assert world.run("apply")[0] == 0
    for i in range(1, 10):  # 9 of 12 leave the group: over max_delete_ratio on both routers
        world.account(i, f"A{i}", ips=[f"100.64.0.{i}"])
    world.account(20, "New", groups=["Tower Hosts"], ips=["100.64.0.20"])
    code, out, _ = world.run("apply", "--target", "core-1")
    assert code == 1 and "  REFUSED: tower-hosts: 9 deletes of 12" in out and "core-2" not in out
    code, out, err = world.run("apply", "--target", "core-2", "--force")
    assert code == 0, out + err
    assert set(world.entries("core-2")) == {"100.64.0.10", "100.64.0.11", "100.64.0.12", "100.64.0.20"}
    assert len(world.entries("core-1")) == 12  # untouched: out of scope, and refused
    assert world.run("apply", "--force")[0] == 0
    world.assert_converged()


def _explain(world: World, account: str) -> tuple[int, str, dict[str, object]]:
    code, text, err = world.run("explain", account)
    jcode, out, jerr = world.run("explain", account, "--format", "json")
    assert code == jcode, text + err + jerr
    return code, text, json.loads(out)


def test_explain_converged_pending_conflicting_and_unknown(world: World) -> None:
    sim = world.router("core-1")
    world.account(1, "Ridge Tower", groups=["Tower Hosts", "Legacy Customers"], ips=["100.64.0.1"])
    world.write_config()
    assert world.run("apply")[0] == 0

    code, text, doc = _explain(world, "1")
    assert code == 0 and doc["converged"] is True and doc["exit"] == 0
    assert doc["billing"]["groups"] == ["Legacy Customers", "Tower Hosts"]  # type: ignore[index]
    mappings = {m["name"]: (m["selects"], m["why"]) for m in doc["mappings"]}  # type: ignore[union-attr,index]
    assert mappings == {
        "tower-hosts": (True, 'member of group "Tower Hosts"'),
        "cc-pending": (False, 'not in group "Credit Card Pending"'),
        "delinquent": (False, 'status is "active", not "delinquent"'),
    }
    assert '  = tower-hosts 100.64.0.1  acct 1 "Ridge Tower"  present' in text
    assert "core-1 (routeros): converged: 1 present" in text
    assert "core-1  create tower-hosts 100.64.0.1  ok" in text  # its journal
    assert text.endswith("Explain: account 1: converged on every target (exit 0).\n")

    # Pending: billing moved it; nothing applied yet.
    world.account(1, "Ridge Tower", status="delinquent", groups=["Credit Card Pending"], ips=["100.64.0.1"])
    code, text, doc = _explain(world, "1")
    assert code == 2 and doc["converged"] is False
    states = {(e["state"], e["resource"]["list"]) for t in doc["targets"] for e in t["entries"]}  # type: ignore[union-attr,index]
    assert states == {("delete", "tower-hosts"), ("missing", "cc-pending"), ("missing", "delinquent")}
    assert "  - tower-hosts 100.64.0.1  acct 1 \"Ridge Tower\"  pending delete: no mapping selects" in text
    assert "  + cc-pending 100.64.0.1  acct 1 \"Ridge Tower\"  missing: will be created" in text
    # Its last member left "Tower Hosts": emptying tower-hosts needs --force (a typo looks the same).
    assert world.run("apply", "--force")[0] == 0
    assert _explain(world, "1")[0] == 0

    # Conflicting: a hand-made entry holds the address provisiond wants for account 2.
    sim.add_entry("ip", list_name="tower-hosts", address="100.64.0.2", comment="NOC", dynamic=False)
    world.account(2, "Crête Farm", groups=["Tower Hosts"], ips=["100.64.0.2"])
    code, text, doc = _explain(world, "2")
    assert code == 2 and doc["summary"] == {"pending": 0, "conflicts": 1, "failed_targets": [],
                                            "exhausted_pools": []}
    assert ("  ! tower-hosts 100.64.0.2  acct 2 \"Crête Farm\"  conflict: entry not created by "
            "provisiond (comment 'NOC')") in text
    assert doc["targets"][0]["status"] == "conflict"  # type: ignore[index]

    # The address moves to another account: its entry (still account 1's) sits on the key
    # account 3 wants, so the next pass updates that entry's comment.
    world.account(1, "Ridge Tower", status="delinquent", groups=["Credit Card Pending"], ips=["100.64.0.9"])
    world.account(3, "Zoë's Café", status="delinquent", ips=["100.64.0.1"])
    code, text, doc = _explain(world, "3")
    assert code == 2
    assert ('  ~ delinquent 100.64.0.1  acct 3 "Zoë\'s Café"  pending update: comment: '
            '"provisiond:1 Ridge Tower" -> "provisiond:3 Zoë\'s Café"') in text, text

    # Unknown to billing: exit 1, and still what provisiond holds for that id (nothing here).
    code, text, doc = _explain(world, "4242")
    assert code == 1 and doc["known"] is False
    assert text.startswith("account 4242: unknown to billing (not among the 3 accounts read)")
    assert text.endswith("Explain: account 4242: unknown to billing (exit 1).\n")
    # explain wrote nothing: the hand-made entry is still there, account 2 still not applied.
    assert world.entries("core-1", "tower-hosts")["100.64.0.2"]["comment"] == "NOC"


def test_explain_says_an_exhausted_pool_left_the_account_without_an_address(world: World) -> None:
    world.router("core-1")
    for i in (1, 2, 3):  # a /31 holds two addresses: account 3 gets none
        world.account(i, f"Tower {i}", groups=["Tower Hosts"])
    world.write_config(extra='[[pool]]\nname = "towers"\ngroup = "Tower Hosts"\n'
                             'networks = ["100.64.9.0/31"]\n')
    code, out, err = world.run("apply")
    assert "pool towers exhausted: 1 account(s) got no address: 3" in out, out + err
    code, text, doc = _explain(world, "3")
    assert code == 2 and doc["summary"]["exhausted_pools"] == ["towers"]  # type: ignore[index]
    assert text.rstrip().endswith("no address: pool towers exhausted (widen it, or free "
                                  "addresses with `ipam release`) (exit 2).")
    assert _explain(world, "1")[0] == 0
    world.assert_converged()
