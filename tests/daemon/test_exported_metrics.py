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


def test_every_labelled_series_of_the_configuration_starts_at_zero() -> None:
    """Targets, pools and results known from the config are series at 0 before any
    pass, so ``increase()`` sees their first event; the last-success time is not (0
    would read as "not converged since 1970")."""
    from provisiond import settings as settings_mod
    from provisiond.daemon.metrics import Metrics

    settings = settings_mod.load(REPO / "config" / "provisiond.reference.toml")
    m = Metrics(settings)
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in m.registry.collect() for s in f.samples if not s.name.endswith("_created")}
    for name, labels in [
        ("provisiond_billing_reads_total", {"result": "suspicious"}),
        ("provisiond_safety_refusals_total", {"target": "core-1"}),
        ("provisiond_safety_refusals_total", {"target": "radius"}),
        ("provisiond_errors_total", {"target": "radius"}),
        ("provisiond_target_errors_total", {"target": "core-1"}),
        ("provisiond_errors_total", {"target": "source"}),
        ("provisiond_coa_results_total", {"result": "timeout"}),
        ("provisiond_changes_applied_total", {"target": "core-1", "action": "delete"}),
        ("provisiond_passes_total", {"result": "partial", "kind": "full"}),
        ("provisiond_passes_total", {"result": "error", "kind": "scoped"}),
        ("provisiond_target_consecutive_failures", {"target": "core-1"}),
        ("provisiond_pool_unallocated_accounts", {"pool": "tower-hosts"}),
        ("provisiond_webhook_requests_total", {"result": "too_large"}),
    ]:
        assert got.get((name, tuple(sorted(labels.items())))) == 0.0, (name, labels)
    assert not any(name == "provisiond_last_success_timestamp_seconds" for name, _ in got)
    # A target added by a reload gets its series too.
    settings.router.append(settings.router[0].model_copy(update={"name": "core-2"}))
    m.prime(settings)
    assert m.registry.get_sample_value("provisiond_safety_refusals_total", {"target": "core-2"}) == 0.0


def test_the_coa_results_primed_are_the_coa_outcomes() -> None:
    from typing import get_args

    from provisiond.daemon.metrics import COA_RESULTS
    from provisiond.targets.coa import Outcome

    assert set(COA_RESULTS) == set(get_args(Outcome))


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
                 # the series of events that have not happened yet: there, at 0 (an
                 # alert's increase() sees the first one)
                 'provisiond_billing_reads_total{result="suspicious"} 0.0',
                 'provisiond_safety_refusals_total{target="core-1"} 0.0',
                 'provisiond_errors_total{target="core-1"} 0.0',
                 'provisiond_errors_total{target="source"} 0.0',
                 'provisiond_coa_results_total{result="nak"} 0.0',
                 'provisiond_webhook_requests_total{result="unauthorised"} 0.0',
                 'provisiond_pool_unallocated_accounts{pool="towers"} 0.0',
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
