"""``daemon.sharing``: a shared member's side of the daemon, in one process against the
real PostgreSQL (the relay between members, the gates' bookkeeping, the settle after a
claim). The multi-process behaviour is in test_shared_members.py."""

from __future__ import annotations

import threading
from pathlib import Path

from harness import wait_until

from provisiond import settings as settings_mod
from provisiond.daemon.members import GLOBAL
from provisiond.daemon.sharing import PAYLOAD_MAX, Sharing, _chunks, resources
from provisiond.state.store import StateStore


class Asked:
    """The daemon's pass requests, as a Sharing makes them."""

    def __init__(self) -> None:
        self.passes: list[frozenset[str] | None] = []
        self.targets: list[frozenset[str]] = []
        self.lock = threading.Lock()

    def request_pass(self, accounts: frozenset[str] | None = None, *, reason: str = "",
                     asked: str | None = None) -> None:
        with self.lock:
            self.passes.append(accounts)

    def request_targets(self, names: frozenset[str], *, asked: str | None = None) -> None:
        with self.lock:
            self.targets.append(names)


def _settings(tmp_path: Path, state_url: str, member: str) -> settings_mod.Settings:
    path = tmp_path / f"{member}.toml"
    routers = "".join(f"""
[[router]]
name = "core-{i}"
host = "127.0.0.1"
username = "u"
password = "p"
""" for i in range(3))
    path.write_text(f"""
[source]
url = "sqlite:///{tmp_path}/b.db"
query = "SELECT 1 AS account_id, 'a' AS account_name, 'g' AS group_name, '10.0.0.1' AS address"
[state]
url = "{state_url}"
{routers}
[[router]]
name = "spare"
host = "127.0.0.1"
username = "u"
password = "p"
[[address_list]]
group = "g"
list = "l"
routers = ["core-*"]
[daemon]
members = "shared"
member_id = "{member}"
member_ttl = "1.5s"
""")
    return settings_mod.load(path)


def test_the_shared_resources_are_the_routers_a_list_covers_and_global(tmp_path: Path, pg_url: str) -> None:
    s = _settings(tmp_path, pg_url, "a")
    assert resources(s) == ["core-0", "core-1", "core-2", GLOBAL]  # "spare" has no list


def test_long_lists_of_accounts_go_in_several_notifications() -> None:
    ids = [str(100000 + i) for i in range(5000)]
    chunks = list(_chunks(ids))
    assert len(chunks) > 1 and all(len(c) <= PAYLOAD_MAX for c in chunks)
    assert ",".join(chunks).split(",") == ids


def test_an_event_one_member_heard_reaches_the_others_not_itself(tmp_path: Path, pg_url: str) -> None:
    StateStore.open(pg_url).close()
    heard = {m: Asked() for m in "ab"}
    members = {m: Sharing(_settings(tmp_path, pg_url, m), heard[m]) for m in "ab"}
    for s in members.values():
        s.start()
    try:
        wait_until(lambda: all(s._relay.connected for s in members.values()), what="relays listening")
        members["a"].relay(frozenset({"1001", "1002"}))
        members["a"].relay(None)
        members["a"].relay(None, frozenset({"core-1"}))
        wait_until(lambda: len(heard["b"].passes) >= 2 and heard["b"].targets, what="b heard a's events")
        with heard["b"].lock:
            assert frozenset({"1001", "1002"}) in heard["b"].passes and None in heard["b"].passes
            assert heard["b"].targets == [frozenset({"core-1"})]
        with heard["a"].lock:  # its own events are not heard back (claims' passes aside)
            assert frozenset({"1001", "1002"}) not in heard["a"].passes
            assert frozenset({"core-1"}) not in heard["a"].targets
    finally:
        for s in members.values():
            s.stop()


def test_a_claim_is_handed_over_only_once_the_write_under_way_ended(tmp_path: Path, pg_url: str) -> None:
    """``busy``: a gate said yes and its apply has not ended; the Membership waits for it
    before it releases a resource another member asked for."""
    StateStore.open(pg_url).close()
    asked = Asked()
    a = Sharing(_settings(tmp_path, pg_url, "a"), asked).start()
    b: Sharing | None = None
    try:
        wait_until(lambda: a.owned() == {"core-0", "core-1", "core-2", GLOBAL}, what="a owns all")
        # The settle: the gained claims are read by one pass, after a short wait.
        wait_until(lambda: asked.passes == [None], what="a full pass for the global claim")
        busy = sorted(a.owned())
        assert all(a.ask(f"{r}" if r != GLOBAL else "radius") for r in busy)
        assert all(a.busy(r) for r in busy)
        b = Sharing(_settings(tmp_path, pg_url, "b"), Asked()).start()
        # b asks; a stops writing what it hands over (its gates say no at once) ...
        wait_until(lambda: a.owned() != set(busy), what="a draining")
        handed = set(busy) - a.owned()
        assert handed and not any(a.ask(r if r != GLOBAL else "radius") for r in handed)
        # ... but does not release it while the write under way has not ended.
        threading.Event().wait(1.0)
        assert b.owned().isdisjoint(handed)
        for r in handed:
            a.done(r if r != GLOBAL else "radius")
        wait_until(lambda: handed <= b.owned(), what="b took over once a's writes ended")
        assert a.owned().isdisjoint(b.owned())
    finally:
        if b is not None:
            b.stop()
        a.stop()
