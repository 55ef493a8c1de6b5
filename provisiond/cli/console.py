"""Terminal presentation for the CLI: Terraform-style colour on the text diff, and live
progress bars on stderr while targets apply.

Called by ``cli.commands`` (plan, apply), ``cli.explain`` and ``cli.demo``; the daemon
gets a progress factory from ``cli.main`` for its first pass. ``core.render`` stays one
plain text with fixed line shapes (``    + …`` create, ``    - …`` delete, ``    ~ …``
update, ``    ! …`` conflict, ``  REFUSED:``, ``FAILED``); ``Painter`` colours those
shapes, so what a pipe, a file, the journal or ``--format json`` gets is byte for byte
the uncoloured text. Colour and progress come from rich (its terminal detection,
``NO_COLOR`` and ``FORCE_COLOR`` handling, and its live display); nothing here writes
escape codes by hand.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from rich.color import ColorSystem
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.style import Style
from rich.text import Text

COLOR_CHOICES = ("auto", "always", "never")

# Terraform's palette: create green, delete red, update yellow; what provisiond will not
# do (a conflict, a refusal, a failure) stands out.
STYLES = {
    "create": "green",
    "delete": "red",
    "update": "yellow",
    "conflict": "bold magenta",
    "refused": "bold red",
    "failed": "bold red",
    "followup": "cyan",
    "header": "bold",
    "summary": "bold",
    "ok": "green",
    "note": "yellow",
    "more": "dim",
}

_CHANGE = {"+": "create", "-": "delete", "~": "update", "!": "conflict", ">": "followup"}
_HEADER = re.compile(r"^\S.* \([a-z -]+\):(?: |$)")


def colour_wanted(choice: str, stream: IO[str] | None = None) -> bool:
    """``--color``: always / never, or auto = a terminal, no ``NO_COLOR``, not ``TERM=dumb``."""
    if choice == "always":
        return True
    if choice == "never":
        return False
    console = Console(file=stream or sys.stdout)
    return console.is_terminal and not console.no_color and console.color_system is not None


def style_of(line: str) -> str | None:
    """Which style a line of ``render_text`` / ``apply_lines`` / ``explain`` output gets."""
    stripped = line.lstrip(" ")
    indent = len(line) - len(stripped)
    if indent and stripped[:2] in {"+ ", "- ", "~ ", "! ", "> "}:
        return _CHANGE[stripped[0]]
    if "REFUSED:" in line or stripped.startswith("apply will refuse"):
        return "refused"
    if stripped.startswith(("error:", "failed:")) or ": FAILED" in line or line.startswith("Apply: FAILED"):
        return "failed"
    if stripped.startswith("conflict:"):
        return "conflict"
    if line.startswith(("Plan:", "Apply:", "Scope:", "Explain:")):
        return "summary"
    if stripped.startswith("… "):
        return "more"
    if stripped.startswith(("note:", "warning:")):
        return "note"
    if _HEADER.match(line):
        return "header"
    if re.match(r"^\S+: ok: ", line):
        return "ok"
    return None


class Painter:
    """Colours whole lines by their shape; a disabled Painter returns text unchanged."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._codes: dict[str, tuple[str, str]] = {}
        if enabled:
            for name, spec in STYLES.items():
                # rich renders the SGR sequence; split around a placeholder to reuse it.
                before, _, after = Style.parse(spec).render("\0", color_system=ColorSystem.STANDARD
                                                            ).partition("\0")
                self._codes[name] = (before, after)

    def line(self, line: str, style: str | None = None) -> str:
        style = style or style_of(line)
        if not self.enabled or style is None or not line:
            return line
        before, after = self._codes[style]
        return f"{before}{line}{after}"

    def text(self, text: str) -> str:
        if not self.enabled:
            return text
        return "".join(self.line(ln[:-1] if ln.endswith("\n") else ln) + ("\n" if ln.endswith("\n") else "")
                       for ln in text.splitlines(keepends=True))


def painter(choice: str) -> Painter:
    return Painter(colour_wanted(choice))


# -- progress ------------------------------------------------------------------------------


def progress_wanted(log_format: str) -> bool:
    """Progress only on a terminal stderr and never with JSON logs (nor on a pipe, nor in
    the journal: both are not terminals)."""
    # The stream itself, not rich's is_terminal: FORCE_COLOR (honoured for colour) must
    # never put live bars into a pipe or a log file.
    try:
        return log_format == "text" and os.isatty(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # replaced by a file-like without a descriptor
        return False


class _Rate(ProgressColumn):
    """Changes per second (rich's speed columns speak bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f}/s" if speed else "", style="cyan")


def _delay() -> float:
    # Quick applies finish before the bar would show; tests set 0 to see it at once.
    try:
        return float(os.environ.get("PROVISIOND_PROGRESS_DELAY", "1.5"))
    except ValueError:
        return 1.5


class ProgressBars:
    """One bar per target (done / total, rate, time left) on stderr, shown once the work
    has run for ``delay`` seconds. ``factory`` is the engine's ``ProgressFactory``."""

    def __init__(self, *, delay: float | None = None, console: Console | None = None) -> None:
        self.delay = _delay() if delay is None else delay
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("changes"), _Rate(), TimeRemainingColumn(),
            console=console or Console(stderr=True), transient=False, redirect_stdout=False,
            redirect_stderr=True,
        )
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._started = False
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []

    def factory(self, target: str, total: int) -> Callable[[int], None]:
        task = self.progress.add_task(target, total=total)

        def tick(n: int) -> None:
            self.progress.advance(task, n)

        return tick

    def _show(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            self.progress.start()
            # Log lines written while the bars are live go above them, not through them.
            for h in logging.getLogger().handlers:
                if isinstance(h, logging.StreamHandler) and h.stream is self.progress.console.file:
                    self._handlers.append((h, h.setStream(sys.stderr)))

    def __enter__(self) -> ProgressBars:
        if self.delay <= 0:
            self._show()
        else:
            self._timer = threading.Timer(self.delay, self._show)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer.join()  # wakes at once on cancel; a _show in progress completes
        with self._lock:
            if self._started:
                for h, stream in self._handlers:
                    h.setStream(stream)
                self.progress.stop()
            self._started = True  # a late timer does nothing


@contextmanager
def progress_bars(enabled: bool) -> Iterator[ProgressBars | None]:
    if not enabled:
        yield None
        return
    with ProgressBars() as bars:
        yield bars
