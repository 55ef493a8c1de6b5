"""Shared by the fault-matrix tests: the record of figures (trials and losses per fault,\nsummed from each trial's observed outcome), the daemon config, the apply worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FIGURES: list[Trials] = []


class Trials:
    """One line of the fault matrix, summed from what each trial observed.

    ``with trials.trial() as outcome:`` runs one trial; the trial counts what it saw into
    ``outcome`` (``outcome["lost"] += ...``, ``duplicates``, ``crashes``...) before it
    asserts on it. The outcome is kept whatever happens; a trial that raised is counted
    as ``failed`` and as at least one lost (nothing proves it kept everything), so a
    failed or unfinished trial can never show as ``lost=0``. ``check()`` is what a figure
    test asserts: trials ran, and nothing was lost, failed, or counted in ``zero``."""

    def __init__(self, fault: str) -> None:
        self.fault = fault
        self.outcomes: list[Counter[str]] = []
        self.notes: dict[str, object] = {}
        FIGURES.append(self)

    @contextmanager
    def trial(self) -> Iterator[Counter[str]]:
        outcome = Counter[str]()
        try:
            yield outcome
        except BaseException:
            outcome["failed"] += 1
            outcome["lost"] = max(outcome["lost"], 1)
            raise
        finally:
            self.outcomes.append(outcome)

    def note(self, **more: object) -> None:
        """Facts about the figure that are not per-trial counts (``keys=17``)."""
        self.notes.update(more)

    def totals(self) -> dict[str, int]:
        keys = {"lost": 0, "failed": 0} | {k: 0 for o in self.outcomes for k in o}
        return {k: sum(o[k] for o in self.outcomes) for k in keys}

    def line(self) -> str:
        counts = "".join(f" {k}={v}" for k, v in self.totals().items())
        notes = "".join(f" {k}={v}" for k, v in self.notes.items())
        return f"{self.fault}: trials={len(self.outcomes)}{counts}{notes}"

    def check(self, *zero: str) -> dict[str, int]:
        """Assert trials ran and ``lost``, ``failed`` and every name in ``zero`` summed to 0."""
        totals = self.totals()
        assert self.outcomes, f"{self.fault}: no trial ran (deselected or never reached)"
        bad = {k: totals.get(k, 0) for k in ("lost", "failed", *zero) if totals.get(k, 0)}
        assert not bad, f"{self.fault}: {bad} over {len(self.outcomes)} trials"
        return totals


class Figures:
    """The ``figures`` fixture: ``figures.trials(fault)`` starts one line of the matrix."""

    def trials(self, fault: str) -> Trials:
        return Trials(fault)


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
    """``provisiond apply`` processes forked from a warm server (``apply_worker.py``):
    ``go()`` starts one and returns at once, ``kill()`` SIGKILLs it, ``wait()`` gives its
    exit code (-9 when killed) and its output. One apply at a time."""

    def __init__(self, config: Path, logs: Path) -> None:
        self.logs = logs
        self.runs = 0
        self.pid = 0
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(config)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, cwd=Path(__file__).parents[2],
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == b"ready\n", "the apply worker did not start"

    def go(self) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.runs += 1
        self.proc.stdin.write(f"go {self.logs / f'apply-{self.runs}.log'}\n".encode())
        self.proc.stdin.flush()
        self.pid = int(self.proc.stdout.readline())
        self.proc.stdin.write(b"run\n")  # the child starts only now that its pid is known
        self.proc.stdin.flush()
        return time.monotonic()

    def alive(self) -> bool:
        if not self.pid:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        with open(f"/proc/{self.pid}/stat") as fh:  # a zombie waits for the server's waitpid
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"

    def kill(self) -> None:
        if not self.pid:  # never a pid that may have been reused
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self) -> tuple[int, str]:
        """Exit code, and stdout + stderr."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        assert line.startswith("exit "), line
        self.pid = 0
        return int(line.split()[1]), (self.logs / f"apply-{self.runs}.log").read_text(errors="replace")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)
