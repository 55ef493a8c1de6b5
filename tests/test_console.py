"""``cli.console``: which style each line shape of plan / apply / explain output gets, and
that a disabled Painter returns the text byte for byte."""

from __future__ import annotations

import pytest

from provisiond.cli.console import Painter, style_of


@pytest.mark.parametrize(("line", "style"), [
    ("core-1 (routeros): 2 to create, 1 to update, 1 to delete", "header"),
    ("ipam (state store): 7 to create", "header"),
    ('account 1042 "Ridge Tower" (billing):', "header"),
    ('    + tower-hosts 100.64.10.5  acct 1042 "Ridge Tower"', "create"),
    ("    - tower-hosts 100.64.10.9  acct 1050", "delete"),
    ('    ~ tower-hosts 100.64.10.6  acct 1043  (comment: "a" -> "b")', "update"),
    ("    ! tower-hosts 100.64.10.7  acct 1044: conflict: entry not created by provisiond", "conflict"),
    ("  ! delinquent 100.64.10.9  acct 1042  conflict: entry not created by provisiond", "conflict"),
    ("  + cc-pending 100.64.10.5  acct 1042  missing: will be created", "create"),
    ("  = tower-hosts 100.64.0.1  acct 1  present", None),
    ("  > disconnect bob session 81a00005 via NAS 192.0.2.1", "followup"),
    ("  REFUSED: apply will refuse this without --force: core-1: …", "refused"),
    ("core-1: REFUSED: core-1: tower-hosts: 9 deletes of 12 existing entries", "refused"),
    ("core-2: FAILED: core-2: connect failed: timed out", "failed"),
    ("core-1: FAILED: 1 created, 0 updated, 0 deleted, 1 failed, 0 conflict(s)", "failed"),
    ("  failed: core-1: add l 10.1.0.0 refused: failure: out of memory", "failed"),
    ("  error: core-1: connection lost", "failed"),
    ("  conflict: tower-hosts 10.1.0.1: failure: already have such entry", "conflict"),
    ("core-1: ok: 3 created, 0 updated, 0 deleted, 0 failed, 0 conflict(s)", "ok"),
    ("Plan: 2 to create, 1 to update, 1 to delete on 1 of 1 target(s).", "summary"),
    ("Apply: ok in 0.5s.", "summary"),
    ("Apply: FAILED in 0.5s.", "failed"),
    ("Scope: core-* -> core-1 (other targets not planned nor applied)", "summary"),
    ("Explain: account 1: converged on every target (exit 0).", "summary"),
    ("note: skipped billing row: account 7: ip_address 'x' does not parse", "note"),
    ("  warning: skipped billing row: ip_address 'x' does not parse", "note"),
    ("    … 27 more (demo --full shows every line)", "more"),
    ("  tower-hosts", None),
])
def test_style_of_each_line_shape(line: str, style: str | None) -> None:
    assert style_of(line) == style


def test_painter_off_is_the_identity_and_on_wraps_whole_lines() -> None:
    text = "core-1 (routeros): 1 to create, 0 to update, 0 to delete\n  l\n    + l 10.0.0.1\nPlan: 1.\n"
    assert Painter(False).text(text) == text
    on = Painter(True).text(text)
    assert on.splitlines() == ["\x1b[1mcore-1 (routeros): 1 to create, 0 to update, 0 to delete\x1b[0m",
                               "  l", "\x1b[32m    + l 10.0.0.1\x1b[0m", "\x1b[1mPlan: 1.\x1b[0m"]
    assert on.endswith("\n")
