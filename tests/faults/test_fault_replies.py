"""Malformed replies from a router: reported for that router, never a crash, nothing
deleted because of them, and the next pass converges.

The simulator's ``rewrite_next`` hook mangles one reply on its way out (the router's
real table stays intact), so whatever provisiond does about the mangled reply shows up
as commands in the simulator's history.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from faultlib import Figures, Trials
from world import World

from provisiond.core.addresses import span

PRINT = "/ip/firewall/address-list/print"
ADD = "/ip/firewall/address-list/add"
Sentences = tuple[tuple[str, ...], ...]
ACCOUNTS = range(1, 13)


def first_row(change: Callable[[tuple[str, ...]], tuple[str, ...]]) -> Callable[[Sentences], Sentences]:
    """Mangle the first of provisiond's own rows in a print reply."""

    def rewrite(sentences: Sentences) -> Sentences:
        out, done = [], False
        for s in sentences:
            if s[0] == "!re" and not done and "=comment=provisiond:1 Tower 1" in s:
                s, done = change(s), True
            out.append(s)
        assert done, "the print returned no row to mangle"
        return tuple(out)

    return rewrite


def set_word(name: str, value: str | None) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    def change(s: tuple[str, ...]) -> tuple[str, ...]:
        kept = tuple(w for w in s if not w.startswith(f"={name}="))
        return kept if value is None else (*kept, f"={name}={value}")

    return change


def every_row_gets(word: str) -> Callable[[Sentences], Sentences]:
    return lambda sentences: tuple((*s, word) if s[0] == "!re" else s for s in sentences)


