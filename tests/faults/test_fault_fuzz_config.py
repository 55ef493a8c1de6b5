"""Every config key with wrong types and out-of-range values, generated with
hypothesis (every key, six values each): ``check-config`` never shows a traceback, every problem names the key's
path (or a section above it), and a config that loads holds only values provisiond
can run with (finite durations, positive timeouts, priorities FreeRADIUS can store).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from faultlib import Trials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisiond import settings as settings_mod
from provisiond.cli import main as cli
from provisiond.errors import ConfigError

TEN_YEARS = 10 * 366 * 86400.0


def base(tmp: Path) -> dict[str, Any]:
    """A valid config that sets every key (password_file and secret_file aside: they
    exclude password and secret, and are fuzzed by replacing them)."""
    return {
        "marker": "provisiond",
        "source": {"url": f"sqlite:///{tmp / 'billing.db'}", "query": "SELECT * FROM billing",
                   "timeout": "60s", "max_account_drop": 0.5},
        "state": {"url": f"sqlite:///{tmp / 'state.db'}"},
        "router": [{"name": "core-1", "host": "127.0.0.1", "port": 8729, "tls": True,
                    "ca_file": str(tmp / "ca.pem"), "tls_verify": True, "fingerprint": "ab" * 32,
                    "username": "api", "password": "pw", "legacy_login": False,
                    "connect_timeout": "10s", "timeout": "60s", "connections": 2}],
        "address_list": [{"group": "Tower Hosts", "list": "tower-hosts", "routers": ["*"]},
                         {"status": "delinquent", "list": "delinquent"}],
        "safety": {"max_delete_ratio": 0.3, "max_update_ratio": 0.3, "min_existing": 10},
        "radius": {"url": f"sqlite:///{tmp / 'radius.db'}", "timeout": "30s"},
        "radius_group": [{"group": "Tower Hosts", "radius_group": "tower", "priority": 1, "coa": "coa"}],
        "coa": {"mode": "coa", "secret": "s3cret", "nas_secrets": False, "port": 3799,
                "timeout": "2s", "retries": 3},
        "pool": [{"name": "towers", "group": "Tower Hosts", "networks": ["10.99.0.0/24"],
                  "exclude": ["10.99.0.1", "10.99.0.10-10.99.0.12"], "priority": 0, "hold": "24h"}],
        "daemon": {"interval": "60s", "jitter": "5s", "dry_run": False, "notify_channel": "provisiond",
                   "debounce": "1s", "metrics_listen": "127.0.0.1:9310", "healthz_max_age": "3m",
                   "log_format": "text", "retry_max": "10m"},
    }


EXTRA_KEYS = ["source.password_file", "router[0].password_file", "radius.password_file",
              "coa.secret_file"]


def leaf_paths(value: Any, path: str = "") -> Iterator[str]:
    if path:
        yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaf_paths(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list) and value and isinstance(value[0], (dict, list)):
        for i, v in enumerate(value):
            yield from leaf_paths(v, f"{path}[{i}]")


PATHS = sorted(set(leaf_paths(base(Path("/x")))) | set(EXTRA_KEYS))


def put(data: dict[str, Any], path: str, value: Any) -> None:
    parts: list[str | int] = []
    for piece in path.split("."):
        name, *indexes = piece.replace("]", "").split("[")
        parts.append(name)
        parts += [int(i) for i in indexes]
    node: Any = data
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


bad_values = st.one_of(
    st.booleans(), st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, -1, 2**31, 2**63 - 1]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.5, 1e300]),
    st.text(max_size=20), st.sampled_from(["", " ", "0s", "-1s", "1" + "0" * 400 + "s", "nan", "inf", "10 years",
                                           "\n", "=list=x", "*", "0.0.0.0/0", "300.1.1.1", "::/0"]),
    st.lists(st.integers(), max_size=3), st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2), st.just([{"x": 1}]),
)


def durations(s: settings_mod.Settings) -> dict[str, float | None]:
    out: dict[str, float | None] = {
        "source.timeout": s.source.timeout, "daemon.interval": s.daemon.interval,
        "daemon.jitter": s.daemon.jitter, "daemon.debounce": s.daemon.debounce,
        "daemon.healthz_max_age": s.daemon.healthz_max_age, "daemon.retry_max": s.daemon.retry_max,
        "coa.timeout": s.coa.timeout,
    }
    if s.radius is not None:
        out["radius.timeout"] = s.radius.timeout
    for i, r in enumerate(s.router):
        out[f"router[{i}].timeout"] = r.timeout
        out[f"router[{i}].connect_timeout"] = r.connect_timeout
    for i, p in enumerate(s.pool):
        out[f"pool[{i}].hold"] = p.hold
    return out


RELATED = {"router": ["address_list"], "radius": ["radius_group"]}
POSITIVE = ("timeout", "interval", "healthz_max_age")


def sane(s: settings_mod.Settings) -> None:
    for key, value in durations(s).items():
        if value is None:
            continue
        assert math.isfinite(value) and 0 <= value <= TEN_YEARS, f"{key} = {value} accepted"
        if key.endswith(POSITIVE):
            assert value > 0, f"{key} = {value} accepted"
    for i, g in enumerate(s.radius_group):
        assert -(2**31) <= g.priority < 2**31, f"radius_group[{i}].priority = {g.priority} accepted"
    assert 1 <= s.coa.retries <= 100, f"coa.retries = {s.coa.retries} accepted"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cfg")
    with sqlite3.connect(tmp / "billing.db") as c:
        c.execute("CREATE TABLE billing (account_id, account_name, status, group_name, ip_address, "
                  "radius_username)")
    (tmp / "ca.pem").write_text("")
    return tmp


CHECKED = Trials("hypothesis config keys x bad values (load + check-config)")
KEYS: set[str] = set()


def check_config(path: Path) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = cli.main(["--config", str(path), "check-config"])
    return code, out.getvalue()


def test_the_valid_base_config_is_valid(home: Path) -> None:
    path = home / "base.toml"
    path.write_text(tomli_w.dumps(base(home)))
    sane(settings_mod.load(path))


@pytest.mark.parametrize("key", PATHS)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=bad_values, through_cli=st.integers(0, 9))
def test_every_key_with_bad_values(home: Path, key: str, value: Any, through_cli: int) -> None:
    data = base(home)
    put(data, key, value)
    path = home / "fuzz.toml"
    path.write_text(tomli_w.dumps(data))
    path.chmod(0o600)
    KEYS.add(key)
    with CHECKED.trial() as outcome:
        try:
            loaded = settings_mod.load(path)
        except ConfigError as exc:
            # The key itself or a section above it; or, for a cross-check (an empty router
            # list), the key that refers to it.
            names = [key[:i] for i in range(len(key) + 1) if i == len(key) or key[i] in ".["]
            names += RELATED.get(key.split("[")[0].split(".")[0], [])
            heads = tuple(f"{a}{sep}" for a in names for sep in ":.[")
            outcome["rejected"] += 1
            outcome["unnamed"] += not any(p.startswith(heads) for p in exc.problems)
            assert exc.problems
            assert any(p.startswith(heads) for p in exc.problems), (key, value, exc.problems)
            sections = tuple(f"{name}{sep}" for name in settings_mod.Settings.model_fields for sep in ":.[")
            assert all(p.startswith(sections) for p in exc.problems), (key, value, exc.problems)
        else:
            outcome["accepted"] += 1
            sane(loaded)
        if through_cli == 0:  # one in ten also through check-config: exit 0/1, never a traceback
            code, text = check_config(path)
            outcome["crashes"] += code not in (0, 1) or "Traceback" in text
            assert code in (0, 1) and "Traceback" not in text, text


def test_config_fuzz_figures() -> None:
    CHECKED.note(keys=len(KEYS), of=len(PATHS))
    CHECKED.check("crashes", "unnamed")
    assert KEYS == set(PATHS), f"keys never tried: {sorted(set(PATHS) - KEYS)}"
