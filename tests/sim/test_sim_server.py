"""The simulator as a server: routeros_api client, TLS, faults, the CLI entry point."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import librouteros
import pytest
import routeros_api
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from librouteros.query import Key
from routeros_api.exceptions import RouterOsApiCommunicationError

from provisiond.sim import RouterSim
from provisiond.sim.routeros.codec import encode_sentence

REPO = Path(__file__).resolve().parents[2]

# What conftest.py configures (test modules do not import conftest: its module
# name is shared with other test directories).
AL = "/ip/firewall/address-list"
USER, PASSWORD = "sim-user", "sim-pass"
RawClient = Any  # conftest.RawClient, handed out by the ``raw`` fixture


def test_routeros_api_add_get_remove(ros_api: Any) -> None:
    resource = ros_api.get_resource(AL)
    resource.add(list="x", address="10.1.1.1/32", comment="Zürich")
    resource.add(list="x", address="10.1.2.0/24")
    resource.add(list="y", address="10.9.9.9")
    rows = resource.get(list="x")
    assert [(r["id"], r["address"], r["dynamic"], r.get("comment")) for r in rows] == [
        ("*1", "10.1.1.1", "false", "Zürich"),
        ("*2", "10.1.2.0/24", "false", None),
    ]
    resource.remove(id=rows[0]["id"])
    assert [r["address"] for r in resource.get(list="x")] == ["10.1.2.0/24"]
    assert resource.get(list="nothing") == []  # !empty with a tag, then !done


def test_routeros_api_query_words_outside_print_are_ignored(ros_api: Any) -> None:
    """The second client sends real ``?`` words: remove/set act on ``.id`` only (ROUTEROS.md 1.2)."""
    resource = ros_api.get_resource(AL)
    resource.add(list="x", address="10.1.1.1")
    resource.add(list="x", address="10.1.1.2")
    ident = resource.get(address="10.1.1.1")[0]["id"]
    assert resource.call("remove", queries={".id": ident}) == []  # a bare !done
    assert len(resource.get(list="x")) == 2
    resource.call("set", {"id": ident, "comment": "set"}, queries={"address": "10.1.1.2"})
    assert {r["address"]: r.get("comment") for r in resource.get(list="x")} == {
        "10.1.1.1": "set", "10.1.1.2": None}


def test_routeros_api_sees_traps(ros_api: Any) -> None:
    resource = ros_api.get_resource(AL)
    resource.add(list="x", address="10.1.1.1")
    with pytest.raises(RouterOsApiCommunicationError) as caught:
        resource.add(list="x", address="10.1.1.1")
    assert caught.value.original_message == b"failure: already have such entry"
    with pytest.raises(RouterOsApiCommunicationError) as caught:
        resource.set(id="*99", comment="x")
    assert caught.value.original_message == b"no such item (4)"


def test_routeros_api_ipv6_and_identity(make_sim: Callable[..., RouterSim]) -> None:
    sim = make_sim(identity="edge-7")
    pool = routeros_api.RouterOsApiPool(sim.host, username=USER, password=PASSWORD, port=sim.port, plaintext_login=True)
    api = pool.get_api()
    api.get_resource("/ipv6/firewall/address-list").add(list="v6", address="2001:DB8::5")
    assert [r["address"] for r in api.get_resource("/ipv6/firewall/address-list").get()] == ["2001:db8::5/128"]
    assert api.get_resource("/system/identity").get() == [{"name": "edge-7"}]
    pool.disconnect()


def test_routeros_api_md5_login_on_legacy_router(make_sim: Callable[..., RouterSim]) -> None:
    sim = make_sim(legacy_login=True)
    pool = routeros_api.RouterOsApiPool(sim.host, username=USER, password=PASSWORD, port=sim.port)
    assert pool.get_api().get_resource("/system/identity").get() == [{"name": "MikroTik"}]
    pool.disconnect()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sim.invalid")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("sim.invalid")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_tls_with_librouteros(make_sim: Callable[..., RouterSim], certificate: tuple[Path, Path]) -> None:
    cert_path, key_path = certificate
    sim = make_sim(tls_cert=cert_path, tls_key=key_path)
    context = ssl.create_default_context(cafile=str(cert_path))
    wrap = lambda sock: context.wrap_socket(sock, server_hostname="sim.invalid")  # noqa: E731
    api = librouteros.connect(sim.host, USER, PASSWORD, port=sim.port, ssl_wrapper=wrap, encoding="utf-8")
    api.path("ip", "firewall", "address-list").add(list="tls", address="1.2.3.4", comment="ñ")
    assert list(api.path("ip", "firewall", "address-list").select("comment")) == [{"comment": "ñ"}]
    assert sim.connection_count == 1
    api.close()
    deadline = time.monotonic() + 5
    while sim.connection_count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sim.connection_count == 0


def test_tls_port_refuses_plaintext(
    make_sim: Callable[..., RouterSim], raw: Callable[..., RawClient], certificate: tuple[Path, Path]
) -> None:
    sim = make_sim(tls_cert=certificate[0], tls_key=certificate[1])
    client = raw(sim.port)
    client.send("/login", f"=name={USER}", f"=password={PASSWORD}")
    assert client.is_closed()


def test_drop_connections(sim: RouterSim, lr: librouteros.api.Api) -> None:
    assert tuple(lr.path("system", "identity"))
    sim.drop_connections()
    with pytest.raises((librouteros.exceptions.ConnectionClosed, OSError)):
        tuple(lr.path("system", "identity"))
    again = librouteros.connect(sim.host, USER, PASSWORD, port=sim.port)
    assert tuple(again.path("system", "identity")) == ({"name": "MikroTik"},)
    again.close()


def test_down_router_refuses_connections_then_comes_back(sim: RouterSim) -> None:
    sim.set_down(True)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((sim.host, sim.port), timeout=2).close()
    sim.set_down(False)
    api = librouteros.connect(sim.host, USER, PASSWORD, port=sim.port)
    assert tuple(api.path("system", "identity")) == ({"name": "MikroTik"},)
    api.close()


def test_stalled_router_times_the_client_out(sim: RouterSim) -> None:
    api = librouteros.connect(sim.host, USER, PASSWORD, port=sim.port, timeout=0.3)
    sim.set_stalled(True)
    with pytest.raises(TimeoutError):
        tuple(api.path("system", "identity"))
    sim.set_stalled(False)
    api.close()


def test_latency_settings_delay_replies(make_sim: Callable[..., RouterSim], raw: Callable[..., RawClient]) -> None:
    sim = make_sim(command_latency=0.05, row_latency=0.002)
    for i in range(50):
        sim.add_entry("ip", list_name="other" if i else "one", address=f"10.0.0.{i}", dynamic=False)
    client = raw(sim.port)
    client.login()
    started = time.monotonic()
    assert client.call(f"{AL}/print", "=.proplist=address", "?list=one") == [["!re", "=address=10.0.0.0"], ["!done"]]
    assert time.monotonic() - started >= 0.05 + 50 * 0.002  # a router scans every row


def test_latency_is_a_link_pipelined_commands_overlap(make_sim: Callable[..., RouterSim],
                                                     raw: Callable[..., RawClient]) -> None:
    """Each reply leaves ``command_latency`` after its own command arrived (a WAN link).

    By the time the first reply arrives, the router has read every pipelined command:
    they are in flight together, not answered one latency after another.
    """
    sim = make_sim(command_latency=0.3)
    client = raw(sim.port)
    client.login()
    sim.reset_history()
    sent = time.monotonic()
    client.send_bytes(b"".join(encode_sentence([f"{AL}/add", "=list=l", f"=address=10.0.0.{i}", f".tag={i}"])
                               for i in range(10)))
    first = client.sentence()
    assert time.monotonic() - sent >= 0.3
    assert first[:2] == ["!done", ".tag=0"]
    assert len(sim.history) == 10  # all ten arrived before the first answer left
    rest = [client.sentence() for _ in range(9)]
    assert [s[1] for s in rest] == [f".tag={i}" for i in range(1, 10)]
    assert len(sim.entries("ip", "l")) == 10


def test_state_helpers(sim: RouterSim, lr: librouteros.api.Api, clock: Any) -> None:
    kept = sim.add_entry("ip", list_name="h", address="10.0.0.1", dynamic=False, comment="k")
    gone = sim.add_entry("ip", list_name="h", address="10.0.0.2", timeout="10s")
    sim.add_entry("ipv6", list_name="h", address="2001:db8::/48", disabled=True)
    assert [(e[".id"], e["dynamic"], e.get("timeout")) for e in sim.entries("ip", "h")] == [
        (kept, "false", None),
        (gone, "true", "10s"),
    ]
    clock.advance(10)
    assert [e[".id"] for e in sim.entries("ip")] == [kept]
    sim.remove_entry("ip", kept)
    assert list(lr.path("ip", "firewall", "address-list")) == []
    assert [(r["address"], r["disabled"]) for r in lr.path("ipv6", "firewall", "address-list")] == [("2001:db8::/48", True)]
    with pytest.raises(ValueError):
        sim.entries("bridge")


def test_many_adds_over_one_connection_and_a_list_print(lr: librouteros.api.Api, sim: RouterSim) -> None:
    path = lr.path("ip", "firewall", "address-list")
    for i in range(2000):
        path.add(list="bulk", address=f"10.{i >> 8}.{i & 255}.1")
    path.add(list="small", address="192.0.2.1")
    assert [r["address"] for r in path.select("address").where(Key("list") == "small")] == ["192.0.2.1"]
    assert len(list(path.select(".id").where(Key("list") == "bulk"))) == 2000
    assert sim.command_counts[f"{AL}/add"] == 2001


def _start_cli(*args: str) -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisiond.sim", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    prefix = "provisiond.sim listening on 127.0.0.1:"
    assert line.startswith(prefix), (line, proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
    return proc, int(line[len(prefix) :])


def test_cli_runs_a_router_until_sigterm(tmp_path: Path) -> None:
    (tmp_path / "b").write_text("b-s3cret\n", encoding="utf-8")
    proc, port = _start_cli("--listen", "127.0.0.1:0", "--user", "op", "--password", "s3cret-pw", "--name", "core-1",
                            "--version", "7.17.2", "--extra-user", f"member-b={tmp_path / 'b'}")
    try:
        api = librouteros.connect("127.0.0.1", "op", "s3cret-pw", port=port)
        assert tuple(api.path("system", "identity")) == ({"name": "core-1"},)
        assert [r["version"] for r in api.path("system", "resource")] == ["7.17.2"]
        api.path("ip", "firewall", "address-list").add(list="cli", address="1.2.3.4")
        api.close()
        other = librouteros.connect("127.0.0.1", "member-b", "b-s3cret", port=port)
        other.path("ip", "firewall", "address-list").add(list="cli", address="1.2.3.5")
        other.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "user=op command=/ip/firewall/address-list/add" in stderr
    assert "user=member-b command=/ip/firewall/address-list/add" in stderr
    assert "s3cret" not in stderr


def test_cli_refuses_non_loopback_without_allow_remote() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "provisiond.sim", "--listen", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert result.returncode == 2
    assert "refusing to listen on non-loopback address 0.0.0.0" in result.stderr


def test_several_users_log_in_and_the_history_says_who_sent_what(
    make_sim: Callable[..., RouterSim], raw: Callable[..., RawClient],
) -> None:
    sim = make_sim(users={"member-a": "pw-a", "member-b": "pw-b"})
    before = time.monotonic()
    a, b, admin = raw(sim.port), raw(sim.port), raw(sim.port)
    a.login("member-a", "pw-a")
    b.login("member-b", "pw-b")
    admin.login()  # the documented single user still works beside them
    assert a.call(f"{AL}/add", "=list=l", "=address=10.0.0.1")[0][0] == "!done"
    assert b.call(f"{AL}/add", "=list=l", "=address=10.0.0.2")[0][0] == "!done"
    assert admin.call(f"{AL}/print")[-1] == ["!done"]
    # A user's password is not another's, and an unknown user is refused.
    wrong, stranger = raw(sim.port), raw(sim.port)
    assert wrong.call("/login", "=name=member-a", "=password=pw-b")[0][0] == "!trap"
    assert stranger.call("/login", "=name=nobody", "=password=pw-a")[0][0] == "!trap"
    after = time.monotonic()

    adds = [c for c in sim.history if c.path == f"{AL}/add"]
    assert [(c.user, dict(c.attributes)["address"]) for c in adds] == [
        ("member-a", "10.0.0.1"), ("member-b", "10.0.0.2")]
    assert [c.user for c in sim.history if c.path == f"{AL}/print"] == [USER]
    assert all(c.user is None for c in sim.history if c.path == "/login")  # sent before login
    assert adds[0].peer != adds[1].peer and adds[0].peer.startswith("127.0.0.1:")
    # The arrival times are this process's monotonic clock, in order.
    assert before <= adds[0].at <= adds[1].at <= after


def test_a_second_user_logs_in_the_legacy_way_too(make_sim: Callable[..., RouterSim]) -> None:
    sim = make_sim(legacy_login=True, users={"member-a": "pw-a"})
    pool = routeros_api.RouterOsApiPool(sim.host, username="member-a", password="pw-a", port=sim.port)
    assert pool.get_api().get_resource("/system/identity").get() == [{"name": "MikroTik"}]
    pool.disconnect()
    assert {c.user for c in sim.history if c.path == "/system/identity/print"} == {"member-a"}
