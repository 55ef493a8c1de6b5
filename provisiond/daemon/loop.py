"""``provisiond run``: reconcile continuously, as a systemd service.

The outermost loop. Called by the CLI with the config path and the loaded Settings;
returns the exit code. It owns the process: signals, the APScheduler job, the threads
around it. One interval job (``max_instances=1``: passes never overlap;
``coalesce=True``: missed runs fold into one; first run at start) calls
``PassRunner.run_once`` (``daemon.passes``), which holds the Reconciler. Around it:

- leader election (``daemon.leader``): only the leader runs passes; a standby polls.
  With ``daemon.members = "shared"`` there is no leader: every daemon runs passes of the
  routers it holds claims of (``daemon.sharing``);
- ``daemon.listen``: a billing ``NOTIFY`` calls ``request_pass`` with the accounts it
  names; the job's next run moves to now. Requests that arrive while a pass runs are
  gathered (``core.scope.Pending``) into the next one: a scoped pass over their
  accounts, or one full pass when that is cheaper (more than
  ``daemon.scope_max_accounts``) or when a full pass was asked for. An interval run,
  or any run once ``daemon.interval`` has passed since the last full pass, is full;
  that is the safety net for drift and missed events;
- ``daemon.metrics``: ``/metrics`` and ``/healthz``;
- ``daemon.webhook``: a Sonar webhook asks for a pass (scoped to the account it names);
- ``daemon.sdnotify``: READY=1 once the first pass is done (or on entering standby),
  STATUS= after every pass, WATCHDOG=1 while the loop is healthy, RELOADING=1 and
  STOPPING=1.

Signals are blocked in every thread and taken synchronously by the main thread
(``sigtimedwait``), so no handler ever runs inside a lock. SIGHUP reloads the config
(a bad one is logged with its key paths and the old one keeps running; a good one is
swapped in at the next pass boundary, and a pass follows at once). SIGTERM/SIGINT:
no new pass starts, the pass in flight finishes, exit 0.

This is the only module that imports APScheduler.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from provisiond.core.scope import Pending
from provisiond.errors import ConfigError
from provisiond.daemon import leader as leader_mod
from provisiond.daemon import reload
from provisiond.daemon.listen import BillingListener, start_listener
from provisiond.daemon.metrics import Health, Metrics, serve
from provisiond.daemon.mirrors import Mirrors, choose, repair
from provisiond.daemon.passes import PassRunner
from provisiond.daemon.summary import Display
from provisiond.daemon.requests import Requests
from provisiond.daemon.retries import Owed, TargetRetries
from provisiond.daemon.sdnotify import Notifier
from provisiond.daemon.sharing import Sharing
from provisiond.daemon.watchdog import start_watchdog, why_stuck
from provisiond.daemon.webhook import WebhookReceiver
from provisiond.settings import Settings

log = logging.getLogger(__name__)

JOB_ID = "pass"
LOOP_TICK = 0.5  # the main loop wakes at least this often (signals, standby, heartbeat)
STANDBY_POLL_MAX = 5.0
SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT}
EXIT_OK, EXIT_ERROR = 0, 1


def run_daemon(path: Path, settings: Settings, *, first_pass_progress: Display | None = None) -> int:
    """Run until SIGTERM/SIGINT. 0 after a clean stop, 1 when it cannot start.

    ``first_pass_progress``: the CLI's progress bars when started from a terminal; the
    first pass (the long one, on a fresh install) shows them, later passes only log.
    """
    root = logging.getLogger()
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)  # a service logs one line per target per pass
        logging.getLogger("alembic").setLevel(logging.WARNING)  # migration chatter
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # Block before any thread exists: every thread inherits the mask, and only the main
    # loop takes these signals, with sigtimedwait.
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        daemon = Daemon(path, settings)
        daemon.runner.first_progress = first_pass_progress
        return daemon.run()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


class Leading:
    """Standby mode's side of the Daemon: whether it leads, as the leader lock says
    (``daemon.leader``; shared members never stand by: ``NoElection``)."""

    leading: bool
    leader: leader_mod.Leadership
    metrics: Metrics
    health: Health
    settings: Settings
    notifier: Notifier
    ready_sent: bool

    def _still_leading(self) -> bool:
        if not self.leading:
            return False
        if self.leader.still_held():
            return True
        self._set_leading(False)
        return False

    def _set_leading(self, leading: bool, *, first: bool = False) -> None:
        self.leading = leading
        self.metrics.leader.set(1 if leading else 0)
        self.health.standby = not leading
        if not leading:
            holder = self.leader.holder()
            self.health.leader = holder or ""
            log.info("standby: %s is held by another provisiond (%s); retrying every %.0fs",
                     self.leader.description, holder or "holder unknown",
                     _standby_poll(self.settings))
            status = "standby: another provisiond is the leader"
            if first or not self.ready_sent:
                self.ready_sent = self.notifier.ready(status) or True
            else:
                self.notifier.status(status)


class Daemon(Leading):
    def __init__(self, path: Path, settings: Settings) -> None:
        self.path = path
        self.settings = settings
        self.notifier = Notifier()
        self.metrics = Metrics(settings)
        self.health = Health(max_age=_max_age(settings))
        self.metrics.watch(self.health)
        self.mirrors = Mirrors(repair(self.request_pass, self.request_targets,
                                      lambda: self.settings.daemon.scope_max_accounts),
                               enabled=settings.daemon.listen)
        # Shared members: no leader; each router written by the member holding its claim.
        self.sharing = Sharing(settings, self) if settings.daemon.members == "shared" else None
        if self.sharing is not None:
            self.sharing.watch(self.mirrors, self.health)
        self.runner = PassRunner(settings, metrics=self.metrics, health=self.health, isolate=True,
                                 mirrors=self.mirrors, sharing=self.sharing)
        self.metrics.before_scrape = self._publish
        self.leader = (leader_mod.for_store(settings.state.url.get_secret_value()) if self.sharing is None
                       else leader_mod.NoElection(f"shared members, this one {self.sharing.member_id}"))
        self.leading = False
        self.scheduler: Any = None
        self.listener: BillingListener | None = None
        self.http: Any = None
        self.webhook: WebhookReceiver | None = None
        self.ready_sent = False
        self.stopping = False
        # Shared with the scheduler's worker thread, under _guard.
        self._guard = threading.Lock()
        self._in_pass_since: float | None = None
        self._pending = Pending()  # requested passes not started yet
        self._owed = Owed(lambda accounts: self.request_pass(accounts, reason="retry"),
                          max_accounts=lambda: self.settings.daemon.scope_max_accounts)
        self._retries = TargetRetries(self.request_targets)
        self._requested = False  # the job's next run was moved to now for them
        self._last_full = -float("inf")  # the first pass is a full one
        self._last_job = time.monotonic()
        self._heartbeat = time.monotonic()
        self._requests = Requests(settings.state.url.get_secret_value())

    # -- lifecycle ------------------------------------------------------------------

    def run(self) -> int:
        d = self.settings.daemon
        try:
            self.leading = self.leader.acquire()
        except leader_mod.AlreadyRunning as exc:
            log.error("%s", exc)
            return EXIT_ERROR
        log.info("provisiond starting pid=%d config=%s interval=%.0fs dry_run=%s election=%s",
                 os.getpid(), self.path, d.interval, d.dry_run, self.leader.description)
        if d.metrics_listen:
            try:
                self.http = serve(d.metrics_listen, self.metrics, self.health)
            except (OSError, ValueError) as exc:
                log.error("daemon.metrics_listen: cannot listen on %s: %s", d.metrics_listen, exc)
                self.leader.release()
                return EXIT_ERROR
        if d.webhook_listen:
            try:
                self.webhook = WebhookReceiver(d.webhook_listen, d.webhook_token(),
                                               on_pass=partial(self.request_pass, reason="webhook")
                                               if self.sharing is None else self.sharing.webhook,
                                               debounce=d.debounce,
                                               metrics=self.metrics).start()
            except (OSError, ValueError, ConfigError) as exc:
                log.error("daemon.webhook_listen: cannot serve webhooks on %s: %s",
                          d.webhook_listen, exc)
                if self.http is not None:
                    self.http.shutdown()
                    self.http.server_close()
                self.leader.release()
                return EXIT_ERROR
        self._set_leading(self.leading, first=True)
        if self.sharing is not None:
            self.sharing.start()
        self.listener = start_listener(self.settings, self.request_pass)
        self._start_scheduler()
        watchdog = start_watchdog(self.notifier, self.unhealthy)
        try:
            self._main_loop()
        finally:
            self._shutdown(watchdog)
        return EXIT_OK

    def _main_loop(self) -> None:
        next_try = time.monotonic()
        while True:
            self._heartbeat = time.monotonic()
            info = signal.sigtimedwait(SIGNALS, LOOP_TICK)
            # A tracer stopping and resuming the process (py-spy, gdb) can end the wait
            # with signal number 0: not a signal of ours.
            signo = info.si_signo if info is not None else 0
            if signo == signal.SIGHUP:
                self._reload()
            elif signo in SIGNALS:
                log.info("signal=%s: stopping; no new pass starts, the one in flight "
                         "finishes", signal.Signals(signo).name)
                return
            if not self.leading and time.monotonic() >= next_try:
                next_try = time.monotonic() + _standby_poll(self.settings)
                if self.leader.acquire():
                    log.info("leader lock won (%s): taking over", self.leader.description)
                    self._set_leading(True)
                    self.runner.continue_numbering()
                    self.request_pass(None, reason="leader")
            if self.leading and not self.settings.daemon.dry_run:  # dry run: writes nothing
                self._take_requests()

    def _shutdown(self, watchdog: threading.Event | None) -> None:
        self.notifier.stopping()
        with self._guard:
            self.stopping = True
        self._owed.stop()
        self._retries.stop()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)  # waits for the pass in flight
        if self.sharing is not None:
            self.sharing.stop()  # its claims released: the others take over at once
        if self.listener is not None:
            self.listener.stop()
        self.runner.close()
        self.mirrors.stop()
        with self._guard:
            unserved = self._requests.served(full=True, of_targets=False)
        self._requests.answer(unserved, number=self.runner.count, result="error", status="the "
                              "daemon stopped before the pass; ask again")
        self._requests.close()
        self.leader.release()
        self.metrics.leader.set(0)
        if watchdog is not None:
            watchdog.set()
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        if self.webhook is not None:
            self.webhook.stop()
        self.notifier.close()
        log.info("provisiond stopped")

    # -- the job --------------------------------------------------------------------

    def _start_scheduler(self) -> None:
        self.scheduler = start_scheduler(self.settings, self._job)

    def request_pass(self, accounts: frozenset[str] | None = None, *, reason: str = "",
                     asked: str | None = None) -> None:
        """Run a pass now: scoped to ``accounts``, or full (None); gathered into the next
        one if one is in flight. ``asked``: the ``provisiond pass`` request it answers."""
        with self._guard:
            if asked is not None:
                self._requests.ask(asked, of_targets=False)
            if self.stopping:
                return
            self._pending.add(accounts)
            if self._in_pass_since is not None or self._requested:
                log.debug("pass requested reason=%s: gathered into the next one", reason)
                return
            self._requested = True
        log.debug("pass requested reason=%s accounts=%s", reason,
                  "all" if accounts is None else len(accounts))
        self._run_now()

    def request_targets(self, names: frozenset[str], *, asked: str | None = None) -> None:
        """A pass of ``names`` only (their back-off ended, or asked for)."""
        with self._guard:
            if asked is not None:
                self._requests.ask(asked, of_targets=True)
            if self.stopping:
                return
            self._pending.add_targets(names)
            if self._in_pass_since is not None or self._requested:
                return
            self._requested = True
        log.debug("pass requested reason=retry targets=%s", ",".join(sorted(names)))
        self._run_now()

    def _take_requests(self) -> None:
        """``provisiond pass`` requests, each a pass here (shared: the global member's, relayed)."""
        if self.sharing is not None and not self.sharing.global_work:
            return
        for request_id, accounts, targets in self._requests.take():
            if targets is not None:
                self.request_targets(targets, asked=request_id)
            else:
                self.request_pass(accounts, reason="request", asked=request_id)
            if self.sharing is not None:
                self.sharing.relay(accounts, targets)

    def _run_now(self) -> None:
        if self.scheduler is None:
            return
        try:
            self.scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC))
        except (JobLookupError, SchedulerNotRunningError):
            pass  # shutting down: no new pass, as asked

    def _next_scope(self) -> tuple[frozenset[str] | None, frozenset[str] | None] | None:
        """What this run covers (under _guard): ``mirrors.choose``."""
        requested, self._requested = self._requested, False
        chosen = choose(requested, self._pending, time.monotonic() - self._last_full,
                        self.runner.cadence, self.mirrors, self.settings.daemon.scope_max_accounts)
        if chosen == (None, None):
            self._pending = Pending()  # a full pass covers every request so far
        return chosen

    def _job(self) -> None:
        with self._guard:
            if self.stopping:
                return
            self._last_job = time.monotonic()
            if self.sharing is not None and not self.sharing.owned():
                self._pending, self._requested = Pending(), False  # a claim gained asks anew
                return
            chosen = self._next_scope()
            if chosen is None:
                return
            self._in_pass_since = self._last_job
            scope, targets = chosen
            if scope is None and targets is None:
                self._last_full = time.monotonic()
            served = self._requests.served(full=scope is None and targets is None,
                                           of_targets=targets is not None)
        try:
            if not self._still_leading():
                self._requests.answer(served, number=self.runner.count, result="error",
                                      status="this daemon lost the leader lock before the pass; "
                                             "ask again")
                return
            outcome = self.runner.run_once(may_write=self._still_leading if self.sharing is None
                                           else self.sharing.may_write, accounts=scope, targets=targets)
            if self.sharing is not None:
                self.sharing.passed(outcome.leased, self.metrics)
            self._requests.answer(served, number=self.runner.count, result=outcome.result,
                                  status=outcome.status)
            served = []
            if outcome.retry is not None:
                self._owed.owe(*outcome.retry)
            if outcome.retry_targets:
                self._retries.schedule(outcome.retry_targets)
            self.notifier.status(outcome.status)
            if not self.ready_sent:
                self.ready_sent = self.notifier.ready(outcome.status) or True
        except Exception:
            log.exception("pass crashed; the next one runs as scheduled")
            self._requests.answer(served, number=self.runner.count, result="error",
                                  status="the pass crashed; see the daemon's log")
        finally:
            with self._guard:
                self._in_pass_since = None
                again = not self._pending.empty and not self.stopping
                if again:
                    self._requested = True
            if again:
                self._run_now()

    # -- SIGHUP ---------------------------------------------------------------------

    def _reload(self) -> None:
        self.notifier.reloading()
        log.info("signal=SIGHUP: reloading %s", self.path)
        old, new = self.settings, reload.reread(self.path, self.settings)
        if isinstance(new, str):
            reload.failed(self.metrics, self.health, new)
            self.notifier.ready(f"reload failed ({new}); running the previous configuration")
            return
        reload.succeeded(self.metrics, self.health)
        self.settings = new
        self.metrics.prime(new)
        self.health.max_age = max(self.health.max_age, _max_age(new))  # the next pass publishes
        self.runner.swap_at_next_pass(new)
        self.mirrors.enabled = new.daemon.listen  # followers start or stop at that pass
        if (new.daemon.interval, new.daemon.jitter) != (old.daemon.interval, old.daemon.jitter):
            self.scheduler.reschedule_job(JOB_ID, trigger=_trigger(new))
        if (new.daemon.notify_channel, new.source) != (old.daemon.notify_channel, old.source):
            if self.listener is not None:
                self.listener.stop()
                self.listener = None
            self.listener = start_listener(self.settings, self.request_pass)
        log.info("reload: configuration valid; swapped in at the next pass (starting now)")
        reload.check_billing(new)
        self.notifier.ready("reloaded; " + self.health.last_result)
        self.request_pass(None, reason="reload")

    def _publish(self) -> None:
        self.mirrors.publish(self.metrics, self.health, self.runner.cadence)
        if self.sharing is not None:
            self.metrics.members(self.sharing.membership.status())

    # -- watchdog -------------------------------------------------------------------

    def unhealthy(self, period: float) -> str | None:
        """Why the loop looks stuck, or None (``watchdog.why_stuck``)."""
        with self._guard:
            since, last = self._in_pass_since, self._last_job
        return why_stuck(period, heartbeat=self._heartbeat, in_pass_since=since, last_job=last,
                         scheduler_running=self.scheduler is not None and self.scheduler.running,
                         late=self.settings.daemon.interval + _jitter(self.settings) + period)


