"""Sonar's webhooks: an event asks for a pass now instead of at the next interval.

Served on ``daemon.webhook_listen`` by a small threading HTTP server (like
``daemon.metrics``), started and stopped by ``daemon.loop``. The URL registered in
Sonar is ``http(s)://<host>/webhooks/sonar?token=<the secret in webhook_token_file>``:
Sonar signs nothing, so the token in the URL, a size limit and distrust of the body are
all the protection there is. ``HEAD`` answers 200 (Sonar checks the endpoint with it).
A ``POST`` body is only a hint of what changed; the pass re-reads billing:

- ``account.*``: a scoped pass for ``object_id``;
- ``ipassignment.*`` with ``current.ipassignmentable_type`` ``Account``: a scoped pass
  for ``current.ipassignmentable_id``;
- anything else (an IP on a RADIUS account or a device, events provisiond does not
  know): a full pass, debounced so a burst of events gives one.

Refused, and nothing done: a wrong or missing token (403), a body over 1 MiB (413) or
without a length (411: a chunked body is not read; Sonar sends a Content-Length, and a
proxy in front must pass one, as nginx does by buffering the request), one that is not
a JSON object with an ``event`` (400, nesting too deep for the parser included). At
most ``MAX_HANDLERS`` connections are handled at once; one more is closed without an
answer. Whatever a sender does, the handler thread answers or gives up (socket
timeout) and the daemon goes on. Every request is counted by result in
``provisiond_webhook_requests_total`` (``daemon.metrics.WEBHOOK_RESULTS``).
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from provisiond.daemon.metrics import Metrics, parse_listen

log = logging.getLogger(__name__)

PATH = "/webhooks/sonar"
MAX_BODY = 1 << 20  # 1 MiB: Sonar's bodies are a few kB
READ_TIMEOUT = 10.0  # seconds a sender may take to send its request
MAX_HANDLERS = 16  # connections handled at once: slow senders cannot pile up threads

OnPass = Callable[[frozenset[str] | None], None]
# A refusal's status -> its result in provisiond_webhook_requests_total.
REFUSED = {403: "unauthorised", 404: "not_found", 405: "method_not_allowed", 400: "bad_request",
           411: "length_required", 413: "too_large"}


def classify(doc: Any) -> frozenset[str] | None:
    """The accounts a Sonar event is about, or None for "run a full pass".

    Raises ValueError when the body is not an event at all."""
    if not isinstance(doc, dict) or not isinstance(doc.get("event"), str):
        raise ValueError("not a Sonar event: expected a JSON object with an 'event' string")
    event = doc["event"]
    current = doc.get("current")
    if not isinstance(current, dict):
        current = {}
    if event.startswith("account."):
        account = _id(doc.get("object_id"))
    elif event.startswith("ipassignment.") and current.get("ipassignmentable_type") == "Account":
        account = _id(current.get("ipassignmentable_id"))
    else:
        return None
    return frozenset({account}) if account is not None else None


def _id(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and value.strip().isdigit():
        return str(int(value))
    return None


class _Debounce:
    """Folds full-pass requests within ``delay`` seconds into one call."""

    def __init__(self, delay: float, fire: Callable[[], None]) -> None:
        self._delay, self._fire = delay, fire
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def poke(self) -> None:
        with self._lock:
            if self._timer is not None:
                return
            self._timer = threading.Timer(self._delay, self._run)
            self._timer.daemon = True
            self._timer.start()

    def _run(self) -> None:
        with self._lock:
            self._timer = None
        self._fire()

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


class _Server(ThreadingHTTPServer):
    """At most ``MAX_HANDLERS`` connections handled at once; one more is closed unanswered."""

    daemon_threads = True
    receiver: WebhookReceiver

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(MAX_HANDLERS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.receiver.count("busy")
            log.warning("webhook from %s refused: %d connections already being handled",
                        client_address[0], MAX_HANDLERS)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Server6(_Server):
    address_family = socket.AF_INET6


class WebhookReceiver:
    """The endpoint; ``on_pass(accounts)`` is called with a scope, or None for a full pass."""

    def __init__(self, listen: str, token: str, *, on_pass: OnPass, debounce: float,
                 metrics: Metrics | None = None) -> None:
        if len(token) < 16:
            raise ValueError("daemon.webhook_token_file: the token must have at least 16 characters")
        self.listen = listen
        self._token = token.encode()
        self._on_pass = on_pass
        self._full = _Debounce(debounce, lambda: self._request(None))
        self._server: _Server | None = None
        self._metrics = metrics
        self.accepted = 0
        self.refused = 0

    def count(self, result: str) -> None:
        """One request's result: ``accepted`` or a refusal (``REFUSED``, ``busy``)."""
        if result == "accepted":
            self.accepted += 1
        else:
            self.refused += 1
        if self._metrics is not None:
            self._metrics.webhook_requests.labels(result).inc()

    def start(self) -> WebhookReceiver:
        host, port = parse_listen(self.listen)
        server = (_Server6 if ":" in host else _Server)((host, port), _Handler)
        server.receiver = self
        self._server = server
        threading.Thread(target=server.serve_forever, name="webhook-http", daemon=True).start()
        log.info("Sonar webhooks on http://%s:%d%s?token=…", host, self.port, PATH)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._full.cancel()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def token_ok(self, query: str) -> bool:
        given = parse_qs(query).get("token", [""])[0].encode()
        return hmac.compare_digest(given, self._token)

    def event(self, doc: Any) -> str:
        """Act on an event body; returns what was asked for (for the reply and the log)."""
        accounts = classify(doc)
        self.count("accepted")
        if accounts is None:
            self._full.poke()
            return "full pass"
        self._request(accounts)
        return f"pass for account {next(iter(accounts))}"

    def _request(self, accounts: frozenset[str] | None) -> None:
        try:
            self._on_pass(accounts)
        except Exception:  # the endpoint outlives any surprise in the daemon's callback
            log.exception("webhook: requesting a pass failed")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = READ_TIMEOUT  # a sender that stalls loses its connection, not a thread forever

    def do_HEAD(self) -> None:
        if self._allowed():
            self._reply(200, b"")

    def do_POST(self) -> None:
        if not self._allowed():
            return
        receiver = self.server.receiver
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self._refuse(411, "a Content-Length is required")
            return
        try:
            length = int(length_text)
        except ValueError:
            self._refuse(400, "bad Content-Length")
            return
        if length < 0 or length > MAX_BODY:
            self.close_connection = True  # the body is never read
            self._refuse(413, f"body over {MAX_BODY} bytes")
            return
        body = self.rfile.read(length)
        try:
            what = receiver.event(json.loads(body))
        except RecursionError:  # deeply nested arrays/objects: json gives up, so do we
            self._refuse(400, "not JSON (nested too deeply)")
            return
        except ValueError as exc:  # JSONDecodeError included
            self._refuse(400, str(exc) if not isinstance(exc, json.JSONDecodeError) else "not JSON")
            return
        log.info("webhook from %s: event=%.60s: %s requested", self.client_address[0],
                 _event_name(body), what)
        self._reply(200, b"accepted\n")

    def do_GET(self) -> None:
        self._refuse(405, "use POST (or HEAD)")

    def _allowed(self) -> bool:
        parts = urlsplit(self.path)
        if parts.path != PATH:
            self._refuse(404, f"not found: the endpoint is {PATH}")
            return False
        if not self.server.receiver.token_ok(parts.query):
            self._refuse(403, "wrong or missing token")
            return False
        return True

    def _refuse(self, code: int, why: str) -> None:
        self.server.receiver.count(REFUSED.get(code, "bad_request"))
        log.warning("webhook from %s refused: %d %s", self.client_address[0], code, why)
        self._reply(code, (why + "\n").encode())

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # The request line carries the token: never log it.
        log.debug("webhook http %s %s", self.client_address[0], self.command)


def _event_name(body: bytes) -> str:
    try:
        doc = json.loads(body)
        return str(doc.get("event")) if isinstance(doc, dict) else "?"
    except ValueError:
        return "?"
