"""The reply rlm_sql would send (FREERADIUS.md section 1), predicted without a server."""

from __future__ import annotations

from provisiond.core.radius import effective_reply

RL = "Mikrotik-Rate-Limit"


def test_two_equals_rows_in_one_result_set_are_both_sent() -> None:
    reply, _ = effective_reply([("Mikrotik-Address-List", "=", "a"), ("Mikrotik-Address-List", "=", "b")], [], {})
    assert reply == {"Mikrotik-Address-List": ["a", "b"]}


def test_equals_never_overwrites_an_earlier_source_colon_equals_replaces_plus_equals_adds() -> None:
    groups = [(1, "g")]
    assert effective_reply([(RL, "=", "5M")], groups, {"g": [(RL, "=", "1M")]})[0] == {RL: ["5M"]}
    assert effective_reply([(RL, "=", "5M")], groups, {"g": [(RL, ":=", "1M")]})[0] == {RL: ["1M"]}
    assert effective_reply([(RL, "=", "5M")], groups, {"g": [(RL, "+=", "1M")]})[0] == {RL: ["5M", "1M"]}


def test_attribute_names_are_case_insensitive() -> None:
    groups = [(1, "a"), (2, "b")]
    rows = {"a": [("mikrotik-rate-limit", "=", "1M"), ("fall-through", "=", "yes")], "b": [(RL, "=", "2M"), ("Session-Timeout", "=", "60")]}
    reply, used = effective_reply([], groups, rows)
    assert reply == {RL: ["1M"], "Session-Timeout": ["60"]}
    assert used == {"a", "b"}


def test_a_move_between_groups_takes_the_stronger_mode_of_both(tmp_path: object) -> None:
    from provisiond.targets.radius import RadiusTarget
    from provisiond.targets.radius.sessions import UserPolicy as _UserPolicy

    t = RadiusTarget("sqlite://", groups=["legacy", "tower"], ledger=None,  # type: ignore[arg-type]
                     coa_mode="coa", coa_modes={"legacy": "disconnect", "tower": "coa"})
    moved = _UserPolicy(groups_before=[(1, "legacy")], groups_after=[(2, "tower")])
    assert t._mode_for(moved) == "disconnect"
    joined = _UserPolicy(groups_before=[], groups_after=[(2, "tower")])
    assert t._mode_for(joined) == "coa"
    t.close()
