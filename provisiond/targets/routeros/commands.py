"""The commands provisiond sends to RouterOS address lists, as words: the menus, the
prints of a full read, of a count and of a scoped read (their properties and query
words), and the words of remove, add and set.

Values in, words out; ``target`` and ``writer`` hand them to ``pipeline``. An add may
also come encoded already (``AddWords``), as an apply that sends thousands alike
wants it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from provisiond.core.addresses import family
from provisiond.core.changes import Create, Delete, Update
from provisiond.targets.routeros.wire import word

MENUS = {4: ("ip", "firewall", "address-list"), 6: ("ipv6", "firewall", "address-list")}
PROPLIST = (".id", "list", "address", "comment", "dynamic", "disabled", "timeout")
SCOPED_PROPLIST_WORD = "=.proplist=" + ",".join(PROPLIST)  # a scoped print spans every list
# A full read's print spans the managed lists, so a row names its list; nothing reads
# ``timeout``. Fewer words per row for the router to write and us to read.
PRINT_PROPLIST_WORD = "=.proplist=.id,list,address,comment,dynamic,disabled"
COUNT_PROPLIST_WORD = "=.proplist=list"
SCOPE_CHUNK = 50  # accounts (and as many addresses) per scoped print: bounded query words

Print = tuple[str, ...]


def menu_path(fam: int) -> str:
    """The menu of one family's address lists: ``/ip/firewall/address-list``."""
    return f"/{'/'.join(MENUS[fam])}"


def lists_query(lists: Sequence[str]) -> list[str]:
    """Query words selecting the rows of any of ``lists``: ``?list=a ?list=b ?#| ?list=c
    ?#| …`` (a router scans its whole table for a print whatever the query, so one
    print over every list costs what one over a single list does)."""
    words: list[str] = []
    for n, name in enumerate(lists):
        words.append(f"?list={name}")
        if n:
            words.append("?#|")
    return words


def list_prints(lists: Sequence[str]) -> list[tuple[int, Print]]:
    """A full read's prints: one per family over every list of ``lists`` (none without
    lists), each with its family."""
    if not lists:
        return []
    query = lists_query(lists)
    return [(fam, (f"{menu_path(fam)}/print", PRINT_PROPLIST_WORD, *query)) for fam in (4, 6)]


def count_prints(lists: Sequence[str]) -> list[tuple[int, Print]]:
    """Prints that count the entries of ``lists``: one per family, each row only its
    list (``count-only`` would cost a table scan per list)."""
    if not lists:
        return []
    query = lists_query(lists)
    return [(fam, (f"{menu_path(fam)}/print", COUNT_PROPLIST_WORD, *query)) for fam in (4, 6)]


def scoped_prints(head: str, accounts: list[str],
                  addresses: dict[int, list[str]]) -> list[tuple[tuple[int, int], Print]]:
    """A scoped read's prints: per family, one per chunk of ``accounts`` (their entries
    by comment, ``head`` the marker and ``:``) and of that family's ``addresses``."""
    return [((fam, n), (f"/{'/'.join(MENUS[fam])}/print", SCOPED_PROPLIST_WORD, *words))
            for fam in (4, 6)
            for n, words in enumerate(scope_queries(head, accounts, addresses[fam]))]


def scope_queries(head: str, accounts: list[str], addresses: list[str]) -> Iterator[list[str]]:
    """Query words: OR over a chunk of accounts' marker ranges and wanted addresses.

    An account's entries are those whose comment is ``head`` and its id, then a space
    or nothing: ``low <= comment < low + "!"`` (``!`` sorts right after the space), so
    ``provisiond:1042 Name`` matches ``1042`` and ``provisiond:10420`` does not. A
    print with no query words would print the whole table, so none is made."""
    for start in range(0, max(len(accounts), len(addresses)), SCOPE_CHUNK):
        words: list[str] = []
        terms = 0
        for account in accounts[start:start + SCOPE_CHUNK]:
            low = f"{head}{account}"
            words += [f"?=comment={low}", f"?>comment={low}", "?#|",
                      f"?<comment={low}!", "?#&"]
            terms += 1
        for address in addresses[start:start + SCOPE_CHUNK]:
            words.append(f"?=address={address}")
            terms += 1
        if terms:
            words += ["?#|"] * (terms - 1)
            yield words


def remove_words(batch: Sequence[Delete]) -> tuple[str, ...]:
    """One remove of every entry of ``batch`` (one family): their ids comma-joined."""
    menu = MENUS[family(batch[0].old.get("address"))]
    return (f"/{'/'.join(menu)}/remove", "=.id=" + ",".join(c.old.ref for c in batch))


def add_words(change: Create) -> tuple[str, ...]:
    r = change.new
    address = r.get("address")
    return (f"/{'/'.join(MENUS[family(address)])}/add", f"=list={r.get('list')}",
            f"=address={address}", f"=comment={r.get('comment')}")


def set_words(change: Update) -> tuple[str, ...]:
    r = change.new
    return (f"/{'/'.join(MENUS[family(r.get('address'))])}/set", f"=.id={change.old.ref}",
            f"=comment={r.get('comment')}", f"=disabled={'yes' if r.get('disabled') == 'true' else 'no'}")


class AddWords:
    """``add_words`` as sent: the command and list words encoded once per list and
    family; the address and comment words with the one length byte librouteros gives a
    word shorter than 128 bytes (a longer one takes its encoder). A Resource as
    ``desire`` makes one (list and address its ident, the comment its first attribute)
    is read without ``Resource.get``'s search; any other takes ``get``."""

    def __init__(self, encoding: str) -> None:
        self._encoding = encoding
        self._heads: dict[tuple[str, bool], bytes] = {}

    def __call__(self, change: Create) -> bytes:
        r = change.new
        try:
            (k1, name), (k2, address) = r.ident
            k3, comment = r.attrs[0]
            plain = k1 == "list" and k2 == "address" and k3 == "comment"
        except (ValueError, IndexError):
            plain = False
        if not plain:
            name, address, comment = r.get("list"), r.get("address"), r.get("comment")
        six = ":" in address  # family(address) == 6
        head = self._heads.get((name, six))
        if head is None:
            command, first = add_words(change)[:2]
            head = self._heads[name, six] = word(command, self._encoding) + word(first, self._encoding)
        a, c = address.encode(self._encoding), comment.encode(self._encoding)
        if len(a) < 0x77 and len(c) < 0x77:  # "=address=" and "=comment=" are 9 bytes
            return b"%b%c=address=%b%c=comment=%b" % (head, len(a) + 9, a, len(c) + 9, c)
        return head + word(f"=address={address}", self._encoding) + word(f"=comment={comment}", self._encoding)
