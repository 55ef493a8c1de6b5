"""A private FreeRADIUS 3.2 instance for tests (FREERADIUS.md section 2, verified recipe).

Copies ``/etc/freeradius/3.0`` into a temporary directory, drops the stock sites and
modules, writes an ``sql`` module pointing at the test's database (PostgreSQL or
MySQL/MariaDB dialect), one virtual server on free loopback ports with the BlastRADIUS
Message-Authenticator fix in post-auth, and runs ``freeradius -f -l stdout -d DIR``.
Ready when it answers Status-Server. Also a tiny pyrad client to authenticate users.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyrad.packet as P
import sqlalchemy as sa
from pyrad.client import Client, Timeout
from pyrad.dictionary import Dictionary

from provisiond.sim.nas import sim_dictionary

FREERADIUS = "freeradius"
STOCK = Path("/etc/freeradius/3.0")
SECRET = "testing123"
SCHEMA = STOCK / "mods-config/sql/main/{dialect}/schema.sql"


def require_freeradius() -> str:
    binary = shutil.which(FREERADIUS) or shutil.which(FREERADIUS, path="/usr/sbin:/sbin")
    if binary is None or not STOCK.is_dir():
        raise RuntimeError(
            "FreeRADIUS 3.2 is not installed: these tests need the real server. Install it with "
            "`apt-get install -y freeradius freeradius-postgresql freeradius-mysql freeradius-utils` "
            "(.ci/run does)"
        )
    return binary


def load_schema(url: str, *rows: str) -> None:
    """Load FreeRADIUS's own schema.sql for the URL's dialect into the (empty) database,
    then run ``rows`` (the operator's own INSERTs: radcheck passwords, group replies)."""
    engine = sa.create_engine(url)
    dialect = {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite"}[
        engine.dialect.name
    ]
    statements = _split_sql(Path(str(SCHEMA).format(dialect=dialect)).read_text())
    try:
        with engine.begin() as conn:
            for stmt in (*statements, *rows):
                conn.exec_driver_sql(stmt)
    finally:
        engine.dispose()


def _split_sql(text: str) -> list[str]:
    out, buf = [], []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("--", "#")) or not stripped:
            continue
        buf.append(line)
        if stripped.endswith(";"):
            stmt = "\n".join(buf).strip().rstrip(";")
            buf = []
            # block comments
            while "/*" in stmt and "*/" in stmt:
                a, b = stmt.index("/*"), stmt.index("*/")
                stmt = (stmt[:a] + stmt[b + 2 :]).strip()
            if stmt:
                out.append(stmt)
    return out


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class FreeRadius:
    auth_port: int
    acct_port: int
    secret: str
    dictionary: Dictionary
    log: Path

    def client(self, timeout: float = 2.0, *, enforce_ma: bool = True) -> Client:
        return Client(
            server="127.0.0.1", authport=self.auth_port, acctport=self.acct_port,
            secret=self.secret.encode(), dict=self.dictionary, retries=2, timeout=timeout,
            enforce_ma=enforce_ma,
        )

    def authenticate(self, username: str, password: str) -> tuple[int, dict[str, list[Any]]]:
        """(reply code, reply attributes) of a PAP Access-Request."""
        c = self.client()
        req = c.CreateAuthPacket(code=P.AccessRequest, User_Name=username)
        req["User-Password"] = req.PwCrypt(password)
        rep = c.SendPacket(req)
        return rep.code, {str(k): list(rep[k]) for k in rep.keys() if k != "Message-Authenticator"}

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _sql_module(url: sa.engine.URL, dialect: str) -> str:
    driver = "rlm_sql_postgresql" if dialect == "postgresql" else "rlm_sql_mysql"
    return f"""
sql {{
    dialect = "{dialect}"
    driver = "{driver}"
    server = "{url.host or '127.0.0.1'}"
    port = {url.port or (5432 if dialect == 'postgresql' else 3306)}
    login = "{url.username or ''}"
    password = "{url.password or ''}"
    radius_db = "{url.database}"
    acct_table1 = "radacct"
    acct_table2 = "radacct"
    postauth_table = "radpostauth"
    authcheck_table = "radcheck"
    groupcheck_table = "radgroupcheck"
    authreply_table = "radreply"
    groupreply_table = "radgroupreply"
    usergroup_table = "radusergroup"
    read_groups = yes
    auto_escape = yes
    read_clients = no
    client_table = "nas"
    group_attribute = "SQL-Group"
    pool {{
        start = 1
        min = 1
        max = 4
        spare = 1
        uses = 0
        retry_delay = 1
        lifetime = 0
        idle_timeout = 60
    }}
    $INCLUDE ${{modconfdir}}/${{.:name}}/main/${{dialect}}/queries.conf
}}
"""


