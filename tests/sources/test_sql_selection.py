"""Selecting accounts from an SQL source: the flag columns ``active`` and ``delinquent``
on PostgreSQL, MariaDB and SQLite, every selector key alone and combined, and a mapping
on a flag the query does not return refused by check-config and by the read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from selection_cases import ACCOUNTS, CASES, selected

from provisiond.errors import SourceError
from provisiond.sources.sql import SqlSource

QUERY = """SELECT a.id AS account_id, a.name AS account_name, a.status AS status,
       m.grp AS group_name, '10.0.0.' || a.id AS ip_address, NULL AS radius_username,
       s.activates AS active, a.delinquent AS delinquent
FROM accounts a JOIN statuses s ON s.name = a.status LEFT JOIN memberships m ON m.account = a.id"""
# The flags as text, in every spelling a billing database may use (NULL: false).
SPELLED = {True: ["t", "yes", "1", "TRUE", " Y "], False: ["f", "no", "0", "false", None]}


def _fill(url: str, flags: str) -> None:
    engine = sa.create_engine(url)
    flag_type = "BOOLEAN" if flags == "native" else "VARCHAR(10)"

    def value(flag: bool, i: int) -> Any:
        return flag if flags == "native" else SPELLED[flag][i % 5]

    with engine.begin() as c:
        c.exec_driver_sql(f"CREATE TABLE accounts (id INTEGER PRIMARY KEY, name VARCHAR(50), "
                          f"status VARCHAR(20), delinquent {flag_type})")
        c.exec_driver_sql(f"CREATE TABLE statuses (name VARCHAR(20) PRIMARY KEY, activates {flag_type})")
        c.exec_driver_sql("CREATE TABLE memberships (account INTEGER, grp VARCHAR(50))")
        statuses = {status: activates for status, activates, _, _ in ACCOUNTS.values()}
        c.execute(sa.text("INSERT INTO statuses VALUES (:n, :a)"),
                  [{"n": n, "a": value(a, i)} for i, (n, a) in enumerate(sorted(statuses.items()))])
        c.execute(sa.text("INSERT INTO accounts VALUES (:i, :n, :s, :d)"),
                  [{"i": i, "n": f"Account {i}", "s": s, "d": value(d, i)}
                   for i, (s, _, d, _) in ACCOUNTS.items()])
        c.execute(sa.text("INSERT INTO memberships VALUES (:i, :g)"),
                  [{"i": i, "g": g} for i, (_, _, _, groups) in ACCOUNTS.items() for g in groups])
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'billing.db'}"
    return str(request.getfixturevalue("pg_url" if request.param == "postgresql" else "mariadb_url"))


def _query(url: str) -> str:
    return QUERY.replace("'10.0.0.' || a.id", "CONCAT('10.0.0.', a.id)") if "mysql" in url else QUERY


@pytest.mark.parametrize("flags", ["native", "text"])
def test_every_selector_key_alone_and_combined(url: str, flags: str) -> None:
    _fill(url, flags)
    source = SqlSource(url, _query(url), timeout=10, display="billing",
                       needs={"active": "address_list[0].active", "delinquent": "address_list[1].delinquent"})
    try:
        assert source.check_columns() == []
        snapshot = source.read()
    finally:
        source.close()
    assert snapshot.problems == ()
    assert {int(i): (a.active, a.delinquent) for i, a in snapshot.accounts.items()} == {
        i: (activates, delinquent) for i, (_, activates, delinquent, _) in ACCOUNTS.items()}
    for keys, want in CASES:
        assert selected(snapshot.accounts, keys) == want, keys


def test_a_flag_that_is_no_spelling_skips_the_account(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'billing.db'}"
    _fill(url, "text")
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.exec_driver_sql("UPDATE accounts SET delinquent = 'maybe' WHERE id = 3")
    engine.dispose()
    source = SqlSource(url, QUERY, timeout=10, display="billing")
    try:
        snapshot = source.read()
    finally:
        source.close()
    assert "3" not in snapshot.accounts and len(snapshot.accounts) == 4
    assert [str(p) for p in snapshot.problems] == ["account 3: delinquent is not true or false: 'maybe'"]


def test_a_mapping_on_a_flag_the_query_lacks_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'billing.db'}"
    _fill(url, "native")
    without = QUERY.replace(",\n       s.activates AS active, a.delinquent AS delinquent", "")
    plain = SqlSource(url, without, timeout=10, display="billing")
    try:  # no mapping needs a flag: a query without the columns reads, every flag false
        assert plain.check_columns() == []
        assert not any(a.active or a.delinquent for a in plain.read().accounts.values())
    finally:
        plain.close()
    source = SqlSource(url, without, timeout=10, display="billing",
                       needs={"delinquent": "address_list[1].delinquent"})
    try:
        assert source.check_columns() == [
            "source.query: returns no column delinquent, which address_list[1].delinquent selects on "
            "(add it to the query, true or false per account, or drop address_list[1].delinquent)"]
        with pytest.raises(SourceError, match=r"returns no column delinquent, which "
                                              r"address_list\[1\]\.delinquent selects on"):
            source.read()
        with pytest.raises(SourceError, match="returns no column delinquent"):
            source.read(accounts={"1"})
    finally:
        source.close()


def test_check_config_names_the_missing_flag_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from provisiond.cli import main as cli

    url = f"sqlite:///{tmp_path / 'billing.db'}"
    _fill(url, "native")
    without = QUERY.replace(",\n       s.activates AS active, a.delinquent AS delinquent", "")
    config = tmp_path / "provisiond.toml"
    config.write_text(f'''[source]
url = "{url}"
query = """{without}"""
[state]
url = "sqlite:///{tmp_path / 'state.db'}"
[[router]]
name = "core-1"
host = "127.0.0.1"
username = "u"
password = "p"
[[address_list]]
group = "Tower Hosts"
list = "tower-hosts"
[[address_list]]
delinquent = true
list = "walled-garden"
''')
    config.chmod(0o600)
    assert cli.main(["--config", str(config), "check-config"]) == 1
    out = capsys.readouterr().out
    assert ("error: source.query: returns no column delinquent, which address_list[1].delinquent "
            "selects on") in out
