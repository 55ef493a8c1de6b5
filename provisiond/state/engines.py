"""Opening the state store's database: SQLite (WAL, a busy timeout, the write lock
taken up front, private files) or a server (PostgreSQL, MySQL), and bringing its schema
to the newest migration (Alembic, skipped when the store is at ``SCHEMA_HEAD``).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url

from provisiond.errors import StoreError

BUSY_TIMEOUT_MS = 30_000
MIGRATE_LOCK = 0x70726F76_0001  # pg_advisory_xact_lock key: arbitrary, fixed, provisiond's own
VERSION_TABLE = "provisiond_schema_version"
# The newest migration's revision (provisiond/state/migrations/versions): a store that
# is there already opens without alembic. A test holds it to alembic's own head.
SCHEMA_HEAD = "0004"


def _sqlite_path(url: sa.URL) -> Path | None:
    """The file of a SQLite URL; None for an in-memory database."""
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)



def _sqlite_engine(url: sa.URL, *, readonly: bool) -> Engine | None:
    path = _sqlite_path(url)
    if readonly and path is not None:
        if not path.exists():
            return None  # an empty store; plan must not create the file

        # A read-write handle under query_only lets SQLite tidy its -wal/-shm files on
        # close; without write permission, fall back to a true read-only open.
        writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
        target = str(path) if writable else f"{path.resolve().as_uri()}?mode=ro"

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(
                target,
                uri=not writable,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA query_only = ON")
            return conn

        engine = sa.create_engine("sqlite://", creator=connect, poolclass=sa.pool.NullPool)
    else:
        if path is not None:
            make_private_dirs(path.parent)
            create_private_file(path)
        engine = sa.create_engine(
            url,
            connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            poolclass=sa.pool.NullPool if path is not None else sa.pool.StaticPool,
        )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi: sqlite3.Connection, _record: object) -> None:
        # Let SQLAlchemy, not the driver, say when a transaction starts (see _on_begin).
        dbapi.isolation_level = None
        cur = dbapi.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys = ON")
        if not readonly and path is not None:
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the lock up front: a deferred transaction upgrading to a write
        # lock can fail at once with "database is locked" despite the busy timeout.
        immediate = conn.get_execution_options().get("provisiond_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents 0700; existing ones stay as they are."""
    missing: list[Path] = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)  # mkdir's mode is filtered through the umask


def create_private_file(path: Path) -> None:
    """Create ``path`` empty and 0600 unless it exists (an empty file is a new SQLite database)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)  # open's mode is filtered through the umask
    finally:
        os.close(fd)


def state_files(url: str) -> list[Path]:
    """The files of a SQLite state store (database, -wal, -shm, the daemon's lock); [] otherwise."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        return []
    path = _sqlite_path(parsed) if parsed.get_backend_name() == "sqlite" else None
    if path is None:
        return []
    return [path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", ".lock"))]


def permission_warnings(url: str) -> list[str]:
    """For check-config: existing state files that other users may read or write."""
    out = []
    for path in state_files(url):
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            continue
        if mode & 0o077:
            out.append(f"state.url: {path} has mode {mode:04o}: other users can read every account's "
                       f"name and address in it; chmod 600 {path}")
    return out


def _server_engine(url: sa.URL, *, readonly: bool) -> Engine:
    if url.get_backend_name() != "postgresql":
        raise StoreError(
            f"state store {url.render_as_string(hide_password=True)}: "
            "use a sqlite:// or postgresql:// URL"
        )
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    engine = sa.create_engine(url, pool_pre_ping=True)
    if readonly:
        engine = engine.execution_options(postgresql_readonly=True)
    return engine


def _at_head(engine: Engine) -> bool:
    """True when the version table already names ``SCHEMA_HEAD``: nothing to migrate, and
    alembic (a third of a second to import) is not loaded. Anything else, a store not
    made yet included, is left to alembic."""
    try:
        with engine.connect() as conn:
            found = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    except sa.exc.SQLAlchemyError:
        return False
    return [tuple(row) for row in found] == [(SCHEMA_HEAD,)]


def _upgrade(engine: Engine) -> None:
    """Bring the schema to head, one process at a time."""
    if _at_head(engine):
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "provisiond.state:migrations")
    config.set_main_option("version_table", VERSION_TABLE)
    with engine.connect() as raw:
        conn = raw.execution_options(provisiond_write=True)
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATE_LOCK)))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
