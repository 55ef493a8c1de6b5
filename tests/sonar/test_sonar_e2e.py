"""The demo scenario from Sonar and from SQL: the same router lists and RADIUS rows, a
second pass plans nothing, and a Sonar read that fails halfway writes nothing."""

from __future__ import annotations

import contextlib
import io
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sonarlib import TOKEN

from provisiond.cli import demo
from provisiond.cli import main as cli
from provisiond.sim import RouterSim, SimSettings
from provisiond.sim.sonar import FakeSonar, World

MakeSonar = Callable[..., FakeSonar]
ACCOUNTS = 300


def run(config: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["--config", str(config), *args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def routers() -> Iterator[Callable[[str], RouterSim]]:
    started: list[RouterSim] = []

    def make(password: str) -> RouterSim:
        sim = RouterSim(SimSettings(username="demo", password=password, identity="core-1",
                                    log_commands=False)).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


def setup(directory: Path, routers: Callable[[str], RouterSim],
          sonar: FakeSonar | None = None) -> tuple[Path, RouterSim]:
    """The demo's files in ``directory``: billing from SQLite, or from ``sonar``."""
    directory.mkdir()
    password = secrets.token_urlsafe(12)
    password_file = directory / "router-password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    sim = routers(password)
    demo.seed_radius(directory / "radius.db")
    if sonar is None:
        demo.seed_billing(directory / "billing.db", ACCOUNTS)
        return demo.write_config(directory, port=sim.port, password_file=password_file), sim
    token = directory / "sonar-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    return demo.write_config(directory, port=sim.port, password_file=password_file,
                             sonar=(sonar.url, token)), sim


def lists(sim: RouterSim) -> set[tuple[str, str, str, str]]:
    return {(menu, e["list"], e["address"], e["comment"])
            for menu in ("ip", "ipv6") for e in sim.entries(menu)}


def radius_rows(directory: Path) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    db = sqlite3.connect(directory / "radius.db")
    try:
        groups = db.execute("SELECT username, groupname, priority FROM radusergroup "
                            "ORDER BY 1, 2").fetchall()
        replies = db.execute("SELECT username, attribute, op, value FROM radreply ORDER BY 1, 2").fetchall()
    finally:
        db.close()
    return groups, replies


def test_the_demo_gives_the_same_router_lists_from_sonar_as_from_sql(
    tmp_path: Path, make_sonar: MakeSonar, routers: Callable[[str], RouterSim]
) -> None:
    sonar = make_sonar(World.from_tables(demo.sonar_tables(ACCOUNTS)), page_cap=50, ids="mixed")
    sql_config, sql_router = setup(tmp_path / "sql", routers)
    sonar_config, sonar_router = setup(tmp_path / "sonar", routers, sonar)
    for config in (sql_config, sonar_config):
        code, out, err = run(config, "apply")
        assert code == 0, out + err
    assert sonar.requests >= ACCOUNTS // 50  # really read over capped pages
    from_sql = lists(sql_router)
    assert len(from_sql) > 200
    assert {e[1] for e in from_sql} == {"tower-hosts", "cc-pending", "legacy", "walled-garden"}
    assert any(e[0] == "ipv6" for e in from_sql)
    assert lists(sonar_router) == from_sql
    assert radius_rows(tmp_path / "sonar") == radius_rows(tmp_path / "sql")
    for config in (sql_config, sonar_config):  # idempotence: a second pass plans nothing
        code, out, err = run(config, "plan")
        assert code == 0, out + err
        assert "Plan: 0 to create, 0 to update, 0 to delete" in out


def test_a_read_cut_short_by_the_request_limit_writes_nothing(
    tmp_path: Path, make_sonar: MakeSonar, routers: Callable[[str], RouterSim]
) -> None:
    world = World.from_tables(demo.sonar_tables(ACCOUNTS))
    sonar = make_sonar(world, page_cap=50)
    config, router = setup(tmp_path / "sonar", routers, sonar)
    config.write_text(config.read_text().replace("page_size = 100", 'page_size = 100\ntimeout = "2s"'))
    assert run(config, "apply")[0] == 0
    before, rows_before = lists(router), radius_rows(tmp_path / "sonar")

    # Billing changes, then the limit cuts the read off after two of its six pages.
    for account in range(1000, 1000 + ACCOUNTS, 2):
        world.set_groups(account, [])
    sonar.limit_to(2, 60.0)
    code, out, err = run(config, "apply")
    assert code == 1
    assert "request limit (Request limit of 2/min reached.)" in err
    assert "source.timeout (2s)" in err
    assert lists(router) == before
    assert radius_rows(tmp_path / "sonar") == rows_before

    sonar.limit_to(400, 60.0)  # the next read gets through and applies the change
    code, out, err = run(config, "apply", "--force")
    assert code == 0, out + err
    assert lists(router) != before
    code, out, err = run(config, "plan")
    assert code == 0, out + err


def test_demo_against_the_fake_sonar_process(capsys: pytest.CaptureFixture[str]) -> None:
    # The demo starts `python -m provisiond.sim.sonar` as its own process.
    assert cli.main(["demo", "--source", "sonar", "--accounts", "60", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "demo: fake Sonar on http://127.0.0.1:" in out
    assert "demo: converged: the second plan has nothing to do." in out


def test_a_scoped_apply_reads_and_changes_only_those_accounts(
    tmp_path: Path, make_sonar: MakeSonar, routers: Callable[[str], RouterSim]
) -> None:
    world = World.from_tables(demo.sonar_tables(ACCOUNTS))
    sonar = make_sonar(world, page_cap=50)
    config, router = setup(tmp_path / "sonar", routers, sonar)
    assert run(config, "apply")[0] == 0
    before = lists(router)
    world.set_groups(1001, ["Legacy Customers"])  # 1001 was in Credit Card Pending only
    world.update("accounts", 1005, name="Renamed")
    requests = sonar.requests
    code, out, err = run(config, "apply", "--account", "1001")
    assert code == 0, out + err
    assert sonar.requests == requests + 1  # one request, for that account
    changed = lists(router) ^ before
    # joining Legacy Customers also gives it a /56 from the demo's legacy-pd pool (issue #24)
    assert {(e[1], e[2]) for e in changed if not e[2].endswith("/56")} == {
        ("cc-pending", "100.64.0.1"), ("legacy", "100.64.0.1")}
    assert [(e[1], e[2].startswith("2001:db8:1")) for e in changed if e[2].endswith("/56")] == [("legacy", True)]
    # The other change waits for its own pass; a full pass then finds only it.
    code, out, err = run(config, "apply")
    assert code == 0, out + err
    assert '"Renamed"' in out and "acct 1001" not in out
    code, out, err = run(config, "plan")
    assert code == 0, out + err
