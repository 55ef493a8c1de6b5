"""An operator's first day, through the CLI and one daemon pass: the typo that would
empty a list, check-config checking what it can, and one story in plan, apply and logs.

Real parts: PostgreSQL billing, the RouterOS simulator over the API, the SQLite store.
Every scenario ends converged (a second pass plans nothing).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from world import ROUTER_PASSWORD, World

from provisiond import settings as settings_mod
from provisiond.daemon.metrics import Health, Metrics
from provisiond.daemon.passes import PassRunner

TYPO = (("group", "Tower Host", "tower-hosts"), ("status", "delinquent", "delinquent"))
RIGHT = (("group", "Tower Hosts", "tower-hosts"), ("status", "delinquent", "delinquent"))


def _towers(world: World, n: int = 3) -> None:
    for i in range(n):
        world.account(1100 + i, f"Tower {i}", groups=["Tower Hosts"], ips=[f"100.64.40.{i + 1}"])
    world.account(1200, "Late Payer", status="delinquent", ips=["100.64.41.1"])
    world.account(1201, "Old Farm", groups=["Legacy Customers"])


def _runner(world: World) -> PassRunner:
    return PassRunner(settings_mod.load(world.config), metrics=Metrics(), health=Health(max_age=600))


def test_a_typo_in_a_group_is_named_and_never_empties_the_list(world: World) -> None:
    world.router("core-1")
    _towers(world)  # 3 entries: far below min_existing, so no ratio protects the list
    world.write_config(lists=RIGHT)
    assert world.run("apply")[0] == 0
    assert len(world.entries("core-1", "tower-hosts")) == 3

    world.write_config(lists=TYPO)
    code, out, _ = world.run("check-config")
    assert code == 1
    assert ('error: address_list[0].group "Tower Host" matches no account in billing; plan and '
            'apply will not empty tower-hosts without --force; billing\'s groups, closest first: '
            '"Tower Hosts", "Legacy Customers"') in out
    assert "OK" not in out

    code, out, _ = world.run("plan")
    assert code == 2
    assert ('REFUSED: apply will refuse this without --force: tower-hosts: 3 deletes would empty '
            'it, but address_list[0].group "Tower Host" matches no account in billing') in out
    code, out, _ = world.run("apply")
    assert code == 1
    assert len(world.entries("core-1", "tower-hosts")) == 3, "a refused plan writes nothing"

    # The daemon never forces: the pass is refused, counted, and the list stays.
    runner = _runner(world)
    try:
        outcome = runner.run_once()
    finally:
        runner.close()
    assert outcome.result == "partial" and "refused by safety: core-1" in outcome.status
    assert runner.metrics.refusals.labels("core-1")._value.get() == 1
    assert len(world.entries("core-1", "tower-hosts")) == 3

    # The fix is the config, not --force.
    world.write_config(lists=RIGHT)
    assert world.run("check-config")[0] == 0
    world.assert_converged()


def test_force_empties_an_unmatched_list_on_purpose(world: World) -> None:
    world.router("core-1")
    _towers(world, 2)
    world.write_config(lists=RIGHT)
    assert world.run("apply")[0] == 0
    world.write_config(lists=TYPO)
    code, out, err = world.run("apply", "--force")
    assert code == 0, out + err
    assert world.entries("core-1", "tower-hosts") == {}
    world.assert_converged()


def test_an_unmatched_status_lists_billing_statuses_closest_first(world: World) -> None:
    world.router("core-1")
    _towers(world, 1)
    world.write_config(lists=(("status", "Delinquent ", "delinquent"),))
    code, out, _ = world.run("check-config")
    assert code == 1
    assert ('address_list[0].status "Delinquent " matches no account in billing; plan and apply '
            'will not empty delinquent without --force; billing\'s statuses, closest first: '
            '"delinquent", "active"') in out


def test_check_config_reads_secret_files_where_systemd_puts_them(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.router("core-1")
    _towers(world, 1)
    world.write_config(lists=RIGHT)
    text = world.config.read_text().replace(f'password_file = "{world.tmp / "router-pw"}"',
                                            'password_file = "router-password"')
    world.config.write_text(text)
    creds = tmp_path / "credentials"
    creds.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    code, out, _ = world.run("check-config")
    assert code == 1
    assert (f"error: router[0].password_file: cannot read {creds}/router-password: No such file "
            f"or directory (relative names are looked up in $CREDENTIALS_DIRECTORY ({creds}))") in out
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    monkeypatch.chdir(tmp_path)
    code, out, _ = world.run("check-config")
    assert code == 1
    assert "which is not set, so in the current directory" in out
    assert "sudo CREDENTIALS_DIRECTORY=/etc/provisiond/credentials" in out  # the hint by hand
    (creds / "router-password").write_text(ROUTER_PASSWORD + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    code, out, err = world.run("check-config", "--connect")
    assert code == 0, out + err
    assert "connect: core-1: ok: logged in to 127.0.0.1:" in out
    assert ROUTER_PASSWORD not in out + err
    assert world.run("apply")[0] == 0
    world.assert_converged()


def test_check_config_connect_reports_each_router(world: World, tmp_path: Path) -> None:
    world.router("core-1")
    world.router("edge-1")
    _towers(world, 1)
    world.write_config(lists=RIGHT)
    wrong = tmp_path / "wrong-pw"
    wrong.write_text("not-the-password\n")
    text = world.config.read_text()
    head, sep, tail = text.partition('name = "edge-1"')
    tail = tail.replace(str(world.tmp / "router-pw"), str(wrong), 1)
    radius_db = tmp_path / "radius.db"
    import sqlite3

    with sqlite3.connect(radius_db) as db:  # no FreeRADIUS tables: the check must say so
        db.execute("CREATE TABLE unrelated (x INTEGER)")
    world.config.write_text(head + sep + tail + "\n[[router]]\nname = \"gone-1\"\nhost = \"127.0.0.1\"\n"
                            "port = 1\nusername = \"u\"\npassword = \"p\"\nconnect_timeout = \"2s\"\n"
                            f"\n[radius]\nurl = \"sqlite:///{radius_db}\"\n")
    code, out, _ = world.run("check-config", "--connect")
    assert code == 1
    assert "connect: core-1: ok: logged in to 127.0.0.1:" in out
    assert "connect: edge-1: FAILED: login to 127.0.0.1:" in out and "invalid user name or password" in out
    assert "connect: gone-1: FAILED: cannot connect to 127.0.0.1:1: " in out
    assert "connect: radius: FAILED: sqlite:///" in out and "no such table: radusergroup" in out
    assert "not-the-password" not in out
    assert world.sims["core-1"].entries("ip", None) == [], "check-config writes nothing"


def test_a_misspelt_key_says_did_you_mean(world: World) -> None:
    world.write_config(safety={"max_delete_ratio": 0.3, "min_exsting": 5})
    code, out, _ = world.run("check-config")
    assert code == 1
    assert 'error: safety.min_exsting: unknown key; did you mean "min_existing"?' in out


def test_conflicts_one_word_everywhere_and_visible_to_the_daemon(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    sim = world.router("core-1")
    sim.add_entry("ip", list_name="tower-hosts", address="100.64.40.1", comment="hand", dynamic=False)
    _towers(world, 2)
    world.write_config(lists=RIGHT)
    code, out, _ = world.run("plan")
    assert "! tower-hosts 100.64.40.1  acct 1100 \"Tower 0\": conflict: " in out
    # One that appears between plan and apply is found by apply itself.
    world.account(1102, "Raced", groups=["Tower Hosts"], ips=["100.64.40.9"])
    from provisiond.cli.commands import apply_json, apply_lines
    from provisiond.engine import Reconciler

    rec = Reconciler(settings_mod.load(world.config), readonly=False)
    try:
        pp = rec.plan()
        sim.add_entry("ip", list_name="tower-hosts", address="100.64.40.9", comment="raced", dynamic=False)
        result = rec.apply(pp)
    finally:
        rec.close()
    assert [c["address"] for c in apply_json(result)["targets"][0]["conflicts"]] == ["100.64.40.9"]
    lines = "\n".join(apply_lines(result))
    assert "1 conflict(s)" in lines
    assert "  conflict: tower-hosts 100.64.40.9  acct 1102 \"Raced\": failure: already have such entry" in lines
    code, out, _ = world.run("history", "--format", "json")
    assert "collision" not in out + lines and '"conflict"' in out

    logging.getLogger().addHandler(caplog.handler)  # the CLI's set-up replaced the root handlers
    caplog.set_level(logging.INFO)
    runner = _runner(world)
    try:
        outcome = runner.run_once()
    finally:
        runner.close()
    assert outcome.result == "ok"  # a conflict is reported, not a failure
    assert outcome.conflicts == {"core-1": 2}
    assert runner.metrics.conflicts.labels("core-1")._value.get() == 2
    ok, body = runner.health.check()
    assert ok and body.startswith("ok; conflicts") and "core-1 2" in body
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("pass=1 "))
    assert "conflicts=2 conflicts_on=core-1" in line
    assert "conflicts: core-1 2" in outcome.status
    assert "collision" not in caplog.text
    world.assert_converged()


def test_an_error_is_said_once(world: World) -> None:
    world.router("core-1")
    world.router("edge-1")
    _towers(world, 1)
    world.write_config(lists=RIGHT)
    world.sims["edge-1"].stop()
    for command in ("plan", "apply"):
        code, out, err = world.run(command)
        assert code == 1
        assert (out + err).count("cannot connect to 127.0.0.1:") == 1, out + err
        assert "edge-1: FAILED: cannot connect" in out


def test_plan_counts_lease_changes_and_notes_host_bits(world: World) -> None:
    world.router("core-1")
    world.account(1300, "Pooled", groups=["Tower Hosts"])
    world.account(1301, "Sloppy", status="delinquent", ips=["100.64.30.9/30"])
    world.write_config(lists=(("status", "delinquent", "delinquent"),), extra="""
