"""SonarSource against the fake Sonar: paging, the four IP owners, ids, the request
limit, and every way a read fails (nothing partial ever comes out of it)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import pytest
from sonarlib import TOKEN, populate

from provisiond.core.model import Account
from provisiond.errors import SourceError
from provisiond.sim.sonar import FakeSonar, World
from provisiond.sources.sonar import SonarError, SonarSource

MakeSonar = Callable[..., FakeSonar]


def source(sonar: FakeSonar, **kw: Any) -> SonarSource:
    kw.setdefault("timeout", 30.0)
    return SonarSource(sonar.url, TOKEN, **kw)


def test_a_thousand_accounts_over_capped_pages(make_sonar: MakeSonar) -> None:
    world = World()
    populate(world, 1000)
    sonar = make_sonar(world, page_cap=37)
    snapshot = source(sonar, page_size=100).read()
    assert sorted(snapshot.accounts) == [str(i) for i in range(1000, 2000)]
    # The fake gave 37 where 100 were asked for: the reader followed page_info, one
    # request per capped page, and never skipped or repeated an account.
    assert sonar.requests == math.ceil(1000 / 37)
    assert snapshot.accounts["1999"] == Account(
        id="1999", name="Account 999", status="Active", groups=frozenset({"Tower Hosts"}),
        addresses=("100.64.3.231",), usernames=("user1999",), active=True)
    assert snapshot.accounts["1001"].groups == frozenset()


def test_addresses_from_each_of_the_four_owners(make_sonar: MakeSonar) -> None:
    world = World()
    world.account(424, "Ridge Tower", status="Active", groups=["Tower Hosts", "Legacy Customers"])
    world.ip("Account", 424, "10.0.2.9/32")
    world.ip("Account", 424, "10.0.2.10/32", soft=True)  # handed out by DHCP: still the account's
    radius = world.radius_account(424, "ridge")
    world.ip("RadiusAccount", radius["id"], "100.64.0.7/32")
    address = world.address(424)
    item = world.inventory_item(address["id"])
    world.ip("InventoryItem", item["id"], "100.64.1.0/30")
    mac = world.field_data(item["id"], "02:00:00:00:00:01")
    world.ip("InventoryModelFieldData", mac["id"], "2001:db8::5/128")
    # Not the account's: another account's address, and a network site's.
    world.account(425, "Other")
    world.ip("Account", 425, "10.9.9.9/32")
    world.ip("NetworkSite", 424, "192.0.2.1/32")
    snapshot = source(make_sonar(world)).read()
    assert snapshot.accounts["424"] == Account(
        id="424", name="Ridge Tower", status="Active",
        groups=frozenset({"Tower Hosts", "Legacy Customers"}),
        addresses=("10.0.2.10", "10.0.2.9", "100.64.0.7", "100.64.1.0/30", "2001:db8::5/128"),
        usernames=("ridge",), active=True)
    assert snapshot.accounts["425"].addresses == ("10.9.9.9",)


@pytest.mark.parametrize("ids", ["number", "string", "mixed"])
def test_ids_as_numbers_and_as_strings(make_sonar: MakeSonar, ids: str) -> None:
    world = World()
    populate(world, 25)
    snapshot = source(make_sonar(world, ids=ids, page_cap=4), page_size=10).read()
    assert sorted(snapshot.accounts) == [str(i) for i in range(1000, 1025)]
    assert snapshot.accounts["1003"].addresses == ("100.64.0.3",)


def test_an_account_deleted_between_two_pages_loses_no_other(make_sonar: MakeSonar) -> None:
    world = World()
    populate(world, 100)
    sonar = make_sonar(world, page_cap=10)
    seen = []

    def between_pages(doc: dict[str, Any]) -> None:
        seen.append(doc)
        if len(seen) == 2:  # page 1 (1000-1009) is read; delete one of it and one ahead
            world.delete("accounts", 1004)
            world.delete("accounts", 1055)

    sonar.before_request.append(between_pages)
    snapshot = source(sonar, page_size=10).read()
    # Paging by offset would now skip 1010 (everything moved up one place). By keyset
    # nothing moves: every account still in Sonar is read, 1004 as it was on page 1.
    assert sorted(snapshot.accounts) == [str(i) for i in range(1000, 1100) if i != 1055]


def test_scoped_read_returns_just_those_accounts(make_sonar: MakeSonar) -> None:
    world = World()
    populate(world, 50)
    sonar = make_sonar(world, page_cap=2)
    snapshot = source(sonar).read(accounts={"1003", "1007", "1011", "1049", "99999", "not-an-id"})
    assert sorted(snapshot.accounts) == ["1003", "1007", "1011", "1049"]
    assert snapshot.scope == {"1003", "1007", "1011", "1049", "99999", "not-an-id"}
    assert snapshot.accounts["1049"].usernames == ("user1049",)
    assert source(sonar).read(accounts=set()).accounts == {}
    assert source(sonar).read().scope is None


def test_a_nested_list_longer_than_a_page_fails_the_read(make_sonar: MakeSonar) -> None:
    world = World()
    world.account(1, "Two groups", groups=["A", "B"])
    with pytest.raises(SonarError, match=r"account 1: account_groups has 2 entries but Sonar returned 1"):
        source(make_sonar(world, page_cap=1)).read()


def test_the_request_limit_is_paced(make_sonar: MakeSonar) -> None:
    world = World()
    populate(world, 30)
    sonar = make_sonar(world, page_cap=2, limit=5, window=1.0)
    snapshot = source(sonar, page_size=2, limit=5, window=1.0).read()
    assert len(snapshot) == 30
    assert sonar.requests == 15  # three windows' worth
    assert sonar.limited == 0  # paced: the limit answer never came


@pytest.mark.parametrize("status", [200, 429])  # Sonar does not document the status
def test_the_limit_answer_is_waited_out(make_sonar: MakeSonar, status: int,
                                        caplog: pytest.LogCaptureFixture) -> None:
    world = World()
    populate(world, 30)
    # Something else uses the token too: the fake allows fewer than the reader paces for.
    sonar = make_sonar(world, page_cap=3, limit=4, window=0.5, limit_status=status)
    with caplog.at_level(logging.WARNING, logger="provisiond.sources.sonar"):
        snapshot = source(sonar, page_size=3, limit=400, window=0.5).read()
    assert sorted(snapshot.accounts) == [str(i) for i in range(1000, 1030)]
    assert sonar.limited > 0
    assert "Request limit of 4/0.5s reached." in caplog.text


def test_the_limit_past_the_timeout_fails_the_read(make_sonar: MakeSonar) -> None:
    world = World()
    populate(world, 30)
    sonar = make_sonar(world, page_cap=3, limit=2, window=60.0)
    with pytest.raises(SonarError, match=r"Sonar request 3 \(accounts after id 1005\): Sonar's "
                                         r"request limit \(Request limit of 2/min reached.\) still "
                                         r"holds and source.timeout \(2s\) runs out") as exc:
        source(sonar, page_size=3, timeout=2.0).read()
    assert exc.value.kind == "limit"


def test_a_refused_token(make_sonar: MakeSonar) -> None:
    sonar = make_sonar(World())
    wrong = "wrong-token-that-must-not-leak"
    with pytest.raises(SourceError) as exc:
        SonarSource(sonar.url, wrong, timeout=5.0).read()
    assert str(exc.value) == ("Sonar request 1 (accounts from the first): Sonar refused the "
                              "token (HTTP 401: Unauthenticated.)")
    assert wrong not in str(exc.value)


def test_a_graphql_errors_answer(make_sonar: MakeSonar) -> None:
    world = World()
    populate(world, 5)
    sonar = make_sonar(world)

    def older_sonar(doc: dict[str, Any]) -> None:  # a Sonar without a field provisiond reads
        doc["query"] = doc["query"].replace("account_status { name activates_account }",
                                            "account_status { title activates_account }")

    sonar.before_request.append(older_sonar)
    with pytest.raises(SonarError, match=r"Sonar request 1 \(accounts from the first\): GraphQL "
                                         r"error: Cannot query field 'title' on type 'AccountStatus'"):
        source(sonar).read()


def test_no_answer_within_the_timeout(make_sonar: MakeSonar) -> None:
    import threading

    world = World()
    populate(world, 5)
    sonar = make_sonar(world)
    release = threading.Event()
    sonar.before_request.append(lambda doc: release.wait(10))
    try:
        with pytest.raises(SonarError, match=r"no answer from http://127.0.0.1:\d+/api/graphql "
                                             r"within source.timeout \(0.5s\)"):
            source(sonar, timeout=0.5).read()
    finally:
        release.set()


def test_nothing_listening(make_sonar: MakeSonar) -> None:
    sonar = make_sonar(World())
    url = sonar.url
    sonar.stop()
    with pytest.raises(SonarError, match=r"Sonar request 1 \(accounts from the first\): cannot reach "):
        SonarSource(url, TOKEN, timeout=5.0).read()
