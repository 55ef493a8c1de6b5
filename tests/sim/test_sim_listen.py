"""listen, print follow/follow-only, /cancel, reboot, the router's cost model.

The listening side is a byte-level client (librouteros has no tags: it reads every
reply up to ``!done`` before handing any of it over, so it cannot hold a listen open);
the changes come from librouteros and from the independent ``routeros-api`` client,
as hand edits would. A listening client proves it has heard everything a change
caused by sending a tagged command on its own connection afterwards: its reply
leaves behind every change already streamed (``until_synced``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import librouteros
import pytest
import routeros_api

from provisiond.sim import RouterSim
from provisiond.sim.__main__ import build_parser, settings_from

AL = "/ip/firewall/address-list"
AL6 = "/ipv6/firewall/address-list"
USER, PASSWORD = "sim-user", "sim-pass"
RawClient = Any  # conftest.RawClient, handed out by the ``raw`` fixture


def until_synced(client: RawClient, tag: str = "sync") -> list[list[str]]:
    """Every sentence the client gets before the reply to a fresh tagged command."""
    client.send("/system/identity/print", f".tag={tag}")
    out: list[list[str]] = []
    while True:
        sentence = client.sentence()
        if sentence[:2] == ["!re", f".tag={tag}"]:
            continue
        if sentence[:2] == ["!done", f".tag={tag}"]:
            return out
        out.append(sentence)


def attrs(sentence: list[str]) -> dict[str, str]:
    """``=name=value`` words of a sentence as a dict (``.tag`` left out)."""
    return dict(word[1:].split("=", 1) for word in sentence if word.startswith("="))


def listening(raw: Callable[..., RawClient], port: int | None = None, *words: str) -> RawClient:
    client = raw(port)
    client.login()
    client.send(*words)
    assert until_synced(client) == []  # a listen answers nothing (no !done) until something changes
    return client


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def second_client(sim: RouterSim) -> Any:
    pool = routeros_api.RouterOsApiPool(sim.host, username=USER, password=PASSWORD, port=sim.port,
                                        plaintext_login=True)
    return pool


def test_listen_reports_every_change_from_other_sessions(sim: RouterSim, raw: Callable[..., RawClient],
                                                         lr: librouteros.api.Api) -> None:
    client = listening(raw, None, f"{AL}/listen", ".tag=l")
    path = lr.path("ip", "firewall", "address-list")
    ident = path.add(list="a", address="10.0.0.1/32", comment="one")
    (added,) = until_synced(client)
    assert added[:2] == ["!re", ".tag=l"]
    assert attrs(added) == sim.entries("ip")[0]  # the shape of a print row
    assert attrs(added)[".id"] == ident

    pool = second_client(sim)  # hand edits from another client reach the listener too
    try:
        resource = pool.get_api().get_resource(AL)
        resource.set(id=ident, comment="two")
        resource.call("disable", {"numbers": ident})
        resource.call("disable", {"numbers": ident})  # changes nothing: nothing reported
        changed = until_synced(client)
        assert [(s[:2], attrs(s)["comment"], attrs(s)["disabled"]) for s in changed] == [
            (["!re", ".tag=l"], "two", "false"),
            (["!re", ".tag=l"], "two", "true"),
        ]
        resource.remove(id=ident)
    finally:
        pool.disconnect()
    assert until_synced(client) == [["!re", ".tag=l", f"=.id={ident}", "=.dead=true"]]
    # The simulator's own edits (a firewall rule's dynamic entry) are reported as well.
    injected = sim.add_entry("ip", list_name="a", address="10.0.0.9")
    sim.remove_entry("ip", injected)
    assert [attrs(s) .get(".dead") for s in until_synced(client)] == [None, "true"]
    assert sim.load.events == {"ip": 6}


def test_a_scoped_listen_reports_only_its_lists(sim: RouterSim, raw: Callable[..., RawClient],
                                                lr: librouteros.api.Api) -> None:
    path = lr.path("ip", "firewall", "address-list")
    old_c = path.add(list="c", address="10.0.0.3")
    old_a = path.add(list="a", address="10.0.0.4")
    client = listening(raw, None, f"{AL}/listen", "?list=a", "?list=b", "?#|", "=.proplist=.id,list,address",
                       ".tag=7")
    in_a = path.add(list="a", address="10.0.0.1")
    path.add(list="c", address="10.0.0.5")
    in_b = path.add(list="b", address="10.0.0.2")
    path.remove(old_c)
    path.remove(old_a)
    path.update(**{".id": in_b, "list": "c"})  # moved out of the scope: no longer selected, not reported
    assert until_synced(client) == [
        ["!re", ".tag=7", f"=.id={in_a}", "=list=a", "=address=10.0.0.1"],
        ["!re", ".tag=7", f"=.id={in_b}", "=list=b", "=address=10.0.0.2"],
        ["!re", ".tag=7", f"=.id={old_a}", "=.dead=true"],
    ]


def test_removals_can_reach_every_listen(make_sim: Callable[..., RouterSim], raw: Callable[..., RawClient]) -> None:
    sim = make_sim(dead_to_all_listeners=True, version="6.49.10")
    client = listening(raw, sim.port, f"{AL}/listen", "?list=a")
    other = sim.add_entry("ip", list_name="b", address="10.0.0.1")
    sim.remove_entry("ip", other)
    assert until_synced(client) == [["!re", f"=.id={other}", "=.dead=yes"]]  # v6 wording, untagged


def test_follow_prints_then_streams_and_follow_only_only_streams(sim: RouterSim, raw: Callable[..., RawClient],
                                                                  lr: librouteros.api.Api) -> None:
    path = lr.path("ip", "firewall", "address-list")
    first = path.add(list="a", address="10.0.0.1")
    path.add(list="b", address="10.0.0.2")
    follow = raw()
    follow.login()
    follow.send(f"{AL}/print", "=follow=", "?list=a", "=.proplist=.id,address", ".tag=f")
    assert until_synced(follow) == [["!re", ".tag=f", f"=.id={first}", "=address=10.0.0.1"]]
    only = listening(raw, None, f"{AL}/print", "=follow-only=", "=.proplist=address", ".tag=o")
    empty = listening(raw, None, f"{AL}/print", "=follow=", "?list=none", ".tag=e")  # no !empty: not done
    second = path.add(list="a", address="10.0.0.3")
    path.add(list="b", address="10.0.0.4")
    assert until_synced(follow) == [["!re", ".tag=f", f"=.id={second}", "=address=10.0.0.3"]]
    assert until_synced(only) == [["!re", ".tag=o", "=address=10.0.0.3"], ["!re", ".tag=o", "=address=10.0.0.4"]]
    assert until_synced(empty) == []


def test_cancel_ends_a_listen_with_the_documented_sentences(sim: RouterSim, raw: Callable[..., RawClient]) -> None:
    client = listening(raw, None, f"{AL}/listen", ".tag=l")
    client.send("/cancel", "=tag=l", ".tag=c")
    assert [client.sentence() for _ in range(3)] == [
        ["!trap", ".tag=l", "=category=2", "=message=interrupted"],
        ["!done", ".tag=c"],
        ["!done", ".tag=l"],
    ]
    assert sim.listening == 0
    sim.add_entry("ip", list_name="a", address="10.0.0.1")
    assert until_synced(client) == []  # nothing streamed after the cancel
    # The listen is over: cancelling it again names nothing.
    assert client.call("/cancel", "=tag=l", ".tag=c") == [
        ["!trap", ".tag=c", "=message=no such command or tag", "=category=0"],
        ["!done", ".tag=c"],
    ]


def test_cancel_without_a_tag_ends_every_listen_of_the_connection(sim: RouterSim,
                                                                  raw: Callable[..., RawClient]) -> None:
    client = listening(raw, None, f"{AL}/listen", ".tag=1")
    client.send(f"{AL6}/print", "=follow-only=", ".tag=2")
    other = listening(raw, None, f"{AL}/listen", ".tag=1")  # another connection's: untouched
    client.send("/cancel")
    assert [client.sentence() for _ in range(5)] == [
        ["!trap", ".tag=1", "=category=2", "=message=interrupted"],
        ["!trap", ".tag=2", "=category=2", "=message=interrupted"],
        ["!done"],
        ["!done", ".tag=1"],
        ["!done", ".tag=2"],
    ]
    sim.add_entry("ip", list_name="a", address="10.0.0.1")
    assert until_synced(client) == []
    assert [s[:2] for s in until_synced(other)] == [["!re", ".tag=1"]]


def test_ipv6_listen(sim: RouterSim, raw: Callable[..., RawClient], lr: librouteros.api.Api) -> None:
    client = listening(raw, None, f"{AL6}/listen", ".tag=6")
    lr.path("ip", "firewall", "address-list").add(list="a", address="10.0.0.1")  # the other menu
    ident = lr.path("ipv6", "firewall", "address-list").add(list="a", address="2001:db8::1")
    (row,) = until_synced(client)
    assert (attrs(row)[".id"], attrs(row)["address"]) == (ident, "2001:db8::1/128")


def test_expiry_is_reported_as_a_removal(sim: RouterSim, raw: Callable[..., RawClient], clock: Any) -> None:
    ident = sim.add_entry("ip", list_name="a", address="10.0.0.1", timeout="10s")
    client = listening(raw, None, f"{AL}/listen", ".tag=l")
    clock.advance(11)  # the router's expiry tick notices without any client touching the table
    assert client.sentence() == ["!re", ".tag=l", f"=.id={ident}", "=.dead=true"]
    assert sim.entries("ip") == []


def test_expiry_can_go_unreported(make_sim: Callable[..., RouterSim], raw: Callable[..., RawClient],
                                  clock: Any) -> None:
    sim = make_sim(report_expiry=False, expiry_poll=0)
    sim.add_entry("ip", list_name="a", address="10.0.0.1", timeout="10s")
    kept = sim.add_entry("ip", list_name="a", address="10.0.0.2")
    client = listening(raw, sim.port, f"{AL}/listen", ".tag=l")
    clock.advance(11)
    sim.expire()
    sim.remove_entry("ip", kept)  # a removal by hand still is
    assert until_synced(client) == [["!re", ".tag=l", f"=.id={kept}", "=.dead=true"]]


def test_a_router_without_listen_refuses_it(make_sim: Callable[..., RouterSim], raw: Callable[..., RawClient]) -> None:
    sim = make_sim(listen=False)
    client = raw(sim.port)
    client.login()
    assert client.call(f"{AL}/listen", ".tag=l") == [
        ["!trap", ".tag=l", "=message=no such command", "=category=0"],
        ["!done", ".tag=l"],
    ]
    assert client.call(f"{AL}/print", "=follow-only=") == [
        ["!trap", "=message=unknown parameter follow-only", "=category=1"],
        ["!done"],
    ]
    assert client.call(f"{AL}/print", "=follow=") == [
        ["!trap", "=message=unknown parameter follow", "=category=1"],
        ["!done"],
    ]
    assert client.call(f"{AL}/print", "=count-only=") == [["!done", "=ret=0"]]


def test_reboot_renumbers_drops_connections_and_resets_uptime(sim: RouterSim, raw: Callable[..., RawClient],
                                                              clock: Any) -> None:
    saved = [sim.add_entry("ip", list_name="a", address=f"10.0.0.{i}", dynamic=False, comment=str(i))
             for i in range(1, 4)]
    sim.add_entry("ip", list_name="a", address="10.0.0.9", timeout="1h", dynamic=False)  # kept in RAM only
    sim.add_entry("ip", list_name="a", address="10.0.0.8")  # dynamic: not saved either
    client = listening(raw, None, f"{AL}/listen", ".tag=l")
    writer = raw()
    writer.login()
    clock.advance(3 * 86400)
    assert attrs(writer.call("/system/resource/print", "=.proplist=uptime")[0]) == {"uptime": "3d"}
    sim.reboot()
    assert client.is_closed() and writer.is_closed()
    assert sim.listening == 0
    rows = sim.entries("ip")
    assert [(r["address"], r["comment"]) for r in rows] == [(f"10.0.0.{i}", str(i)) for i in range(1, 4)]
    assert not {r[".id"] for r in rows} & set(saved)  # every id changed
    again = raw()
    again.login()
    assert attrs(again.call("/system/resource/print", "=.proplist=uptime")[0]) == {"uptime": "0s"}
    # Ids from *1 again: an old id now names another entry.
    sim.reboot(next_id=1)
    assert again.is_closed()
    assert [r[".id"] for r in sim.entries("ip")] == ["*1", "*2", "*3"]
    assert sim.entries("ip")[0]["comment"] == "1"


def test_reboot_with_the_router_down_for_a_while(sim: RouterSim, raw: Callable[..., RawClient]) -> None:
    client = listening(raw, None, f"{AL}/listen")
    sim.reboot(down_for=0.3)
    assert client.is_closed()
    with pytest.raises(ConnectionRefusedError):
        raw()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            raw().login()
            return
        except ConnectionRefusedError:
            time.sleep(0.05)
    pytest.fail("the router did not come back")


def test_dropping_the_listening_connections_only(sim: RouterSim, raw: Callable[..., RawClient],
                                                 lr: librouteros.api.Api) -> None:
    client = listening(raw, None, f"{AL}/listen", ".tag=l")
    assert sim.drop_listening() == 1
    assert client.is_closed()
    assert list(lr.path("system", "identity")) == [{"name": "MikroTik"}]  # the other connection stays
    assert sim.listening == 0


def test_every_print_costs_a_whole_table_scan_and_listen_none(make_sim: Callable[..., RouterSim],
                                                              raw: Callable[..., RawClient]) -> None:
    sim = make_sim(scan_cost_us=1000)  # 1 ms a row: 100 rows, 0.1 s a scan
    for i in range(100):
        sim.add_entry("ip", list_name="a" if i < 5 else "b", address=f"10.0.0.{i}", dynamic=False)
    sim.add_entry("ipv6", list_name="a", address="2001:db8::1")
    client = raw(sim.port)
    client.login()
    started = time.monotonic()
    assert len(client.call(f"{AL}/print", "?list=a")) == 6  # 5 rows returned, 100 scanned
    assert time.monotonic() - started >= 0.1
    client.call(f"{AL}/print", "=count-only=", "?=address=10.0.0.1")
    client.call(f"{AL6}/print")
    client.send(f"{AL}/listen", "?list=a", ".tag=l")
    client.send(f"{AL}/print", "=follow-only=", ".tag=o")
    assert until_synced(client) == []
    load = sim.load
    assert (load.scans, load.rows_scanned) == ({"ip": 2, "ipv6": 1}, {"ip": 200, "ipv6": 1})
    assert load.busy_seconds == pytest.approx(0.201)
    client.send(f"{AL}/print", "=follow=", ".tag=f")  # a follow's first print is a scan
    assert len(until_synced(client)) == 100
    assert sim.load.scans == {"ip": 3, "ipv6": 1}
    sim.reset_load()
    assert (sim.load.scans, sim.load.busy_seconds) == ({}, 0.0)


def test_the_cpu_is_one_queue_for_all_connections(make_sim: Callable[..., RouterSim],
                                                  raw: Callable[..., RawClient]) -> None:
    sim = make_sim(scan_cost_us=2000)
    for i in range(100):
        sim.add_entry("ip", list_name="a", address=f"10.0.0.{i}", dynamic=False)
    first, second = raw(sim.port), raw(sim.port)
    first.login()
    second.login()
    started = time.monotonic()
    first.send(f"{AL}/print", "=count-only=")  # 0.2 s of router work...
    second.send("/system/identity/print")  # costs nothing, answered at once
    assert second.reply() == [["!re", "=name=MikroTik"], ["!done"]]
    second.send(f"{AL}/print", "=count-only=", "?list=a")  # ...and this one queues with it
    assert second.reply() == [["!done", "=ret=100"]]
    assert first.reply() == [["!done", "=ret=100"]]
    # Two scans of 0.2 s, one CPU: whichever its thread reached first, both are answered
    # no sooner than 0.4 s (two CPUs would answer both in 0.2 s).
    assert time.monotonic() - started >= 0.4


def test_writes_cost_per_entry_and_listeners_hear_when_the_router_is_done(
    make_sim: Callable[..., RouterSim], raw: Callable[..., RawClient]
) -> None:
    sim = make_sim(add_cost_ms=100)
    client = listening(raw, sim.port, f"{AL}/listen", ".tag=l")
    writer = raw(sim.port)
    writer.login()
    started = time.monotonic()
    writer.send(f"{AL}/add", "=list=a", "=address=10.0.0.1")
    assert client.sentence()[:2] == ["!re", ".tag=l"]
    assert time.monotonic() - started >= 0.1
    assert writer.reply() == [["!done", "=ret=*1"]]
    writer.call(f"{AL}/add", "=list=a", "=address=10.0.0.2")
    writer.call(f"{AL}/remove", "=.id=*1,*2")
    assert (sim.load.writes, sim.load.scans) == ({"ip": 4}, {})
    assert sim.load.busy_seconds == pytest.approx(0.4)


def test_costs_are_off_by_default_and_counters_still_move(sim: RouterSim, lr: librouteros.api.Api) -> None:
    path = lr.path("ip", "firewall", "address-list")
    path.add(list="a", address="10.0.0.1")
    tuple(path)
    load = sim.load
    assert (load.scans, load.rows_scanned, load.writes, load.busy_seconds) == ({"ip": 1}, {"ip": 1}, {"ip": 1}, 0.0)


def test_load_over_the_api(make_sim: Callable[..., RouterSim], lr: librouteros.api.Api, sim: RouterSim) -> None:
    path = lr.path("ip", "firewall", "address-list")
    path.add(list="a", address="10.0.0.1")
    tuple(path)
    (row,) = lr("/sim/load/print")
    assert (row["scans-ip"], row["rows-scanned-ip"], row["writes-ip"], row["scans-ipv6"]) == (1, 1, 1, 0)
    assert tuple(lr("/sim/load/reset")) == ()
    assert next(iter(lr("/sim/load/print")))["scans-ip"] == 0


def test_cli_flags() -> None:
    default = settings_from(build_parser().parse_args([]))
    assert (default.scan_cost_us, default.add_cost_ms, default.listen, default.report_expiry) == (0, 0, True, True)
    assert (default.dead_to_all_listeners, default.dead_word) == (False, "true")
    args = build_parser().parse_args(["--scan-cost-us", "80", "--add-cost-ms", "1.25", "--no-listen",
                                      "--silent-expiry", "--dead-to-all-listeners", "--dead-value", "yes"])
    settings = settings_from(args)
    assert (settings.scan_cost_us, settings.add_cost_ms, settings.listen, settings.report_expiry) == (
        80, 1.25, False, False)
    assert (settings.dead_to_all_listeners, settings.dead_word) == (True, "yes")


def test_a_follow_started_during_writes_misses_nothing_and_repeats_nothing(
    sim: RouterSim, raw: Callable[..., RawClient]
) -> None:
    """The first rows and the stream meet exactly: every entry once, in id order (rows of
    what existed, then the adds after), though the adds race the follow's start."""
    client = raw()
    client.login()
    done = threading.Event()

    def add() -> None:
        for i in range(3000):
            sim.add_entry("ip", list_name="a", address=f"10.{i >> 8}.{i & 255}.1", dynamic=False)
        done.set()

    writer = threading.Thread(target=add)
    writer.start()
    time.sleep(0.01)
    client.send(f"{AL}/print", "=follow=", "=.proplist=.id", ".tag=f")
    done.wait(30)
    writer.join()
    ids = [int(attrs(s)[".id"][1:], 16) for s in until_synced(client)]
    assert ids == list(range(1, 3001))


