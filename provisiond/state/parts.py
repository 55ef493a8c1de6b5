"""The ``rows`` of a ``journal_parts`` row: a part of a target's journal as one JSON
document, and that document read back as the journal entries of its changes.

``StateStore.journal_changes`` encodes a part (``PART_ROWS`` or more address-list
changes) in the target's own writer thread, which holds the interpreter while it does:
a cold apply encodes 400,000 changes while the routers wait for their next sentences.
So the document is written column by column (format 2): a value that every change of
the part shares (the action, the list, ``disabled``, the result) is written once, and
the rest as flat lists of strings, built a column at a time. ``history`` and ``explain``
read both formats (``part_rows``): rows written before format 2 stay readable.

Format 2, a JSON object::

    {"v": 2, "n": N, "action": C, "kind": C, "group": C, "account_id": C,
     "account_name": C, "ident": P, "attrs": P, "ref": C, "before": P,
     "result": C, "message": C}

A column ``C`` is one string, every change's value, or a list of N values. A column of
pairs ``P`` is ``{"keys": [k, ...], "values": [C, ...]}`` when every change has pairs of
those keys in that order, else a list of N pairs. ``before`` is the old attributes of
the part's updates, a ``P`` of as many as there are, in order, or ``null`` without
updates; ``ref`` is an update's old id, another change's own.

Format 1, the first, a JSON list of N rows: ``[action, kind, group, account_id,
account_name, ident pairs, attrs pairs, ref, before pairs or null, result, message]``.
``part_rows`` returns the rows of either format in that shape.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from itertools import compress
from operator import attrgetter, itemgetter
from typing import Any

from provisiond.core.changes import Change, Conflict, Create, Pairs

FORMAT = 2
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)
# A format-1 row's fields between action and before, in order; of them, the pairs.
_RESOURCE_FIELDS = ("kind", "group", "account_id", "account_name", "ident", "attrs", "ref")
_PAIRS = frozenset({"ident", "attrs"})
# What the json module escapes in a string besides the backslash and any character beyond
# ASCII: control characters, the quote, DEL.
_ESCAPED = bytes([*range(0x20), 0x22, 0x7F])
_action, _new, _old = attrgetter("action"), attrgetter("new"), attrgetter("old")
_kind, _ref = attrgetter("kind"), attrgetter("ref")
_group, _account_id, _account_name = attrgetter("group"), attrgetter("account_id"), attrgetter("account_name")
_ident, _attrs = attrgetter("ident"), attrgetter("attrs")
_first, _second = itemgetter(0), itemgetter(1)


def encode_part(
    applied: Sequence[Change],
    failed: Sequence[tuple[Change, str]],
    conflicts: Sequence[Conflict],
    kinds: AbstractSet[str],
) -> tuple[str, list[str]] | None:
    """A part's ``rows`` (format 2: the applied changes, the failed ones, the conflicts as
    the creates they were) and each change's account id; None when a change is of a
    kind not in ``kinds``.

    A column is made by passes of C code over the part (map, count, join), not by Python
    code per change (but for the updates and deletes of a part of several actions).
    The document is ASCII, as the json module writes it."""
    changes: list[Change] = [*applied, *map(_first, failed), *(Create(x.resource) for x in conflicts)]
    n = len(changes)
    actions = list(map(_action, changes))
    same = n > 0 and actions.count(actions[0]) == n
    deletes = actions[0] == "delete" if same else "delete" in actions
    resources = [c.resource for c in changes] if deletes else list(map(_new, changes))
    kind = list(map(_kind, resources))
    if not set(kind) <= kinds:
        return None
    account_ids = list(map(_account_id, resources))
    updates = actions[0] == "update" if same else "update" in actions
    ref = list(map(_ref, resources))
    before_json = "null"
    if updates:  # an update's ref and before are its old resource's
        is_update = [a == "update" for a in actions]
        olds = list(map(_old, compress(changes, is_update)))
        old_refs = iter(list(map(_ref, olds)))
        ref = [next(old_refs) if u else r for u, r in zip(is_update, ref)]
        before_json = _pairs_json(list(map(_attrs, olds)))
    columns = (
        ("action", _column_json(actions)),
        ("kind", _column_json(kind)),
        ("group", _column_json(list(map(_group, resources)))),
        ("account_id", _column_json(account_ids)),
        ("account_name", _column_json(list(map(_account_name, resources)))),
        ("ident", _pairs_json(list(map(_ident, resources)))),
        ("attrs", _pairs_json(list(map(_attrs, resources)))),
        ("ref", _column_json(ref)),
        ("before", before_json),
        ("result", _column_json(["ok"] * len(applied) + ["failed"] * len(failed)
                                + ["conflict"] * len(conflicts))),
        ("message", _column_json([""] * len(applied) + list(map(_second, failed))
                                 + [x.reason for x in conflicts])),
    )
    document = f'{{"v":{FORMAT},"n":{n},' + ",".join(f'"{name}":{text}' for name, text in columns) + "}"
    return document, account_ids


def _column_json(values: list[Any]) -> str:
    """A column as JSON: the one string every value is, or the list of the values."""
    first = values[0] if values else None
    if isinstance(first, str) and values.count(first) == len(values):
        return _ENCODER.encode(first)
    return _strings_json(values)


def _pairs_json(values: list[Pairs]) -> str:
    """A column of pairs as JSON: their keys once and a column per key when every
    change has the same keys in the same order; else the list of the pairs."""
    n = len(values)
    width = len(values[0]) if n else 0
    if list(map(len, values)).count(width) != n:
        return _ENCODER.encode(values)
    keys: list[str] = []
    columns: list[str] = []
    for i in range(width):
        pairs = list(map(itemgetter(i), values))
        key, value = pairs[0]
        if isinstance(key, str) and isinstance(value, str) and pairs.count(pairs[0]) == n:
            keys.append(key)  # the same pair in every change (the list, "disabled")
            columns.append(_ENCODER.encode(value))
            continue
        names = list(map(_first, pairs))
        if not isinstance(key, str) or names.count(key) != n:
            return _ENCODER.encode(values)
        keys.append(key)
        columns.append(_column_json(list(map(_second, pairs))))
    return f'{{"keys":{_ENCODER.encode(keys)},"values":[{",".join(columns)}]}}'


def _strings_json(values: list[Any]) -> str:
    """``_ENCODER.encode(values)``, at a fraction of its cost when the values are
    strings without a quote, backslash or control character (as almost all are): the
    json module escapes each string character by character; here they are joined and
    only looked at, any character beyond ASCII written as json writes it (\\uXXXX)."""
    try:
        joined = '","'.join(values)
    except TypeError:  # not all strings
        return _ENCODER.encode(values)
    if values and "\\" not in joined:  # the backslashes below are then backslashreplace's
        raw = joined.encode("ascii", "backslashreplace")  # as \xXX, \uXXXX, \UXXXXXXXX
        if len(raw.translate(None, _ESCAPED)) == len(raw) - 2 * (len(values) - 1) and b"\\U" not in raw:
            if not joined.isascii():
                raw = raw.replace(b"\\x", b"\\u00")
            return '["' + raw.decode("ascii") + '"]'
    return _ENCODER.encode(values)


def part_rows(text: str) -> list[Sequence[Any]]:
    """A part's rows, either format, as format 1 has them (ident, attrs and before
    as sequences of pairs). ``ValueError`` for a format this provisiond cannot read."""
    document = json.loads(text)
    if isinstance(document, list):
        return document
    version = document.get("v") if isinstance(document, dict) else None
    if version != FORMAT:
        raise ValueError(f"a journal part of format {version!r}: this provisiond reads formats 1 and {FORMAT}")
    n = int(document["n"])

    def column(c: Any, count: int = n) -> list[Any]:
        return c if isinstance(c, list) else [c] * count

    def pairs(c: Any, count: int = n) -> list[Any]:
        if c is None or isinstance(c, list):
            return [None] * count if c is None else c
        keys = c["keys"]
        if not keys:
            return [()] * count
        return [tuple(zip(keys, row)) for row in zip(*(column(v, count) for v in c["values"]))]

    actions = column(document["action"])
    is_update = [a == "update" for a in actions]
    olds = iter(pairs(document["before"], is_update.count(True)))
    before = [next(olds) if u else None for u in is_update]
    return list(zip(actions, *(pairs(document[f]) if f in _PAIRS else column(document[f])
                               for f in _RESOURCE_FIELDS),
                    before, column(document["result"]), column(document["message"])))


def part_entries(rows: str) -> list[dict[str, Any]]:
    """A journal_parts row's ``rows`` (its JSON) as the journal entries of its changes, in
    order: action, kind, group, account_id, detail, result, message (as ``history``)."""
    return [part_entry(row) for row in part_rows(rows)]


def part_entry(row: Sequence[Any]) -> dict[str, Any]:
    """One row of ``part_rows`` as its journal entry (without the part's run, time and target)."""
    action, kind, group, account_id = row[:4]
    return {"action": action, "kind": kind, "group": group, "account_id": account_id,
            "detail": _part_detail(row), "result": row[9], "message": row[10]}


def _part_detail(row: Sequence[Any]) -> dict[str, Any]:
    """A part's row's detail: what the store's ``_detail`` makes for a journal row."""
    _, _, _, _, account_name, ident, attrs, ref, before, result, message = row
    out: dict[str, Any] = dict(ident)
    out.update(attrs)
    out["account_name"] = account_name
    if before is not None:
        out["id"] = ref
        out["before"] = dict(sorted((str(k), v) for k, v in before))
    elif ref:
        out["id"] = ref
    if result == "conflict":
        out["reason"] = message
    return dict(sorted(out.items()))
