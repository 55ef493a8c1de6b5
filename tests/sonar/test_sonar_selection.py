"""Selecting accounts from Sonar: status, ``activates_account``, ``is_delinquent`` and
groups, every selector key alone and combined, ids as strings and as numbers; IPs on
uninventoried MAC addresses; the selector settings and what check-config says of them;
a delinquent account that pays leaving the walled garden at the next scoped pass after
its webhook."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from selection_cases import ACCOUNTS, CASES, selected
from sonarlib import TOKEN
from test_sonar_e2e import radius_rows, routers, run, setup  # noqa: F401 - routers: a fixture

from provisiond import settings as settings_mod
from provisiond.cli.commands import unmatched_problems
from provisiond.errors import ConfigError
from provisiond.sim import RouterSim
from provisiond.sim.sonar import FakeSonar, World
from provisiond.sources.sonar import SonarSource

MakeSonar = Callable[..., FakeSonar]


def world_of_cases() -> World:
    world = World()
    for status, activates, _, _ in ACCOUNTS.values():
        world.status(status, activates_account=activates)
    for i, (status, _, delinquent, groups) in ACCOUNTS.items():
        world.account(i, f"Account {i}", status=status, groups=groups, delinquent=delinquent)
        world.ip("Account", i, f"10.0.0.{i}/32")
    return world


@pytest.mark.parametrize("ids", ["string", "number", "mixed"])
def test_every_selector_key_alone_and_combined(make_sonar: MakeSonar, ids: str) -> None:
    source = SonarSource(make_sonar(world_of_cases(), ids=ids, page_cap=2).url, TOKEN, page_size=2)
    try:
        snapshot = source.read()
        scoped = source.read(accounts={"2", "3"})
    finally:
        source.close()
    assert {int(i): (a.status, a.active, a.delinquent) for i, a in snapshot.accounts.items()} == {
        i: (status, activates, delinquent) for i, (status, activates, delinquent, _) in ACCOUNTS.items()}
    for keys, want in CASES:
        assert selected(snapshot.accounts, keys) == want, keys
    assert scoped.accounts == {i: snapshot.accounts[i] for i in ("2", "3")}


def test_an_account_without_a_status_is_inactive(make_sonar: MakeSonar) -> None:
    world = world_of_cases()
    world.tables["accounts"][4]["account_status_id"] = 999  # a status Sonar no longer has
    source = SonarSource(make_sonar(world).url, TOKEN)
    try:
        account = source.read().accounts["4"]
    finally:
        source.close()
    assert (account.status, account.active) == ("", False)


def test_an_archived_account_is_not_read(make_sonar: MakeSonar) -> None:
    world = world_of_cases()
    world.archive(2)
    source = SonarSource(make_sonar(world).url, TOKEN)
    try:
        assert sorted(source.read().accounts) == ["1", "3", "4", "5"]
        assert source.read(accounts={"2"}).accounts == {}
    finally:
        source.close()


def test_ips_on_uninventoried_macs_are_the_accounts(make_sonar: MakeSonar) -> None:
    world = World()
    world.account(424, "Ridge Tower")
    mac = world.uninventoried_mac(424, "02:00:00:00:00:07")
    world.ip("UninventoriedMacAddress", mac["id"], "100.64.7.7/32", soft=True)
    world.account(425, "Other")
    world.ip("UninventoriedMacAddress", 999, "100.64.9.9/32")  # a MAC of nobody's: nobody's IP
    source = SonarSource(make_sonar(world).url, TOKEN)
    try:
        snapshot = source.read()
    finally:
        source.close()
    assert snapshot.accounts["424"].addresses == ("100.64.7.7",)
    assert snapshot.accounts["425"].addresses == ()


def test_an_ip_on_an_uninventoried_mac_reaches_lists_and_radius(
    tmp_path: Path, make_sonar: MakeSonar, routers: Callable[[str], RouterSim]  # noqa: F811
) -> None:
    world = World()
    world.status("active", activates_account=True)
    world.account(424, "Ridge Tower", status="active", groups=["Legacy Customers"])
    world.radius_account(424, "ridge")
    mac = world.uninventoried_mac(424, "02:00:00:00:00:07")
    world.ip("UninventoriedMacAddress", mac["id"], "100.64.7.7/32")
    config, router = setup(tmp_path / "sonar", routers, make_sonar(world))
    code, out, err = run(config, "apply")
    assert code == 0, out + err
    assert {e["address"] for e in router.entries("ip", "legacy")} == {"100.64.7.7"}
    groups, replies = radius_rows(tmp_path / "sonar")
    assert ("ridge", "legacy", "10") in [tuple(map(str, g)) for g in groups]
    assert ("ridge", "Framed-IP-Address", "=", "100.64.7.7") in replies
    code, out, err = run(config, "plan")  # idempotence: a second pass plans nothing
    assert code == 0 and "Plan: 0 to create, 0 to update, 0 to delete" in out, out + err
    code, out, err = run(config, "explain", "424")
    assert code == 0, out + err
    for line in ("    status: active (activates the account)", "    delinquent: no",
                 '    selects: address list legacy on core-1 [group "Legacy Customers"]',
                 '        groups holds: member of group "Legacy Customers"',
                 "    no: address list walled-garden on core-1 [delinquent = true]",
                 "        delinquent fails: not delinquent (delinquent = true)",
                 '    no: address list tower-hosts on core-1 [group "Tower Hosts" and active = true]',
                 '        groups fails: not in group "Tower Hosts"',
                 "        active holds: its status activates it (active = true)"):
        assert line in out.splitlines(), (line, out)


def _settings(tmp_path: Path, mapping: str) -> settings_mod.Settings:
    path = tmp_path / "provisiond.toml"
    path.write_text(f'''[source]
url = "sqlite:///{tmp_path / 'billing.db'}"
query = "SELECT 1"
[[router]]
name = "core-1"
host = "127.0.0.1"
username = "u"
password = "p"
[[address_list]]
list = "l"
{mapping}
''')
    path.chmod(0o600)
    return settings_mod.load(path)


@pytest.mark.parametrize(("mapping", "problem"), [
    ("", "address_list[0]: set at least one of group, groups, status, statuses, active, delinquent"),
    ('group = "A"\ngroups = ["B"]', "address_list[0]: set group or groups, not both"),
    ('status = "A"\nstatuses = ["A", "B"]', "address_list[0]: set status or statuses, not both"),
    ("groups = []", "address_list[0].groups: List should have at least 1 item"),
    ('delinquent = "maybe"', "address_list[0].delinquent: Input should be a valid boolean"),
])
def test_selector_settings_refused(tmp_path: Path, mapping: str, problem: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _settings(tmp_path, mapping)
    assert any(p.startswith(problem) for p in exc.value.problems), exc.value.problems


@pytest.mark.parametrize(("mapping", "problems"), [
    ('group = "Tower Hosts"\nactive = true\ndelinquent = true', []),
    ("delinquent = true", []),
    ('groups = ["Tower Hosts", "Relay Site"]',  # one of two names is a typo: named, no guard
     ['address_list[0].groups "Relay Site" matches no account in billing; billing\'s groups, '
      'closest first: "Relay Sites"']),
    ('group = "Tower Host"\ndelinquent = true',
     ['address_list[0].group "Tower Host" matches no account in billing; plan and apply will not '
      'empty l without --force; billing\'s groups, closest first: "Tower Hosts"']),
    ('status = "Suspended"\nactive = true',
     ['address_list[0]: status "Suspended" with active = true can never match: every account of '
      "that status in billing is inactive (drop one of the two keys)"]),
    ('statuses = ["Active", "Paid"]\nactive = false',
     ['address_list[0]: status "Active", "Paid" with active = false can never match: every account '
      "of those statuses in billing is active (drop one of the two keys)"]),
])
def test_check_config_names_mappings_that_cannot_match(make_sonar: MakeSonar, tmp_path: Path,
                                                       mapping: str, problems: list[str]) -> None:
    source = SonarSource(make_sonar(world_of_cases()).url, TOKEN)
    try:
        snapshot = source.read()
    finally:
        source.close()
    got = unmatched_problems(_settings(tmp_path, mapping), snapshot)
    assert len(got) == len(problems) and all(g.startswith(p) for g, p in zip(got, problems)), got


SECRET = "webhook-secret-0123456789"


def test_a_delinquent_account_that_pays_leaves_the_walled_garden(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent.parent / "daemon"))
    from harness import DaemonProc, free_port, new_password, wait_until

    from provisiond.sim import SimSettings
    from provisiond.sim.sonar import SonarSimSettings

    world = World()
    world.status("Active", activates_account=True)
    world.account(424, "Ridge Tower", status="Active", delinquent=True, groups=["Tower Hosts"])
    world.ip("Account", 424, "100.64.0.1/32")
    world.account(425, "Crête Farm", status="Active", delinquent=True)
    world.ip("Account", 425, "100.64.0.2/32")
    sonar = FakeSonar(SonarSimSettings(token=TOKEN), world).start()
    password, password_file = new_password(tmp_path)
    router = RouterSim(SimSettings(username="admin", password=password, log_commands=False)).start()
    (tmp_path / "sonar-token").write_text(TOKEN)
    (tmp_path / "hook-token").write_text(SECRET + "\n")
    port = free_port()
    config = tmp_path / "provisiond.toml"
    config.write_text(f'''[source]
type = "sonar"
url = "{sonar.url}"
token_file = "{tmp_path / 'sonar-token'}"
[state]
url = "sqlite:///{tmp_path / 'state.db'}"
[[router]]
name = "core-1"
host = "127.0.0.1"
port = {router.port}
username = "admin"
password_file = "{password_file}"
[[address_list]]
group = "Tower Hosts"
active = true
list = "tower-hosts"
[[address_list]]
delinquent = true
list = "walled-garden"
[daemon]
interval = "300s"
jitter = 0
debounce = "0.3s"
webhook_listen = "127.0.0.1:{port}"
webhook_token_file = "{tmp_path / 'hook-token'}"
''')
    config.chmod(0o600)
    d = DaemonProc(config, log=tmp_path / "daemon.log")

    def listed(name: str) -> set[str]:
        return {e["address"] for e in router.entries("ip", name)}

    try:
        d.wait_log(r"pass=1 result=ok")
        assert listed("walled-garden") == {"100.64.0.1", "100.64.0.2"}
        assert listed("tower-hosts") == {"100.64.0.1"}
        sonar.add_webhook(f"http://127.0.0.1:{port}/webhooks/sonar?token={SECRET}")
        world.set_delinquent(424, False)  # 424 pays: Sonar clears the flag
        assert sonar.send_event("account.updated", 424) == [200]
        wait_until(lambda: listed("walled-garden") == {"100.64.0.2"}, timeout=10,
                   what="the webhook's scoped pass")
        d.wait_log(r"pass=2 result=ok .* scope=1")
        assert listed("tower-hosts") == {"100.64.0.1"}
        assert "accounts=1 requests=1" in d.text()  # Sonar read for that account alone
        code, out, err = run(config, "plan")  # idempotence: a second pass plans nothing
        assert code == 0 and "Plan: 0 to create, 0 to update, 0 to delete" in out, out + err
    finally:
        d.stop()
        router.stop()
        sonar.stop()
