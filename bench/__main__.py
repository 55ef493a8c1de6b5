"""``./dev bench``: provisiond at ISP size against the floor, in one table.

    ./dev bench [--accounts 100000] [--routers 4] [--lists 10] [--rtt-ms 1]
                [--churn 2000] [--churn-rtt-ms 20] [--changes 30] [--repeat 3]
                [--scan-cost-us 80] [--add-cost-ms 1.2] [--events 20] [--deletes 20]
                [--restore-wait 10] [--interval SECONDS] [--trials 10] [--member-ttl SECONDS]
                [--member-logs DIR] [--only NAME]

Builds the scenario (``bench.scenario``), then runs each measurement of
``bench.measure`` in turn and prints one table: wall time, the floor it is compared
with, the ratio, and the peak RSS of each provisiond process. The cold apply and the no-op
plan run ``--repeat`` times, each run paired with a floor measured next to it (floor
first, then job first, alternately): their ratio is the median of the pairs'. A
benchmark, not a test:
nothing is asserted and CI does not run it at full size. To add a measurement, write a
function in ``bench.measure`` that returns ``Row``s and list it in ``MEASUREMENTS``.
"""

from __future__ import annotations

import argparse
import compileall
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import provisiond

from bench import measure, members, notify, router_load
from bench.measure import Row
from bench.scenario import Scenario

MEASUREMENTS: dict[str, Callable[[Scenario, argparse.Namespace], list[Row]]] = {
    "cold-apply": lambda s, a: measure.cold_apply(s, a.repeat),
    "noop-plan": lambda s, a: measure.noop_plan(s, a.repeat),
    "churn": lambda s, a: measure.churn(s, count=a.churn, rtt=a.churn_rtt_ms / 1000),
    "notify": lambda s, a: notify.notify_latency(s, changes=a.changes),
    "router-load": lambda s, a: router_load.router_load(s, router_load.Options(
        scan_cost_us=a.scan_cost_us, add_cost_ms=a.add_cost_ms, events=a.events,
        event_timeout=a.event_timeout, deletes=a.deletes, restore_wait=a.restore_wait,
        interval=a.interval)),
    "members": lambda s, a: members.members(s, members.Options(
        events=a.events, trials=a.trials, scan_cost_us=a.scan_cost_us, add_cost_ms=a.add_cost_ms,
        ttl=a.member_ttl, interval=a.interval, event_timeout=a.event_timeout, logs=a.member_logs)),
}


def _num(x: float) -> str:
    """Seconds in 8 columns; a third decimal below 1 s (a per-change floor is milliseconds)."""
    return f"{x:8.3f}" if abs(x) < 1 else f"{x:8.2f}"


def table(rows: Sequence[Row]) -> str:
    width = max(len(r.job) for r in rows)
    lines = [f"{'job':<{width}}  {'wall s':>8}  {'floor s':>8}  {'ratio':>6}  {'peak RSS':>9}  note",
             "-" * (width + 48)]
    for r in rows:
        floor = _num(r.floor) if r.floor else " " * 8
        ratio = f"{r.ratio:5.2f}x" if r.ratio is not None else " " * 6
        rss = f"{r.rss_mib:5.0f} MiB" if r.rss_mib is not None else " " * 9
        lines.append(f"{r.job:<{width}}  {_num(r.wall)}  {floor}  {ratio}  {rss}  {r.note}")
    return "\n".join(lines)


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="./dev bench", description=__doc__.splitlines()[0])
    p.add_argument("--accounts", type=int, default=100_000)
    p.add_argument("--routers", type=int, default=4)
    p.add_argument("--lists", type=int, default=10)
    p.add_argument("--rtt-ms", type=float, default=1.0)
    p.add_argument("--churn", type=int, default=2000, help="adds in the churn measurement")
    p.add_argument("--churn-rtt-ms", type=float, default=20.0)
    p.add_argument("--changes", type=int, default=30,
                   help="billing changes timed in the notify measurement (p50/p95)")
    p.add_argument("--repeat", type=_positive, default=3,
                   help="pairs of (floor, job) for cold-apply and noop-plan; the ratio is "
                        "their median (default 3)")
    g = p.add_argument_group("router-load", "the routers' side of provisiond run's cost (bench.router_load)")
    g.add_argument("--scan-cost-us", type=float, default=80.0,
                   help="router CPU per table row for every print (default 80: RB5009-class)")
    g.add_argument("--add-cost-ms", type=float, default=1.2,
                   help="router CPU per entry written (default 1.2)")
    g.add_argument("--events", type=_positive, default=20, help="billing changes timed for R2")
    g.add_argument("--event-timeout", type=float, default=120.0,
                   help="seconds after which a billing change not on every router counts as lost")
    g.add_argument("--deletes", type=_positive, default=20, help="entries removed by hand for R3")
    g.add_argument("--restore-wait", type=float, default=10.0,
                   help="seconds a removed entry has to come back before it counts as not back")
    g.add_argument("--interval", type=float, default=None,
                   help="the daemon's [daemon] interval in seconds (default: its own default)")
    g = p.add_argument_group("members", "three shared members on the router-load routers (bench.members); "
                             "also --events, --event-timeout, --interval and the router costs")
    g.add_argument("--trials", type=int, default=10, help="kill -9 takeovers timed (default 10)")
    g.add_argument("--member-ttl", type=float, default=None,
                   help="the members' [daemon] member_ttl in seconds (default: the daemon's, 10)")
    g.add_argument("--member-logs", type=Path, default=None,
                   help="copy the members' logs into this directory at the end")
    p.add_argument("--only", action="append", choices=sorted(MEASUREMENTS),
                   help="run only these measurements (repeatable)")
    args = p.parse_args(argv)
    scenario = Scenario(args.accounts, args.routers, args.lists, args.rtt_ms / 1000)
    print(f"scenario: {args.accounts} accounts, {args.routers} routers x {args.lists} lists "
          f"({args.accounts * args.routers} entries), {args.rtt_ms:g} ms RTT", flush=True)
    # Byte-compiled first, as an install is (pip compiles what it installs): an editable
    # checkout run with PYTHONDONTWRITEBYTECODE would compile its sources in every
    # timed process.
    compileall.compile_dir(Path(provisiond.__file__).parent, quiet=1)
    rows: list[Row] = []
    try:
        scenario.seed()
        for name, fn in MEASUREMENTS.items():
            if args.only and name not in args.only:
                continue
            print(f"running {name} …", file=sys.stderr, flush=True)
            rows += fn(scenario, args)
    finally:
        scenario.close()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
