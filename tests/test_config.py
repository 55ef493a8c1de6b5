"""Configuration: every problem at once with its key path, warnings, env overrides, check-config."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from provisiond.cli import main as cli
from provisiond import settings as settings_mod
from provisiond.errors import ConfigError

EXAMPLE = Path(__file__).parent.parent / "config" / "provisiond.example.toml"
REFERENCE = Path(__file__).parent.parent / "config" / "provisiond.reference.toml"


def _write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "provisiond.toml"
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return path


def _billing(tmp_path: Path) -> str:
    db = tmp_path / "billing.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE a (id INTEGER, name TEXT, status TEXT, grp TEXT, ip TEXT, username TEXT)")
    con.execute("INSERT INTO a VALUES (1, 'One', 'active', 'Tower Hosts', '100.64.0.1', 'one')")
    con.commit()
    con.close()
    return f"sqlite:///{db}"


GOOD_QUERY = ("SELECT id AS account_id, name AS account_name, status, grp AS group_name, "
              "ip AS ip_address, username AS radius_username FROM a")


def test_reference_config_is_valid() -> None:
    s = settings_mod.load(REFERENCE)
    assert s.router[0].api_port == 8729
    assert s.pool[0].hold == 86400.0
    assert s.daemon.interval == 60.0


def test_example_config_is_minimal_and_valid() -> None:
    """SQL billing and one router; RADIUS, CoA, pools and TLS only in comments."""
    s = settings_mod.load(EXAMPLE)
    assert s.source.type == "sql" and len(s.router) == 1 and not s.router[0].tls
    assert s.radius is None and not s.radius_group and not s.pool and s.coa.mode == "off"
    assert s.router[0].password_file == Path("router-password")
    text = EXAMPLE.read_text()
    for commented in ("# [radius]", "# [coa]", "# [[pool]]", "# tls = true"):
        assert commented in text


def _keys(model: type, prefix: str = "") -> set[str]:
    """Every key path of the settings models (``router.password_file``)."""
    from pydantic import BaseModel

    from provisiond.settings import _model_in

    out = set()
    for name, field in model.model_fields.items():  # type: ignore[attr-defined]
        out.add(prefix + name)
        inner = _model_in(field.annotation)
        if inner is not None and issubclass(inner, BaseModel):
            out |= _keys(inner, prefix + name + ".")
    return out


def test_reference_config_documents_every_key() -> None:
    import re

    text = REFERENCE.read_text()
    sections: dict[str, set[str]] = {"": set()}
    section = ""
    for line in text.splitlines():
        m = re.match(r"^#?\s*\[{1,2}([a-z_]+)\]{1,2}\s*(#.*)?$", line)
        if m:
            section = m.group(1)
            sections.setdefault(section, set())
            continue
        m = re.match(r"^#?\s*([a-z_]+)\s*=", line)
        if m:
            sections.setdefault(section, set()).add(m.group(1))
    documented = {f"{s}.{k}" if s else k for s, keys in sections.items() for k in keys}
    documented |= {s for s in sections if s}
    missing = sorted(_keys(settings_mod.Settings) - documented)
    assert missing == [], f"keys missing from {REFERENCE.name}: {missing}"


def test_every_problem_is_reported_with_its_key_path(tmp_path: Path) -> None:
    path = _write(tmp_path, """
[source]
url = "sqlite:///x.db"
query = "select 1"
colour = "blue"

[[router]]
name = "core-1"
host = "192.0.2.1"
username = "u"
password = "p"

[[router]]
name = "core-2"
host = "192.0.2.2"
port = 99999
username = "u"
password = "p"

[[address_list]]
list = "tower-hosts"

[safety]
max_delete_ratio = -1
""")
    with pytest.raises(ConfigError) as exc:
        settings_mod.load(path)
    assert exc.value.problems == [
        "source.colour: unknown key",
        "router[1].port: Input should be less than or equal to 65535",
        "address_list[0]: set at least one of group, groups, status, statuses, active, delinquent",
        "safety.max_delete_ratio: Input should be greater than or equal to 0",
    ]


def test_exclude_outside_the_pool_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, """
[source]
url = "sqlite:///x.db"
query = "select 1"
[[pool]]
name = "c"
group = "X"
networks = ["100.64.1.0/24"]
exclude = ["100.64.1.9", "100.64.2.1"]
""")
    with pytest.raises(ConfigError) as exc:
        settings_mod.load(path)
    assert exc.value.problems == ["pool[0].exclude[1]: 100.64.2.1 lies (partly) outside the pool's networks"]


def test_duplicate_routers_unmatched_patterns_and_overlapping_pools(tmp_path: Path) -> None:
    path = _write(tmp_path, """
