"""Prometheus metrics and ``/healthz``, served on ``daemon.metrics_listen``.

The pass runner records into ``Metrics`` after every pass; ``Health`` remembers when a
pass last succeeded. ``Metrics.prime`` creates every labelled series it can name from
the configuration (targets, pools, results) at 0, at start-up and on reload: a series
that first appears at 1 is an event ``increase()`` cannot see. ``serve`` answers
``GET /metrics`` (the text exposition of provisiond's own registry, nothing of the process-global one) and ``GET /healthz``
(200 ``ok`` when a pass succeeded within ``healthz_max_age``, else 503 and the reason;
lasting conflicts and degraded parts (refused lists, exhausted pools, unreachable
targets, a failed reload) are listed in the body either way, without failing health;
``/healthz?strict=1`` fails while any part is degraded) from a small threading HTTP server.

With ``[daemon] members = "shared"`` the daemon also hands ``Metrics.members`` its
membership's status (``daemon.members.Status``) before every scrape and after every
pass, and sets ``Health.member`` to its ``Membership``: a member that fenced itself
fails /healthz until a renewal comes back. Standby daemons export none of this.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from provisiond.settings import Settings
from provisiond.state.claims import GLOBAL

log = logging.getLogger(__name__)

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
PASS_RESULTS = ("ok", "partial", "error")
PASS_KINDS = ("full", "scoped")
LISTEN_STATES = ("live", "filling", "down", "refused")
ACTIONS = ("create", "update", "delete")
BILLING_RESULTS = ("ok", "error", "suspicious")
COA_RESULTS = ("ack", "nak", "timeout", "unknown-nas", "error")  # targets.coa.Outcome
SOURCE = "source"  # the billing source's label in provisiond_errors_total
# Webhook requests by result: accepted, or why refused (daemon.webhook).
WEBHOOK_RESULTS = ("accepted", "unauthorised", "not_found", "method_not_allowed",
                   "bad_request", "length_required", "too_large", "busy")
# daemon.shares' states, repeated: metrics sits below the membership modules.
MEMBER_STATES = ("live", "uncertain", "dead", "stopped")


class _Stated(Protocol):
    @property
    def state(self) -> str: ...


class MemberStatus(Protocol):
    """What ``Metrics.members`` reads: ``daemon.members.Status`` fits."""

    @property
    def fenced(self) -> bool: ...
    @property
    def owned(self) -> Mapping[str, int]: ...  # resource -> fencing token
    @property
    def claim_ages(self) -> Mapping[str, float]: ...
    @property
    def handovers(self) -> int: ...
    @property
    def self_fences(self) -> int: ...
    @property
    def members(self) -> Sequence[_Stated]: ...


class Fenceable(Protocol):
    """What ``Health`` asks at every check: ``daemon.members.Membership`` fits."""

    @property
    def member_id(self) -> str: ...
    @property
    def fenced(self) -> bool: ...
    @property
    def deadline(self) -> float: ...  # time.monotonic() when it stopped (or stops) writing


def target_names(settings: Settings) -> list[str]:
    """The targets a pass writes, as ``engine.build_targets`` makes them: every router
    some address list goes to, and ``radius`` with a ``[radius]`` section."""
    names = [r.name for r in settings.router
             if any(r in settings.routers_for(m) for m in settings.address_list)]
    if settings.radius is not None:
        names.append("radius")
    return names


class Metrics:
    """Every provisiond_* series, in a registry of its own."""

    def __init__(self, settings: Settings | None = None) -> None:
        r = self.registry = CollectorRegistry()
        self.passes = Counter("provisiond_passes", "Passes by result (ok, partial, error) and "
                              "kind (full, scoped)", ["result", "kind"], registry=r)
        self.pass_duration = Histogram("provisiond_pass_duration_seconds",
                                       "Wall time of one pass", buckets=DURATION_BUCKETS, registry=r)
        self.changes = Counter("provisiond_changes_applied", "Changes applied",
                               ["target", "action"], registry=r)
        self.errors = Counter("provisiond_errors",
                              "Passes in which a target (or the billing source) failed",
                              ["target"], registry=r)
        self.target_errors = Counter("provisiond_target_errors",
                                     "Passes in which a target answered wrongly (a refused "
                                     "command, a malformed reply): no back-off, retried at the "
                                     "next interval", ["target"], registry=r)
        self.last_success = Gauge("provisiond_last_success_timestamp_seconds",
                                  "When a target last converged (Unix time)", ["target"], registry=r)
        self.pool_utilisation = Gauge("provisiond_pool_utilisation_ratio",
                                      "Leased or held allocations / allocations the pool offers",
                                      ["pool"], registry=r)
        # A pool's allocations are prefixes of its prefix_length (an address is a /32 or /128).
        self.pool_prefixes_total = Gauge("provisiond_pool_prefixes_total",
                                         "Allocations (addresses or prefixes) a pool offers",
                                         ["pool"], registry=r)
        self.pool_prefixes_used = Gauge("provisiond_pool_prefixes_used",
                                        "Allocations of a pool leased to an account", ["pool"], registry=r)
        self.pool_prefixes_held = Gauge("provisiond_pool_prefixes_held",
                                        "Allocations of a pool held after a release", ["pool"], registry=r)
        self.coa = Counter("provisiond_coa_results", "CoA/Disconnect requests by result",
                           ["result"], registry=r)
        self.refusals = Counter("provisiond_safety_refusals",
                                "Plans refused by the safety thresholds", ["target"], registry=r)
        self.conflicts = Gauge("provisiond_conflicts",
                               "Desired entries provisiond will not touch (held by an entry or row "
                               "it does not own, or claimed twice), as of the last pass",
                               ["target"], registry=r)
        self.leader = Gauge("provisiond_leader", "1 while this process holds the leader lock",
                            registry=r)
        self.backoff = Gauge("provisiond_target_backoff_seconds",
                             "Seconds until a failing target is tried again (0: not backing off)",
                             ["target"], registry=r)
        self.consecutive_failures = Gauge(
            "provisiond_target_consecutive_failures",
            "Passes in a row in which a target could not be reached or applied (0: last one ok)",
            ["target"], registry=r)
        self.billing_reads = Counter("provisiond_billing_reads",
                                     "Billing reads by result (ok, error, suspicious: refused as a "
                                     "drop of more than source.max_account_drop)", ["result"],
                                     registry=r)
        self.healthy = Gauge("provisiond_healthy", "1 when /healthz answers 200, else 0",
                             registry=r)
        self.pool_unallocated = Gauge("provisiond_pool_unallocated_accounts",
                                      "Accounts of a pool's group left without an address because "
                                      "the pool is exhausted (as of the last pass that allocated)",
                                      ["pool"], registry=r)
        self.reloads = Counter("provisiond_config_reloads", "SIGHUP reloads by result (ok, failed)",
                               ["result"], registry=r)
        self.reload_failed = Gauge("provisiond_config_reload_failed",
                                   "1 while the last reload failed (the previous configuration "
                                   "runs), else 0", registry=r)
        for result in ("ok", "failed"):
            self.reloads.labels(result)
        self.degraded = Gauge("provisiond_degraded_parts",
                              "Parts /healthz lists as degraded (refused lists, exhausted pools, "
                              "unreachable targets, a failed reload)", registry=r)
        self.webhook_requests = Counter(
            "provisiond_webhook_requests", "Webhook requests by result (accepted, or why refused)",
            ["result"], registry=r)
        for result in PASS_RESULTS:
            for kind in PASS_KINDS:
                self.passes.labels(result, kind)
        self.full_pass_interval = Gauge(
            "provisiond_full_pass_interval_seconds",
            "Seconds between full passes in effect: [daemon] interval, or with every router's "
            "listen up, the adaptive backstop", registry=r)
        self.router_scans = Counter("provisiond_router_scans",
                                    "Prints sent to a router (each a scan of its whole table)",
                                    ["target"], registry=r)
        self.mirror_entries = Gauge("provisiond_mirror_entries",
                                    "Entries of a router's managed lists in the daemon's mirror",
                                    ["target"], registry=r)
        self.mirror_age = Gauge("provisiond_mirror_age_seconds",
                                "Seconds since a router's mirror was last filled by a full read",
                                ["target"], registry=r)
        self.read_seconds = Gauge("provisiond_mirror_read_seconds",
                                  "How long a router took to answer the last full read of its "
                                  "mirror (both families)", ["target"], registry=r)
        self.listen_state = Gauge("provisiond_listen_state",
                                  "1 for a router's listen state (live, filling, down, refused)",
                                  ["target", "state"], registry=r)
        self.drift_events = Counter("provisiond_drift_events",
                                    "Changes to managed entries provisiond did not make, heard by "
                                    "listen", ["target"], registry=r)
        self._seen: dict[tuple[str, str], int] = {}
        self._mirrors_lock = threading.Lock()  # counts of the mirrors' already counted
        # Called before every scrape: gauges that change between passes (the mirrors).
        self.before_scrape: Callable[[], None] | None = None
        for result in BILLING_RESULTS:
            self.billing_reads.labels(result)
        for result in COA_RESULTS:
            self.coa.labels(result)
        for result in WEBHOOK_RESULTS:
            self.webhook_requests.labels(result)
        self.errors.labels(SOURCE)
        self.member: MemberSeries | None = None  # shared mode's series, once ``share`` made them
        self._share_lock = threading.Lock()
        if settings is not None:
            self.prime(settings)
            if settings.daemon.members == "shared":
                self.share()

    def prime(self, settings: Settings) -> None:
        """Every series of the configured targets and pools, at 0 where not there yet.

        ``provisiond_last_success_timestamp_seconds`` is left out: 0 would read as "not
        converged since 1970"; it appears with a target's first good pass."""
        for name in target_names(settings):
            self.errors.labels(name)
            self.target_errors.labels(name)
            self.refusals.labels(name)
            self.conflicts.labels(name)
            self.backoff.labels(name)
            self.consecutive_failures.labels(name)
            for action in ACTIONS:
                self.changes.labels(name, action)
        for pool in settings.pool:
            self.pool_utilisation.labels(pool.name)
            self.pool_unallocated.labels(pool.name)

    def mirrors(self, status: dict[str, dict[str, Any]]) -> None:
        """The routers' mirrors (``daemon.mirrors.Mirrors.status``), from the pass thread
        and before a scrape: one at a time (the counters add what is new since the last)."""
        with self._mirrors_lock:
            self._mirrors(status)

    def _mirrors(self, status: dict[str, dict[str, Any]]) -> None:
        now = time.time()
        for name, st in status.items():
            self.mirror_entries.labels(name).set(st["entries"])
            self.read_seconds.labels(name).set(st["fill_seconds"])
            confirmed = st["confirmed"]
            self.mirror_age.labels(name).set(now - confirmed if confirmed else 0)
            for state in LISTEN_STATES:
                self.listen_state.labels(name, state).set(1 if st["state"] == state else 0)
            for counter, key, per in ((self.drift_events, "drift_events", 1),
                                      (self.router_scans, "fills", 2)):  # a fill: both families
                seen, before = st[key], self._seen.get((key, name), 0)
                if seen > before:
                    counter.labels(name).inc(per * (seen - before))
                self._seen[key, name] = seen

    def share(self) -> MemberSeries:
        """The shared mode's series (at 0 until ``members`` fills them); made once."""
        with self._share_lock:
            if self.member is None:
                self.member = MemberSeries(self.registry)
            return self.member

    def members(self, status: MemberStatus) -> None:
        """This member's claims and its view of the others (``Membership.status()``),
        from the pass thread and before a scrape."""
        self.share().publish(status)

    def watch(self, health: Health) -> None:
        """``provisiond_healthy`` asks ``health`` at every scrape (a stuck loop shows up too)."""
        self.healthy.set_function(lambda: 1.0 if health.check()[0] else 0.0)
        self.degraded.set_function(lambda: float(len(health.degraded)))

    def exposition(self) -> bytes:
        if self.before_scrape is not None:
            try:
                self.before_scrape()
            except Exception:  # noqa: BLE001 - a scrape never fails for a gauge
                log.exception("metrics: refreshing before a scrape failed")
        return bytes(generate_latest(self.registry))


