"""Colour and progress as an operator sees them: the real ``provisiond`` process with its
stdout / stderr on a pseudo-terminal (``pty``) or on a pipe."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest
from world import World

ESC = "\x1b["
GREEN_CREATE = re.compile(r"\x1b\[32m    \+ tower-hosts 100\.64\.0\.1 ")
BAR = re.compile(r"core-1 .*\b(\d+)/(\d+) changes")


def _pty() -> tuple[int, int]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    return master, slave


def _drain(fd: int) -> str:
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def run(world: World, *args: str, stdout_tty: bool, stderr_tty: bool = False,
        env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``provisiond --config … ARGS`` as a process; each stream a pty or a pipe."""
    environ = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    environ.update(TERM="xterm-256color", COLUMNS="160", **(env or {}))
    fds: dict[str, tuple[int, int]] = {}
    streams: dict[str, int] = {}
    for name, tty in (("out", stdout_tty), ("err", stderr_tty)):
        if tty:
            fds[name] = _pty()
            streams[name] = fds[name][1]
        else:
            streams[name] = subprocess.PIPE
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisiond.cli.main", "--config", str(world.config), *args],
        stdout=streams["out"], stderr=streams["err"], stdin=subprocess.DEVNULL, env=environ,
    )
    for _, slave in fds.values():
        os.close(slave)
    # Read the ptys while the process runs (a full pty buffer would block it).
    import threading

    got: dict[str, str] = {}
    readers = [threading.Thread(target=lambda n=n, m=m: got.__setitem__(n, _drain(m)))
               for n, (m, _) in fds.items()]
    for t in readers:
        t.start()
    out, err = proc.communicate(timeout=120)
    for t in readers:
        t.join(30)
    return (proc.returncode, got.get("out", (out or b"").decode()),
            got.get("err", (err or b"").decode()))


@pytest.fixture
def planned(world: World) -> World:
    world.router("core-1")
    for i in range(1, 41):
        world.account(i, f"A{i}", groups=["Tower Hosts"], ips=[f"100.64.0.{i}"])
    world.write_config()
    return world


def test_plan_is_coloured_on_a_terminal_only(planned: World) -> None:
    code, out, _ = run(planned, "plan", stdout_tty=True)
    assert code == 2
    assert GREEN_CREATE.search(out), out[:500]
    assert "\x1b[1mcore-1 (routeros): 40 to create" in out  # header in bold
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out).replace("\r\n", "\n")

    code, piped, _ = run(planned, "plan", stdout_tty=False)
    assert code == 2 and ESC not in piped
    assert piped == plain  # colour is the only difference

    code, out, _ = run(planned, "plan", "--color", "never", stdout_tty=True)
    assert code == 2 and ESC not in out and "    + tower-hosts 100.64.0.1 " in out
    code, out, _ = run(planned, "plan", "--format", "json", "--color", "always", stdout_tty=True)
    assert code == 2 and ESC not in out and out.lstrip().startswith("{")


@pytest.mark.parametrize(("choice", "env", "tty", "wanted"), [
    ("auto", {}, True, True),
    ("auto", {}, False, False),
    ("auto", {"NO_COLOR": "1"}, True, False),
    ("auto", {"TERM": "dumb"}, True, False),
    ("never", {}, True, False),
    ("always", {"NO_COLOR": "1"}, False, True),
])
def test_colour_choice(monkeypatch: pytest.MonkeyPatch, choice: str, env: dict[str, str],
                       tty: bool, wanted: bool) -> None:
    from provisiond.cli.console import colour_wanted

    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if tty:
        master, slave = _pty()
    else:
        slave, master = os.pipe()[::-1]
    with os.fdopen(slave, "w") as stream:
        assert colour_wanted(choice, stream) is wanted
    os.close(master)


def test_conflicts_and_refusals_stand_out(planned: World) -> None:
    planned.sims["core-1"].add_entry("ip", list_name="tower-hosts", address="100.64.0.7",
                                     comment="NOC", dynamic=False)
    code, out, _ = run(planned, "plan", stdout_tty=True)
    assert "\x1b[1;35m    ! tower-hosts 100.64.0.7" in out


def test_apply_shows_progress_on_a_terminal_and_never_on_a_pipe(planned: World) -> None:
    fast = {"PROVISIOND_PROGRESS_DELAY": "0"}  # show at once instead of after 1.5 s
    code, out, err = run(planned, "apply", stdout_tty=False, stderr_tty=True, env=fast)
    assert code == 0, out + err
    bars = BAR.findall(re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", err))
    assert bars and bars[-1] == ("40", "40"), err[-2000:]
    assert ESC not in out  # stdout is a pipe: the apply report stays plain
    assert len(planned.entries("core-1", "tower-hosts")) == 40
    planned.assert_converged()

    for i in range(41, 61):
        planned.account(i, f"A{i}", groups=["Tower Hosts"], ips=[f"100.64.0.{i}"])
    # FORCE_COLOR may colour a pipe; it never puts live bars into one.
    code, out, err = run(planned, "apply", stdout_tty=False, stderr_tty=False,
                         env={**fast, "FORCE_COLOR": "1"})
    assert code == 0 and not BAR.search(err) and "━" not in err and ESC not in err
    for i in range(61, 71):
        planned.account(i, f"A{i}", groups=["Tower Hosts"], ips=[f"100.64.0.{i}"])
    code, out, err = run(planned, "--log-format", "json", "apply", stdout_tty=False,
                         stderr_tty=True, env=fast)
    assert code == 0 and not BAR.search(err) and "━" not in err
    assert len(planned.entries("core-1", "tower-hosts")) == 70
    planned.assert_converged()


@pytest.mark.parametrize(("delay", "shown"), [(0.0, True), (60.0, False)])
def test_progress_shows_only_once_the_work_outlasts_the_delay(delay: float, shown: bool) -> None:
    import io

    from rich.console import Console

    from provisiond.cli.console import ProgressBars

    buf = io.StringIO()
    with ProgressBars(delay=delay, console=Console(file=buf, force_terminal=True, width=120)) as bars:
        tick = bars.factory("core-1", 5)
        for _ in range(5):
            tick(1)
    assert bool(BAR.search(re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", buf.getvalue()))) is shown
    assert not bars._timer or not bars._timer.is_alive()
