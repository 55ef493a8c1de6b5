"""Pure layers of the simulator: codec, values, address normalisation, queries."""

from __future__ import annotations

import io

import pytest

from provisiond.sim.routeros.address import normalise_address
from provisiond.sim.routeros.codec import (
    PeerClosed,
    ProtocolViolation,
    encode_length,
    encode_length_5,
    encode_sentence,
    read_length,
    read_sentence,
)
from provisiond.sim.routeros.query import QueryError, compile_query
from provisiond.sim.routeros.session import legacy_response
from provisiond.sim.routeros.values import format_duration, parse_bool, parse_duration, parse_version


@pytest.mark.parametrize(
    ("length", "encoded"),
    [
        (0, "00"),
        (5, "05"),
        (0x7F, "7f"),
        (0x80, "8080"),
        (256, "8100"),
        (0x3FFF, "bfff"),
        (0x4000, "c04000"),
        (0x1FFFFF, "dfffff"),
        (0x200000, "e0200000"),
        (0xFFFFFFF, "efffffff"),
    ],
)
def test_length_round_trip(length: int, encoded: str) -> None:
    assert encode_length(length).hex() == encoded
    assert read_length(io.BytesIO(bytes.fromhex(encoded)).read) == length


def test_five_byte_length_is_read_but_never_written() -> None:
    assert encode_length_5(0x10000000).hex() == "f010000000"
    assert read_length(io.BytesIO(bytes.fromhex("f010000000")).read) == 0x10000000
    with pytest.raises(ValueError):
        encode_length(0x10000000)


@pytest.mark.parametrize("first", [0xF8, 0xFC, 0xFF])
def test_control_bytes_are_a_protocol_violation(first: int) -> None:
    with pytest.raises(ProtocolViolation):
        read_length(io.BytesIO(bytes((first, 0, 0, 0, 0))).read)


def test_sentence_encoding_matches_the_reference_example() -> None:
    assert encode_sentence(["/login"]).hex() == "062f6c6f67696e00"
    data = encode_sentence(["/ip/firewall/address-list/add", "=list=blk", "=address=1.2.3.4"])
    assert data == b"\x1d/ip/firewall/address-list/add\x09=list=blk\x10=address=1.2.3.4\x00"


def test_sentences_are_never_empty() -> None:
    with pytest.raises(ValueError):
        encode_sentence([])


def test_read_sentence_keeps_undecodable_bytes() -> None:
    data = b"\x06=a=\xff\xfeZ\x00"
    words = read_sentence(io.BytesIO(data).read)
    assert encode_sentence(words) == data


def test_truncated_word_means_peer_closed() -> None:
    with pytest.raises(PeerClosed):
        read_sentence(io.BytesIO(b"\x05ab").read)


def test_pre_login_word_limit() -> None:
    with pytest.raises(ProtocolViolation):
        read_sentence(io.BytesIO(b"\x81\x00" + b"x" * 256 + b"\x00").read, max_word=255)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1d", 86400), ("5m", 300), ("1w2d3h4m5s", 788645), ("00:05:00", 300), ("1d00:00:10", 86410), ("90", 90), ("1s500ms", 1.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "1x", "5mm", "-1s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (-3, "0s"), (86398.7, "23h59m58s"), (788645, "1w2d3h4m5s"), (60, "1m")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("text", "value"), [("yes", True), ("true", True), ("no", False), ("false", False), ("TRUE", True)])
def test_parse_bool(text: str, value: bool) -> None:
    assert parse_bool(text) is value


@pytest.mark.parametrize(("text", "version"), [("7.18.2 (stable)", (7, 18, 2)), ("6.49", (6, 49)), ("7.19beta4", (7, 19))])
def test_parse_version(text: str, version: tuple[int, ...]) -> None:
    assert parse_version(text) == version


