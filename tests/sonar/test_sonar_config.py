"""``[source] type = "sonar"``: the settings, and check-config's one query that says
whether the URL, the token or the schema is wrong."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from sonarlib import TOKEN, populate

from provisiond import settings as settings_mod
from provisiond.cli import main as cli
from provisiond.errors import ConfigError
from provisiond.sim.sonar import FakeSonar, World

MakeSonar = Callable[..., FakeSonar]


def write(tmp_path: Path, source: str, mode: int = 0o600) -> Path:
    path = tmp_path / "provisiond.toml"
    path.write_text(f"[source]\n{source}\n", encoding="utf-8")
    os.chmod(path, mode)
    return path


def token_file(tmp_path: Path, token: str = TOKEN) -> Path:
    path = tmp_path / "sonar-token"
    path.write_text(token + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(["--config", str(path), "check-config"])
    return code, capsys.readouterr().out


def test_sonar_settings_and_their_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, f'type = "sonar"\nurl = "https://isp.sonar.software"\n'
                           f'token_file = "{token_file(tmp_path)}"')
    s = settings_mod.load(path).source
    assert (s.type, s.sonar_page_size, s.timeout, s.sonar_token()) == ("sonar", 100, 300.0, TOKEN)
    assert s.display_url() == "https://isp.sonar.software"


@pytest.mark.parametrize(("source", "problem"), [
    ('type = "sonar"\nurl = "http://isp.sonar.software"\ntoken = "t"',
     "source.url: http:// only to a loopback address (the token would cross the network in "
     "clear text); use https://isp.sonar.software"),
    ('type = "sonar"\nurl = "https://isp.sonar.software"',
     "source.token_file: set token_file (or token)"),
    ('type = "sonar"\nurl = "https://isp.sonar.software"\ntoken = "t"\nquery = "SELECT 1"',
     'source.query: not used with type = "sonar"'),
    ('type = "sonar"\nurl = "https://isp.sonar.software"\ntoken = "t"\npage_size = 0',
     "source.page_size: Input should be greater than or equal to 1"),
    ('type = "soap"\nurl = "https://isp.sonar.software"',
     "source.type: Input should be 'sql' or 'sonar'"),
    ('url = "sqlite:///x.db"\nquery = "SELECT 1"\ntoken = "t"', 'source.token: only for type = "sonar"'),
    ('type = "sonar"\nurl = "https://isp.sonar.software"\ntoken = "t"\n[daemon]\nnotify_channel = "provisiond"',
     'daemon.notify_channel: LISTEN/NOTIFY needs billing on PostgreSQL (source.type = "sql"); '
     "Sonar tells provisiond of changes by webhook: remove notify_channel and set "
     "daemon.webhook_listen and daemon.webhook_token_file"),
])
def test_sonar_settings_problems_name_the_key(tmp_path: Path, source: str, problem: str) -> None:
    with pytest.raises(ConfigError) as exc:
        settings_mod.load(write(tmp_path, source))
    assert problem in exc.value.problems


def test_http_to_loopback_is_allowed(tmp_path: Path) -> None:
    s = settings_mod.load(write(tmp_path, 'type = "sonar"\nurl = "http://127.0.0.1:8080"\ntoken = "t"'))
    assert s.source.resolved_url() == "http://127.0.0.1:8080"


def test_check_config_proves_url_token_and_schema(
    tmp_path: Path, make_sonar: MakeSonar, capsys: pytest.CaptureFixture[str]
) -> None:
    world = World()
    populate(world, 3)
    sonar = make_sonar(world)
    good = f'type = "sonar"\nurl = "{sonar.url}"\ntoken_file = "{token_file(tmp_path)}"'
    code, out = check(write(tmp_path, good), capsys)
    assert code == 0, out
    assert sonar.requests == 1  # one small query

    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token\n")
    code, out = check(write(tmp_path, good.replace(str(tmp_path / "sonar-token"), str(wrong))), capsys)
    assert code == 1
    assert ("error: source.token_file: Sonar request 1 (check: the first account): Sonar refused the "
            "token (HTTP 401: Unauthenticated.)") in out
    assert "not-the-token" not in out

    sonar.before_request.append(
        lambda doc: doc.update(query=doc["query"].replace("subnet", "address")))
    code, out = check(write(tmp_path, good), capsys)
    assert code == 1
    assert ("error: source (Sonar's schema): Sonar request 1 (check: the first account): GraphQL "
            "error: Cannot query field 'address' on type 'IpAssignment'") in out


@pytest.fixture
def not_sonar() -> Iterator[str]:
    """Some other web server on loopback (a wrong source.url)."""

    class NotFound(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b"not found")

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_check_config_names_a_wrong_url(tmp_path: Path, not_sonar: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(write(tmp_path, f'type = "sonar"\nurl = "{not_sonar}"\n'
                                      f'token_file = "{token_file(tmp_path)}"'), capsys)
    assert code == 1
    assert (f"error: source.url: Sonar request 1 (check: the first account): {not_sonar}/api/graphql "
            "answered HTTP 404 (text/html), not Sonar's JSON: is source.url the Sonar instance?") in out


def test_check_config_warns_about_an_inline_token(tmp_path: Path, make_sonar: MakeSonar,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    sonar = make_sonar(World())
    code, out = check(write(tmp_path, f'type = "sonar"\nurl = "{sonar.url}"\ntoken = "{TOKEN}"',
                            mode=0o644), capsys)
    assert code == 0, out
    assert "readable by group/others and holds secrets inline: source.token" in out
    assert TOKEN not in out
