"""The fault matrix's own bookkeeping (faultlib.Trials): a figure is summed from what the
trials observed, and a trial that failed, or no trial at all, can never read as lost=0."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from faultlib import FIGURES, Trials


@pytest.fixture
def trials() -> Iterator[Trials]:
    t = Trials("self-test")
    FIGURES.remove(t)  # not a line of the printed matrix
    yield t


def test_counts_are_summed_from_the_trials(trials: Trials) -> None:
    for lost in (0, 2, 1):
        with trials.trial() as outcome:
            outcome["lost"] += lost
            outcome["duplicates"] += 1
    assert trials.totals() == {"lost": 3, "failed": 0, "duplicates": 3}
    assert trials.line() == "self-test: trials=3 lost=3 failed=0 duplicates=3"
    with pytest.raises(AssertionError, match="'lost': 3"):
        trials.check()


def test_a_failed_trial_counts_as_failed_and_lost(trials: Trials) -> None:
    with trials.trial():
        pass
    with pytest.raises(AssertionError), trials.trial():
        raise AssertionError("a promise broken before anything was counted")
    assert trials.totals() == {"lost": 1, "failed": 1}
    with pytest.raises(AssertionError, match="'failed': 1"):
        trials.check()


def test_no_trial_is_no_figure(trials: Trials) -> None:
    assert trials.line() == "self-test: trials=0 lost=0 failed=0"
    with pytest.raises(AssertionError, match="no trial ran"):
        trials.check()


def test_a_named_count_must_be_zero(trials: Trials) -> None:
    with trials.trial() as outcome:
        outcome["crashes"] += 1
    trials.check()  # not named: reported, not asserted
    with pytest.raises(AssertionError, match="'crashes': 1"):
        trials.check("crashes")
