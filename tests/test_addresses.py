"""Addresses compared by value: every legal spelling of one value meets as one text.

Property-based (hypothesis) over address spellings — IPv4, IPv6 in every legal text
form (zero runs compressed anywhere or not at all, leading zeros, either case, a dotted
IPv4 tail), IPv4-mapped and -compatible IPv6, host routes, networks with host bits set,
netmask notation, ranges — checked three ways: the pure normal form, the simulator's
normalisation (what the router stores), and a real apply through librouteros to the
simulator followed by a plan that must plan nothing.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from provisiond.core import addresses
from provisiond.core.desire import address_lists, ListMapping
from provisiond.core.diff import diff
from provisiond.core.model import Account
from provisiond.core.plan import Plan
from provisiond.settings import RouterSettings
from provisiond.sim import RouterSim, SimSettings
from provisiond.sim.routeros.address import normalise_address
from provisiond.targets.routeros import RouterTarget

V4 = st.integers(0, 2**32 - 1)
V6 = st.one_of(
    st.integers(0, 2**128 - 1),
    V4.map(lambda v: 0xFFFF << 32 | v),  # IPv4-mapped
    V4,  # IPv4-compatible (and ::, ::1, …)
    st.integers(0, 2**16 - 1).map(lambda v: v << 112),  # long zero runs at the end
    st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0xABC]), min_size=8, max_size=8).map(
        lambda ws: sum(w << (112 - 16 * i) for i, w in enumerate(ws))),  # several zero runs
)


def _v4_text(v: int) -> str:
    return str(ipaddress.IPv4Address(v))


@st.composite
def v6_text(draw: st.DrawFn, value: int) -> str:
    """Any legal text of the IPv6 address ``value``."""
    words = [(value >> (112 - 16 * i)) & 0xFFFF for i in range(8)]
    dotted = draw(st.booleans())
    parts = [f"{w:0{draw(st.integers(1, 4))}x}" for w in (words[:6] if dotted else words)]
    parts = [p.upper() if draw(st.booleans()) else p for p in parts]
    if dotted:
        parts.append(_v4_text(value & 0xFFFFFFFF))
    zeros = [i for i, w in enumerate(words[:len(parts)]) if w == 0 and (not dotted or i < 6)]
    if zeros and draw(st.booleans()):  # compress one run of zero words, any of them
        start = draw(st.sampled_from(zeros))
        end = start
        limit = 6 if dotted else 8
        while end + 1 < limit and words[end + 1] == 0 and draw(st.booleans()):
            end += 1
        left, right = ":".join(parts[:start]), ":".join(parts[end + 1:])
        return f"{left}::{right}"
    return ":".join(parts)


@st.composite
def spelling(draw: st.DrawFn) -> str:
    """One legal spelling of an address, host route, network or range."""
    version = draw(st.sampled_from([4, 6]))
    bits = 32 if version == 4 else 128

    def one(v: int) -> str:
        return _v4_text(v) if version == 4 else draw(v6_text(v))

    value = draw(V4 if version == 4 else V6)
    kind = draw(st.sampled_from(["host", "host-route", "network", "netmask", "range", "block-range"]))
    if kind == "host":
        text = one(value)
    elif kind == "host-route":
        text = f"{one(value)}/{bits}"
    elif kind in ("network", "netmask") and (version == 6 or kind == "network"):
        text = f"{one(value)}/{draw(st.integers(0, bits))}"  # host bits usually set
    elif kind == "netmask":
        prefix = draw(st.integers(0, 32))
        text = f"{one(value)}/{ipaddress.IPv4Network(f'0.0.0.0/{prefix}').netmask}"
    elif kind == "range":
        last = draw(st.integers(value, min(2**bits - 1, value + draw(st.sampled_from([0, 1, 7, 300, 2**40])))))
        text = f"{one(value)}-{one(last)}"
    else:  # a range that is exactly one CIDR block
        prefix = draw(st.integers(0, bits))
        size = 1 << (bits - prefix)
        first = value - value % size
        text = f"{one(first)}-{one(first + size - 1)}"
    pad = draw(st.sampled_from(["", " ", "\t"]))
    return pad + text + pad


# -- the pure normal form ------------------------------------------------------------


# No per-example deadline: the machine running the suite may be busy.
FAST = settings(deadline=None)


@FAST
@given(st.one_of(V6, st.integers(0, 2**128 - 1)))
def test_ipv6_text_is_what_linux_inet_ntop_prints(value: int) -> None:
    assert addresses.text_of(6, value) == socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


@FAST
@given(spelling())
@example("::ffff:10.9.9.9")
@example("::FFFF:a09:909")
@example("::10.9.9.9")
@example("0:0:0:0:0:ffff:0a09:0909/128")
def test_every_spelling_of_a_value_has_one_form(text: str) -> None:
    value = addresses.parse(text)
    assert value is not None, text
    form = addresses.billing_form(text)
    assert form == addresses.routeros_form(text)
    assert addresses.parse(form) == value  # same value
    assert addresses.routeros_form(form) == form  # a fixed point: read back, it stays
    # Two spellings of one value never differ: the form is a function of the value.
    assert form == addresses.form_of(value)


@pytest.mark.parametrize(("given_text", "stored"), [
    ("::ffff:10.9.9.9", "::ffff:10.9.9.9/128"),
    ("::ffff:a09:909", "::ffff:10.9.9.9/128"),
    ("::ffff:0:0/96", "::ffff:0.0.0.0/96"),
    ("::10.9.9.9", "::10.9.9.9/128"),
    ("::1", "::1/128"),
    ("0:0:0:0:0:0:0:0", "::/128"),
    ("2001:db8:0:1:0:0:0:1", "2001:db8:0:1::1/128"),
    ("10.0.0.1-10.0.0.1", "10.0.0.1"),
    ("1.2.3.4/255.255.255.0", "1.2.3.0/24"),
    ("a::-a::ff", "a::/120"),
    ("a::1 - a::5", "a::1-a::5"),
])
def test_routeros_form_examples(given_text: str, stored: str) -> None:
    assert addresses.routeros_form(given_text) == stored


@pytest.mark.parametrize("bad", ["fe80::1%eth0", "fe80::1%eth0/64", "10.0.0.5-10.0.0.1", "10.0.0.1-::1",
                                 "10.0.0.1-", "1.2.3.4/33", "::/129", "1.2.3"])
def test_not_an_address_value(bad: str) -> None:
    with pytest.raises(ValueError, match="not an IP address or network"):
        addresses.billing_form(bad)


@FAST
@given(spelling())
def test_simulator_stores_the_same_form(text: str) -> None:
    """What the simulated router stores for a spelling is provisiond's form of it."""
    form = addresses.routeros_form(text)
    assert normalise_address(form, addresses.family(form)) == form
    assert normalise_address(text.strip(), addresses.family(form)) == form


