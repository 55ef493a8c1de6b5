"""``sources.sql.aggregate`` against a plain reference: one builder per account.

The aggregate makes an account's ``Account`` from its first row and merges only the
accounts billing returns on several rows; whatever the rows (repeats, clashes, bad ids,
bad addresses, NULLs, whitespace, ints), it must give exactly what merging every
account's rows one by one gives: the same accounts in the same order, the same
problems and notes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from provisiond.core import addresses
from provisiond.core.model import Account, RowProblem, Snapshot
from provisiond.sources.sql import aggregate

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


SPELLINGS = {"true": True, "t": True, "1": True, "yes": True, "y": True,
             "false": False, "f": False, "0": False, "no": False, "n": False, "": False}


def _flag(value: Any) -> bool | None:
    if value is None:
        return False
    if isinstance(value, (bool, int, float)):
        return bool(value) if value in (0, 1) else None
    return SPELLINGS.get(str(value).strip().lower())


def reference(rows: list[tuple[Any, ...]]) -> Snapshot:
    builders: dict[str, dict[str, Any]] = {}
    problems: list[RowProblem] = []
    clashes: dict[str, tuple[set[Any], ...]] = {}
    notes: dict[tuple[str, str], str] = {}
    for count, (raw_id, name, status, group, ip_raw, username, active_raw, delinquent_raw) \
            in enumerate(rows, 1):
        account_id = _text(raw_id)
        if not account_id:
            problems.append(RowProblem("", f"row {count}: account_id is empty"))
            continue
        if not account_id.isprintable() or " " in account_id:
            problems.append(RowProblem(account_id, "account_id has spaces or control characters"))
            continue
        ip = ""
        if ip_raw is not None and ip_raw != "":
            try:
                ip = addresses.billing_form(str(ip_raw))
            except ValueError as exc:
                problems.append(RowProblem(account_id, str(exc)))
                continue
            given_ = str(ip_raw).strip()
            if "/" in given_ and (account_id, ip) not in notes and addresses.has_host_bits(given_):
                notes[(account_id, ip)] = (
                    f"account {account_id}: {given_} has host bits set; used as the network {ip}")
        active, delinquent = _flag(active_raw), _flag(delinquent_raw)
        if active is None:
            problems.append(RowProblem(account_id, f"active is not true or false: {active_raw!r:.40}"))
            continue
        if delinquent is None:
            problems.append(RowProblem(account_id, f"delinquent is not true or false: {delinquent_raw!r:.40}"))
            continue
        b = builders.get(account_id)
        if b is None:
            b = builders[account_id] = {"name": _text(name), "status": _text(status),
                                        "groups": set(), "addresses": set(), "usernames": set(),
                                        "active": active, "delinquent": delinquent}
        elif (_text(name), _text(status), active, delinquent) != (
                b["name"], b["status"], b["active"], b["delinquent"]):
            seen = clashes.setdefault(account_id, ({b["name"]}, {b["status"]}, {b["active"]},
                                                   {b["delinquent"]}))
            for kept, value in zip(seen, (_text(name), _text(status), active, delinquent)):
                kept.add(value)
        if group is not None and group != "":
            b["groups"].add(_text(group))
        if ip:
            b["addresses"].add(ip)
        if username is not None and username != "":
            b["usernames"].add(_text(username))
    for account_id, (names, statuses, actives, delinquents) in clashes.items():
        del builders[account_id]
        what = [f"different {kind} ({', '.join(repr(v) for v in sorted(values))})"
                for kind, values in (("names", names), ("statuses", statuses),
                                     ("active flags", actives), ("delinquent flags", delinquents))
                if len(values) > 1]
        problems.append(RowProblem(account_id, f"billing returns it with {' and '.join(what)}; "
                                               "left as it is this pass"))
    accounts = {i: Account(i, b["name"], b["status"], frozenset(b["groups"]),
                           tuple(sorted(b["addresses"])), tuple(sorted(b["usernames"])),
                           b["active"], b["delinquent"])
                for i, b in builders.items()}
    return Snapshot(accounts=accounts, read_at=NOW, rows=len(rows), problems=tuple(problems),
                    notes=tuple(notes.values()))


ids = st.one_of(st.none(), st.integers(0, 6), st.sampled_from(["1", "2", " 3 ", "", " ", "a b", "4\n"]))
texts = st.one_of(st.none(), st.sampled_from(["", " ", "A", " A ", "B", "Zoë"]))
groups = st.one_of(st.none(), st.sampled_from(["", " ", "g", " g", "h"]))
ips = st.one_of(st.none(), st.sampled_from([
    "", " ", "10.0.0.1", " 10.0.0.1", "10.0.0.1/32", "10.0.0.5/24", "10.0.0.0/24", "10.0.0.300",
    "01.2.3.4", "2001:DB8::1", "10.0.0.0-10.0.0.255", "example.com", "10.0.0.2"]))
flags = st.sampled_from([None, True, False, 1, 0, 2, "t", " Yes ", "no", "", "maybe", 1.0])
rows = st.lists(st.tuples(ids, texts, st.sampled_from(["active", "off", " active"]), groups, ips,
                          texts, flags, flags), max_size=14)


@settings(max_examples=400, deadline=None)
@given(rows)
def test_aggregate_is_merging_every_account_row_by_row(given_rows: list[tuple[Any, ...]]) -> None:
    got, want = aggregate(given_rows, read_at=NOW), reference(given_rows)
    assert list(got.accounts.items()) == list(want.accounts.items())
    assert (got.problems, got.notes, got.rows) == (want.problems, want.notes, want.rows)
