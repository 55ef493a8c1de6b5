"""The ``print`` query stack machine of ../shared/ROUTEROS.md 1.7.

``session`` hands the ``?`` words of a print (in order) to ``compile_query``
and gets back a ``Query``: a frozen value whose ``matches`` takes one row (the
printed properties of one item, all of them, whatever ``.proplist`` says) and
tells whether the item is selected. ``Query.list_filter`` exposes the common
``?list=X`` case so the table can answer it from its per-list index.

Semantics: the stack starts as infinitely many ``true``; an item is kept when
no ``false`` is left. ``?name`` / ``?-name`` test presence, ``?name=x`` and
``?=name=x`` equality, ``?<name=x`` / ``?>name=x`` order (numbers
numerically, addresses by address, booleans and durations by value, strings
lexically). ``?#`` applies ``!&|.`` and digit indexes to the stack.

A print tests every row of the table, so ``compile_query`` also folds the stack
program once into a tree of predicates (the stack operations are the same for every
row) that short-circuits; ``Query.matches`` runs that. The boolean stack machine
(``StackOps.apply``) states the semantics and the tree is built by the same rules.

The same fold, run on sets of rows instead of predicates, gives ``Query.candidates``:
for a table's query, the rows an index can name that include every row the query
selects (``Eq``: a property equal to one of a few texts; ``Range``: a property within
a text range), or None when only a full scan can tell. An index only narrows what is
tested: the table still runs ``matches`` on every candidate, in print order.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from .address import address_sort_key, normalise_address
from .values import parse_bool, parse_duration

Row = Mapping[str, str]
Canon = Callable[[str], object]
Predicate = Callable[[Row], bool]
V = TypeVar("V")


def _true(row: Row) -> bool:
    return True


def _not(p: Predicate) -> Predicate:
    return lambda row: not p(row)


def _and(a: Predicate, b: Predicate) -> Predicate:
    return lambda row: a(row) and b(row)


def _or(a: Predicate, b: Predicate) -> Predicate:
    return lambda row: a(row) or b(row)


def _all(preds: Sequence[Predicate]) -> Predicate:
    return lambda row: all(p(row) for p in preds)

_BOOLEAN = frozenset({"disabled", "dynamic", "invalid"})
# First characters a number or an address can start with (``_order_key``).
_MAYBE_NUMBER = frozenset("-0123456789abcdefABCDEF.:")
_DURATION = frozenset({"timeout", "uptime"})


class QueryError(ValueError):
    """A malformed query word (the router answers with a trap)."""


def _canonical(name: str, value: str, family: int | None) -> object:
    """The typed value used to compare property ``name``; falls back to text."""
    try:
        if name in _BOOLEAN:
            return parse_bool(value)
        if name in _DURATION:
            return parse_duration(value)
        if name == "address" and family is not None:
            return normalise_address(value, family)
    except ValueError:
        return value
    return value


def _order_key(name: str, value: str) -> tuple[int, object]:
    """Sort key of one value: numbers < addresses < other text, by kind."""
    if name in _DURATION:
        try:
            return (0, parse_duration(value))
        except ValueError:
            pass
    if value.lstrip("-").isdigit():
        return (0, int(value))
    address = address_sort_key(value)
    if address is not None:
        return (1, address)
    return (2, value)


@dataclass(frozen=True, slots=True)
class Test:
    """One condition word: ``kind`` is one of ``has``, ``lacks``, ``=``, ``<``, ``>``."""

    kind: str
    name: str
    value: str = ""

    def evaluate(self, row: Row, family: int | None) -> bool:
        present = self.name in row
        if self.kind == "has":
            return present
        if self.kind == "lacks":
            return not present
        if self.kind == "=":
            if not present:
                return self.value == ""
            actual = row[self.name]
            if actual == self.value:
                return True
            return _canonical(self.name, actual, family) == _canonical(self.name, self.value, family)
        if not present:
            return False
        left, right = _order_key(self.name, row[self.name]), _order_key(self.name, self.value)
        if left[0] != right[0]:
            left, right = (2, row[self.name]), (2, self.value)
        if self.kind == "<":
            return left < right
        return left > right

    def predicate(self, family: int | None, *, stored: bool = False) -> Predicate:
        """``evaluate`` with the constant side worked out once. ``stored``: rows hold
        addresses in their stored (normalised) form, as the table's rows do."""
        name, value, kind = self.name, self.value, self.kind
        if kind == "has":
            return lambda row: name in row
        if kind == "lacks":
            return lambda row: name not in row
        if kind == "=":
            right = _canonical(name, value, family)
            if stored and name == "address" and family is not None:
                return lambda row: (row[name] in (value, right)) if name in row else value == ""
            if name not in _BOOLEAN and name not in _DURATION and name != "address":
                # Plain text: its canonical form is itself.
                return lambda row: (row[name] == value) if name in row else value == ""
            return lambda row: (
                row[name] == value or _canonical(name, row[name], family) == right
            ) if name in row else value == ""
        right_key = _order_key(name, value)
        less = kind == "<"

        plain = name not in _DURATION

        def order(row: Row) -> bool:
            if name not in row:
                return False
            actual = row[name]
            if plain and (not actual or actual[0] not in _MAYBE_NUMBER):
                # Neither a number nor an address (a comment, a name): plain text order,
                # whatever the other side is (mixed kinds compare as text).
                return actual < value if less else actual > value
            left, right = _order_key(name, actual), right_key
            if left[0] != right[0]:
                left, right = (2, actual), (2, value)
            return left < right if less else left > right

        return order


