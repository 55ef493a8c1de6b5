"""FreeRADIUS's SQL tables as provisiond reads and writes them, and two helpers every
part of the RADIUS target shares.

The tables are declared with only the columns FreeRADIUS's own ``schema.sql`` has for
PostgreSQL, MySQL/MariaDB and SQLite alike (SQLAlchemy Core): ``radusergroup`` and
``radreply`` (written), ``radgroupreply`` / ``radgroupcheck`` (read to predict a user's
reply), ``radacct`` (live sessions) and ``nas`` (per-NAS CoA secrets). ``chunks`` keeps
``IN`` lists short; ``reason`` is a database error's text fit for an error message.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

import sqlalchemy as sa

CHUNK = 1000

# -- FreeRADIUS's tables: only the columns every dialect's schema.sql has -------------
metadata = sa.MetaData()
radusergroup = sa.Table(
    "radusergroup", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("groupname", sa.String(64), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
)
radreply = sa.Table(
    "radreply", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("attribute", sa.String(64), nullable=False),
    sa.Column("op", sa.String(2), nullable=False),
    sa.Column("value", sa.String(253), nullable=False),
)
radgroupreply = sa.Table(
    "radgroupreply", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("groupname", sa.String(64)),
    sa.Column("attribute", sa.String(64)),
    sa.Column("op", sa.String(2)),
    sa.Column("value", sa.String(253)),
)
radgroupcheck = sa.Table(
    "radgroupcheck", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("groupname", sa.String(64)),
)
radacct = sa.Table(
    "radacct", metadata,
    sa.Column("radacctid", sa.BigInteger, primary_key=True),
    sa.Column("acctsessionid", sa.String(64)),
    sa.Column("username", sa.String(64)),
    sa.Column("nasipaddress", sa.String(15)),  # inet on PostgreSQL: read as text (str) in sessions
    sa.Column("acctstoptime", sa.DateTime),
    sa.Column("framedipaddress", sa.String(15)),
)
nas = sa.Table(
    "nas", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("nasname", sa.String(128)),
    sa.Column("secret", sa.String(60)),
)

T = TypeVar("T")


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def reason(exc: BaseException) -> str:
    """The driver's own first line: no SQL, no parameters, no URL."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