def fatal_midway(message: str | None) -> Callable[[Sentences], Sentences]:
    def rewrite(sentences: Sentences) -> Sentences:
        rows = [s for s in sentences if s[0] == "!re"]
        fatal = ("!fatal", message) if message is not None else ("!fatal",)
        return (*rows[: len(rows) // 2], fatal)

    return rewrite


def replaced_by(*sentences: tuple[str, ...]) -> Callable[[Sentences], Sentences]:
    return lambda _: tuple(sentences)


# (name, rewrite of the tower-hosts print, the pass must fail for core-1)
PRINT_FAULTS = [
    ("unparseable address", first_row(set_word("address", "10.0.0.300")), False),
    ("empty address", first_row(set_word("address", "")), False),
    ("no address word", first_row(set_word("address", None)), False),
    ("missing .id", first_row(set_word(".id", None)), False),
    ("unknown attribute", every_row_gets("=frobnicate=yes"), False),
    ("word without =", first_row(lambda s: (*s, "garbage")), True),
    ("!trap without message", replaced_by(("!trap",), ("!done",)), True),
    ("!trap with an unknown word", replaced_by(("!trap", "=category=2", "=why=x"), ("!done",)), True),
    ("!fatal mid-print", fatal_midway("out of memory"), True),
    ("!fatal without message", fatal_midway(None), True),
]


def seeded(world: World) -> None:
    """12 accounts on core-1's tower-hosts list, plus a hand-made entry; converged."""
    world.router("core-1")
    for i in ACCOUNTS:
        world.account(i, f"Tower {i}", groups=["Tower Hosts"], ips=[f"100.64.1.{i}"])
    world.write_config(lists=[("group", "Tower Hosts", "tower-hosts")])
    world.sims["core-1"].add_entry(list_name="tower-hosts", address="100.64.9.9", comment="NOC",
                                   dynamic=False)
    code, out, err = world.run("apply")
    assert code == 0, out + err
    world.sims["core-1"].reset_history()


def removes(world: World) -> list[str]:
    return [c.path for c in world.sims["core-1"].history if c.path.endswith(("/remove", "/set"))]


@pytest.mark.parametrize("verb", ["plan", "apply"])
def test_malformed_print_replies(world: World, figures: Figures, verb: str) -> None:
    seeded(world)
    sim = world.sims["core-1"]
    before = world.entries("core-1", "tower-hosts")
    trials = figures.trials(f"malformed print reply ({verb})")
    for name, rewrite, fails in PRINT_FAULTS:
        with trials.trial() as outcome:
            sim.rewrite_next(PRINT, rewrite)
            try:
                code, out, err = world.run(verb)
            except Exception as exc:  # noqa: BLE001 - a crash is what this test counts
                outcome["crashes"] += 1
                print(f"{name}: {verb} crashed: {exc!r}")
                continue
            text = out + err
            outcome["crashes"] += "Traceback" in text
            assert "Traceback" not in text, f"{name}: {text}"
            if fails:
                assert code == 1, f"{name}: {text}"
                assert "core-1" in text, f"{name}: the failure must name the router: {text}"
            else:
                assert code in (0, 2), f"{name}: {text}"
            if "address" in name or ".id" in name:
                assert "core-1" in err, f"{name}: the unreadable entry must be reported: {text}"
            after = world.entries("core-1", "tower-hosts")
            outcome["lost"] += len(before.keys() - after.keys())
            outcome["removes"] += len(removes(world))
            assert after.keys() == before.keys(), f"{name}: entries lost: {before.keys() - after.keys()}"
            assert removes(world) == [], f"{name}: {removes(world)}"
            world.assert_converged()
    trials.check("crashes", "removes")
    assert len(trials.outcomes) == len(PRINT_FAULTS)


@pytest.mark.parametrize(
    "reply",
    [(("!trap",), ("!done",)), (("!trap", "=category=9"), ("!done",)), (("!fatal",),),
     (("!re", "x"), ("!done",))],
    ids=["trap-no-message", "trap-category-only", "fatal-no-message", "garbage-re"],
)
def test_malformed_write_replies_fail_that_router_only(world: World, reply: Sentences) -> None:
    world.router("core-1")
    world.router("core-2")
    for i in ACCOUNTS:
        world.account(i, f"Tower {i}", groups=["Tower Hosts"], ips=[f"100.64.1.{i}"])
    world.write_config(lists=[("group", "Tower Hosts", "tower-hosts")])
    world.sims["core-1"].rewrite_next(ADD, replaced_by(*reply))
    code, out, err = world.run("apply")
    text = out + err
    assert "Traceback" not in text
    assert code == 1, text
    assert "core-1: FAILED" in out, text  # said once, on stdout (not again in the log)
    assert len(world.entries("core-2", "tower-hosts")) == len(ACCOUNTS)  # the other router
    code, out, err = world.run("apply")
    assert code == 0, out + err
    assert len(world.entries("core-1", "tower-hosts")) == len(ACCOUNTS)
    world.assert_converged()


# -- the same, generated: any malformation of any row of the print --------------------

GENERATED = Trials("hypothesis malformed print replies (plan)")


def not_an_address(text: str) -> bool:
    """Neither an address, a network nor a range: a wrong-but-valid address cannot be told
    from the truth, only garbage can."""
    return not all(span(part) is not None for part in text.split("-", 1))


def _mangle(op: str, row: tuple[str, ...], text: str) -> tuple[str, ...]:
    words = list(row)
    if op == "drop-word" and len(words) > 1:
        del words[1 + len(text) % (len(words) - 1)]
    elif op == "bad-address":
        words = [w for w in words if not w.startswith("=address=")] + [f"=address={text}"]
    elif op == "extra-word":
        words.append(f"={text.replace('=', '') or 'x'}={text}")
    elif op == "bare-word":
        words.append(text.replace("=", "") or "x")
    elif op == "odd-id":
        words = [w for w in words if not w.startswith("=.id=")] + [f"=.id={text}"]
    elif op == "foreign-comment":
        words = [w for w in words if not w.startswith("=comment=")] + [f"=comment=NOC {text}"]
    return tuple(words)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(st.tuples(st.integers(0, 12), st.sampled_from(
    ["drop-word", "bad-address", "extra-word", "bare-word", "odd-id", "foreign-comment"]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12).filter(not_an_address)),
    min_size=1, max_size=4))
def test_generated_malformed_print_replies_never_delete(world: World, ops: list[tuple[int, str, str]]) -> None:
    if "core-1" not in world.sims:
        seeded(world)
    sim = world.sims["core-1"]

    def rewrite(sentences: Sentences) -> Sentences:
        rows = list(sentences)
        for index, op, text in ops:
            at = [i for i, s in enumerate(rows) if s[0] == "!re"]
            if at:
                i = at[index % len(at)]
                rows[i] = _mangle(op, rows[i], text)
        return tuple(rows)

    before = {e["address"] for e in sim.entries("ip", "tower-hosts")}
    sim.rewrite_next(PRINT, rewrite)
    with GENERATED.trial() as outcome:
        outcome["malformations"] += len(ops)
        code, out, err = world.run("plan", "--format", "json")
        outcome["crashes"] += "Traceback" in out + err
        assert "Traceback" not in out + err
        assert code in (0, 1, 2), out + err
        if code == 1:  # reported once: in the JSON plan, with the router's name (not again in the log)
            failed = [t for t in json.loads(out)["targets"] if t.get("error")]
            assert [t["target"] for t in failed] == ["core-1"] and "core-1" in failed[0]["error"], out
        if out.strip():
            plan = json.loads(out)
            actions = [c["action"] for t in plan["targets"] for c in t.get("changes", [])]
            outcome["deletes_planned"] += sum(a in ("delete", "update") for a in actions)
            assert "delete" not in actions and "update" not in actions, (ops, out)
        after = {e["address"] for e in sim.entries("ip", "tower-hosts")}
        outcome["lost"] += len(before - after)
        assert before and after == before  # plan wrote nothing; the table is whole


def test_generated_malformed_print_figures() -> None:
    GENERATED.check("crashes", "deletes_planned")
