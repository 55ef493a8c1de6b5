"""``provisiond ipam list|show|release`` through provisiond.cli.ipam and argparse."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from provisiond.cli import ipam as ipam_cmd
from provisiond.core.ipam import Pool, allocate
from provisiond.core.model import Account
from provisiond.settings import Settings
from provisiond.state.store import StateStore

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="provisiond")
    sub = parser.add_subparsers(dest="command")
    ipam_cmd.add_parser(sub)
    return parser.parse_args(["ipam", *argv])


def settings_for(url: str) -> Settings:
    return Settings(
        source={"url": "sqlite://", "query": "select 1"},  # type: ignore[arg-type]
        state={"url": url},  # type: ignore[arg-type]
        pool=[  # type: ignore[list-item]
            {"name": "towers", "group": "towers", "networks": ["100.64.0.0/29"], "hold": "1h"},
            {"name": "towers6", "group": "towers", "networks": ["2001:db8::/64"], "hold": "10m"},
        ],
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = settings_for(f"sqlite:///{tmp_path / 'state.db'}")
    pools = [Pool.from_settings(p) for p in s.pool]
    accounts = [Account(str(i), groups=frozenset({"towers"})) for i in (1, 2, 3)]
    with StateStore.open(s.state.url.get_secret_value()) as store:
        store.reserve(allocate(accounts, pools, [], NOW), NOW)
        store.release("3", "towers", now=NOW, hold=60)
    return s


def test_list_json(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert ipam_cmd.run(parse("list", "--format", "json"), settings, now=NOW) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["pools"] == [
        {"name": "towers", "size": 6, "leased": 2, "held": 1, "free": 3, "utilisation": 0.5},
        {"name": "towers6", "size": 2**64 - 1, "leased": 3, "held": 0, "free": 2**64 - 4,
         "utilisation": 0.0},
    ]
    held = [x for x in data["leases"] if x["state"] == "held"]
    assert held == [{"account_id": "3", "pool": "towers", "address": "100.64.0.3", "state": "held",
                     "held_until": (NOW + timedelta(seconds=60)).isoformat()}]
    assert {"account_id", "pool", "address", "state"} <= set(data["leases"][0])


def test_list_text_one_pool(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert ipam_cmd.run(parse("list", "--pool", "towers"), settings, now=NOW) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["POOL", "ADDRESS", "STATE", "ACCOUNT", "HELD", "UNTIL"]
    assert out[1].split() == ["towers", "100.64.0.1", "leased", "1"]
    assert out[-1] == "pool towers: 6 addresses, 2 leased, 1 held, 3 free (50.0% used)"
    assert not any("2001:db8" in line for line in out)


def test_expired_hold_counts_as_free(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    later = NOW + timedelta(hours=2)
    assert ipam_cmd.run(parse("list", "--pool", "towers"), settings, now=later) == 0
    out = capsys.readouterr().out
    assert "(expired)" in out and "2 leased, 0 held, 4 free" in out


def test_list_unknown_pool(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert ipam_cmd.run(parse("list", "--pool", "nope"), settings, now=NOW) == 1
    assert "no pool named 'nope'" in capsys.readouterr().err


def test_show(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert ipam_cmd.run(parse("show", "1", "--format", "json"), settings, now=NOW) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(x["pool"], x["address"]) for x in data["leases"]] == [
        ("towers", "100.64.0.1"), ("towers6", "2001:db8::1"),
    ]
    assert ipam_cmd.run(parse("show", "99"), settings, now=NOW) == 1
    assert "account 99 holds no address" in capsys.readouterr().out


def test_release(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    until = (NOW + timedelta(minutes=10)).isoformat()
    assert ipam_cmd.run(parse("release", "1", "--pool", "towers6"), settings, now=NOW) == 0
    assert capsys.readouterr().out.strip() == f"released towers6 2001:db8::1  acct 1: held until {until}"
    # Released before: the address is described as held, not as missing.
    assert ipam_cmd.run(parse("release", "1", "--pool", "towers6"), settings, now=NOW) == 0
    assert capsys.readouterr().out.strip() == f"towers6 2001:db8::1  acct 1 is already held (until {until})"
    assert ipam_cmd.run(parse("release", "9", "--pool", "towers6"), settings, now=NOW) == 1
    assert "account 9 has no leased address in pool towers6" in capsys.readouterr().err
    assert ipam_cmd.run(parse("release", "2"), settings, now=NOW) == 0
    with StateStore.open(settings.state.url.get_secret_value(), readonly=True) as store:
        assert {(x.account_id, x.state) for x in store.leases() if x.account_id == "2"} == {("2", "held")}


def test_read_only_actions_create_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = settings_for(f"sqlite:///{tmp_path / 'missing' / 'state.db'}")
    assert ipam_cmd.run(parse("list", "--format", "json"), s, now=NOW) == 0
    assert json.loads(capsys.readouterr().out)["pools"][0]["free"] == 6
    assert ipam_cmd.run(parse("show", "1"), s, now=NOW) == 1
    assert not (tmp_path / "missing").exists()


def test_store_errors_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    s = settings_for("mysql+pymysql://u@127.0.0.1:1/x")
    assert ipam_cmd.run(parse("list"), s, now=NOW) == 1
    assert "provisiond ipam: state store" in capsys.readouterr().err


def test_release_on_postgres(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    s = settings_for(pg_url)
    pools = [Pool.from_settings(p) for p in s.pool]
    with StateStore.open(pg_url) as store:
        store.reserve(allocate([Account("7", groups=frozenset({"towers"}))], pools, [], NOW), NOW)
    assert ipam_cmd.run(parse("release", "7"), s, now=NOW) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_release_warns_when_billing_still_has_the_account_in_the_group(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    billing = tmp_path / "billing.db"
    with sqlite3.connect(billing) as db:
        db.execute("CREATE TABLE a (id TEXT, grp TEXT)")
        db.executemany("INSERT INTO a VALUES (?, ?)", [("1", "towers"), ("2", "other")])
    s = Settings(
        source={"url": f"sqlite:///{billing}",  # type: ignore[arg-type]
                "query": "SELECT id AS account_id, '' AS account_name, 'active' AS status, grp AS "
                         "group_name, NULL AS ip_address, NULL AS radius_username FROM a"},
        state={"url": f"sqlite:///{tmp_path / 'state.db'}"},  # type: ignore[arg-type]
        pool=[{"name": "towers", "group": "towers", "networks": ["100.64.0.0/29"]}],  # type: ignore[list-item]
    )
    pools = [Pool.from_settings(p) for p in s.pool]
    accounts = [Account(i, groups=frozenset({"towers"})) for i in ("1", "2")]
    with StateStore.open(s.state.url.get_secret_value()) as store:
        store.reserve(allocate(accounts, pools, [], NOW), NOW)
    assert ipam_cmd.run(parse("release", "1"), s, now=NOW) == 0
    err = capsys.readouterr().err
    assert ('warning: account 1 is still selected by pool towers (group "towers") in billing: '
            "the next pass hands its address back") in err
    assert ipam_cmd.run(parse("release", "2"), s, now=NOW) == 0  # billing moved it: no warning
    assert capsys.readouterr().err == ""


def test_prefix_pools_list_show_release(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = Settings(
        source={"url": "sqlite://", "query": "select 1"},  # type: ignore[arg-type]
        state={"url": f"sqlite:///{tmp_path / 'state.db'}"},  # type: ignore[arg-type]
        pool=[  # type: ignore[list-item]
            {"name": "pd", "group": "ftth", "networks": ["2001:db8:100::/46"], "prefix_length": 56, "hold": "1h"},
            {"name": "blocks", "group": "ftth", "networks": ["100.64.8.0/27"], "prefix_length": 29},
        ],
    )
    pools = [Pool.from_settings(p) for p in s.pool]
    accounts = [Account(str(i), groups=frozenset({"ftth"})) for i in (1, 2)]
    with StateStore.open(s.state.url.get_secret_value()) as store:
        store.reserve(allocate(accounts, pools, [], NOW), NOW)
    assert ipam_cmd.run(parse("list"), s, now=NOW) == 0
    out = capsys.readouterr().out.splitlines()
    assert ["pd", "2001:db8:100:100::/56", "leased", "2"] in [line.split() for line in out]
    assert "pool pd: 1024 /56 prefixes, 2 leased, 0 held, 1022 free (0.2% used)" in out
    assert "pool blocks: 4 /29 prefixes, 2 leased, 0 held, 2 free (50.0% used)" in out
    assert ipam_cmd.run(parse("show", "1", "--format", "json"), s, now=NOW) == 0
    assert [x["address"] for x in json.loads(capsys.readouterr().out)["leases"]] == [
        "100.64.8.0/29", "2001:db8:100::/56"]
    assert ipam_cmd.run(parse("release", "1", "--pool", "pd"), s, now=NOW) == 0
    until = (NOW + timedelta(hours=1)).isoformat()
    assert capsys.readouterr().out.strip() == f"released pd 2001:db8:100::/56  acct 1: held until {until}"