def test_librouteros_holds_an_untagged_listen_through_its_sentence_calls(sim: RouterSim) -> None:
    """librouteros reads every reply up to ``!done`` before yielding, and cannot parse a
    ``.tag`` word, so a client built on it listens untagged on a connection of its own,
    writing and reading single sentences; ``/cancel`` (no tag: all) gives it back."""
    api = librouteros.connect(sim.host, USER, PASSWORD, port=sim.port, encoding="utf-8")
    other = librouteros.connect(sim.host, USER, PASSWORD, port=sim.port, encoding="utf-8")
    try:
        api.protocol.writeSentence(f"{AL}/listen", "?list=a", "=.proplist=.id,list,address,comment")
        wait_for(lambda: sim.listening == 1)  # nothing is answered to say the listen started
        ident = other.path("ip", "firewall", "address-list").add(list="a", address="10.0.0.1", comment="1042")
        assert api.readSentence() == ("!re", {".id": ident, "list": "a", "address": "10.0.0.1", "comment": 1042})
        other.path("ip", "firewall", "address-list").remove(ident)
        assert api.readSentence() == ("!re", {".id": ident, ".dead": True})
        api.protocol.writeSentence("/cancel")
        assert [api.readSentence() for _ in range(3)] == [
            ("!trap", {"category": 2, "message": "interrupted"}), ("!done", {}), ("!done", {})]
        assert tuple(api.path("system", "identity")) == ({"name": "MikroTik"},)
    finally:
        api.close()
        other.close()
