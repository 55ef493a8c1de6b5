"""Which run the daemon makes (``daemon.mirrors.choose``) and how often a full pass is due
(``Cadence``): a backstop while routers are mirrored by listen, the interval otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisiond import settings as settings_mod
from provisiond.core.scope import Pending
from provisiond.daemon.mirrors import BACKSTOP_MIN, Cadence, Mirrors, choose
from provisiond.settings import RouterSettings
from provisiond.targets.routeros.follow import Follower
from provisiond.targets.routeros.mirror import Mirror


def _settings(tmp_path: Path, daemon: str = "") -> settings_mod.Settings:
    path = tmp_path / "p.toml"
    path.write_text(f"""
[source]
url = "sqlite:///{tmp_path}/b.db"
query = "SELECT 1 AS account_id, 'a' AS account_name, 'g' AS group_name, '10.0.0.1' AS address"
[[router]]
name = "core-1"
host = "127.0.0.1"
username = "u"
password = "p"
[[address_list]]
group = "g"
list = "l"
[daemon]
{daemon}
""")
    return settings_mod.load(path)


def _mirrors(states: dict[str, str], fill_seconds: float = 1.0) -> Mirrors:
    mirrors = Mirrors(lambda *_: None)
    for name, state in states.items():
        router = RouterSettings(name=name, host="127.0.0.1", username="u", password="p")
        mirror = Mirror(name, ["l"], "provisiond:")
        mirror.state = state
        follower = Follower(router, mirror, on_drift=lambda *_: None)  # never started
        follower.fill_seconds = fill_seconds
        mirrors._followers[name] = ((), follower)  # noqa: SLF001 - no thread, no router
    return mirrors


FED = 'notify_channel = "provisiond"'  # billing changes arrive as events


def test_with_listens_up_the_full_pass_is_a_backstop_and_an_interval_run_does_nothing(
        tmp_path: Path) -> None:
    cadence = Cadence(_settings(tmp_path, FED))
    live = _mirrors({"core-1": "live", "core-2": "live"})
    assert choose(False, Pending(), 120.0, cadence, live, 500) is None
    assert cadence.backstop(True) == BACKSTOP_MIN
    assert choose(False, Pending(), BACKSTOP_MIN, cadence, live, 500) == (None, None)
    slow = _mirrors({"core-1": "live"}, fill_seconds=40.0)  # 50 x 40 s
    assert choose(False, Pending(), BACKSTOP_MIN, cadence, slow, 500) is None
    assert cadence.backstop(True) == 2000.0


def test_a_router_whose_listen_is_down_gets_its_own_full_pass_at_the_interval(tmp_path: Path) -> None:
    clock = [1000.0]
    cadence = Cadence(_settings(tmp_path, FED), clock=lambda: clock[0])
    some = _mirrors({"core-1": "live", "core-2": "down", "core-3": "refused"})
    assert choose(False, Pending(), 120.0, cadence, some, 500) == (None, frozenset({"core-2", "core-3"}))
    # Requests every few seconds do not starve it: it is served once an interval.
    served = []
    for second in range(1, 130):
        clock[0] = 1000.0 + second
        pending = Pending()
        pending.add(frozenset({"1042"}))
        chosen = choose(True, pending, 120.0 + second, cadence, some, 500)
        if chosen == (None, frozenset({"core-2", "core-3"})):
            served.append(second)
        else:
            assert chosen == (frozenset({"1042"}), None)
    assert served == [60, 120]


def test_without_a_billing_change_feed_full_passes_stay_at_the_interval(tmp_path: Path) -> None:
    # No NOTIFY channel, no webhook: only a full pass reads billing.
    cadence = Cadence(_settings(tmp_path))
    live = _mirrors({"core-1": "live"})
    assert cadence.backstop(True) == 60.0
    assert choose(False, Pending(), 61.0, cadence, live, 500) == (None, None)
    assert choose(False, Pending(), 30.0, cadence, live, 500) is None


def test_with_no_listen_up_every_interval_run_is_full_as_before(tmp_path: Path) -> None:
    cadence = Cadence(_settings(tmp_path))
    for mirrors in (_mirrors({"core-1": "refused"}), Mirrors(lambda *_: None, enabled=False)):
        assert cadence.backstop(False) == 60.0
        assert choose(False, Pending(), 61.0, cadence, mirrors, 500) == (None, None)


@pytest.mark.parametrize("listening", [True, False])
def test_an_interval_the_operator_set_is_the_backstop(tmp_path: Path, listening: bool) -> None:
    cadence = Cadence(_settings(tmp_path, 'interval = "5m"'))
    assert cadence.backstop(listening) == 300.0


def test_requests_run_between_backstops(tmp_path: Path) -> None:
    cadence = Cadence(_settings(tmp_path, FED))
    live = _mirrors({"core-1": "live"})
    pending = Pending()
    pending.add(frozenset({"1042"}))
    assert choose(True, pending, 10.0, cadence, live, 500) == (frozenset({"1042"}), None)
    pending.add_targets(frozenset({"core-1"}))
    assert choose(True, pending, 10.0, cadence, live, 500) == (None, frozenset({"core-1"}))
