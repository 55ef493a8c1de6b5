"""The Sonar webhook endpoint: what each event asks for, what it refuses, and a real
daemon turning an event into a pass within seconds."""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sonarlib import TOKEN

from provisiond.daemon.webhook import MAX_BODY, WebhookReceiver, classify
from provisiond.sim.sonar import FakeSonar, SonarSimSettings, World

SECRET = "hook-secret-0123456789"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[frozenset[str] | None] = []
        self.event = threading.Event()

    def __call__(self, accounts: frozenset[str] | None) -> None:
        self.calls.append(accounts)
        self.event.set()


@pytest.fixture
def hook() -> Iterator[tuple[WebhookReceiver, Recorder, str]]:
    rec = Recorder()
    receiver = WebhookReceiver("127.0.0.1:0", SECRET, on_pass=rec, debounce=1.0).start()
    yield receiver, rec, f"http://127.0.0.1:{receiver.port}/webhooks/sonar"
    receiver.stop()


def body(event: str, object_id: Any = 424, **current: Any) -> dict[str, Any]:
    return {"event": event, "object_id": object_id, "current": {"id": object_id, **current},
            "triggered_at": "2024-11-06 23:30:59.968026"}


@pytest.mark.parametrize(("doc", "scope"), [
    (body("account.status"), frozenset({"424"})),
    (body("account.service.add", "77"), frozenset({"77"})),
    (body("ipassignment.created", 3207, ipassignmentable_type="Account", ipassignmentable_id=424),
     frozenset({"424"})),
    (body("ipassignment.deleted", 3207, ipassignmentable_type="Account", ipassignmentable_id="9"),
     frozenset({"9"})),
    (body("ipassignment.created", 3207, ipassignmentable_type="RadiusAccount", ipassignmentable_id=5),
     None),
    (body("ticket.created", 1), None),
    (body("account.status", "not-a-number"), None),
])
def test_what_each_event_asks_for(doc: dict[str, Any], scope: frozenset[str] | None) -> None:
    assert classify(doc) == scope


