"""Every metric the shipped dashboard and alerts use is one a running ``provisiond run``
really exports (scraped from its ``/metrics``), and the series behind the alerts move."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml
from harness import Billing, DaemonProc, free_port, wait_until
from prometheus_client.parser import text_string_to_metric_families

from provisiond.sim import RouterSim

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "contrib" / "prometheus" / "provisiond-alerts.yml"
DASHBOARD = REPO / "contrib" / "grafana" / "provisiond-dashboard.json"
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
            "histogram": ("_bucket", "_sum", "_count", "_created"), "summary": ("_sum", "_count")}
NAME = re.compile(r"\b(provisiond_[a-z0-9_]+)")


def used_expressions() -> dict[str, str]:
    """where -> PromQL expression, for every expression in the contrib files."""
    out: dict[str, str] = {}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            out[f"alert {rule['alert']}"] = rule["expr"]
    dash = json.loads(DASHBOARD.read_text())
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            out[f"panel {panel['title']!r} {t['refId']}"] = t["expr"]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            out[f"variable {var['name']}"] = var["definition"]
    return out


def exported(text: str) -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name + s for s in SUFFIXES.get(family.type, ("",))}
        names |= {s.name for s in family.samples}
    return names


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def test_contrib_metric_names_are_exported_by_a_running_daemon(
    billing: Billing, router: RouterSim, config: Callable[..., Path],
    start: Callable[..., DaemonProc],
) -> None:
    billing.join("Tower Hosts", 1000, 1001)
    port = free_port()
    pool = '[[pool]]\nname = "towers"\ngroup = "Tower Hosts"\nnetworks = ["10.99.0.0/29"]\n'
    pool += '[[pool]]\nname = "pd"\ngroup = "Tower Hosts"\nnetworks = ["2001:db8::/48"]\nprefix_length = 56\n'
    d = start(config(daemon={"interval": "0.5s", "metrics_listen": f"127.0.0.1:{port}",
                             "healthz_max_age": "1.5s", "retry_max": "1s"}, extra=pool))
    d.wait_log(r"pass=1 result=ok")
    text = scrape(port)
    names = exported(text)
    used = used_expressions()
    missing = {f"{where}: {name}" for where, expr in used.items() for name in NAME.findall(expr)
               if name not in names}
    assert not missing, sorted(missing)
    # `up` is the only name not from provisiond: Prometheus records it per scrape.
    others = {where for where, expr in used.items()
              if not NAME.search(expr) and not re.search(r"\bup\{", expr)}
    assert not others, others
    assert len(used) >= 20  # the parsing above found the expressions

    # The series behind the alerts are there after a good pass ...
    for line in ("provisiond_healthy 1.0", 'provisiond_billing_reads_total{result="ok"}',
                 'provisiond_target_consecutive_failures{target="core-1"} 0.0',
                 'provisiond_last_success_timestamp_seconds{target="core-1"}',
                 'provisiond_pool_utilisation_ratio{pool="towers"}',
                 'provisiond_pool_prefixes_total{pool="towers"} 6.0',
                 'provisiond_pool_prefixes_total{pool="pd"} 256.0',
                 'provisiond_pool_prefixes_held{pool="pd"} 0.0'):
        assert line in text, line
    used_pd = re.search(r'provisiond_pool_prefixes_used\{pool="pd"\} (\S+)', text)
    assert used_pd and float(used_pd.group(1)) >= 1  # the members' /56s
    # ... and move when a router goes away: failures count up, health drops.
    router.set_down(True)
    wait_until(lambda: 'provisiond_target_consecutive_failures{target="core-1"} 2.0' in scrape(port),
               timeout=15, what="two failed passes in a row")
    wait_until(lambda: "provisiond_healthy 0.0" in scrape(port), timeout=10, what="unhealthy")
    router.set_down(False)
    wait_until(lambda: 'provisiond_target_consecutive_failures{target="core-1"} 0.0' in scrape(port),
               timeout=15, what="recovered")
    wait_until(lambda: "provisiond_healthy 1.0" in scrape(port), timeout=10, what="healthy again")