@dataclass(frozen=True, slots=True)
class StackOps:
    """One ``?#`` word: the operator characters after ``#``."""

    ops: str

    def __post_init__(self) -> None:
        unknown = set(self.ops) - set("0123456789!&|.")
        if unknown:
            raise QueryError(f"unknown query operator {min(unknown)!r}")

    def fold(self, stack: list[Predicate]) -> list[Predicate]:
        """``apply`` on predicates instead of booleans: the same operations, built once."""
        return self.run(stack, _true, _not, _and, _or)

    def apply(self, stack: list[bool]) -> list[bool]:
        """The operations on a stack of booleans (the reference ``fold`` is checked against)."""
        return self.run(stack, True, operator.not_, lambda a, b: a and b, lambda a, b: a or b)

    def run(
        self,
        stack: list[V],
        true: V,
        not_: Callable[[V], V],
        and_: Callable[[V, V], V],
        or_: Callable[[V, V], V],
    ) -> list[V]:
        """The operations on any stack: ``true`` is what lies below its bottom."""
        # The stack is a finite list over infinitely many implicit ``true``s,
        # top at the end; reading past the bottom yields ``true``.
        def peek(index: int) -> V:
            return stack[-1 - index] if index < len(stack) else true

        def pop() -> V:
            return stack.pop() if stack else true

        ops, position = self.ops, 0
        while position < len(ops):
            char = ops[position]
            if char.isdigit():
                end = position
                while end < len(ops) and ops[end].isdigit():
                    end += 1
                value = peek(int(ops[position:end]))
                if end == len(ops):
                    stack[:] = [value]
                    return stack
                stack.append(value)
                position = end + 1 if ops[end] == "." else end
                continue
            if char == "!":
                stack.append(not_(pop()))
            elif char == "&":
                right, left = pop(), pop()
                stack.append(and_(left, right))
            elif char == "|":
                right, left = pop(), pop()
                stack.append(or_(left, right))
            elif char == ".":
                stack.append(peek(0))
            else:
                raise QueryError(f"unknown query operator {char!r}")
            position += 1
        return stack


Step = Test | StackOps

#: Properties an address table indexes (``AddressTable.select``): by value, and the
#: comment also in text order.
INDEXED = frozenset({"address", "list", "comment"})


@dataclass(frozen=True, slots=True)
class Eq:
    """Rows whose ``name`` is one of ``values`` (stored text, exactly)."""

    name: str
    values: frozenset[str]


@dataclass(frozen=True, slots=True)
class Range:
    """Rows that have ``name``, with ``low`` < value < ``high`` in text order (None: no
    bound on that side)."""

    name: str
    low: str | None = None
    high: str | None = None

    def holds(self, value: str) -> bool:
        return (self.low is None or value > self.low) and (self.high is None or value < self.high)

    def meet(self, other: Range) -> Range | None:
        """The intersection of two ranges over the same property (None: empty)."""
        low = self.low if other.low is None or (self.low is not None and self.low > other.low) else other.low
        high = self.high if other.high is None or (self.high is not None and self.high < other.high) else other.high
        if low is not None and high is not None and low >= high:
            return None
        return Range(self.name, low, high)


Atom = Eq | Range
#: A union of atoms: a superset of the rows a query (part) selects. None: any row.
Candidates = tuple[Atom, ...] | None
_MAX_PRODUCT = 64  # atom pairs an AND of two unions is worked out for (else one side)
# Which side of an AND to keep when its atoms cannot be intersected: the likelier to
# name few rows (an address or a comment before a whole list, a bounded range before
# an open one).
_RANK = {"address": 0, "comment": 1, "list": 3}


def _rank(atom: Atom) -> int:
    if isinstance(atom, Eq):
        return _RANK.get(atom.name, 4)
    bounded = atom.low is not None and atom.high is not None
    return 2 if bounded else 5


def _meet(a: Atom, b: Atom) -> tuple[Atom, ...]:
    """Atoms covering every row in both ``a`` and ``b``."""
    if a.name != b.name:
        return (a,) if _rank(a) <= _rank(b) else (b,)
    if isinstance(a, Eq) and isinstance(b, Eq):
        values = a.values & b.values
    elif isinstance(a, Eq) and isinstance(b, Range):
        values = frozenset(v for v in a.values if b.holds(v))
    elif isinstance(a, Range) and isinstance(b, Eq):
        values = frozenset(v for v in b.values if a.holds(v))
    else:
        assert isinstance(a, Range) and isinstance(b, Range)
        both = a.meet(b)
        return (both,) if both is not None else ()
    return (Eq(a.name, values),) if values else ()


