"""Fixtures for the daemon tests: billing on PostgreSQL, a simulated router, and a
factory that starts ``provisiond run`` subprocesses (stopped after the test)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import psycopg
from harness import Billing, DaemonProc, new_password, pg_kwargs, write_config

from provisiond.state.store import StateStore

from provisiond.sim import RouterSim, SimSettings


@pytest.fixture
def url(pg_url: str) -> str:
    """A PostgreSQL state store with its schema, as a daemon leaves it (the members tests)."""
    StateStore.open(pg_url).close()
    return pg_url


@pytest.fixture
def admin(url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection of the test's own to that store."""
    with psycopg.connect(**pg_kwargs(url)) as conn:
        yield conn


@pytest.fixture
def billing(pg_url: str) -> Billing:
    return Billing(pg_url)


@pytest.fixture
def password(tmp_path: Path) -> tuple[str, Path]:
    return new_password(tmp_path)


@pytest.fixture
def make_router(password: tuple[str, Path]) -> Iterator[Callable[..., RouterSim]]:
    started: list[RouterSim] = []

    def make(**overrides: Any) -> RouterSim:
        values: dict[str, Any] = {"username": "admin", "password": password[0],
                                  "log_commands": False}
        values.update(overrides)
        sim = RouterSim(SimSettings(**values)).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def router(make_router: Callable[..., RouterSim]) -> RouterSim:
    return make_router()


@pytest.fixture
def config(tmp_path: Path, billing: Billing, router: RouterSim,
           password: tuple[str, Path]) -> Callable[..., Path]:
    """``config(**daemon_settings)`` writes a config for billing + router."""

    def make(*, daemon: dict[str, Any] | None = None, **kw: Any) -> Path:
        return write_config(tmp_path, billing_url=kw.pop("billing_url", billing.url),
                            router_port=kw.pop("router_port", router.port),
                            password_file=password[1], daemon=daemon, **kw)

    return make


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., DaemonProc]]:
    procs: list[DaemonProc] = []

    def run(config: Path, **kw: Any) -> DaemonProc:
        p = DaemonProc(config, log=tmp_path / f"daemon-{len(procs)}.log", **kw)
        procs.append(p)
        return p

    yield run
    for p in procs:
        p.stop()
