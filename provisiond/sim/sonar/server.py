"""The fake Sonar's HTTP side: ``POST /api/graphql`` as Sonar serves it, plus webhooks.

``FakeSonar(settings, world).start()`` serves on loopback in daemon threads; tests and
the demo use it in-process or through ``python -m provisiond.sim.sonar``. Per request,
in Sonar's order: the bearer token (a wrong one: 401 and no ``data``), the request
limit (a fixed window of ``window`` seconds, ``limit`` requests; over it the documented
body ``{"error": "Request limit of 400/min reached."}`` with ``limit_status``, since
Sonar's status code is undocumented), then the GraphQL document, executed by
graphql-core against ``schema.build``. ``send_event`` POSTs a webhook body shaped like
Sonar's to every registered URL, which must be on loopback.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from graphql import graphql_sync

from . import schema as schema_mod
from .world import OWNER_TABLES, Row, World

log = logging.getLogger("provisiond.sim.sonar")

MAX_BODY = 1 << 20


@dataclass(slots=True)
class SonarSimSettings:
    token: str
    host: str = "127.0.0.1"
    port: int = 0
    page_cap: int = 100  # the most records_per_page the fake hands out
    ids: str = "string"  # Int64Bit as Sonar sends it ("string"), or "number" / "mixed" (not Sonar's)
    limit: int = 400  # requests per window per token: Sonar's documented 400/min
    window: float = 60.0
    limit_status: int = 429  # Sonar does not document it; 200 is as plausible
    webhooks: list[str] = field(default_factory=list)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Limiter:
    """Sonar's limit: ``limit`` requests per fixed window, reset every ``window`` seconds."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._count = 0

    def allow(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._start >= self.window:
                self._start += (now - self._start) // self.window * self.window
                self._count = 0
            if self._count >= self.limit:
                return False
            self._count += 1
            return True


class FakeSonar:
    """One Sonar instance: a world, a token, a request limit, webhook receivers."""

    def __init__(self, settings: SonarSimSettings, world: World | None = None) -> None:
        if not is_loopback(settings.host):
            raise ValueError(f"the fake Sonar listens on loopback only, not {settings.host}")
        self.settings = settings
        self.world = world if world is not None else World()
        self.schema = schema_mod.build(self.world, page_cap=settings.page_cap, ids=settings.ids)
        self.limiter = _Limiter(settings.limit, settings.window)
        self.requests = 0  # authenticated GraphQL requests answered (limited ones included)
        self.limited = 0  # requests refused by the request limit
        self.deliveries: list[tuple[str, int | str]] = []  # (event, HTTP status or error)
        self.before_request: list[Any] = []  # callables run before each GraphQL execution
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        for url in settings.webhooks:
            self.add_webhook(url)

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> FakeSonar:
        server = ThreadingHTTPServer((self.settings.host, self.settings.port), _Handler)
        server.daemon_threads = True
        server.sonar = self  # type: ignore[attr-defined]
        self._server = server
        threading.Thread(target=server.serve_forever, name="fake-sonar", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    def limit_to(self, limit: int, window: float) -> None:
        """A new request limit, counted from now (another client using up the token, say)."""
        self.settings.limit, self.settings.window = limit, window
        self.limiter = _Limiter(limit, window)

    # -- GraphQL ------------------------------------------------------------------

    def answer(self, token: str | None, body: bytes) -> tuple[int, dict[str, Any]]:
        """One POST /api/graphql: (HTTP status, JSON body)."""
        if token != self.settings.token:
            return 401, {"error": "Unauthenticated."}
        with self._lock:
            self.requests += 1
        if not self.limiter.allow():
            with self._lock:
                self.limited += 1
            per = "min" if self.settings.window == 60 else f"{self.settings.window:g}s"
            return self.settings.limit_status, {"error": f"Request limit of {self.settings.limit}/{per} reached."}
        try:
            doc = json.loads(body)
            query, variables = doc["query"], doc.get("variables") or {}
            if not isinstance(query, str) or not isinstance(variables, dict):
                raise TypeError("query must be a string and variables an object")
        except (ValueError, KeyError, TypeError) as exc:
            return 400, {"errors": [{"message": f"bad request: {exc}"}]}
        for hook in list(self.before_request):  # tests: change the world, or the request
            hook(doc)
            query = doc["query"]
        result = graphql_sync(self.schema, query, variable_values=variables,
                              operation_name=doc.get("operationName"))
        out: dict[str, Any] = {"data": result.data}
        if result.errors:
            out["errors"] = [e.formatted for e in result.errors]
        return 200, out

    # -- webhooks -----------------------------------------------------------------

    def add_webhook(self, url: str) -> None:
        host = urlsplit(url).hostname or ""
        if urlsplit(url).scheme != "http" or not is_loopback(host):
            raise ValueError(f"webhooks go to http:// on loopback only, not {url!r}")
        if url not in self.settings.webhooks:
            self.settings.webhooks.append(url)

    def event_body(self, event: str, object_id: int, current: Row | None = None) -> dict[str, Any]:
        if current is None:
            table = "ip_assignments" if event.startswith("ipassignment.") else \
                OWNER_TABLES.get(event.split(".", 1)[0].title(), "accounts")
            current = self.world.get(table, object_id) or {"id": object_id}
        shown = {k: v for k, v in current.items() if not isinstance(v, list)}
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        return {"event": event, "object_id": object_id, "current": shown, "triggered_at": stamp}

    def send_event(self, event: str, object_id: int, current: Row | None = None,
                   *, timeout: float = 5.0) -> list[int | str]:
        """POST the event to every webhook URL now; the HTTP status of each delivery."""
        body = json.dumps(self.event_body(event, object_id, current)).encode()
        results: list[int | str] = []
        for url in list(self.settings.webhooks):
            req = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with _OPENER.open(req, timeout=timeout) as resp:  # noqa: S310 - loopback only
                    status: int | str = int(resp.status)
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError as exc:
                status = f"error: {exc}"
            results.append(status)
            with self._lock:
                self.deliveries.append((event, status))
            log.info("webhook event=%s object_id=%s status=%s", event, object_id, status)
        return results


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx is the delivery's status: the URL (and its ?token=) goes nowhere else


# Webhooks go straight to their loopback URL: never through a proxy from http_proxy & co.
# (which would receive the ?token=), never on to where a redirect points.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    @property
    def sonar(self) -> FakeSonar:
        return self.server.sonar  # type: ignore[attr-defined,no-any-return]

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._json(413, {"error": "request too large"})
            return
        body = self.rfile.read(length)
        auth = self.headers.get("Authorization") or ""
        token = auth[7:] if auth.startswith("Bearer ") else None
        if path == "/api/graphql":
            self._json(*self.sonar.answer(token, body))
        elif path == "/_sim/event":  # not Sonar's: lets an operator fire a webhook by hand
            if token != self.sonar.settings.token:
                self._json(401, {"error": "Unauthenticated."})
                return
            try:
                doc = json.loads(body)
                results = self.sonar.send_event(str(doc["event"]), int(doc["object_id"]))
            except (ValueError, KeyError, TypeError) as exc:
                self._json(400, {"error": f"expected {{event, object_id}}: {exc}"})
                return
            self._json(200, {"deliveries": results})
        else:
            self._json(404, {"error": "not found"})

    def _json(self, code: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http %s " + format, self.client_address[0], *args)
