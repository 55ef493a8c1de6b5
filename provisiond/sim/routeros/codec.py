"""RouterOS API wire codec: bytes <-> words <-> sentences.

Sits at the very bottom of the simulator. The connection loop in ``server``
feeds it a buffered ``read`` callable and gets back one sentence (a list of
words) at a time; replies built by ``session`` are turned into one ``bytes``
blob here so the server can write each reply with a single ``sendall``.
Pure functions only: no sockets, no state.

Words are carried as ``str`` decoded with ``surrogateescape`` so that any
byte sequence a client sends (UTF-8, latin-1, garbage) round-trips unchanged,
as it does on a real router, which never interprets comment bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

ENCODING = "utf-8"
ERRORS = "surrogateescape"

#: Largest length that fits the 4-byte form. Replies never use the 5-byte form
#: because librouteros cannot decode it (../shared/ROUTEROS.md 1.1).
MAX_EMITTED_LENGTH = 0xFFFFFFF


class ProtocolViolation(Exception):
    """The peer sent something that makes the stream unusable (close it)."""


class PeerClosed(Exception):
    """The peer closed the connection (possibly mid-word)."""


def encode_length(length: int) -> bytes:
    """Encode a word length in the 1-4 byte forms of ../shared/ROUTEROS.md 1.1."""
    if length < 0:
        raise ValueError(f"negative length {length}")
    if length < 0x80:
        return bytes((length,))
    if length < 0x4000:
        return (length | 0x8000).to_bytes(2, "big")
    if length < 0x200000:
        return (length | 0xC00000).to_bytes(3, "big")
    if length <= MAX_EMITTED_LENGTH:
        return (length | 0xE0000000).to_bytes(4, "big")
    raise ValueError(f"word of {length} bytes is too long to send")


def encode_length_5(length: int) -> bytes:
    """The 5-byte form (``F0`` + 4 bytes); accepted on input, never emitted."""
    return b"\xf0" + length.to_bytes(4, "big")


def encode_word(word: str) -> bytes:
    raw = word.encode(ENCODING, ERRORS)
    return encode_length(len(raw)) + raw


def encode_sentence(words: Sequence[str]) -> bytes:
    """One sentence: its words and the terminating zero-length word."""
    if not words:
        raise ValueError("refusing to encode an empty sentence")
    return b"".join(encode_word(word) for word in words) + b"\x00"


def encode_reply(sentences: Iterable[Sequence[str]]) -> bytes:
    return b"".join(encode_sentence(sentence) for sentence in sentences)


def _read_exact(read: Callable[[int], bytes], size: int) -> bytes:
    data = read(size)
    if len(data) != size:
        raise PeerClosed(f"wanted {size} bytes, got {len(data)}")
    return data


def read_length(read: Callable[[int], bytes]) -> int:
    """Decode one length prefix (1-5 bytes); control bytes >= 0xF8 are fatal."""
    first = _read_exact(read, 1)[0]
    if first < 0x80:
        return first
    if first < 0xC0:
        extra, value = 1, first & 0x3F
    elif first < 0xE0:
        extra, value = 2, first & 0x1F
    elif first < 0xF0:
        extra, value = 3, first & 0x0F
    elif first < 0xF8:
        # 0xF0 is the 5-byte form; the low bits of 0xF1-0xF7 carry no length.
        extra, value = 4, 0
    else:
        raise ProtocolViolation(f"control byte 0x{first:02X}")
    for byte in _read_exact(read, extra):
        value = (value << 8) | byte
    return value


def read_sentence(read: Callable[[int], bytes], *, max_word: int | None = None) -> list[str]:
    """Read words up to the zero-length terminator; may return an empty list.

    ``max_word`` bounds a single word (used before login so that an
    unauthenticated peer cannot make the simulator allocate gigabytes).
    """
    words: list[str] = []
    while True:
        length = read_length(read)
        if length == 0:
            return words
        if max_word is not None and length > max_word:
            raise ProtocolViolation(f"word of {length} bytes before login")
        words.append(_read_exact(read, length).decode(ENCODING, ERRORS))
