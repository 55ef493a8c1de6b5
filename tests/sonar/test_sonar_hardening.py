"""What a reviewer broke: a token with a second line leaking through an error, answers of
the wrong shape crashing a pass, proxies from the environment seeing loopback traffic."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from sonarlib import TOKEN, Recorder, canned, populate

from provisiond import settings as settings_mod
from provisiond.cli.logs import redact
from provisiond.daemon.webhook import WebhookReceiver
from provisiond.errors import ConfigError
from provisiond.sim.sonar import FakeSonar, World
from provisiond.sources.sonar import SonarError, SonarSource

MakeSonar = Callable[..., FakeSonar]


def config(tmp_path: Path, token_text: str, *, url: str = "https://isp.sonar.software") -> Path:
    token = tmp_path / "sonar-token"
    token.write_text(token_text, encoding="utf-8")
    hook = tmp_path / "hook-token"
    hook.write_text(token_text, encoding="utf-8")
    path = tmp_path / "provisiond.toml"
    path.write_text(f'[source]\ntype = "sonar"\nurl = "{url}"\ntoken_file = "{token}"\n'
                    f'[daemon]\nwebhook_listen = "127.0.0.1:0"\nwebhook_token_file = "{hook}"\n')
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("text", [TOKEN + "\nsecond-line\n", TOKEN + "\x01", "x" + TOKEN + "\t" + "y",
                                  TOKEN + "\u00e9"])
def test_a_token_that_is_not_one_printable_line_names_the_key_not_the_value(
        tmp_path: Path, text: str) -> None:
    s = settings_mod.load(config(tmp_path, text))
    with pytest.raises(ConfigError) as exc:
        s.source.sonar_token()
    assert exc.value.problems[0].startswith("source.token_file: the token must be one line")
    with pytest.raises(ConfigError) as exc2:
        s.daemon.webhook_token()
    assert exc2.value.problems[0].startswith("daemon.webhook_token_file: the token must be one line")
    for e in (exc.value, exc2.value):
        assert TOKEN not in str(e) and "second-line" not in str(e)


def test_a_token_file_with_blanks_around_it_still_works(tmp_path: Path) -> None:
    s = settings_mod.load(config(tmp_path, f"  {TOKEN} \r\n\n"))
    assert s.source.sonar_token() == TOKEN
    assert s.daemon.webhook_token() == TOKEN


def test_a_token_with_a_control_character_never_reaches_an_error(make_sonar: MakeSonar) -> None:
    sonar = make_sonar(World())
    with pytest.raises(SonarError) as exc:
        SonarSource(sonar.url, TOKEN + "\nsecond-line", timeout=5.0).read()
    assert exc.value.kind == "token"
    assert TOKEN not in str(exc.value) and "second-line" not in str(exc.value)


def test_clean_removes_the_token_as_reprs_show_it() -> None:
    src = SonarSource("http://127.0.0.1:9", TOKEN, timeout=1.0)
    src._token = "tok\nen-\x01-secret"  # as if it had got past the checks
    for shown in (repr(src._token), repr(src._token.encode()), f"Bearer {src._token!r}"):
        assert "secret" not in src._clean(f"Illegal header value {shown}")
    src.close()


@pytest.mark.parametrize("line", [
    f"Illegal header value b'Bearer {TOKEN}\\nsecond'",
    f"send_request_headers headers=[(b'Authorization', b'bearer {TOKEN}')]",
    f"POST /webhooks/sonar?token={TOKEN}&x=1 HTTP/1.1",
])
def test_redaction_knows_bearer_and_token(line: str) -> None:
    clean = redact(line)
    assert TOKEN not in clean and "***" in clean


def test_httpcore_is_quietened_like_httpx(make_sonar: MakeSonar,
                                          caplog: pytest.LogCaptureFixture) -> None:
    logging.getLogger("httpcore").setLevel(logging.NOTSET)
    world = World()
    populate(world, 2)
    source = SonarSource(make_sonar(world).url, TOKEN, timeout=10.0)
    assert logging.getLogger("httpcore").level == logging.WARNING
    with caplog.at_level(logging.DEBUG):
        assert len(source.read()) == 2
    assert not [r for r in caplog.records if r.name.startswith(("httpcore", "httpx"))]


@pytest.mark.parametrize(("field", "value"), [("account_status", "Active"), ("account_status", ["x"]),
                                              ("page_info", "many"), ("page_info", [3])])
def test_an_answer_of_the_wrong_shape_is_a_sonar_error(field: str, value: Any) -> None:
    account: dict[str, Any] = {"id": 7, "name": "Seven", "is_delinquent": False,
                               "account_status": {"name": "Active", "activates_account": True},
                               "account_groups": {"entities": [], "page_info": {"total_count": 0}}}
    if field == "account_status":
        account["account_status"] = value
        want = r"account 7: account_status is not an object"
    else:
        account["account_groups"]["page_info"] = value
        want = r"account 7: account_groups.page_info is not an object"
    answer = {"data": {"accounts": {"entities": [account], "page_info": {"total_count": 1}}}}
    with canned(answer) as url, pytest.raises(SonarError, match=want) as exc:
        SonarSource(url, TOKEN, timeout=5.0).read()
    assert exc.value.kind == "answer"


def test_a_graphql_errors_object_instead_of_a_list_is_a_sonar_error() -> None:
    with canned({"errors": {"message": "odd"}}) as url, \
            pytest.raises(SonarError, match="GraphQL error: odd"):
        SonarSource(url, TOKEN, timeout=5.0).read()


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Any:
    recorder = Recorder()
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{recorder.port}")
    yield recorder
    recorder.close()


def test_loopback_sonar_and_webhooks_bypass_a_proxy_from_the_environment(
        make_sonar: MakeSonar, proxy: Recorder) -> None:
    world = World()
    populate(world, 3)
    sonar = make_sonar(world)
    assert len(SonarSource(sonar.url, TOKEN, timeout=10.0).read()) == 3
    calls: list[Any] = []
    secret = "hook-secret-0123456789"
    receiver = WebhookReceiver("127.0.0.1:0", secret, on_pass=calls.append, debounce=0.1).start()
    try:
        sonar.add_webhook(f"http://127.0.0.1:{receiver.port}/webhooks/sonar?token={secret}")
        assert sonar.send_event("account.status", 1000) == [200]
    finally:
        receiver.stop()
    assert calls == [frozenset({"1000"})]
    assert proxy.seen == []  # neither the Authorization header nor the ?token= went there


def test_a_real_sonar_keeps_the_operators_proxy_and_never_follows_redirects() -> None:
    source = SonarSource("https://isp.sonar.software", TOKEN)
    assert source._client._trust_env is True
    assert source._client.follow_redirects is False
    source.close()
    loop = SonarSource("http://127.0.0.1:9", TOKEN)
    assert loop._client._trust_env is False
    loop.close()


def test_the_fake_does_not_follow_a_webhook_redirect(make_sonar: MakeSonar) -> None:
    target = Recorder()

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{target.port}/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sonar = make_sonar(World())
        sonar.add_webhook(f"http://127.0.0.1:{server.server_address[1]}/hook?token=t")
        assert sonar.send_event("account.status", 1) == [302]
    finally:
        server.shutdown()
        server.server_close()
        target.close()
    assert target.seen == []
