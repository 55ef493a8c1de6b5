"""``python -m provisiond.sim.sonar``: run a fake Sonar in the foreground.

Prints ``provisiond.sim.sonar listening on http://HOST:PORT`` on stdout once the port
is bound (the demo parses that line). The data comes from ``--data FILE`` (a JSON
object of Sonar's tables, see ``world.World.load``); the token from ``--token-file``.
It listens on loopback only and sends webhooks (``--webhook URL``, fired with
``POST /_sim/event {"event": …, "object_id": …}``) to loopback only.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from .server import FakeSonar, SonarSimSettings, is_loopback
from .world import World

log = logging.getLogger("provisiond.sim.sonar")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m provisiond.sim.sonar",
                                description="A fake Sonar GraphQL API on loopback.")
    p.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    p.add_argument("--token-file", type=Path, required=True, help="the bearer token to accept")
    p.add_argument("--data", type=Path, help="JSON tables to serve (default: empty)")
    p.add_argument("--page-cap", type=int, default=100, help="most records per page handed out")
    p.add_argument("--ids", choices=["number", "string", "mixed"], default="string",
                   help="how Int64Bit ids are written in JSON (Sonar: string)")
    p.add_argument("--limit", type=int, default=400, help="requests per window (Sonar: 400)")
    p.add_argument("--window", type=float, default=60.0, help="seconds per window (Sonar: 60)")
    p.add_argument("--limit-status", type=int, default=429,
                   help="HTTP status of the request-limit answer (undocumented by Sonar)")
    p.add_argument("--webhook", action="append", default=[], metavar="URL")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit():
        parser.error(f"--listen: expected HOST:PORT, got {args.listen!r}")
    host = host.strip("[]")
    if not is_loopback(host):
        parser.error(f"refusing to listen on non-loopback address {host}")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        token = args.token_file.read_text(encoding="utf-8").strip()
        world = World.load(args.data) if args.data else World()
        sonar = FakeSonar(SonarSimSettings(
            token=token, host=host, port=int(port), page_cap=args.page_cap, ids=args.ids,
            limit=args.limit, window=args.window, limit_status=args.limit_status,
            webhooks=list(args.webhook)), world).start()
    except (OSError, ValueError) as exc:
        print(f"provisiond.sim.sonar: cannot start: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"provisiond.sim.sonar listening on {sonar.url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sonar.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
