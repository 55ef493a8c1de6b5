"""Sonar read benchmark: N accounts from the fake Sonar at Sonar's documented limit.

Run: ``python bench/sonar_read.py [--accounts 10000] [--page-cap 100]``. Starts
``python -m provisiond.sim.sonar`` (a separate process, 400 requests per 60 s, the demo's
accounts with their addresses spread over the five owners) and times, in the same run:

- the floor: the same keyset pages fetched with a bare httpx loop (no checks, no
  aggregation): what the fake and the wire cost;
- ``SonarSource.read()``: the product, paced under the limit.

Prints both, their ratio and the request count. A read that needs more than 400
requests waits for Sonar's window: that time is the limit's, not the code's.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path

import httpx

from provisiond.cli import demo
from provisiond.sources.sonar import BY_ID, QUERY, SonarSource


def floor(url: str, token: str, page_size: int) -> tuple[float, int, int]:
    headers = {"Authorization": f"Bearer {token}"}
    started = time.perf_counter()
    last, requests, accounts = None, 0, 0
    with httpx.Client(headers=headers, timeout=120) as client:
        while True:
            variables: dict[str, object] = {"paginator": {"page": 1, "records_per_page": page_size},
                                            "sorter": BY_ID,
                                            "nested": {"page": 1, "records_per_page": page_size}}
            if last is not None:
                variables["search"] = [{"integer_fields": [
                    {"attribute": "id", "search_value": last, "operator": "GT"}]}]
            body = client.post(url + "/api/graphql",
                               json={"query": QUERY, "variables": variables}).json()
            requests += 1
            coll = body["data"]["accounts"]
            accounts += len(coll["entities"])
            if len(coll["entities"]) >= coll["page_info"]["total_count"]:
                return time.perf_counter() - started, requests, accounts
            last = int(coll["entities"][-1]["id"])


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--accounts", type=int, default=10_000)
    p.add_argument("--page-cap", type=int, default=100)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, token_file = Path(tmp) / "sonar.json", Path(tmp) / "token"
        data.write_text(json.dumps(demo.sonar_tables(args.accounts)))
        token = secrets.token_urlsafe(24)
        token_file.write_text(token)
        proc, url = demo.start_sonar(data, token_file)
        try:
            took, requests, accounts = floor(url, token, args.page_cap)
            print(f"floor (bare httpx)    {took:8.2f} s  {requests} requests  {accounts} accounts")
            source = SonarSource(url, token, page_size=100, timeout=600)
            started = time.perf_counter()
            snapshot = source.read()
            product = time.perf_counter() - started
            source.close()
            print(f"SonarSource.read()    {product:8.2f} s  {len(snapshot)} accounts  "
                  f"ratio {product / took:.2f}")
        finally:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
