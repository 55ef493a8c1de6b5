"""The shipped Prometheus rules and Grafana dashboard: valid, unit-tested with promtool,
and every alert covered by a firing and a quiet case.

Which metric names they use is checked against a running daemon's ``/metrics`` in
``tests/daemon/test_exported_metrics.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "contrib" / "prometheus" / "provisiond-alerts.yml"
RULE_TESTS = Path(__file__).parent / "provisiond-alerts.test.yml"
DASHBOARD = REPO / "contrib" / "grafana" / "provisiond-dashboard.json"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool not found: Debian's prometheus package provides it (./dev test installs it)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_promtool_check_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = [c for t in yaml.safe_load(RULE_TESTS.read_text())["tests"] for c in t["alert_rule_test"]]
    names = {r["alert"] for r in alerts()}
    assert {"ProvisiondDown", "ProvisiondUnhealthy", "ProvisiondPassesFailing",
            "ProvisiondTargetUnreachable", "ProvisiondPlanRefusedBySafety",
            "ProvisiondPoolNearlyFull", "ProvisiondBillingReadSuspicious"} <= names
    for name in names:
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name}: no test where it fires"
        assert any(not c["exp_alerts"] for c in mine), f"{name}: no test where it stays quiet"
    for rule in alerts():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_dashboard_is_importable_grafana_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "provisiond" and dash["title"] == "provisiond"
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    graphs = [p for p in panels if p["type"] != "row"]
    titles = {p["title"] for p in graphs}
    for wanted in ("Passes by result", "Pass duration", "Changes applied by target and action",
                   "Errors by target", "Time since last good pass, per target", "Pool utilisation",
                   "CoA / Disconnect results", "Conflicts"):
        assert wanted in titles
    for p in graphs:
        assert p["targets"] and all(t["expr"] and t["datasource"]["uid"] == "${datasource}"
                                    for t in p["targets"]), p["title"]
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "instance"}