[[pool]]
name = "towers"
group = "Tower Hosts"
networks = ["100.64.99.0/29"]
""")
    code, out, _ = world.run("plan")
    assert code == 2
    assert "note: account 1301: 100.64.30.9/30 has host bits set; used as the network 100.64.30.8/30" in out
    assert "+ lease towers 100.64.99.1  acct 1300" in out
    assert out.rstrip().endswith("on 1 of 1 target(s); 1 lease change(s).")
    assert world.run("apply")[0] == 0
    world.assert_converged()


def test_config_after_the_subcommand(world: World) -> None:
    world.router("core-1")
    _towers(world, 1)
    world.write_config(lists=RIGHT)
    from provisiond.cli import main as cli

    code = cli.main(["plan", "--config", str(world.config)])
    assert code == 2
    code = cli.main(["--config", "/nonexistent.toml", "plan", "-c", str(world.config)])
    assert code == 2


def test_dry_run_logs_the_diff_at_info(world: World, caplog: pytest.LogCaptureFixture) -> None:
    world.router("core-1")
    _towers(world, 2)
    world.write_config(lists=RIGHT, extra="[daemon]\ndry_run = true\n")
    caplog.set_level(logging.INFO)
    runner = _runner(world)
    try:
        assert runner.run_once().result == "ok"
    finally:
        runner.close()
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert 'dry-run target=core-1 + tower-hosts 100.64.40.1  acct 1100 "Tower 0"' in info
    assert 'dry-run target=core-1 + delinquent 100.64.41.1  acct 1200 "Late Payer"' in info
    assert world.entries("core-1") == {}, "dry run writes nothing"


def test_json_logs_carry_key_value_pairs_as_fields() -> None:
    import io

    from provisiond.cli.logs import JsonFormatter, RedactSecrets

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactSecrets())
    log = logging.getLogger("provisiond.test.json")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("pass=%d result=%s duration=%.2fs changes=%d conflicts=%d", 3, "ok", 0.5, 2, 0)
        log.warning("target=%s result=unavailable retry_in=%.1fs error=%r", "edge-1", 2.0,
                    "edge-1: cannot connect to 127.0.0.1:1: it's refused")
        log.info("configuration swapped in: routers=%d", 2)
        log.info("login password=%s", "Hunter2")
    finally:
        log.removeHandler(handler)
    docs = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert {k: docs[0][k] for k in ("pass", "result", "duration", "changes", "conflicts", "msg")} == {
        "pass": 3, "result": "ok", "duration": "0.50s", "changes": 2, "conflicts": 0, "msg": ""}
    assert docs[1]["error"] == "edge-1: cannot connect to 127.0.0.1:1: it's refused"
    assert docs[1]["target"] == "edge-1" and docs[1]["level"] == "warning"
    assert docs[2]["msg"] == "configuration swapped in:" and docs[2]["routers"] == 2
    assert "Hunter2" not in stream.getvalue()


def test_demo_dir_keeps_the_printed_config(tmp_path: Path) -> None:
    import contextlib
    import io
    import re

    from provisiond.cli import main as cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["demo", "--accounts", "30", "--dir", str(tmp_path / "demo"), "--quiet"])
    text = out.getvalue()
    assert code == 0, text
    printed = re.search(r"config (\S+provisiond\.toml)", text)
    assert printed, text
    config = Path(printed.group(1))
    assert config.exists() and config.parent == tmp_path / "demo"
    assert f"demo: kept in {tmp_path / 'demo'}" in text
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["ipam", "list", "--config", str(config)]) == 0
    assert "tower-hosts" in out.getvalue()