[source]
url = "sqlite:///x.db"
query = "select 1"
[[router]]
name = "core-1"
host = "192.0.2.1"
username = "u"
password = "p"
[[router]]
name = "core-1"
host = "192.0.2.2"
username = "u"
password = "p"
[[address_list]]
group = "Tower Hosts"
list = "tower-hosts"
routers = ["edge-*"]
[[pool]]
name = "a"
group = "Tower Hosts"
networks = ["100.64.0.0/24"]
[[pool]]
name = "b"
group = "Legacy Customers"
networks = ["100.64.0.128/25"]
""")
    with pytest.raises(ConfigError) as exc:
        settings_mod.load(path)
    assert exc.value.problems == [
        "router[1].name: duplicate router name 'core-1' (also router[0])",
        "address_list[0].routers[0]: 'edge-*' matches no [[router]]",
        "pool[1].networks: pool 'b' overlaps pool 'a' (pool[0])",
    ]


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, f'[source]\nurl = "sqlite:///nowhere.db"\nquery = "{GOOD_QUERY}"\n'
                            '[safety]\nmin_existing = 10\n')
    monkeypatch.setenv("PROVISIOND_SOURCE__URL", "sqlite:///elsewhere.db")
    monkeypatch.setenv("PROVISIOND_SAFETY__MIN_EXISTING", "50")
    s = settings_mod.load(path)
    assert s.source.url.get_secret_value() == "sqlite:///elsewhere.db"
    assert s.safety.min_existing == 50
    assert s.source.query == GOOD_QUERY


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROVISIOND_CONFIG", raising=False)
    assert settings_mod.config_path(None) == Path("/etc/provisiond/provisiond.toml")
    monkeypatch.setenv("PROVISIOND_CONFIG", "/tmp/x.toml")
    assert settings_mod.config_path(None) == Path("/tmp/x.toml")
    assert settings_mod.config_path("/a.toml") == Path("/a.toml")


@pytest.mark.parametrize("text", ["[source\n", "x = = 1\n"])
def test_invalid_toml_is_named(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        settings_mod.load(path)
    assert str(path) in exc.value.problems[0] and "not valid TOML" in exc.value.problems[0]


def test_check_config_prints_all_problems_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, '[source]\nurl = "sqlite:///x.db"\n[[router]]\nname = "r"\nhost = "h"\nusername = "u"\n')
    assert cli.main(["--config", str(path), "check-config"]) == 1
    out = capsys.readouterr().out
    assert "error: source.query: required key is missing" in out
    assert "error: router[0]: set password_file (or password)" in out
    assert "2 problem(s)" in out


def test_check_config_checks_the_query_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = _billing(tmp_path)
    path = _write(tmp_path, f'[source]\nurl = "{url}"\nquery = "SELECT id AS account_id, name FROM a"\n')
    assert cli.main(["--config", str(path), "check-config"]) == 1
    out = capsys.readouterr().out
    assert ("error: source.query: missing column(s) account_name, status, group_name, ip_address, "
            "radius_username (it returns account_id, name; alias them with AS)") in out


def test_check_config_warnings_alone_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = _billing(tmp_path)
    path = _write(tmp_path, f'''[source]
url = "{url}"
query = "{GOOD_QUERY}"
[[router]]
name = "core-1"
host = "192.0.2.1"
username = "u"
password = "inline-secret-123"
''', mode=0o644)
    assert cli.main(["--config", str(path), "check-config"]) == 0
    out = capsys.readouterr().out
    assert "warning: " in out and "router[0].password" in out and "readable by group/others" in out
    assert "plain API on port 8728" in out
    assert "inline-secret-123" not in out
    assert "OK (1 router(s)" in out


def test_unreachable_billing_is_an_error_without_the_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, f'''[source]
url = "postgresql+psycopg://billing:Hunter2-secret@127.0.0.1:1/billing"
query = "{GOOD_QUERY}"
timeout = "2s"
''')
    assert cli.main(["--config", str(path), "check-config"]) == 1
    out = capsys.readouterr().out
    assert "source.query: failed against postgresql+psycopg://billing:***@127.0.0.1:1/billing" in out
    assert "Hunter2-secret" not in out


def test_per_router_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, """
[source]
url = "sqlite:///x.db"
query = "select 1"
[[router]]
name = "core-1"
host = "192.0.2.1"
username = "u"
password_file = "pw"
[[router]]
name = "edge-2"
host = "192.0.2.2"
username = "u"
password = "p"
""")
    monkeypatch.setenv("PROVISIOND_ROUTER__CORE_1__PASSWORD", "from-env")
    monkeypatch.setenv("PROVISIOND_ROUTER__1__HOST", "192.0.2.22")
    s = settings_mod.load(path)
    assert s.router[0].secret() == "from-env" and s.router[0].password_file is None
    assert s.router[1].host == "192.0.2.22"
    monkeypatch.setenv("PROVISIOND_ROUTER__EDGE_9__HOST", "x")
    with pytest.raises(ConfigError) as exc:
        settings_mod.load(path)
    assert exc.value.problems == ["PROVISIOND_ROUTER__EDGE_9__HOST: no router 'edge_9' to override"]
