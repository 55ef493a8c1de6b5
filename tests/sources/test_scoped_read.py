"""``SqlSource.read(accounts=...)``: the operator's query wrapped and narrowed to some
account ids, on PostgreSQL, MariaDB and SQLite, with integer and text id columns."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from provisiond.sources import sql
from provisiond.sources.sql import SqlSource

QUERY = """SELECT a.id AS account_id, a.name AS account_name, a.status AS status,
       g.grp AS group_name, g.ip AS ip_address, NULL AS radius_username
FROM accounts a LEFT JOIN memberships g ON g.account = a.id
-- a trailing comment and semicolon, as operators write them;"""


def _fill(url: str, id_type: str, ids: list[str]) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.exec_driver_sql(f"CREATE TABLE accounts (id {id_type} PRIMARY KEY, name VARCHAR(50), "
                          "status VARCHAR(20))")
        c.exec_driver_sql(f"CREATE TABLE memberships (account {id_type}, grp VARCHAR(50), "
                          "ip VARCHAR(50))")
        c.execute(sa.text("INSERT INTO accounts VALUES (:i, :n, 'active')"),
                  [{"i": int(i) if id_type == "INTEGER" else i, "n": f"Account {i}"} for i in ids])
        c.execute(sa.text("INSERT INTO memberships VALUES (:i, :g, :a)"),
                  [{"i": int(i) if id_type == "INTEGER" else i, "g": g,
                    "a": f"10.{int(i) >> 16 & 255}.{int(i) >> 8 & 255}.{int(i) & 255}"}
                   for i in ids for g in ("Tower Hosts", "Legacy")])
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'billing.db'}"
    return str(request.getfixturevalue("pg_url" if request.param == "postgresql" else "mariadb_url"))


@pytest.mark.parametrize("id_type", ["INTEGER", "VARCHAR(20)"])
def test_scoped_read_is_the_full_read_narrowed(url: str, id_type: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [str(i) for i in range(1, 120)] + ["1042", "10420"]
    _fill(url, id_type, ids)
    monkeypatch.setattr(sql, "SCOPE_CHUNK", 7)  # several statements for one read
    source = SqlSource(url, QUERY, timeout=10, display="billing")
    try:
        full = source.read()
        wanted = frozenset({"1", "5", "1042", "77", "118", "404404"})  # 404404: not in billing
        scoped = source.read(accounts=wanted | {" 5 "})
        assert scoped.scope == wanted
        assert set(scoped.accounts) == wanted - {"404404"}
        for i in scoped.accounts:
            assert scoped.accounts[i] == full.accounts[i]
        assert scoped.rows == 2 * len(scoped.accounts)
        assert "10420" not in source.read(accounts={"1042"}).accounts
        assert len(source.read(accounts=set()).accounts) == 0
        assert full.scope is None and len(full.accounts) == len(ids)
    finally:
        source.close()


def test_columns_in_any_order_and_extra_ones_read_the_same(tmp_path: Path) -> None:
    """The six columns picked out of a row by name: in another order, with an extra
    column and with upper-case aliases, billing reads as with the plain query."""
    url = f"sqlite:///{tmp_path / 'billing.db'}"
    _fill(url, "INTEGER", [str(i) for i in range(1, 30)])
    shuffled = """SELECT g.ip AS IP_ADDRESS, 'x' AS unused, NULL AS radius_username, a.status AS status,
       a.name AS account_name, g.grp AS group_name, a.id AS account_id
FROM accounts a LEFT JOIN memberships g ON g.account = a.id"""
    plain, odd = (SqlSource(url, q, timeout=10, display="billing") for q in (QUERY, shuffled))
    try:
        a, b = plain.read(), odd.read()
        assert list(b.accounts.items()) == list(a.accounts.items()) and len(a.accounts) == 29
        assert (b.rows, b.problems) == (a.rows, a.problems)
    finally:
        plain.close()
        odd.close()