def _cand_and(a: Candidates, b: Candidates) -> Candidates:
    if a is None:
        return b
    if b is None:
        return a
    if len(a) * len(b) <= _MAX_PRODUCT:
        return tuple(atom for x in a for y in b for atom in _meet(x, y))
    return a if max(map(_rank, a), default=0) <= max(map(_rank, b), default=0) else b


def _cand_or(a: Candidates, b: Candidates) -> Candidates:
    return None if a is None or b is None else a + b


def _cand_not(a: Candidates) -> Candidates:
    return None


def _test_candidates(test: Test, family: int | None) -> Candidates:
    """The rows of an address table that can pass ``test`` (None: any row)."""
    name, value, kind = test.name, test.value, test.kind
    if name not in INDEXED:
        return None
    if kind == "=":
        if name == "comment" and value == "":
            return None  # every row without a comment passes
        # list and address are always present; comment, list and stored addresses
        # compare as plain text, an address also by its stored form.
        values = {value}
        if name == "address":
            values.add(str(_canonical(name, value, family)))
        return (Eq(name, frozenset(values)),)
    if kind in ("<", ">") and name == "comment" and _order_key(name, value)[0] == 2:
        # Text that is neither a number nor an address is compared as text with
        # whatever a row holds (``Test.evaluate``: mixed kinds compare as text).
        if kind == "<":
            return (Range(name, high=value),)
        return (Range(name, low=value),)
    return None


@dataclass(frozen=True, slots=True)
class Query:
    steps: tuple[Step, ...] = ()
    #: Address family used to normalise ``?address=`` values (None: no menu).
    family: int | None = None
    #: Rows come from an address table: addresses already in stored form.
    stored: bool = False
    _predicate: Predicate | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        stack: list[Predicate] = []
        for step in self.steps:
            if isinstance(step, Test):
                stack.append(step.predicate(self.family, stored=self.stored))
            else:
                stack = step.fold(stack)
        predicate = stack[0] if len(stack) == 1 else _all(tuple(stack)) if stack else _true
        object.__setattr__(self, "_predicate", predicate)

    def matches(self, row: Row) -> bool:
        assert self._predicate is not None
        return self._predicate(row)

    def matches_by_stack(self, row: Row) -> bool:
        """``matches`` run on the boolean stack machine itself (the reference)."""
        stack: list[bool] = []
        for step in self.steps:
            if isinstance(step, Test):
                stack.append(step.evaluate(row, self.family))
            else:
                stack = step.apply(stack)
        return all(stack)

    def candidates(self) -> Candidates:
        """For an address table's query (``stored``): atoms whose rows include every row
        the query selects, or None when no index can tell (see the module doc)."""
        if not self.stored or self.family is None:
            return None
        stack: list[Candidates] = []
        for step in self.steps:
            if isinstance(step, Test):
                stack.append(_test_candidates(step, self.family))
            else:
                stack = step.run(stack, None, _cand_not, _cand_and, _cand_or)
        found: Candidates = None
        for item in stack:
            found = _cand_and(found, item)
        return found

    @property
    def list_filter(self) -> str | None:
        """``X`` when the query is only equality tests including ``list=X``."""
        if not self.steps or not all(isinstance(s, Test) and s.kind == "=" for s in self.steps):
            return None
        lists = {s.value for s in self.steps if isinstance(s, Test) and s.name == "list"}
        return lists.pop() if len(lists) == 1 else None


def _parse_word(word: str) -> Step:
    body = word[1:]
    if body.startswith("#"):
        return StackOps(body[1:])
    kind = "="
    if body[:1] in ("<", ">", "="):
        kind, body = body[0], body[1:]
        name, sep, value = body.partition("=")
        if not sep and kind != "=":
            raise QueryError(f"query word {word!r} needs a value")
        if not sep:
            return Test("has", name)
        return Test(kind, name, value)
    if body.startswith("-"):
        return Test("lacks", body[1:])
    name, sep, value = body.partition("=")
    if not sep:
        return Test("has", name)
    return Test("=", name, value)


def compile_query(
    words: Sequence[str], *, family: int | None = None, stored: bool = False
) -> Query:
    """Compile ``?`` words (each starting with ``?``) in client order. ``stored``: the
    rows will be the table's own (addresses normalised), which spares re-normalising
    every row's address for ``?address=``."""
    steps = tuple(_parse_word(word) for word in words)
    for step in steps:
        if isinstance(step, Test) and not step.name:
            raise QueryError("query word without a property name")
    return Query(steps, family, stored)