def _site(auth_port: int, acct_port: int) -> str:
    return f"""
server test {{
    listen {{
        type = auth
        ipaddr = 127.0.0.1
        port = {auth_port}
    }}
    listen {{
        type = acct
        ipaddr = 127.0.0.1
        port = {acct_port}
    }}
    authorize {{
        preprocess
        chap
        mschap
        sql
        pap
    }}
    authenticate {{
        Auth-Type PAP {{
            pap
        }}
        Auth-Type CHAP {{
            chap
        }}
        Auth-Type MS-CHAP {{
            mschap
        }}
    }}
    preacct {{
        preprocess
        acct_unique
    }}
    accounting {{
        sql
    }}
    post-auth {{
        update reply {{
            Message-Authenticator := 0x00
        }}
        sql
        Post-Auth-Type REJECT {{
            sql
            attr_filter.access_reject
            update reply {{
                Message-Authenticator := 0x00
            }}
        }}
    }}
}}
"""


def build_config(base: Path, db_url: str, auth_port: int, acct_port: int) -> Path:
    raddb = base / "raddb"
    for sub in ("log", "run", "log/radacct"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    shutil.copytree(STOCK, raddb, symlinks=True)
    conf = raddb / "radiusd.conf"
    lines = []
    for line in conf.read_text().splitlines():
        s = line.strip()
        if s.startswith("raddbdir ="):
            line = f"raddbdir = {raddb}"
        elif s.startswith("logdir ="):
            line = f"logdir = {base / 'log'}"
        elif s.startswith("run_dir ="):
            line = f"run_dir = {base / 'run'}"
        elif s.startswith("reject_delay ="):
            line = "\treject_delay = 0"
        elif s in ("user = freerad", "group = freerad"):
            continue
        lines.append(line)
    conf.write_text("\n".join(lines) + "\n")
    for d in ("mods-enabled", "sites-enabled"):
        for entry in (raddb / d).iterdir():
            entry.unlink()
    for m in ("always", "attr_filter", "expr", "pap", "chap", "mschap", "preprocess"):
        (raddb / "mods-enabled" / m).symlink_to(f"../mods-available/{m}")
    url = sa.engine.make_url(db_url)
    dialect = "postgresql" if url.get_backend_name() == "postgresql" else "mysql"
    (raddb / "mods-enabled" / "sql").write_text(_sql_module(url, dialect))
    (raddb / "sites-enabled" / "test").write_text(_site(auth_port, acct_port))
    (raddb / "clients.conf").write_text(
        f"client localhost {{\n ipaddr = 127.0.0.1\n secret = {SECRET}\n"
        " require_message_authenticator = no\n nas_type = other\n}\n"
    )
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "u+rwX", str(base)], check=True)
    return raddb


@contextmanager
def freeradius(db_url: str, *, startup_timeout: float = 10.0) -> Iterator[FreeRadius]:
    """Run a private FreeRADIUS against ``db_url`` (schema already loaded) until the block ends."""
    binary = require_freeradius()
    base = Path(tempfile.mkdtemp(prefix="provisiond-fr-"))
    auth_port, acct_port = _free_udp_port(), _free_udp_port()
    raddb = build_config(base, db_url, auth_port, acct_port)
    logfile = base / "stdout.log"
    check = subprocess.run([binary, "-C", "-d", str(raddb)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"freeradius -C failed:\n{check.stdout[-3000:]}\n{check.stderr[-2000:]}")
    with logfile.open("wb") as out:
        proc = subprocess.Popen([binary, "-f", "-l", "stdout", "-d", str(raddb)], stdout=out, stderr=out)
    server = FreeRadius(auth_port, acct_port, SECRET, sim_dictionary(), logfile)
    try:
        _wait_ready(server, proc, startup_timeout)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(base, ignore_errors=True)


def _wait_ready(server: FreeRadius, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"freeradius exited with {proc.returncode}:\n{server.log_text()[-3000:]}")
        # 3.2.1 answers Status-Server without a Message-Authenticator (BlastRADIUS, fixed in 3.2.5)
        c = server.client(timeout=0.1, enforce_ma=False)
        c.retries = 1
        try:
            req = c.CreateAuthPacket(code=P.StatusServer)  # pyrad 2.6 adds Message-Authenticator
            if c.SendPacket(req).code == P.AccessAccept:
                return
        except (Timeout, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"freeradius not ready after {timeout}s:\n{server.log_text()[-3000:]}")
