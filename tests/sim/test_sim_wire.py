"""The simulator at the byte level: framing, login, tags, traps, !empty, /quit."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from provisiond.sim import RouterSim
from provisiond.sim.routeros.codec import encode_length, encode_length_5

# What conftest.py configures (test modules do not import conftest: its module
# name is shared with other test directories).
AL = "/ip/firewall/address-list"
USER, PASSWORD = "sim-user", "sim-pass"
RawClient = Any  # conftest.RawClient, handed out by the ``raw`` fixture


def test_plain_login_then_identity(make_sim: Callable[..., RouterSim], raw: Callable[..., RawClient]) -> None:
    sim = make_sim(identity="core-1")
    client = raw(sim.port)
    client.login()
    assert client.call("/system/identity/print") == [["!re", "=name=core-1"], ["!done"]]


def test_bad_login_is_trap_then_done_and_connection_stays(raw: Callable[..., RawClient]) -> None:
    client = raw()
    reply = client.call("/login", f"=name={USER}", "=password=wrong")
    assert reply == [["!trap", "=message=invalid user name or password (6)"], ["!done"]]
    client.login()


def test_command_before_login(raw: Callable[..., RawClient]) -> None:
    client = raw()
    assert client.call(f"{AL}/print") == [["!trap", "=message=not logged in"], ["!done"]]


def test_too_many_sentences_before_login_is_fatal(make_sim: Callable[..., RouterSim], raw: Callable[..., RawClient]) -> None:
    sim = make_sim(max_pre_login_sentences=3)
    client = raw(sim.port)
    for _ in range(3):
        client.call("/system/identity/print")
    assert client.call("/system/identity/print") == [["!fatal", "too many commands before login"]]
    assert client.is_closed()


def test_over_long_word_before_login_closes(raw: Callable[..., RawClient]) -> None:
    client = raw()
    client.send("/login", "=name=" + "x" * 5000)
    assert client.is_closed()


@pytest.mark.parametrize("size", [0x7F, 0x80, 0x3FFF, 0x4000, 0x20000])
def test_every_length_prefix_size_is_read(raw: Callable[..., RawClient], size: int) -> None:
    client = raw()
    client.login()
    comment = "c" * (size - len("=comment="))
    word = f"=comment={comment}".encode()
    assert len(word) == size
    parts = [b"\x1d/ip/firewall/address-list/add", b"\x09=list=big", b"\x10=address=1.2.3.4"]
    client.send_bytes(b"".join(parts) + encode_length(size) + word + b"\x00")
    assert client.reply() == [["!done", "=ret=*1"]]
    assert client.call(f"{AL}/print", "=.proplist=comment") == [["!re", f"=comment={comment}"], ["!done"]]


def test_five_byte_length_prefix_is_accepted(raw: Callable[..., RawClient]) -> None:
    client = raw()
    client.login()
    word = b"/system/identity/print"
    client.send_bytes(encode_length_5(len(word)) + word + b"\x00")
    assert client.reply() == [["!re", "=name=MikroTik"], ["!done"]]


@pytest.mark.parametrize("control", [b"\xf8", b"\xfe", b"\xff"])
def test_control_byte_closes_the_connection(raw: Callable[..., RawClient], control: bytes) -> None:
    client = raw()
    client.login()
    client.send_bytes(control)
    assert client.is_closed()


def test_empty_sentences_are_ignored(raw: Callable[..., RawClient]) -> None:
    client = raw()
    client.send_bytes(b"\x00\x00")
    client.login()
    client.send_bytes(b"\x00")
    assert client.call("/system/identity/print") == [["!re", "=name=MikroTik"], ["!done"]]


def test_unknown_commands(raw: Callable[..., RawClient]) -> None:
    client = raw()
    client.login()
    assert client.call("/foo/bar/print") == [["!trap", "=message=no such command prefix", "=category=0"], ["!done"]]
    assert client.call(f"{AL}/frobnicate") == [["!trap", "=message=no such command", "=category=0"], ["!done"]]


def test_tags_are_echoed_on_every_reply_and_pipelining_works(raw: Callable[..., RawClient]) -> None:
    client = raw()
    client.login()
    client.send(f"{AL}/add", "=list=t", "=address=1.1.1.1", ".tag=a")
    client.send(f"{AL}/add", "=list=t", "=address=1.1.1.1", ".tag=b")
    client.send(f"{AL}/print", "=.proplist=address", "?list=t", ".tag=c")
    client.send(f"{AL}/print", "?list=none", ".tag=d")
    assert client.reply() == [["!done", ".tag=a", "=ret=*1"]]
    assert client.reply() == [
        ["!trap", ".tag=b", "=message=failure: already have such entry"],
        ["!done", ".tag=b"],
    ]
    assert client.reply() == [["!re", ".tag=c", "=address=1.1.1.1"], ["!done", ".tag=c"]]
    assert client.reply() == [["!empty", ".tag=d"], ["!done", ".tag=d"]]


def test_no_tag_words_without_a_tagged_command(raw: Callable[..., RawClient]) -> None:
    client = raw()
    client.login()
    client.call(f"{AL}/add", "=list=t", "=address=1.1.1.1")
    for sentence in client.call(f"{AL}/print") + client.call(f"{AL}/set", "=.id=*99", "=comment=x"):
        assert not any(word.startswith(".tag") for word in sentence)


def test_cancel(raw: Callable[..., RawClient]) -> None:
    client = raw()
    client.login()
    client.call("/system/identity/print", ".tag=1")
    assert client.call("/cancel", "=tag=1", ".tag=2") == [
        ["!trap", ".tag=2", "=message=no such command or tag", "=category=0"],
        ["!done", ".tag=2"],
    ]
    assert client.call("/cancel") == [["!done"]]


@pytest.mark.parametrize(("version", "empty"), [("7.18.2 (stable)", True), ("7.18", True), ("7.17.2 (stable)", False), ("6.49.10", False)])
def test_empty_reply_depends_on_version(make_sim: Callable[..., RouterSim], raw: Callable[..., RawClient], version: str, empty: bool) -> None:
    sim = make_sim(version=version)
    client = raw(sim.port)
    client.login()
    expected = [["!empty"], ["!done"]] if empty else [["!done"]]
    assert client.call(f"{AL}/print", "?list=nothing") == expected
    assert client.call(f"{AL}/print", "=count-only=", "?list=nothing") == [["!done", "=ret=0"]]
    assert client.call("/system/resource/print", "=.proplist=version,board-name") == [
        ["!re", f"=version={version}", "=board-name=CHR"],
        ["!done"],
    ]


def test_quit_is_fatal_and_closes(raw: Callable[..., RawClient]) -> None:
    client = raw()
    client.login()
    assert client.call("/quit") == [["!fatal", "session terminated on request"]]
    assert client.is_closed()


def test_legacy_md5_login(make_sim: Callable[..., RouterSim], raw: Callable[..., RawClient]) -> None:
    sim = make_sim(legacy_login=True, login_challenge="abc123", password="passTest")
    client = raw(sim.port)
    assert client.call("/login") == [["!done", "=ret=abc123"]]
    assert client.call("/login", f"=name={USER}", "=response=00deadbeef") == [
        ["!trap", "=message=cannot log in"],
        ["!done"],
    ]
    assert client.call("/login") == [["!done", "=ret=abc123"]]
    assert client.call("/login", f"=name={USER}", "=response=0021277bff9ac7caf06aa608e46616d47f") == [["!done"]]
    assert client.call("/system/identity/print") == [["!re", "=name=MikroTik"], ["!done"]]


def test_legacy_mode_answers_plain_login_with_a_challenge(make_sim: Callable[..., RouterSim], raw: Callable[..., RawClient]) -> None:
    sim = make_sim(legacy_login=True, login_challenge="abc123")
    client = raw(sim.port)
    assert client.call("/login", f"=name={USER}", f"=password={PASSWORD}") == [["!done", "=ret=abc123"]]
    assert client.call(f"{AL}/print") == [["!trap", "=message=not logged in"], ["!done"]]


def test_modern_router_rejects_md5_answers(make_sim: Callable[..., RouterSim], raw: Callable[..., RawClient]) -> None:
    sim = make_sim(login_challenge="abc123", password="passTest")
    client = raw(sim.port)
    assert client.call("/login") == [["!done", "=ret=abc123"]]
    assert client.call("/login", f"=name={USER}", "=response=0021277bff9ac7caf06aa608e46616d47f") == [
        ["!trap", "=message=invalid user name or password (6)"],
        ["!done"],
    ]


def test_add_returns_id_and_print_shows_all_properties(raw: Callable[..., RawClient]) -> None:
    client = raw()
    client.login()
    assert client.call(f"{AL}/add", "=list=blk", "=address=1.2.3.4/32", "=comment=hi") == [["!done", "=ret=*1"]]
    (row, done) = client.call(f"{AL}/print")
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_795_600_800.0))
    assert row == [
        "!re",
        "=.id=*1",
        "=list=blk",
        "=address=1.2.3.4",
        f"=creation-time={created}",
        "=dynamic=false",
        "=disabled=false",
        "=comment=hi",
    ]
    assert done == ["!done"]


def test_old_versions_print_old_dates(make_sim: Callable[..., RouterSim], raw: Callable[..., RawClient]) -> None:
    sim = make_sim(version="7.9.2")
    client = raw(sim.port)
    client.login()
    client.call(f"{AL}/add", "=list=blk", "=address=1.2.3.4")
    assert client.call(f"{AL}/print", "=.proplist=creation-time") == [
        ["!re", "=creation-time=" + time.strftime("nov/%d/%Y %H:%M:%S", time.localtime(1_795_600_800.0))],
        ["!done"],
    ]


def test_query_words_are_ignored_by_non_print_commands(raw: Callable[..., RawClient]) -> None:
    client = raw()
    client.login()
    client.call(f"{AL}/add", "=list=blk", "=address=1.2.3.4")
    client.call(f"{AL}/add", "=list=other", "=address=1.2.3.5")
    # remove with only a query word: a bare !done, nothing removed (ROUTEROS.md 1.2).
    assert client.call(f"{AL}/remove", "?.id=*1") == [["!done"]]
    assert client.call(f"{AL}/remove", "?list=blk", "?address=1.2.3.4") == [["!done"]]
    assert client.call(f"{AL}/print", "=count-only=") == [["!done", "=ret=2"]]
    # set/disable act on .id/numbers alone: the query word neither narrows nor widens.
    assert client.call(f"{AL}/set", "=.id=*1", "?list=other", "=comment=set") == [["!done"]]
    assert client.call(f"{AL}/set", "?.id=*2", "=comment=nothing") == [["!done"]]
    assert client.call(f"{AL}/disable", "=numbers=*2", "?list=blk") == [["!done"]]
    assert client.call(f"{AL}/print", "=.proplist=.id,comment,disabled") == [
        ["!re", "=.id=*1", "=comment=set", "=disabled=false"],
        ["!re", "=.id=*2", "=disabled=true"],
        ["!done"],
    ]


def test_proplist_of_unset_properties_gives_bare_re(raw: Callable[..., RawClient]) -> None:
    client = raw()
    client.login()
    client.call(f"{AL}/add", "=list=blk", "=address=1.2.3.4")
    client.call(f"{AL}/add", "=list=blk", "=address=1.2.3.5", "=comment=c")
    assert client.call(f"{AL}/print", "=.proplist=comment") == [["!re"], ["!re", "=comment=c"], ["!done"]]


def test_injected_fault_traps_the_next_matching_command(sim: RouterSim, raw: Callable[..., RawClient]) -> None:
    client = raw()
    client.login()
    sim.fail_next(f"{AL}/add", "not enough permissions (9)")
    assert client.call("/system/identity/print") == [["!re", "=name=MikroTik"], ["!done"]]
    assert client.call(f"{AL}/add", "=list=a", "=address=1.2.3.4") == [
        ["!trap", "=message=not enough permissions (9)"],
        ["!done"],
    ]
    assert client.call(f"{AL}/add", "=list=a", "=address=1.2.3.4") == [["!done", "=ret=*1"]]
    assert sim.command_counts[f"{AL}/add"] == 2
    assert [c.attributes for c in sim.history if c.path == "/login"] == [(("name", USER), ("password", "<redacted>"))]


def test_comment_unset_and_bad_values(raw: Callable[..., RawClient]) -> None:
    client = raw()
    client.login()
    client.call(f"{AL}/add", "=list=a", "=address=1.2.3.4")
    assert client.call(f"{AL}/comment", "=numbers=*1", "=comment=hello") == [["!done"]]
    assert client.call(f"{AL}/print", "=.proplist=comment") == [["!re", "=comment=hello"], ["!done"]]
    assert client.call(f"{AL}/unset", "=numbers=*1", "=value-name=list") == [
        ["!trap", "=message=invalid value for argument value-name", "=category=1"],
        ["!done"],
    ]
    assert client.call(f"{AL}/set", "=.id=*1", "=disabled=maybe") == [
        ["!trap", "=message=invalid value for argument disabled", "=category=1"],
        ["!done"],
    ]
    assert client.call(f"{AL}/set", "=.id=*1", "=timeout=soon") == [
        ["!trap", "=message=invalid value for argument timeout", "=category=1"],
        ["!done"],
    ]
    assert client.call(f"{AL}/add", "=list=a", "=address=1.2.3.5", "=colour=red") == [
        ["!trap", "=message=unknown parameter colour", "=category=1"],
        ["!done"],
    ]
    assert client.call(f"{AL}/print", "?list=a", "?#z") == [
        ["!trap", "=message=invalid query: unknown query operator 'z'", "=category=1"],
        ["!done"],
    ]
    assert client.call(f"{AL}/unset", "=numbers=*1", "=value-name=comment") == [["!done"]]
    assert client.call(f"{AL}/print", "=.proplist=comment,disabled") == [["!re", "=disabled=false"], ["!done"]]
