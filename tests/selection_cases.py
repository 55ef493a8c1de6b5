"""The selector-key cases shared by the SQL and the Sonar selection tests.

Five accounts that differ in groups, status, whether the status activates the account,
and the delinquency flag; each case is a mapping's selector keys and the ids it must
select. Every key alone, both spellings of group and status, and combinations.
"""

from __future__ import annotations

from typing import Any

# id: (status, status activates the account, delinquent, groups)
ACCOUNTS: dict[int, tuple[str, bool, bool, list[str]]] = {
    1: ("Active", True, False, ["Tower Hosts"]),
    2: ("Active", True, True, ["Tower Hosts", "Relay Sites"]),
    3: ("Suspended", False, True, ["Relay Sites"]),
    4: ("Suspended", False, False, []),
    5: ("Paid", True, False, ["Legacy"]),
}

CASES: list[tuple[dict[str, Any], set[int]]] = [
    ({"group": "Tower Hosts"}, {1, 2}),
    ({"groups": ["Tower Hosts", "Relay Sites"]}, {1, 2, 3}),
    ({"status": "Active"}, {1, 2}),
    ({"statuses": ["Active", "Paid"]}, {1, 2, 5}),
    ({"active": True}, {1, 2, 5}),
    ({"active": False}, {3, 4}),
    ({"delinquent": True}, {2, 3}),
    ({"delinquent": False}, {1, 4, 5}),
    ({"group": "Tower Hosts", "active": True, "delinquent": False}, {1}),
    ({"groups": ["Tower Hosts", "Relay Sites"], "delinquent": True}, {2, 3}),
    ({"statuses": ["Suspended"], "delinquent": True}, {3}),
    ({"group": "Relay Sites", "active": False}, {3}),
    ({"status": "Active", "groups": ["Legacy"]}, set()),
    ({"status": "Paid", "group": "Legacy", "active": True, "delinquent": False}, {5}),
]


def selected(accounts: Any, keys: dict[str, Any]) -> set[int]:
    """The ids a ``[[address_list]]`` mapping with ``keys`` selects among ``accounts``
    (a Snapshot's), through the settings model and the one selection rule."""
    from provisiond.core.model import Match
    from provisiond.settings import AddressListMapping

    match = Match.of(AddressListMapping.model_validate({**keys, "list": "l"}))
    return {int(a.id) for a in accounts.values() if match.selects(a)}
