"""``python -m provisiond.sim``: run one simulated router in the foreground.

For operators trying a configuration and for end-to-end tests that want a
separate process. Prints ``provisiond.sim listening on HOST:PORT`` on stdout
once the port is bound (other tools parse that line), logs connections and
commands at INFO on stderr, and exits cleanly on SIGINT/SIGTERM. Listening
off loopback needs ``--allow-remote``: the simulator has a well-known
password and must not be reachable from a network by accident.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from .routeros import RouterSim, SimSettings
from .routeros.settings import DEFAULT_IDENTITY, DEFAULT_VERSION

log = logging.getLogger("provisiond.sim")


def _listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _extra_user(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE, got {text!r}")
    return name, Path(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m provisiond.sim", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_listen_address, default=("127.0.0.1", 8728), metavar="HOST:PORT")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password", default="")
    parser.add_argument("--password-file", type=Path, metavar="FILE",
                        help="read the password from FILE (keeps it out of the process list)")
    parser.add_argument("--extra-user", action="append", default=[], type=_extra_user,
                        metavar="NAME=FILE", help="another login beside --user, its password read "
                        "from FILE (repeatable; the command history names each command's user)")
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    parser.add_argument("--version", default=DEFAULT_VERSION, help="RouterOS version string to report")
    parser.add_argument("--name", default=DEFAULT_IDENTITY, help="/system/identity name")
    parser.add_argument("--legacy-login", action="store_true", help="pre-6.43 MD5 challenge login")
    parser.add_argument("--partial-remove", action="store_true", help="multi-id remove with an unknown id removes the known ones")
    parser.add_argument("--command-latency", type=float, default=0.0, metavar="SECONDS",
                        help="a WAN link: each reply leaves SECONDS after its own command arrived "
                             "(pipelined commands overlap)")
    parser.add_argument("--row-latency", type=float, default=0.0, metavar="SECONDS",
                        help="router work per table row a print scans")
    parser.add_argument("--scan-cost-us", type=float, default=0.0, metavar="N",
                        help="router CPU per row of the whole table for every address-list print, "
                             "one queue for all connections (listen costs nothing)")
    parser.add_argument("--add-cost-ms", type=float, default=0.0, metavar="M",
                        help="router CPU per entry an add/set/remove writes (same queue)")
    parser.add_argument("--no-listen", action="store_true",
                        help="refuse listen and print follow/follow-only, as a router without them")
    parser.add_argument("--silent-expiry", action="store_true",
                        help="do not report entries whose timeout ran out to listeners (default: .dead)")
    parser.add_argument("--dead-to-all-listeners", action="store_true",
                        help="report every removal to every listen, whatever its query")
    parser.add_argument("--dead-value", choices=("yes", "true"),
                        help="the value of .dead on a removal (default: true from v7, yes before)")
    parser.add_argument("--tag-last", action="store_true",
                        help="put a reply's .tag after its attributes, as some routers do")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback listen address")
    parser.add_argument("--quiet", action="store_true", help="log connections only, not every command")
    return parser


def settings_from(args: argparse.Namespace) -> SimSettings:
    host, port = args.listen
    return SimSettings(
        username=args.user,
        password=(args.password_file.read_text(encoding="utf-8").rstrip("\r\n")
                  if args.password_file else args.password),
        users={name: path.read_text(encoding="utf-8").rstrip("\r\n") for name, path in args.extra_user},
        version=args.version,
        identity=args.name,
        host=host,
        port=port,
        legacy_login=args.legacy_login,
        atomic_remove=not args.partial_remove,
        tag_last=args.tag_last,
        command_latency=args.command_latency,
        row_latency=args.row_latency,
        scan_cost_us=args.scan_cost_us,
        add_cost_ms=args.add_cost_ms,
        listen=not args.no_listen,
        report_expiry=not args.silent_expiry,
        dead_to_all_listeners=args.dead_to_all_listeners,
        dead_value=args.dead_value,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        log_commands=not args.quiet,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    host = args.listen[0]
    if not _is_loopback(host) and not args.allow_remote:
        parser.error(f"refusing to listen on non-loopback address {host}; pass --allow-remote")
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("sim signal=%s stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        sim = RouterSim(settings_from(args)).start()
    except (OSError, ValueError) as exc:
        print(f"provisiond.sim: cannot start: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"provisiond.sim listening on {sim.host}:{sim.port}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
