"""The fake Sonar's data: Sonar's objects as flat tables, the way its API exposes them.

Held by ``FakeSonar`` (``server.py``), read by the GraphQL resolvers (``schema.py``),
changed by tests and loaded from a JSON file by ``python -m provisiond.sim.sonar
--data``. Every table is ``id -> row`` (a dict of the object's scalar fields); the
relations are ids, as in Sonar: an account's groups are a list of group ids, an IP
assignment belongs to whatever ``ipassignmentable_type`` / ``ipassignmentable_id``
name (Account, RadiusAccount, UninventoriedMacAddress, InventoryItem,
InventoryModelFieldData, …). An account has Sonar's ``is_delinquent`` flag and may be
archived (``archived_at``), which hides it unless a query asks for archived ones. One lock
guards it all: the HTTP server runs requests in threads.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

Row = dict[str, Any]

TABLES = (
    "account_statuses", "account_groups", "accounts", "radius_accounts", "addresses",
    "inventory_items", "inventory_model_field_data", "uninventoried_mac_addresses", "ip_assignments",
)

# The polymorphic owner names Sonar uses in ``ipassignmentable_type``.
OWNER_TABLES = {
    "Account": "accounts",
    "RadiusAccount": "radius_accounts",
    "InventoryItem": "inventory_items",
    "InventoryModelFieldData": "inventory_model_field_data",
    "UninventoriedMacAddress": "uninventoried_mac_addresses",
}
# What each table's rows start with when a loaded file leaves a field out.
DEFAULTS: dict[str, Row] = {"accounts": {"is_delinquent": False, "archived_at": None, "group_ids": []}}


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


class World:
    """Every object the fake serves. Use the helpers; they keep the relations whole."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.tables: dict[str, dict[int, Row]] = {t: {} for t in TABLES}
        self._next: dict[str, int] = {t: 1 for t in TABLES}
        self._version = 0  # bumped by every change; the indexes below are rebuilt then
        self._indexes: dict[tuple[str, str], tuple[int, dict[Any, list[Row]]]] = {}

    @contextmanager
    def locked(self) -> Iterator[World]:
        with self.lock:
            yield self

    def _insert(self, table: str, row: Row) -> Row:
        with self.lock:
            if "id" not in row or row["id"] is None:
                row["id"] = self._next[table]
            row["id"] = int(row["id"])
            for key, value in DEFAULTS.get(table, {}).items():
                row.setdefault(key, value)
            self._next[table] = max(self._next[table], row["id"] + 1)
            stamp = now_iso()
            row.setdefault("created_at", stamp)
            row.setdefault("updated_at", stamp)
            self.tables[table][row["id"]] = row
            self._version += 1
            return row

    # -- builders -----------------------------------------------------------------

    def status(self, name: str, *, activates_account: bool = True, id: int | None = None) -> int:
        with self.lock:
            for row in self.tables["account_statuses"].values():
                if row["name"] == name:
                    return int(row["id"])
            return int(self._insert("account_statuses", {
                "id": id, "name": name, "activates_account": activates_account})["id"])

    def group(self, name: str, *, id: int | None = None) -> int:
        with self.lock:
            for row in self.tables["account_groups"].values():
                if row["name"] == name:
                    return int(row["id"])
            return int(self._insert("account_groups", {"id": id, "name": name})["id"])

    def account(self, id: int, name: str, *, status: str = "Active",
                groups: tuple[str, ...] | list[str] = (), delinquent: bool = False) -> Row:
        with self.lock:
            return self._insert("accounts", {
                "id": id, "name": name, "account_status_id": self.status(status),
                "group_ids": [self.group(g) for g in groups], "is_delinquent": delinquent,
            })

    def uninventoried_mac(self, account_id: int, mac_address: str, *, id: int | None = None) -> Row:
        """An uninventoried MAC address of an account (a DHCP lease on equipment Sonar
        never inventoried); its IPs belong to the account."""
        return self._insert("uninventoried_mac_addresses", {
            "id": id, "account_id": account_id, "mac_address": mac_address})

    def radius_account(self, account_id: int, username: str, *, id: int | None = None) -> Row:
        return self._insert("radius_accounts", {"id": id, "username": username,
                                                "account_id": account_id})

    def address(self, account_id: int, *, serviceable: bool = True, id: int | None = None) -> Row:
        return self._insert("addresses", {"id": id, "account_id": account_id,
                                          "serviceable": serviceable})

    def inventory_item(self, address_id: int, *, id: int | None = None) -> Row:
        return self._insert("inventory_items", {"id": id, "address_id": address_id})

    def field_data(self, inventory_item_id: int, value: str, *, id: int | None = None) -> Row:
        return self._insert("inventory_model_field_data", {
            "id": id, "inventory_item_id": inventory_item_id, "value": value})

    def ip(self, owner_type: str, owner_id: int, subnet: str, *, soft: bool = False,
           ip_pool_id: int | None = None, id: int | None = None) -> Row:
        return self._insert("ip_assignments", {
            "id": id, "subnet": subnet, "soft": soft, "ip_pool_id": ip_pool_id,
            "ipassignmentable_type": owner_type, "ipassignmentable_id": int(owner_id)})

    # -- changes ------------------------------------------------------------------

    def update(self, table: str, id: int, **fields: Any) -> Row:
        with self.lock:
            row = self.tables[table][int(id)]
            row.update(fields)
            row["updated_at"] = now_iso()
            self._version += 1
            return row

    def set_status(self, account_id: int, status: str) -> Row:
        return self.update("accounts", account_id, account_status_id=self.status(status))

    def set_delinquent(self, account_id: int, delinquent: bool) -> Row:
        return self.update("accounts", account_id, is_delinquent=delinquent)

    def archive(self, account_id: int) -> Row:
        return self.update("accounts", account_id, archived_at=now_iso())

    def set_groups(self, account_id: int, groups: list[str]) -> Row:
        # Sonar does not say whether a membership change bumps updated_at; the fake does not.
        with self.lock:
            row = self.tables["accounts"][int(account_id)]
            row["group_ids"] = [self.group(g) for g in groups]
            self._version += 1
            return row

    def delete(self, table: str, id: int) -> None:
        """Delete an object and everything that hangs off it (as Sonar's cascade does)."""
        with self.lock:
            self.tables[table].pop(int(id), None)
            self._version += 1
            kind = next((k for k, t in OWNER_TABLES.items() if t == table), None)
            if kind is not None:
                for ip in [r for r in self.tables["ip_assignments"].values()
                           if r["ipassignmentable_type"] == kind and r["ipassignmentable_id"] == int(id)]:
                    del self.tables["ip_assignments"][ip["id"]]
            children = {"accounts": (("radius_accounts", "account_id"), ("addresses", "account_id"),
                                     ("uninventoried_mac_addresses", "account_id")),
                        "addresses": (("inventory_items", "address_id"),),
                        "inventory_items": (("inventory_model_field_data", "inventory_item_id"),)}
            for child, key in children.get(table, ()):
                for row in [r for r in self.tables[child].values() if r[key] == int(id)]:
                    self.delete(child, row["id"])

    # -- queries used by the resolvers ------------------------------------------------

    def rows(self, table: str) -> list[Row]:
        with self.lock:
            return list(self.tables[table].values())

    def get(self, table: str, id: int | None) -> Row | None:
        if id is None:
            return None
        with self.lock:
            return self.tables[table].get(int(id))

    def _index(self, table: str, key: str) -> dict[Any, list[Row]]:
        with self.lock:
            cached = self._indexes.get((table, key))
            if cached is not None and cached[0] == self._version:
                return cached[1]
            index: dict[Any, list[Row]] = {}
            for r in self.tables[table].values():
                index.setdefault(r[key], []).append(r)
            self._indexes[(table, key)] = (self._version, index)
            return index

    def children(self, table: str, key: str, id: int) -> list[Row]:
        return list(self._index(table, key).get(id, ()))

    def ips_of(self, owner_type: str, owner_id: int) -> list[Row]:
        return [r for r in self._index("ip_assignments", "ipassignmentable_id").get(owner_id, ())
                if r["ipassignmentable_type"] == owner_type]

    # -- files --------------------------------------------------------------------

    def dump(self) -> dict[str, list[Row]]:
        with self.lock:
            return {t: [dict(r) for r in self.tables[t].values()] for t in TABLES}

    @classmethod
    def load(cls, path: Path) -> World:
        """A world from a JSON file of tables."""
        try:
            return cls.from_tables(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: {exc}") from exc

    @classmethod
    def from_tables(cls, data: dict[str, list[Row]]) -> World:
        """A world from tables (``{"accounts": [{...}], …}``, as ``dump`` writes them)."""
        world = cls()
        unknown = set(data) - set(TABLES)
        if unknown:
            raise ValueError(f"unknown table(s) {', '.join(sorted(unknown))}")
        for table in TABLES:
            for row in data.get(table, []):
                world._insert(table, dict(row))
        return world
