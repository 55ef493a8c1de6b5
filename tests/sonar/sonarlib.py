"""Helpers of the Sonar tests (a module of its own: conftest names clash across folders)."""

from __future__ import annotations

from provisiond.sim.sonar import World

TOKEN = "sonar-test-token-0123456789abcdef"


def populate(world: World, count: int, *, first: int = 1000) -> None:
    """``count`` accounts: one address each on the account, every third a Tower Host."""
    for i in range(count):
        account = first + i
        world.account(account, f"Account {i}", groups=["Tower Hosts"] if i % 3 == 0 else [])
        world.ip("Account", account, f"100.64.{i >> 8}.{i & 255}/32")
        world.radius_account(account, f"user{account}")
