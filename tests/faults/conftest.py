"""Fixtures for the fault matrix: the end-to-end ``world`` (billing on PostgreSQL,
simulated routers, the CLI) and ``figures``, the record of each fault's trials and
losses, printed as one line per fault at the end of the run."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "e2e"))
sys.path.insert(0, str(Path(__file__).parent.parent / "daemon"))
sys.path.insert(0, str(Path(__file__).parent))

from faultlib import FIGURES, Figures  # noqa: E402
from world import World  # noqa: E402


@pytest.fixture
def figures() -> Figures:
    return Figures()


@pytest.fixture
def world(tmp_path: Path, pg_url: str) -> Iterator[World]:
    w = World(tmp_path, pg_url)
    try:
        yield w
    finally:
        w.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("fault matrix")
        for trials in FIGURES:
            terminalreporter.write_line(trials.line())