def start_scheduler(settings: Settings, job: Callable[[], None]) -> BackgroundScheduler:
    """The one interval job: passes never overlap, missed runs fold into one, the first now."""
    scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(max_workers=1)},
                                    job_defaults={"misfire_grace_time": None}, timezone=UTC)
    scheduler.add_listener(_missed, EVENT_JOB_MISSED)
    scheduler.add_job(job, _trigger(settings), id=JOB_ID, name="reconcile", max_instances=1,
                      coalesce=True, next_run_time=datetime.now(UTC))
    scheduler.start()
    log.debug("scheduler started interval=%.1fs jitter=%.1fs", settings.daemon.interval,
              _jitter(settings))
    return scheduler


def _missed(event: JobExecutionEvent) -> None:
    log.debug("scheduler: missed run at %s (coalesced)", event.scheduled_run_time)


def _jitter(settings: Settings) -> float:
    d = settings.daemon
    return min(d.jitter, d.interval / 2)  # jitter never swallows the interval


def _trigger(settings: Settings) -> IntervalTrigger:
    jitter = _jitter(settings)
    return IntervalTrigger(seconds=settings.daemon.interval, jitter=jitter or None, timezone=UTC)


def _max_age(settings: Settings) -> float:
    d = settings.daemon
    return d.healthz_max_age if d.healthz_max_age is not None else 3 * d.interval


def _standby_poll(settings: Settings) -> float:
    return max(0.5, min(STANDBY_POLL_MAX, settings.daemon.interval / 2))
