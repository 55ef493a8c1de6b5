"""Real database servers for the tests.

Use the PostgreSQL (127.0.0.1:5432, user postgres) or MariaDB (127.0.0.1:3306, root)
that is running when it is reachable; otherwise start a throwaway server in a
temporary directory on a free loopback port, and stop it at the end of the session.
Every test gets its own fresh database (``fresh_database``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Server:
    dialect: str  # "postgresql" or "mysql"
    port: int
    user: str

    def url(self, database: str) -> str:
        if self.dialect == "postgresql":
            return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"
        return f"mysql+pymysql://{self.user}@127.0.0.1:{self.port}/{database}?charset=utf8mb4"

    def admin_url(self) -> str:
        return self.url("postgres" if self.dialect == "postgresql" else "mysql")


def _as_user(user: str) -> dict[str, object]:
    if os.geteuid() != 0:
        return {}
    import pwd

    pw = pwd.getpwnam(user)
    return {"user": pw.pw_uid, "group": pw.pw_gid}


def _use_running() -> bool:
    """PROVISIOND_TEST_OWN_SERVERS=1 starts throwaway servers even when others run."""
    return os.environ.get("PROVISIOND_TEST_OWN_SERVERS", "") in ("", "0")


@contextlib.contextmanager
def postgres_server() -> Iterator[Server]:
    if _use_running() and _reachable(5432) and _pg_ok(5432):
        yield Server("postgresql", 5432, "postgres")
        return
    bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
    tmp = tempfile.mkdtemp(prefix="provisiond-pg-")
    owner = "postgres" if os.geteuid() == 0 else None
    if owner:
        shutil.chown(tmp, owner, owner)
    data = os.path.join(tmp, "data")
    port = free_port()
    kw = _as_user(owner) if owner else {}
    subprocess.run(
        [f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True, capture_output=True, **kw,  # type: ignore[call-overload]
    )
    proc = subprocess.Popen(
        [f"{bindir}/postgres", "-D", data, "-p", str(port), "-h", "127.0.0.1", "-k", tmp,
         "-c", "fsync=off", "-c", "max_connections=200"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw,  # type: ignore[call-overload]
    )
    try:
        _wait(lambda: _pg_ok(port), "throwaway PostgreSQL")
        yield Server("postgresql", port, "postgres")
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def _pg_ok(port: int) -> bool:
    try:
        eng = sa.create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres")
        with eng.connect() as c:
            c.execute(sa.text("select 1"))
        eng.dispose()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def mariadb_server() -> Iterator[Server]:
    if _use_running() and _reachable(3306) and _my_ok(3306):
        yield Server("mysql", 3306, "root")
        return
    tmp = tempfile.mkdtemp(prefix="provisiond-mariadb-")
    data = os.path.join(tmp, "data")
    port = free_port()
    user = ["--user=root"] if os.geteuid() == 0 else []
    subprocess.run(
        ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--auth-root-authentication-method=normal",
         "--skip-test-db", *user],
        check=True, capture_output=True,
    )
    proc = subprocess.Popen(
        ["mariadbd", "--no-defaults", f"--datadir={data}", f"--port={port}", "--bind-address=127.0.0.1",
         f"--socket={tmp}/mysqld.sock", f"--pid-file={tmp}/mysqld.pid", *user],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait(lambda: _my_ok(port), "throwaway MariaDB")
        yield Server("mysql", port, "root")
    finally:
        proc.terminate()
        proc.wait(20)
        shutil.rmtree(tmp, ignore_errors=True)


def _my_ok(port: int) -> bool:
    try:
        eng = sa.create_engine(f"mysql+pymysql://root@127.0.0.1:{port}/mysql")
        with eng.connect() as c:
            c.execute(sa.text("select 1"))
        eng.dispose()
        return True
    except Exception:
        return False


def _wait(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f}s")


@contextlib.contextmanager
def fresh_database(server: Server, prefix: str = "pvd") -> Iterator[str]:
    """A new empty database on ``server``; its SQLAlchemy URL. Dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server.admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        if server.dialect == "postgresql":
            c.execute(sa.text(f'CREATE DATABASE "{name}" ENCODING \'UTF8\' TEMPLATE template0'))
        else:
            c.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"))
    try:
        yield server.url(name)
    finally:
        with admin.connect() as c:
            if server.dialect == "postgresql":
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            else:
                c.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


@contextlib.contextmanager
def select_only_role(url: str, tables: tuple[str, ...]) -> Iterator[str]:
    """A new PostgreSQL login role with SELECT on only ``tables`` of the database at
    ``url`` (which connects as a superuser); the URL that connects as the role (the
    server trusts loopback). The role and its privileges are dropped afterwards."""
    role = f"pvd_reader_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
    try:
        if tables:
            with engine.connect() as c:
                c.execute(sa.text(f'GRANT SELECT ON {", ".join(tables)} TO "{role}"'))
        yield sa.make_url(url).set(username=role, password=None).render_as_string(hide_password=False)
    finally:
        with engine.connect() as c:
            c.execute(sa.text(f'DROP OWNED BY "{role}"'))  # its privileges in this database
            c.execute(sa.text(f'DROP ROLE "{role}"'))
        engine.dispose()