class MemberSeries:
    """The ``provisiond_member*`` series of one shared-mode daemon: what it holds, as
    its membership last told (resources it no longer holds lose their claim age)."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.routers_owned = Gauge("provisiond_member_routers_owned",
                                   "Routers whose claim this member holds", registry=r)
        self.global_claim = Gauge("provisiond_member_global",
                                  "1 while this member holds the global claim (billing read, "
                                  "IP allocation, RADIUS rows, CoA)", registry=r)
        self.claim_age = Gauge("provisiond_member_claim_age_seconds",
                               "Seconds since this member began writing a resource (a router, "
                               "or global) it still holds", ["resource"], registry=r)
        self.handovers = Counter("provisiond_member_handovers",
                                 "Claims this member took over from an earlier owner", registry=r)
        self.self_fences = Counter("provisiond_member_self_fences",
                                   "Times this member stopped writing because no lease renewal "
                                   "came back within ttl - margin", registry=r)
        self.fenced = Gauge("provisiond_member_fenced",
                            "1 while this member has fenced itself (writes nothing), else 0",
                            registry=r)
        self.members = Gauge("provisiond_members", "Members of the state store by state (live, "
                             "uncertain, dead, stopped), as this member last read them",
                             ["state"], registry=r)
        for state in MEMBER_STATES:
            self.members.labels(state)
        self._lock = threading.Lock()
        self._aged: set[str] = set()
        self._seen = {"handovers": 0, "self_fences": 0}

    def publish(self, status: MemberStatus) -> None:
        with self._lock:
            owned = set(status.owned)
            self.routers_owned.set(len(owned - {GLOBAL}))
            self.global_claim.set(1 if GLOBAL in owned else 0)
            self.fenced.set(1 if status.fenced else 0)
            for resource in self._aged - owned:
                self.claim_age.remove(resource)
            for resource in owned:
                self.claim_age.labels(resource).set(status.claim_ages.get(resource, 0.0))
            self._aged = owned
            for counter, key, seen in ((self.handovers, "handovers", status.handovers),
                                       (self.self_fences, "self_fences", status.self_fences)):
                if seen > self._seen[key]:
                    counter.inc(seen - self._seen[key])
                self._seen[key] = seen
            states = [m.state for m in status.members]
            for state in {*MEMBER_STATES, *states}:
                self.members.labels(state).set(states.count(state))


@dataclass(slots=True)
class Health:
    """When the last pass succeeded, for /healthz."""

    max_age: float
    last_success: float | None = None  # time.monotonic()
    last_result: str = "no pass yet"
    standby: bool = False
    leader: str = ""  # standby: who leads, as the leader lock tells
    conflicts: dict[str, int] = field(default_factory=dict)  # target -> entries left alone
    # What works but not as asked, by part ("refused core-1 tower-hosts", "pool towers",
    # "unreachable core-2", "reload") -> why. Listed by /healthz; ?strict=1 fails on any.
    degraded: dict[str, str] = field(default_factory=dict)
    # Shared mode: this daemon's membership, asked at every check (a fenced member fails).
    member: Fenceable | None = None

    def _detail(self) -> str:
        """Conflicts and degraded parts do not fail health (the daemon works), but they are shown."""
        out = ""
        if self.conflicts:
            each = ", ".join(f"{t} {n}" for t, n in sorted(self.conflicts.items()))
            out += f"; conflicts (entries provisiond will not touch, see `provisiond plan`): {each}"
        for part, why in sorted(self.degraded.items()):
            out += f"\ndegraded: {part}: {why}"
        return out

    def check(self, now: float | None = None, *, strict: bool = False) -> tuple[bool, str]:
        """(healthy, the body of /healthz). ``strict``: any degraded part is unhealthy too."""
        now = time.monotonic() if now is None else now
        if self.standby:
            leads = f": {self.leader} leads" if self.leader else ""
            return True, f"ok: standby (another provisiond is the leader{leads})"
        member = self.member
        if member is not None and member.fenced:
            return False, (f"member {member.member_id} fenced itself: no lease renewal within "
                           f"ttl-margin; writing stopped {max(0.0, now - member.deadline):.0f}s ago "
                           f"until one comes back{self._detail()}")
        if self.last_success is None:
            return False, f"no successful pass yet; last: {self.last_result}{self._detail()}"
        age = now - self.last_success
        if age > self.max_age:
            return False, (f"last successful pass {age:.0f}s ago (healthz_max_age "
                           f"{self.max_age:.0f}s); last: {self.last_result}{self._detail()}")
        if strict and self.degraded:
            return False, f"degraded ({len(self.degraded)} part(s)){self._detail()}"
        return True, "ok" + self._detail()


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (all addresses)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"daemon.metrics_listen: expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    metrics: Metrics
    health: Health


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/metrics":
            self._reply(200, self.server.metrics.exposition(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            strict = parse_qs(query).get("strict", ["0"])[-1] not in ("", "0", "false", "no")
            ok, reason = self.server.health.check(strict=strict)
            self._reply(200 if ok else 503, (reason + "\n").encode(), "text/plain; charset=utf-8")
        else:
            self._reply(404, b"not found: try /metrics or /healthz\n", "text/plain")

    def _reply(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http %s " + format, self.client_address[0], *args)


def serve(listen: str, metrics: Metrics, health: Health) -> ThreadingHTTPServer:
    """Start serving in a daemon thread; ``shutdown()`` + ``server_close()`` stop it."""
    host, port = parse_listen(listen)
    server = (_Server6 if ":" in host else _Server)((host, port), _Handler)
    server.metrics, server.health = metrics, health
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    log.info("metrics listening on http://%s:%d/metrics and /healthz", host,
             server.server_address[1])
    return server
