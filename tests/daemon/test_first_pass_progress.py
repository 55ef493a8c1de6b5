"""``provisiond run`` started from a terminal shows progress bars for its first pass only;
started with stderr on a pipe (systemd's journal, a file) it never does."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Callable
from pathlib import Path

from harness import REPO, Billing, wait_until

from provisiond.sim import RouterSim

ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")
BAR = re.compile(r"core-1 .*\b(\d+)/(\d+) changes")


def _run(config: Path, *, tty: bool) -> tuple[subprocess.Popen[bytes], Callable[[], str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "NO_COLOR")}
    env.update(PROVISIOND_PROGRESS_DELAY="0", TERM="xterm", PYTHONUNBUFFERED="1")
    chunks: list[bytes] = []
    if tty:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        err: int = slave
    else:
        master, err = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "provisiond.cli", "-v", "--config", str(config),
                             "run"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=err, env=env, cwd=REPO)
    os.close(err)

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        os.close(master)

    threading.Thread(target=read, daemon=True).start()
    return proc, lambda: ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_first_pass_progress_on_a_terminal_never_on_a_pipe(
    billing: Billing, router: RouterSim, config: Callable[..., Path],
) -> None:
    billing.join("Tower Hosts", *range(1000, 1020))
    path = config(daemon={"interval": "0.5s"})
    proc, text = _run(path, tty=True)
    try:
        wait_until(lambda: "pass=1 result=ok" in text(), timeout=20, what="first pass")
        assert BAR.findall(text())[-1] == ("20", "20")
        billing.join("Legacy Customers", 1000)  # unmapped: the next passes have nothing to do
        billing.leave("Tower Hosts", 1019)  # one delete for pass 2: applied without bars
        wait_until(lambda: re.search(r"pass=\d+ result=ok duration=\S+ changes=1", text()),
                   timeout=20, what="a later pass applying one change")
    finally:
        _stop(proc)
    assert [b for b in BAR.findall(text()) if b[1] != "20"] == []  # bars only for pass 1

    billing.leave("Tower Hosts", 1016, 1017, 1018)  # within the safety thresholds
    proc, text = _run(path, tty=False)
    try:
        # Its pass numbers go on from the first run's (the state store keeps them).
        wait_until(lambda: re.search(r"pass=\d+ result=ok", text()), timeout=20,
                   what="first pass on a pipe")
    finally:
        _stop(proc)
    assert "changes=3" in text() and not BAR.search(text()) and "━" not in text()
