"""Shared fixtures: real PostgreSQL and MariaDB databases (see ``dbservers``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from dbservers import Server, fresh_database, mariadb_server, postgres_server  # noqa: E402


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def mariadb() -> Iterator[Server]:
    with mariadb_server() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: Server) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test."""
    with fresh_database(pg_server) as url:
        yield url


@pytest.fixture
def mariadb_url(mariadb: Server) -> Iterator[str]:
    """A fresh, empty MariaDB database for this test."""
    with fresh_database(mariadb) as url:
        yield url


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")


@pytest.fixture(autouse=True)
def _no_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests talk to loopback only: a developer's http_proxy & co. must not reroute them
    (tests that prove the code ignores a proxy set one themselves)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
