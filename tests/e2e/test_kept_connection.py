"""The router connection a daemon keeps from pass to pass, after a pass that failed
while the router's answers were still on their way.

A full pass sends the router's prints before it reads billing. When billing fails,
those answers must not stay on the kept connection: the next pass would read them as
its own, see an entry as it was before a hand edit, and delete it. Real parts: one
``PassRunner`` (one Reconciler, one connection) across passes, PostgreSQL billing that
times out, the RouterOS simulator over a slow link, the hand edit made over the API.
And the second line of defence: tags never restart on a session, so a reply left over
from an earlier run is a protocol error (the router fails, the connection is closed),
never an answer credited to a new command.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import librouteros
import pytest
from world import ROUTER_PASSWORD, ROUTER_USER, World

from provisiond import settings as settings_mod
from provisiond.daemon.metrics import Health, Metrics
from provisiond.daemon.passes import PassRunner
from provisiond.targets.routeros import pipeline

KEPT, DROPPED = "100.64.60.1", "100.64.60.2"


@contextmanager
def billing_locked(world: World) -> Iterator[None]:
    """Another session holds an exclusive lock on the accounts table: reads time out."""
    with world.engine.connect() as conn:
        conn.exec_driver_sql("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
        yield
        conn.rollback()


def hand_edit(world: World, address: str, comment: str) -> None:
    """What an engineer does in WinBox: the same entry (same .id), another comment."""
    sim = world.sims["core-1"]
    api = librouteros.connect("127.0.0.1", ROUTER_USER, ROUTER_PASSWORD, port=sim.port)
    try:
        path = api.path("ip", "firewall", "address-list")
        ref = next(r[".id"] for r in path.select(".id", "address") if r["address"] == address)
        path.update(**{".id": ref, "comment": comment})
    finally:
        api.close()


def test_a_failed_billing_read_leaves_no_answers_on_the_kept_connection(world: World) -> None:
    world.router("core-1", command_latency=0.05)  # the answers are in flight when billing fails
    world.account(1600, "Kept Tower", groups=["Tower Hosts"], ips=[KEPT])
    world.account(1601, "Dropped Tower", groups=["Tower Hosts"], ips=[DROPPED])
    others = {f"100.64.60.{i}" for i in range(3, 7)}
    for i, address in enumerate(sorted(others)):
        world.account(1602 + i, f"Other Tower {i}", groups=["Tower Hosts"], ips=[address])
    runner = PassRunner(settings_mod.load(world.write_config(source_extra='timeout = "1s"')),
                        metrics=Metrics(), health=Health(max_age=600))
    try:
        first = runner.run_once()
        assert (first.result, first.changes) == ("ok", 6), first.status
        ids = {a: e[".id"] for a, e in world.entries("core-1", "tower-hosts").items()}

        with billing_locked(world):
            failed = runner.run_once()
        assert failed.result == "error" and "billing read failed" in failed.status, failed.status

        hand_edit(world, KEPT, "hand-made: keep")
        world.remove_account(1600)  # billing no longer wants it: provisiond's would go
        world.remove_account(1601)  # this one is still provisiond's: it goes

        third = runner.run_once()
        assert third.result == "ok", third.status
        left = world.entries("core-1", "tower-hosts")
        assert set(left) == {KEPT} | others
        assert (left[KEPT][".id"], left[KEPT]["comment"]) == (ids[KEPT], "hand-made: keep")
        assert third.changes == 1  # the delete of DROPPED, credited to its own command

        fourth = runner.run_once()
        assert (fourth.result, fourth.changes) == ("ok", 0), fourth.status
    finally:
        runner.close()
    assert world.entries("core-1", "tower-hosts")[KEPT]["comment"] == "hand-made: keep"
    world.assert_converged()


class _Replay:
    """A ``pipeline.Wire`` whose replies are queued by hand (the stale ones first)."""

    def __init__(self, replies: list[list[str]]) -> None:
        self.replies = replies
        self.sent: list[bytes] = []

    def encode(self, words: Sequence[str]) -> bytes:
        return "\0".join(words).encode()

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def read_sentence(self) -> Sequence[str]:
        return self.replies.pop(0)

    def read_dones(self, most: int) -> Sequence[tuple[bytes, str]]:
        return ()

    def buffered(self) -> int:
        return 0


def test_an_answer_left_from_an_earlier_run_is_a_protocol_error_not_an_answer() -> None:
    tags = itertools.count()  # one counter per session, as RouterTarget keeps it
    answers: list[tuple[str, str]] = []

    def answered(token: str, answer: pipeline.Answer) -> None:
        answers.append((token, answer.ret))

    wire = _Replay([["!done", "=ret=*1", ".tag=0"]])
    pipeline.run(wire, [("first", ["/x/add"])], window=4, on_answer=answered, tags=tags)
    # The next run on the same session is answered with a reply meant for tag 0.
    wire.replies = [["!done", "=ret=*1", ".tag=0"], ["!done", "=ret=*2", ".tag=1"]]
    with pytest.raises(pipeline.UnexpectedReply, match="tag 0, which is not in flight"):
        pipeline.run(wire, [("second", ["/x/add"])], window=4, on_answer=answered, tags=tags)
    assert answers == [("first", "*1")]