@pytest.mark.parametrize(
    ("family", "given", "stored"),
    [
        (4, "192.0.34.166/32", "192.0.34.166"),
        (4, "192.0.34.166", "192.0.34.166"),
        (4, "1.1.1.1/24", "1.1.1.0/24"),
        (4, "192.168.0.0-192.168.1.255", "192.168.0.0/23"),
        (4, "10.0.0.7-10.0.0.7", "10.0.0.7"),
        (4, "10.0.0.1-10.0.0.5", "10.0.0.1-10.0.0.5"),
        (4, "example.com", "example.com"),
        (6, "2606:4700:4700::1111", "2606:4700:4700::1111/128"),
        (6, "2001:DB8:0:0::1/128", "2001:db8::1/128"),
        (6, "2001:db8::1/64", "2001:db8::/64"),
        (6, "2001:db8::-2001:db8::ffff", "2001:db8::/112"),
        (6, "example.com", "example.com"),
    ],
)
def test_normalise_address(family: int, given: str, stored: str) -> None:
    assert normalise_address(given, family) == stored


@pytest.mark.parametrize(
    ("family", "given"),
    [(4, "2001:db8::1"), (6, "1.2.3.4"), (4, "1.2.3.400"), (4, "1.2.3.4/33"), (4, "10.0.0.9-10.0.0.1"), (4, ""), (4, "bad name!")],
)
def test_normalise_address_rejects(family: int, given: str) -> None:
    with pytest.raises(ValueError):
        normalise_address(given, family)


def test_legacy_login_test_vector() -> None:
    assert legacy_response("passTest", "abc123") == "0021277bff9ac7caf06aa608e46616d47f"


ROWS = [
    {".id": "*1", "list": "a", "address": "10.0.0.1", "disabled": "false", "comment": "x"},
    {".id": "*2", "list": "a", "address": "10.0.0.20", "disabled": "true"},
    {".id": "*3", "list": "b", "address": "9.0.0.1", "disabled": "false", "comment": "42"},
    {".id": "*4", "list": "b", "address": "10.0.0.3/32", "disabled": "false", "comment": "7"},
]


@pytest.mark.parametrize(
    ("words", "ids"),
    [
        ([], ["*1", "*2", "*3", "*4"]),
        (["?list=a"], ["*1", "*2"]),
        (["?=list=b"], ["*3", "*4"]),
        (["?comment"], ["*1", "*3", "*4"]),
        (["?-comment"], ["*2"]),
        (["?>comment="], ["*1", "*3", "*4"]),
        (["?<comment=9"], ["*4"]),  # numbers compare numerically: 7 < 9, 42 > 9
        (["?>address=10.0.0.2"], ["*2", "*4"]),  # by address, not lexically
        (["?disabled=yes"], ["*2"]),
        (["?disabled=no", "?list=a"], ["*1"]),
        (["?list=a", "?list=b", "?#|"], ["*1", "*2", "*3", "*4"]),
        (["?list=a", "?#!"], ["*3", "*4"]),
        (["?list=a", "?disabled=true", "?#|!"], ["*3", "*4"]),
        (["?list=a", "?disabled=true", "?#&"], ["*2"]),
        (["?=address=10.0.0.3"], ["*4"]),
        (["?list=b", "?list=a", "?#1"], ["*3", "*4"]),  # index at word end replaces the stack
        (["?list=a", "?#0&"], ["*1", "*2"]),
        (["?list=a", "?#.|"], ["*1", "*2"]),
        (["?list=zzz"], []),
    ],
)
def test_query_stack_machine(words: list[str], ids: list[str]) -> None:
    query = compile_query(words, family=4)
    assert [row[".id"] for row in ROWS if query.matches(row)] == ids


def test_list_filter_only_for_plain_equalities() -> None:
    assert compile_query(["?list=a"]).list_filter == "a"
    assert compile_query(["?list=a", "?address=1.2.3.4"]).list_filter == "a"
    assert compile_query(["?list=a", "?#!"]).list_filter is None
    assert compile_query(["?list=a", "?list=b", "?#|"]).list_filter is None
    assert compile_query([]).list_filter is None


def test_unknown_stack_operator_is_an_error() -> None:
    with pytest.raises(QueryError):
        compile_query(["?a", "?#x"]).matches(ROWS[0])
