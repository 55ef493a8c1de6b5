"""What fencing costs the journal of a cold apply (issue #25): ``--changes`` address-list
creates over ``--targets`` routers, handed over in parts of ``--part`` as the routers'
writers do (``journal_changes(wait=False)``, then ``flush_journal``), with
``StateStore.fences`` None and set (each router claimed through ``daemon.membersql``).

Run: ``python bench/fence_bench.py [--changes 400000] [--targets 4] [--part 2000]
[--repeat 5] [--admin-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]``.
A throwaway database; runs alternate (None first, then fenced first), the journal
tables emptied before each. Prints each run's wall time, the medians, their ratio and
the median of the ratios of each pair of runs (steadier on a busy machine).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable

import psycopg
from sqlalchemy.engine import make_url

from provisiond.core.changes import Change, Create, Resource
from provisiond.daemon import membersql
from provisiond.daemon.pg import connect_kwargs
from provisiond.state.claims import Fence
from provisiond.state.store import StateStore

Fences = Callable[[str], Fence | None] | None


def changes(count: int) -> list[Change]:
    def address(n: int) -> str:
        return f"100.{64 + (n >> 16)}.{n >> 8 & 255}.{n & 255}"

    return [Create(Resource.make("address-list", f"list-{n % 10}",
                                 (("list", f"list-{n % 10}"), ("address", address(n))),
                                 (("comment", f"provisiond:{n} acct {n}"),), str(n), f"acct {n}"))
            for n in range(count)]


def one_run(store: StateStore, fences: Fences, targets: list[str], parts: list[list[Change]]) -> float:
    store.fences = fences
    run = store.start_run("apply")
    started = time.perf_counter()
    for i, part in enumerate(parts):
        store.journal_changes(run, targets[i % len(targets)], applied=part, wait=False)
    store.flush_journal()
    took = time.perf_counter() - started
    store.finish_run(run, "ok", {})
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--changes", type=int, default=400_000)
    ap.add_argument("--targets", type=int, default=4)
    ap.add_argument("--part", type=int, default=2_000, help="changes per journal_changes call")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()

    name = f"pvd_fence_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(**connect_kwargs(args.admin_url)) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = make_url(args.admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        store = StateStore.open(url)
        targets = [f"core-{i + 1}" for i in range(args.targets)]
        member = membersql.connect(url, member_id="bench", ttl=3600.0, margin=60.0)
        assert membersql.register(member, me="bench", inc="bench", host="bench", pid=1, ttl=3600.0)
        tokens = membersql.claim(member, targets, me="bench", inc="bench")
        held = {r: Fence(r, "bench", t) for r, t in tokens.items()}
        every = changes(args.changes)
        per_target = len(every) // len(targets)
        parts = [every[t * per_target + i:t * per_target + min(i + args.part, per_target)]
                 for i in range(0, per_target, args.part) for t in range(len(targets))]
        modes: dict[str, Fences] = {"fences=None": None, "fenced": held.get}
        took: dict[str, list[float]] = {m: [] for m in modes}
        for r in range(args.repeat):
            order = list(modes) if r % 2 == 0 else list(reversed(modes))
            for mode in order:
                with psycopg.connect(**connect_kwargs(url)) as c:
                    c.execute("TRUNCATE journal, journal_parts")
                    c.execute("VACUUM ANALYZE journal, journal_parts")
                took[mode].append(one_run(store, modes[mode], targets, parts))
                print(f"run {r + 1} {mode:<12} {took[mode][-1]:7.3f} s")
        assert store.refused_writes == 0
        store.close()
        member.close()
        base, fenced = (statistics.median(took[m]) for m in modes)
        pairs = statistics.median(f / b for b, f in zip(*took.values(), strict=True))
        print(f"{args.changes} changes, {args.targets} targets, parts of {args.part}: median "
              f"fences=None {base:.3f} s, fenced {fenced:.3f} s, ratio {fenced / base:.3f} "
              f"(median of the pairs' ratios {pairs:.3f})")
    finally:
        with psycopg.connect(**connect_kwargs(args.admin_url)) as c:
            c.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