# -- against the simulator: apply, then plan plans nothing -----------------------------


@pytest.fixture(scope="module")
def sim() -> Iterator[RouterSim]:
    s = RouterSim(SimSettings(username="u", password="p", log_commands=False)).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def target(sim: RouterSim) -> Iterator[RouterTarget]:
    settings_ = RouterSettings(name="core-1", host="127.0.0.1", port=sim.port, username="u",
                               password="p", timeout=5, connect_timeout=2)  # type: ignore[arg-type]
    t = RouterTarget(settings_, lists=["l"], marker="provisiond")
    yield t
    t.close()


def _plan(target: RouterTarget, account: Account) -> Plan:
    want = address_lists([account], {}, [ListMapping("l", ("core-1",), group="g")], ["core-1"],
                         marker="provisiond")["core-1"]
    changes, conflicts = diff(target.observe(), want.desired)
    assert not conflicts
    return Plan("core-1", "routeros", tuple(changes))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=spelling())
@example(text="::ffff:10.9.9.9")
@example(text="::10.9.9.9")
@example(text="10.0.0.5/24")
@example(text="192.168.0.0-192.168.1.255")
def test_apply_then_plan_plans_nothing(sim: RouterSim, target: RouterTarget, text: str) -> None:
    for menu in ("ip", "ipv6"):
        for e in sim.entries(menu, "l"):
            sim.remove_entry(menu, e[".id"])
    account = Account("7", "Seven", groups=frozenset({"g"}), addresses=(addresses.billing_form(text),))
    plan = _plan(target, account)
    assert [c.action for c in plan.changes] == ["create"]
    sim.reset_history()
    result = target.apply(plan)
    assert result.ok and not result.conflicts, result
    # Written in the form RouterOS stores: the router did not have to rewrite it.
    sent = [dict(c.attributes)["address"] for c in sim.history if c.path.endswith("/add")]
    menu = "ipv6" if addresses.family(account.addresses[0]) == 6 else "ip"
    assert [e["address"] for e in sim.entries(menu, "l")] == sent
    assert _plan(target, account).changes == ()


_OCTETS = st.sampled_from(["0", "00", "01", "7", "9", "10", "99", "100", "199", "200", "249", "250",
                           "255", "256", "300", "007", "", "1a", "٣", "１", " 1", "1\n"])


@given(st.lists(_OCTETS, min_size=3, max_size=5))
def test_canonical_v4_fast_path_agrees_with_ipaddress(octets: list[str]) -> None:
    """The fast path says 'already canonical' exactly when ipaddress prints the text back."""
    from provisiond.core.addresses import is_canonical_v4

    text = ".".join(octets)
    try:
        expected = str(ipaddress.IPv4Address(text)) == text
    except ValueError:
        expected = False
    assert is_canonical_v4(text) == expected


# -- the quick path of ``parse`` (issue #24: 50,000 prefix leases a pass) agrees with ipaddress
from hypothesis import given as _given  # noqa: E402
from hypothesis import strategies as _st  # noqa: E402


@_given(_st.one_of(_st.ip_addresses(v=4), _st.ip_addresses(v=6)), _st.integers(0, 130),
        _st.sampled_from(["exploded", "compressed", "upper"]))
def test_quick_parse_agrees_with_ipaddress(ip: object, length: int, spelling: str) -> None:
    import ipaddress

    from provisiond.core.addresses import parse

    text = getattr(ip, "exploded") if spelling == "exploded" else str(ip)
    text = text.upper() if spelling == "upper" else text
    try:
        net = ipaddress.ip_network(f"{text}/{length}", strict=False)
        want = (net.version, int(net.network_address), int(net.broadcast_address))
    except ValueError:
        want = None
    assert parse(f"{text}/{length}") == want


@_given(_st.integers(1, (1 << 64) - 1), _st.integers(0, 63))
def test_ipv6_text_of_a_prefix_agrees_with_ipaddress(high: int, zeros: int) -> None:
    import ipaddress

    from provisiond.core.addresses import text_of

    value = ((high >> zeros) << zeros) << 64
    if value:
        assert text_of(6, value) == str(ipaddress.IPv6Address(value))
