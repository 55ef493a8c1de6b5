"""Billing address spellings through the whole CLI: written in RouterOS's form, no flapping.

The billing system spells an address however it likes (``::ffff:10.9.9.9``); the router
prints it its own way (``::ffff:10.9.9.9/128``). Compared by value, apply converges and
the next plan is empty (tests/test_addresses.py covers the spellings exhaustively).
"""

from __future__ import annotations

from world import World

SPELLINGS = {
    "::ffff:10.9.9.9": ("ipv6", "::ffff:10.9.9.9/128"),
    "::FFFF:0a09:0a0a": ("ipv6", "::ffff:10.9.10.10/128"),
    "::10.9.9.11": ("ipv6", "::10.9.9.11/128"),
    "2001:DB8:0:0:0:0:0:0001": ("ipv6", "2001:db8::1/128"),
    "2001:db8:1::5/64": ("ipv6", "2001:db8:1::/64"),
    "100.64.20.7/32": ("ip", "100.64.20.7"),
    "100.64.21.9/24": ("ip", "100.64.21.0/24"),
    "100.64.22.0-100.64.22.255": ("ip", "100.64.22.0/24"),
    "100.64.23.1-100.64.23.5": ("ip", "100.64.23.1-100.64.23.5"),
}


def test_every_billing_spelling_converges_in_routeros_form(world: World) -> None:
    world.router("core-1")
    for i, text in enumerate(SPELLINGS):
        world.account(2000 + i, f"Spelling {i}", groups=["Tower Hosts"], ips=[text])
    code, out, err = world.run("plan")
    assert code == 2, out + err
    assert "+ tower-hosts ::ffff:10.9.9.9/128" in out
    code, out, err = world.run("apply")
    assert code == 0, out + err
    for menu in ("ip", "ipv6"):
        stored = set(world.entries("core-1", "tower-hosts", menu=menu))
        assert stored == {form for m, form in SPELLINGS.values() if m == menu}
    world.assert_converged()
