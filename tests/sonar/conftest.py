"""Fixtures for the Sonar tests: ``make_sonar(**settings)`` starts a fake Sonar
(``provisiond.sim.sonar``) on loopback and stops it after the test."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from sonarlib import TOKEN  # noqa: E402

from provisiond.sim.sonar import FakeSonar, SonarSimSettings, World  # noqa: E402


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
