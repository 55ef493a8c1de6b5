"""Fixtures for the Sonar tests: ``make_sonar(**settings)`` starts a fake Sonar
(``provisiond.sim.sonar``) on loopback and stops it after the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from provisiond.sim.sonar import FakeSonar, SonarSimSettings, World

TOKEN = "sonar-test-token-0123456789abcdef"


@pytest.fixture
def make_sonar() -> Iterator[Callable[..., FakeSonar]]:
    started: list[FakeSonar] = []

    def make(world: World | None = None, **settings: Any) -> FakeSonar:
        settings.setdefault("token", TOKEN)
        sonar = FakeSonar(SonarSimSettings(**settings), world).start()
        started.append(sonar)
        return sonar

    yield make
    for sonar in started:
        sonar.stop()


def populate(world: World, count: int, *, first: int = 1000) -> None:
    """``count`` accounts: one address each on the account, every third a Tower Host."""
    for i in range(count):
        account = first + i
        world.account(account, f"Account {i}", groups=["Tower Hosts"] if i % 3 == 0 else [])
        world.ip("Account", account, f"100.64.{i >> 8}.{i & 255}/32")
        world.radius_account(account, f"user{account}")
