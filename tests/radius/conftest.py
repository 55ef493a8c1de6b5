"""Fixtures for the RADIUS tests: FreeRADIUS schemas in fresh databases, a real FreeRADIUS."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from freeradius import FreeRadius, freeradius, load_schema  # noqa: E402
from helpers import MemoryLedger  # noqa: E402

from provisiond.targets.radius import RadiusTarget  # noqa: E402


@pytest.fixture
def radius_pg(pg_url: str) -> str:
    """A fresh PostgreSQL database with FreeRADIUS's postgresql/schema.sql loaded."""
    load_schema(pg_url)
    return pg_url


@pytest.fixture
def radius_mariadb(mariadb_url: str) -> str:
    """A fresh MariaDB database with FreeRADIUS's mysql/schema.sql loaded."""
    load_schema(mariadb_url)
    return mariadb_url


@pytest.fixture
def radius_sqlite(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'radius.db'}"
    load_schema(url)
    return url


@pytest.fixture(params=["postgresql", "mariadb", "sqlite"])
def radius_url(request: pytest.FixtureRequest) -> str:
    """The same test against each dialect's FreeRADIUS schema."""
    name = {"postgresql": "radius_pg", "mariadb": "radius_mariadb", "sqlite": "radius_sqlite"}[request.param]
    return str(request.getfixturevalue(name))


@pytest.fixture
def ledger() -> MemoryLedger:
    return MemoryLedger()


@pytest.fixture
def target(radius_url: str, ledger: MemoryLedger) -> Iterator[RadiusTarget]:
    t = RadiusTarget(radius_url, groups=["legacy", "tower"], ledger=ledger, timeout=10)
    yield t
    t.close()


@pytest.fixture
def fr(radius_pg: str) -> Iterator[FreeRadius]:
    """A real FreeRADIUS 3.2 serving the ``radius_pg`` database."""
    with freeradius(radius_pg) as server:
        yield server