def test_events_become_passes(hook: tuple[WebhookReceiver, Recorder, str]) -> None:
    receiver, rec, url = hook
    assert httpx.head(url, params={"token": SECRET}).status_code == 200  # Sonar's check
    r = httpx.post(url, params={"token": SECRET}, json=body("account.status"))
    assert r.status_code == 200
    assert rec.calls == [frozenset({"424"})]
    # Other events: one debounced full pass for a burst.
    for n in range(5):
        assert httpx.post(url, params={"token": SECRET}, json=body("ticket.created", n)).status_code == 200
    deadline = time.monotonic() + 5
    while len(rec.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rec.calls == [frozenset({"424"}), None]
    assert receiver.accepted == 6


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        return s.recv(200)


def test_the_endpoint_refuses_and_stays_up(hook: tuple[WebhookReceiver, Recorder, str]) -> None:
    receiver, rec, url = hook
    good = json.dumps(body("account.status")).encode()
    refusals = [
        (httpx.post(url, content=good), 403),  # no token
        (httpx.post(url, params={"token": "wrong"}, content=good), 403),
        (httpx.head(url, params={"token": "wrong"}), 403),
        (httpx.post(url.replace("sonar", "other"), params={"token": SECRET}, content=good), 404),
        (httpx.post(url, params={"token": SECRET}, content=b"{not json"), 400),
        (httpx.post(url, params={"token": SECRET}, json=["a", "list"]), 400),
        (httpx.post(url, params={"token": SECRET}, json={"object_id": 1}), 400),
        (httpx.post(url, params={"token": SECRET}, content=b"x" * (MAX_BODY + 1)), 413),
    ]
    assert [(r.status_code, want) for r, want in refusals] == [(want, want) for _, want in refusals]
    path = f"/webhooks/sonar?token={SECRET}".encode()
    assert _raw(receiver.port, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.0 411")
    assert _raw(receiver.port, b"POST " + path + b" HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n"
                ).startswith(b"HTTP/1.0 413")
    # A sender that opens a connection and sends nothing holds no one else up.
    stalled = socket.create_connection(("127.0.0.1", receiver.port))
    try:
        assert httpx.post(url, params={"token": SECRET}, json=body("account.status")).status_code == 200
    finally:
        stalled.close()
    assert rec.calls == [frozenset({"424"})]  # only the good one did anything
    assert receiver.refused == len(refusals) + 2


def _two_accounts() -> tuple[World, FakeSonar]:
    """Sonar with account 424 (an address, in Tower Hosts) and 425 (in the group, no
    address yet), started."""
    world = World()
    world.account(424, "Ridge Tower", groups=["Tower Hosts"])
    world.ip("Account", 424, "100.64.0.1/32")
    world.account(425, "Crête Farm", groups=["Tower Hosts"])
    return world, FakeSonar(SonarSimSettings(token=TOKEN), world).start()


def test_a_webhook_turns_into_a_pass_in_the_daemon(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent.parent / "daemon"))
    from harness import DaemonProc, free_port, new_password, wait_until

    from provisiond.sim import RouterSim, SimSettings

    world, sonar = _two_accounts()
    password, password_file = new_password(tmp_path)
    router = RouterSim(SimSettings(username="admin", password=password, log_commands=False)).start()
    (tmp_path / "sonar-token").write_text(TOKEN)
    (tmp_path / "hook-token").write_text(SECRET + "\n")
    port = free_port()
    config = tmp_path / "provisiond.toml"
    config.write_text(f'''[source]
type = "sonar"
url = "{sonar.url}"
token_file = "{tmp_path / 'sonar-token'}"
[state]
url = "sqlite:///{tmp_path / 'state.db'}"
[[router]]
name = "core-1"
host = "127.0.0.1"
port = {router.port}
username = "admin"
password_file = "{password_file}"
[[address_list]]
group = "Tower Hosts"
list = "tower-hosts"
[daemon]
interval = "300s"
jitter = 0
debounce = "0.3s"
webhook_listen = "127.0.0.1:{port}"
webhook_token_file = "{tmp_path / 'hook-token'}"
''')
    config.chmod(0o600)
    d = DaemonProc(config, log=tmp_path / "daemon.log")
    try:
        d.wait_log(r"pass=1 result=ok")
        listed = lambda: {e["address"] for e in router.entries("ip", "tower-hosts")}  # noqa: E731
        assert listed() == {"100.64.0.1"}

        sonar.add_webhook(f"http://127.0.0.1:{port}/webhooks/sonar?token={SECRET}")
        assert sonar.send_event("ipassignment.created", world.ip("Account", 425, "100.64.0.2/32")["id"]) == [200]
        wait_until(lambda: listed() == {"100.64.0.1", "100.64.0.2"}, timeout=10,
                   what="the webhook's pass")
        d.wait_log(r"pass=2 result=ok .* scope=1")  # a scoped pass: account 425 only
        assert "accounts=1 requests=1" in d.text()  # Sonar read for that account alone

        # A sender that gets everything wrong changes nothing and stops nothing.
        assert httpx.post(f"http://127.0.0.1:{port}/webhooks/sonar", content=b"x").status_code == 403
        world.update("accounts", 424, name="Ridge Tower North")
        assert sonar.send_event("account.updated", 424) == [200]
        wait_until(lambda: any("Ridge Tower North" in e["comment"]
                               for e in router.entries("ip", "tower-hosts")), timeout=10,
                   what="the second webhook's pass")
        d.wait_log(r"pass=3 result=ok .* scope=1")
        # An event about something that is not an account: a full pass.
        radius = world.radius_account(425, "crete")
        world.ip("RadiusAccount", radius["id"], "100.64.0.3/32")
        assert sonar.send_event("ipassignment.created", 999, current={
            "id": 999, "ipassignmentable_type": "RadiusAccount", "ipassignmentable_id": radius["id"]}) == [200]
        wait_until(lambda: listed() == {"100.64.0.1", "100.64.0.2", "100.64.0.3"}, timeout=10,
                   what="the full pass")
        m = d.wait_log(r"pass=4 result=ok[^\n]*")
        assert "scope=" not in m.group(0)
        assert d.proc.poll() is None
        assert SECRET not in d.text() and TOKEN not in d.text()
    finally:
        d.stop()
        router.stop()
        sonar.stop()


def test_the_fake_sends_webhooks_to_loopback_only(hook: tuple[WebhookReceiver, Recorder, str]) -> None:
    _, rec, url = hook
    world = World()
    world.account(7, "Seven")
    sonar = FakeSonar(SonarSimSettings(token=TOKEN, webhooks=[f"{url}?token={SECRET}"]), world).start()
    try:
        with pytest.raises(ValueError, match="loopback only"):
            sonar.add_webhook("http://192.0.2.1/webhooks/sonar")
        # An operator fires one by hand: POST /_sim/event with the token.
        r = httpx.post(sonar.url + "/_sim/event", json={"event": "account.status", "object_id": 7},
                       headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.json() == {"deliveries": [200]}
        assert rec.calls == [frozenset({"7"})]
        sent = sonar.event_body("account.status", 7)
        assert sent["current"]["name"] == "Seven" and "T" not in sent["triggered_at"]
    finally:
        sonar.stop()


def test_a_body_nested_too_deeply_is_bad_json(hook: tuple[WebhookReceiver, Recorder, str]) -> None:
    receiver, rec, url = hook
    r = httpx.post(url, params={"token": SECRET}, content=b"[" * 100_000)  # < MAX_BODY
    assert (r.status_code, r.text) == (400, "not JSON (nested too deeply)\n")
    assert httpx.post(url, params={"token": SECRET}, json=body("account.status")).status_code == 200
    assert rec.calls == [frozenset({"424"})]


def test_connections_beyond_the_cap_are_closed(hook: tuple[WebhookReceiver, Recorder, str]) -> None:
    from provisiond.daemon.webhook import MAX_HANDLERS

    receiver, rec, url = hook
    # Slow senders: each holds a handler thread (a request line, never finished).
    slow = [socket.create_connection(("127.0.0.1", receiver.port), timeout=5)
            for _ in range(MAX_HANDLERS)]
    try:
        for s in slow:
            s.sendall(b"POST /webhooks/sonar")
        deadline = time.monotonic() + 5
        while True:  # one more is closed unanswered (the slow ones are accepted first)
            with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as extra:
                extra.sendall(b"HEAD /webhooks/sonar?token=" + SECRET.encode() + b" HTTP/1.0\r\n\r\n")
                try:
                    got = extra.recv(200)
                except ConnectionResetError:
                    got = b""
            if got == b"":
                break
            assert time.monotonic() < deadline, "the extra connection was answered"
    finally:
        for s in slow:
            s.close()
    # The slow ones gone, their slots are free again.
    deadline = time.monotonic() + 5
    while True:
        try:
            r = httpx.post(url, params={"token": SECRET}, json=body("account.status"))
            if r.status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the endpoint stayed full"
        time.sleep(0.05)
    assert rec.calls == [frozenset({"424"})]


def test_every_request_is_counted_by_result_from_zero() -> None:
    from provisiond.daemon.metrics import WEBHOOK_RESULTS, Metrics

    metrics = Metrics()
    rec = Recorder()
    receiver = WebhookReceiver("127.0.0.1:0", SECRET, on_pass=rec, debounce=1.0,
                               metrics=metrics).start()
    url = f"http://127.0.0.1:{receiver.port}/webhooks/sonar"

    def counts() -> dict[str, float]:
        return {r: metrics.registry.get_sample_value("provisiond_webhook_requests_total",
                                                     {"result": r}) for r in WEBHOOK_RESULTS}

    try:
        assert counts() == {r: 0.0 for r in WEBHOOK_RESULTS}  # there before the first request
        path = f"/webhooks/sonar?token={SECRET}".encode()
        assert httpx.post(url, params={"token": SECRET}, json=body("account.status")).status_code == 200
        assert httpx.post(url, params={"token": "wrong"}, json=body("account.status")).status_code == 403
        assert httpx.post(url.replace("sonar", "x"), params={"token": SECRET}).status_code == 404
        assert httpx.get(url, params={"token": SECRET}).status_code == 405
        assert httpx.post(url, params={"token": SECRET}, content=b"{").status_code == 400
        assert _raw(receiver.port, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.0 411")
        assert _raw(receiver.port, b"POST " + path + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"2\r\n{}\r\n0\r\n\r\n").startswith(b"HTTP/1.0 411")
        assert httpx.post(url, params={"token": SECRET}, content=b"x" * (MAX_BODY + 1)).status_code == 413
        assert counts() == {"accepted": 1, "unauthorised": 1, "not_found": 1, "method_not_allowed": 1,
                            "bad_request": 1, "length_required": 2, "too_large": 1, "busy": 0}
    finally:
        receiver.stop()


def test_shared_members_a_webhook_one_member_hears_reaches_every_members_routers(
        tmp_path: Path, pg_url: str) -> None:
    """``members = "shared"``: only member a serves webhooks; the event's account lands
    on every router at once, those member b writes included (the relay), and a second
    pass of each plans nothing."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "daemon"))
    import psycopg
    from harness import DaemonProc, free_port, new_password, pg_kwargs, wait_until

    from provisiond.sim import RouterSim, SimSettings

    world, sonar = _two_accounts()
    password, password_file = new_password(tmp_path)
    routers = [RouterSim(SimSettings(username="admin", password=password, log_commands=False)).start()
               for _ in range(4)]
    (tmp_path / "sonar-token").write_text(TOKEN)
    (tmp_path / "hook-token").write_text(SECRET + "\n")
    port = free_port()
    state_url = pg_url.replace("postgresql://", "postgresql+psycopg://", 1)

    def config(member: str, hook: str) -> Path:
        path = tmp_path / f"{member}.toml"
        path.write_text(f'''[source]
type = "sonar"
url = "{sonar.url}"
token_file = "{tmp_path / 'sonar-token'}"
[state]
url = "{state_url}"
''' + "".join(f'''[[router]]
name = "core-{i}"
host = "127.0.0.1"
port = {r.port}
username = "admin"
password_file = "{password_file}"
''' for i, r in enumerate(routers)) + f'''[[address_list]]
group = "Tower Hosts"
list = "tower-hosts"
[daemon]
interval = "300s"
jitter = 0
debounce = "0.3s"
members = "shared"
member_id = "{member}"
member_ttl = "2s"
{hook}''')
        path.chmod(0o600)
        return path

    hook = f'webhook_listen = "127.0.0.1:{port}"\nwebhook_token_file = "{tmp_path / "hook-token"}"\n'
    a = DaemonProc(config("a", hook), log=tmp_path / "a.log")
    b = DaemonProc(config("b", ""), log=tmp_path / "b.log")
    listed = lambda r: {e["address"] for e in r.entries("ip", "tower-hosts")}  # noqa: E731
    try:
        wait_until(lambda: all(listed(r) == {"100.64.0.1"} for r in routers), timeout=30,
                   what="every router filled by its owner")
        with psycopg.connect(**pg_kwargs(pg_url)) as c:
            owners = dict(c.execute("SELECT resource, owner FROM provisiond_claims").fetchall())
        assert set(owners.values()) == {"a", "b"}, owners  # each member writes routers of its own
        for d in (a, b):
            d.wait_log(r"pass=\d+ result=ok")
        marks = {d: d.mark() for d in (a, b)}

        sonar.add_webhook(f"http://127.0.0.1:{port}/webhooks/sonar?token={SECRET}")
        assert sonar.send_event("ipassignment.created", world.ip("Account", 425, "100.64.0.2/32")["id"]) == [200]
        wait_until(lambda: all(listed(r) == {"100.64.0.1", "100.64.0.2"} for r in routers), timeout=10,
                   what="the webhook's account on every router, b's too")
        b.wait_log(r"pass=\d+ result=ok duration=\S+ changes=\d+ scope=1", after=marks[b])  # relayed
        a.wait_log(r"pass=\d+ result=ok duration=\S+ changes=\d+ scope=1", after=marks[a])
        for d in (a, b):  # idempotent: a full pass of each member changes nothing
            mark = d.mark()
            d.signal(signal.SIGHUP)
            d.wait_log(r"pass=\d+ result=ok duration=\S+ changes=0\n", after=mark, timeout=20)
        assert SECRET not in a.text() + b.text() and TOKEN not in a.text() + b.text()
    finally:
        for d in (a, b):
            d.stop()
        for r in routers:
            r.stop()
        sonar.stop()
