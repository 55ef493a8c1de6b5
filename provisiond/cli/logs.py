"""Logging set-up for the CLI and the daemon: text or JSON lines, secrets redacted.

Every handler gets ``RedactSecrets``, a last line of defence: the code never logs a
secret on purpose, and this filter masks anything shaped like one (``password=…``,
``secret=…``, ``token=…``, ``Bearer …``, a password in a database URL) should a library put it in a message.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

_PATTERNS = [
    (re.compile(r"(=?(?:password|passwd|secret|response|token)=)[^\s'\",&]+", re.I), r"\1***"),
    (re.compile(r"(Bearer\s+)[^\s'\",]+", re.I), r"\1***"),
    (re.compile(r"(://[^:/@\s]+:)[^@/\s]+@"), r"\1***@"),
]


def redact(text: str) -> str:
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_PAIR = re.compile(r"""(?<!\S)([a-z_][a-z0-9_]*)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S+)""")
_RESERVED = frozenset({"ts", "level", "logger", "msg", "exc"})


def split_pairs(message: str) -> tuple[str, dict[str, Any]]:
    """``"pass=3 result=ok changes=2 done"`` -> ``("done", {"pass": 3, "result": "ok", "changes": 2})``.

    Values quoted with ``%r`` lose their quotes; whole numbers become numbers.
    """
    fields: dict[str, Any] = {}

    def take(m: re.Match[str]) -> str:
        key, value = m.group(1), m.group(2)
        if key in _RESERVED:
            return m.group(0)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            try:
                fields[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                fields[key] = value[1:-1]
        elif re.fullmatch(r"-?\d+", value):
            fields[key] = int(value)
        else:
            fields[key] = value
        return ""

    rest = _PAIR.sub(take, message)
    return " ".join(rest.split()), fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the message's key=value pairs become fields of their own."""

    def format(self, record: logging.LogRecord) -> str:
        msg, fields = split_pairs(record.getMessage())
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": msg,
        }
        doc.update(fields)
        if record.exc_info:
            doc["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:  # formatted already (a record from the full-pass process)
            doc["exc"] = redact(record.exc_text)
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(*, verbosity: int = 0, fmt: str = "text") -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactSecrets())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    # librouteros logs every word it sends at DEBUG, /login's password included.
    logging.getLogger("librouteros").setLevel(logging.INFO)
