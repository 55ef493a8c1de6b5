"""A whole no-op pass with a prefix pool against the same pass with an address pool.

Run: ``python -m bench.prefix_pass [--accounts N] [--repeat R]``. N accounts, all in one
billing group, each with a RADIUS username and no billing address, are mapped to one
address list and one RADIUS group; the group's pool is either single IPv4 addresses
(``Framed-IP-Address``, what pools did before prefixes) or /56s from a /40
(``Delegated-IPv6-Prefix``). Each world is applied once (cold), then ``provisiond plan``
runs R times per world, alternating worlds so that load on the machine hits both alike,
as a process against SQLite billing, a SQLite FreeRADIUS database and a RouterOS
simulator on loopback. Prints each run's wall and CPU time (provisiond's own, user +
system: steadier than wall time on a busy machine), the medians and their ratios
(prefixes over addresses), and checks that every no-op plan exits 0 (nothing to do).
"""

from __future__ import annotations

import argparse
import secrets
import sqlite3
import statistics
import sys
import tempfile
from pathlib import Path

from bench.measure import run_provisiond
from provisiond.cli import demo

POOLS = {
    "addresses": 'networks = ["100.64.0.0/14"]',
    "prefixes": 'networks = ["2001:db8:100::/40"]\nprefix_length = 56\nradius_attribute = "Delegated-IPv6-Prefix"',
}


def provisiond(config: Path, *args: str) -> tuple[int, float, float]:
    """``provisiond --config CONFIG ARGS`` as a process: exit code, wall and CPU seconds."""
    code, wall, usage = run_provisiond(config, *args)
    return code, wall, usage.ru_utime + usage.ru_stime


def world(directory: Path, accounts: int, kind: str, port: int, password_file: Path) -> Path:
    directory.mkdir()
    demo.seed_billing(directory / "billing.db", accounts)
    db = sqlite3.connect(directory / "billing.db")
    db.executescript("DELETE FROM account_groups; DELETE FROM ip_assignments; "
                     "INSERT INTO account_groups SELECT id, 3 FROM accounts;")  # all Legacy Customers
    db.commit()
    db.close()
    demo.seed_radius(directory / "radius.db")
    config = directory / "provisiond.toml"
    config.write_text(f'''[source]
url = "sqlite:///{directory / "billing.db"}"
query = """{demo.BILLING_QUERY}"""

[state]
url = "sqlite:///{directory / "state.db"}"

[[router]]
name = "core-1"
host = "127.0.0.1"
port = {port}
username = "demo"
password_file = "{password_file}"

[[address_list]]
group = "Legacy Customers"
list = "legacy-{kind}"

[[pool]]
name = "legacy-{kind}"
group = "Legacy Customers"
{POOLS[kind]}

[radius]
url = "sqlite:///{directory / "radius.db"}"

[[radius_group]]
group = "Legacy Customers"
radius_group = "legacy"
''', encoding="utf-8")
    return config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accounts", type=int, default=50_000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="prefix-pass-") as tmp:
        base = Path(tmp)
        password_file = base / "router-password"
        password_file.write_text(secrets.token_urlsafe(12) + "\n", encoding="utf-8")
        sims = {kind: demo.start_simulator(password_file) for kind in POOLS}
        try:
            configs = {kind: world(base / kind, args.accounts, kind, sims[kind][1], password_file)
                       for kind in POOLS}
            for kind, config in configs.items():
                code, wall, cpu = provisiond(config, "apply")
                print(f"cold apply ({kind}): exit {code}, {wall:.1f} s wall, {cpu:.1f} s CPU")
                if code != 0:
                    return 1
            times: dict[str, list[float]] = {kind: [] for kind in POOLS}
            cpus: dict[str, list[float]] = {kind: [] for kind in POOLS}
            for _ in range(args.repeat):
                for kind, config in configs.items():
                    code, wall, cpu = provisiond(config, "plan")
                    print(f"no-op plan ({kind}): exit {code}, {wall:.2f} s wall, {cpu:.2f} s CPU")
                    if code != 0:
                        print(f"a no-op plan ({kind}) had something to do", file=sys.stderr)
                        return 1
                    times[kind].append(wall)
                    cpus[kind].append(cpu)
        finally:
            for proc, _ in sims.values():
                proc.terminate()
                proc.wait(10)
    for what, runs in (("wall", times), ("CPU", cpus)):
        median = {kind: statistics.median(t) for kind, t in runs.items()}
        print(f"median no-op plan, {what}: addresses {median['addresses']:.2f} s, "
              f"prefixes {median['prefixes']:.2f} s, ratio {median['prefixes'] / median['addresses']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
