"""An add as ``RouterTarget`` sends it (``AddWords``) is librouteros's encoding of its
words (``add_words``), whatever the Resource: as ``desire`` makes one or not, words
shorter or longer than 128 bytes, characters of more than one byte, either family."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from librouteros.protocol import encode_sentence

from provisiond.core.changes import Create, Resource
from provisiond.targets.routeros.commands import AddWords, add_words

text = st.one_of(st.sampled_from(["", "provisiond:1 Ridge Tower", "x" * 110, "x" * 118, "x" * 119, "\u00e9" * 60]),
                 st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=140))
address = st.sampled_from(["10.0.0.1", "10.0.0.0/24", "2001:db8::1/128", "1.2.3.4-1.2.3.9", "a" * 120,
                           "\u00e9" * 60])


@st.composite
def _resource(draw: st.DrawFn) -> Resource:
    lst, addr, comment = draw(st.sampled_from(["l", "tower-hosts", "y" * 130])), draw(address), draw(text)
    ident = (("list", lst), ("address", addr))
    attrs = (("comment", comment), ("disabled", "false"))
    shape = draw(st.sampled_from(["desire", "desire", "ident-swapped", "other-ident", "attrs-swapped",
                                  "no-attrs", "no-comment"]))
    if shape == "ident-swapped":
        ident = ident[::-1]
    elif shape == "other-ident":
        ident = (("list", lst), ("host", addr))
    elif shape == "attrs-swapped":
        attrs = attrs[::-1]
    elif shape == "no-attrs":
        attrs = ()
    elif shape == "no-comment":
        attrs = (("disabled", "false"),)
    return Resource(kind="address-list", group=lst, ident=ident, attrs=attrs)


@settings(max_examples=300, deadline=None)
@given(st.lists(_resource(), min_size=1, max_size=4))
def test_an_add_is_sent_as_librouteros_encodes_its_words(resources: list[Resource]) -> None:
    words = AddWords("utf-8")  # one per apply: its command and list words kept
    for r in resources:
        change = Create(r)
        assert words(change) + b"\x00" == encode_sentence(*add_words(change), encoding="utf-8")
