"""Shared by the fault-matrix tests: the record of figures (trials and losses per fault)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

FIGURES: list[str] = []


class Figures:
    """``record(fault, trials, lost=..., **more)``: one line of the fault matrix."""

    def record(self, fault: str, trials: int, *, lost: int, **more: object) -> None:
        extra = "".join(f" {k}={v}" for k, v in more.items())
        FIGURES.append(f"{fault}: trials={trials} lost={lost}{extra}")


def daemon_config(
    directory: Path,
    *,
    billing_url: str,
    routers: dict[str, int],
    password_file: Path,
    state_url: str | None = None,
    daemon: dict[str, str] | None = None,
    router_settings: dict[str, str] | None = None,
    extra: str = "",
) -> Path:
    """A config for the daemon harness's billing schema, any number of routers, the
    ``Tower Hosts`` group on list ``tower-hosts``."""
    from harness import QUERY

    state_url = state_url or f"sqlite:///{directory / 'state.db'}"
    timeouts = {"connect_timeout": "1s", "timeout": "1s", **(router_settings or {})}
    lines = ["[source]", f'url = "{billing_url}"', f'query = """{QUERY}"""', "",
             "[state]", f'url = "{state_url}"', ""]
    for name, port in routers.items():
        lines += ["[[router]]", f'name = "{name}"', 'host = "127.0.0.1"', f"port = {port}",
                  'username = "admin"', f'password_file = "{password_file}"']
        lines += [f'{k} = "{v}"' for k, v in timeouts.items()] + [""]
    lines += ["[[address_list]]", 'group = "Tower Hosts"', 'list = "tower-hosts"', "", extra, "",
              "[daemon]"]
    lines += [f'{k} = "{v}"' for k, v in (daemon or {}).items()]
    path = directory / "provisiond.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


WORKER = Path(__file__).with_name("apply_worker.py")


class Worker:
    """A warm ``provisiond apply`` process (``apply_worker.py``): started early, told to go later."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(config)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parents[2],
        )

    def go(self) -> float:
        assert self.proc.stdout is not None and self.proc.stdin is not None
        assert self.proc.stdout.readline() == b"ready\n", self.wait()
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()
        return time.monotonic()

    def kill(self) -> None:
        try:
            os.kill(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self) -> tuple[int, str]:
        """Exit code, and stdout + stderr."""
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, (out + err).decode(errors="replace")


