"""The README's install steps, run for real (README, "Install").

A venv under a temporary prefix (standing in for /opt/provisiond) gets
``pip install <checkout>``; the systemd unit is verified with its ExecStart pointing
into that prefix; ``check-config --connect`` and ``plan`` run as the service would run
them: the shipped example config (its EDIT lines filled in), secrets handed over by
``$CREDENTIALS_DIRECTORY``, a real router (the simulator) and a SQLite billing database.
The checkout is this work tree's tracked and new files (what a clone would have), so
nothing of the development venv leaks into the install. pip uses its cache and the
configured indexes; the venv is built once per module.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisiond.cli.demo import seed_billing
from provisiond.sim import RouterSim, SimSettings

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "provisiond.service"
EXAMPLE = REPO / "config" / "provisiond.example.toml"
REFERENCE = REPO / "config" / "provisiond.reference.toml"
README = REPO / "README.md"
PREFIX = "/opt/provisiond"
EXEC_START = f"{PREFIX}/bin/provisiond --config /etc/provisiond/provisiond.toml run"
PASSWORD = "Rtr-api-pw-4711"


def _checkout(dest: Path) -> None:
    """Tracked and untracked-but-not-ignored files, as they are in the work tree."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            check=True, capture_output=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("install")
    checkout = root / "checkout"
    _checkout(checkout)
    venv = root / "opt" / "provisiond"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(checkout)],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert (venv / "bin" / "provisiond").exists()
    return venv


@pytest.fixture
def router() -> Iterator[RouterSim]:
    sim = RouterSim(SimSettings(username="provisiond", password=PASSWORD, identity="core-1",
                                log_commands=False)).start()
    try:
        yield sim
    finally:
        sim.stop()


def test_the_unit_runs_the_venv_install_and_verifies(prefix: Path, tmp_path: Path) -> None:
    unit = UNIT.read_text()
    assert re.findall(r"^ExecStart=(.*)$", unit, re.M) == [EXEC_START]
    # The same unit with only the prefix swapped for the temporary one.
    (tmp_path / "provisiond.service").write_text(unit.replace(f"{PREFIX}/", f"{prefix}/"))
    verify = subprocess.run(["systemd-analyze", "verify", "./provisiond.service"], cwd=tmp_path,
                            capture_output=True, text=True)
    ours = [line for line in (verify.stdout + verify.stderr).splitlines() if "provisiond" in line]
    assert ours == [], "\n".join(ours)


def _credential_names(text: str) -> set[str]:
    return set(re.findall(r"LoadCredential=([a-z0-9-]+):/etc/provisiond/credentials/\1\b", text))


def test_one_set_of_credential_names_across_unit_configs_and_readme() -> None:
    unit = _credential_names(UNIT.read_text())
    readme = _credential_names(README.read_text())
    files = set()
    for config in (EXAMPLE, REFERENCE):
        files |= set(re.findall(r'^#?\s*(?:password|secret|token|webhook_token)_file = "([^"/]+)"',
                                config.read_text(), re.M))
    assert unit == {"router-password", "billing-db-password", "radius-db-password", "coa-secret",
                    "sonar-token", "webhook-token", "pgpass"}
    # pgpass is read by libpq (PGPASSFILE), not named by a key; a second router gets its own.
    assert files - {"router-edge-1-password"} == unit - {"pgpass"}
    assert readme <= unit and "router-password" in readme


def _service_config(tmp_path: Path, router: RouterSim) -> Path:
    """The shipped example with its EDIT lines filled in, and nothing else changed."""
    seed_billing(tmp_path / "billing.db", 50)
    text = EXAMPLE.read_text()
    text = text.replace('url = "postgresql+psycopg://billing_ro@db.example.net/billing"',
                        f'url = "sqlite:///{tmp_path / "billing.db"}"')
    text = text.replace('host = "192.0.2.1"', f'host = "127.0.0.1"\nport = {router.port}')
    text = text.replace('url = "sqlite:////var/lib/provisiond/state.db"',
                        f'url = "sqlite:///{tmp_path / "state.db"}"')
    assert text.count(str(tmp_path)) == 2 and f"port = {router.port}" in text
    config = tmp_path / "provisiond.toml"
    config.write_text(text)
    return config


def test_check_config_and_plan_as_the_service_runs_them(
    prefix: Path, tmp_path: Path, router: RouterSim
) -> None:
    config = _service_config(tmp_path, router)
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "router-password").write_text(PASSWORD + "\n")
    os.chmod(creds / "router-password", 0o600)
    binary = str(prefix / "bin" / "provisiond")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVISIOND_", "VIRTUAL_ENV"))}
    env["PATH"] = "/usr/bin:/bin"  # nothing of the development venv

    def run(*args: str, creds_dir: Path | None = creds) -> subprocess.CompletedProcess[str]:
        e = dict(env)
        if creds_dir is not None:
            e["CREDENTIALS_DIRECTORY"] = str(creds_dir)
        # WorkingDirectory=/var/lib/provisiond in the unit: never the directory of the secrets.
        return subprocess.run([binary, "--config", str(config), *args], env=e, cwd=tmp_path / "..",
                              capture_output=True, text=True, timeout=120)

    done = run("check-config", "--connect")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "connect: core-1: ok: logged in to 127.0.0.1:" in done.stdout
    assert f"{config}: OK (1 router(s), 2 address list mapping(s)" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr

    # By hand without the credentials: the error says where it looked and what to do.
    done = run("check-config", creds_dir=None)
    assert done.returncode == 1
    assert "router[0].password_file: cannot read" in done.stdout
    assert "$CREDENTIALS_DIRECTORY, which is not set" in done.stdout
    assert "sudo CREDENTIALS_DIRECTORY=/etc/provisiond/credentials" in done.stdout

    # plan by hand before the service is enabled, with the same credentials: writes nothing.
    done = run("plan")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "core-1 (routeros): " in done.stdout and router.entries("ip", None) == []
    done = run("apply")
    assert done.returncode == 0, done.stdout + done.stderr
    assert router.entries("ip", None)
    done = run("plan")
    assert done.returncode == 0, done.stdout + done.stderr  # converged: nothing left to do
