"""The Prometheus component, as rendered for each server and for a service with
background tasks: valid for Prometheus 2.42, its rules pass their unit tests, and
those tests and selectors cover what they must."""

import json
import re
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from harness import check_steps
from matrix import DEFAULT_TEXT, default_combination, each_server, params

PROJECT = DEFAULT_TEXT["project"]
# A series that belongs to one service: its own metrics, its exporters', the
# scrape's `up`, and the recording rules made of them; with the label matchers
# that follow the name, if any.
SELECTOR = re.compile(
    r"(?<![\w:])([\w:]*(?:django|nginx|granian)_[\w:]*|up)\b(\{[^}]*\})?"
)
# The task rules are the same whatever the queue library: one tasks service.
COMBINATIONS = params(
    [
        *each_server(),
        {**default_combination(), "database": "postgresql", "tasks": "arq"},
    ]
)
TASK_ALERTS = {"TaskFailureRatioHigh", "TaskQueueBacklogGrowing", "TaskWorkersDown"}


def rule_files(prometheus):
    return sorted(p.relative_to(prometheus) for p in prometheus.glob("rules/*.yml"))


def unit_test_files(prometheus):
    return sorted(p.relative_to(prometheus) for p in prometheus.glob("tests/*.yml"))


def load(path):
    return yaml.safe_load(path.read_text())


def rules(prometheus):
    return [
        rule
        for path in rule_files(prometheus)
        for group in load(prometheus / path)["groups"]
        for rule in group["rules"]
    ]


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_promtool_accepts_the_configuration_and_the_rules_pass_their_tests(
    combination, generated
):
    # As the service's CI runs promtool: `bin/check prometheus`.
    output = check_steps(generated(combination), "prometheus").stdout
    assert "Unit Testing:  tests/alerts_test.yml\n  SUCCESS" in output


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_every_alert_has_a_firing_and_a_quiet_test(combination, generated):
    prometheus = generated(combination) / "deploy" / "prometheus"
    alerts = {rule["alert"] for rule in rules(prometheus) if "alert" in rule}
    firing, quiet = set(), set()
    for path in unit_test_files(prometheus):
        for test in load(prometheus / path)["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert firing == alerts
    assert quiet == alerts
    assert ("GranianWorkerCrashed" in alerts) == (combination["server"] == "granian")
    with_tasks = combination["tasks"] != "none"
    assert alerts & TASK_ALERTS == (TASK_ALERTS if with_tasks else set())


def source_metrics(expr: str, recorded: dict[str, str]) -> set[str]:
    """The metrics `expr` reads, through the recording rules it reads."""
    names = set()
    for match in SELECTOR.finditer(expr):
        name = match.group(1)
        if name in recorded:
            names |= source_metrics(recorded[name], recorded)
        else:
            names.add(name)
    return names


def dashboard_metrics(dashboard: dict) -> set[str]:
    panels = [*dashboard["panels"]]
    panels += [inner for panel in panels for inner in panel.get("panels", [])]
    return {
        match.group(1)
        for panel in panels
        for target in panel.get("targets", [])
        for match in SELECTOR.finditer(target["expr"])
    }


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_every_alert_links_to_a_dashboard_that_shows_it(combination, generated):
    """The annotation dashboard_url: a dashboard this service ships, on the Grafana
    of the grafana_url option, with its variables set to this service (and to the
    alert's instance, where it has the app's), showing a metric the alert reads."""
    project = generated(combination)
    dashboards = {
        dashboard["uid"]: dashboard
        for dashboard in (
            json.loads(path.read_text())
            for path in (project / "deploy" / "grafana" / "dashboards").glob("*.json")
        )
    }
    every_rule = rules(project / "deploy" / "prometheus")
    recorded = {rule["record"]: rule["expr"] for rule in every_rule if "record" in rule}
    alerts = [rule for rule in every_rule if "alert" in rule]
    assert alerts
    for alert in alerts:
        where = f"{alert['alert']}: {alert['annotations'].get('dashboard_url')}"
        link = urlsplit(alert["annotations"]["dashboard_url"])
        assert f"{link.scheme}://{link.netloc}" == DEFAULT_TEXT["grafana_url"], where
        dashboard = dashboards[link.path.removeprefix("/d/")]
        variables = {variable["name"] for variable in dashboard["templating"]["list"]}
        chosen = parse_qs(link.query, strict_parsing=True)
        assert chosen.pop("var-service") == [PROJECT], where
        if chosen:
            assert chosen == {"var-instance": ["{{ $labels.instance }}"]}, where
            assert "instance" in variables, where
        shown = source_metrics(alert["expr"], recorded) & dashboard_metrics(dashboard)
        assert shown, f"{where} shows none of what the alert reads"


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_every_rule_selects_this_service_only(combination, generated):
    prometheus = generated(combination) / "deploy" / "prometheus"
    groups = [
        group["name"]
        for path in rule_files(prometheus)
        for group in load(prometheus / path)["groups"]
    ]
    assert all(PROJECT in name for name in groups), groups
    selectors = [
        match.group(0)
        for rule in rules(prometheus)
        for match in SELECTOR.finditer(rule["expr"])
    ]
    assert selectors
    unscoped = [s for s in selectors if f'service="{PROJECT}"' not in s]
    assert unscoped == []


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_every_scrape_job_labels_its_targets_with_the_service(combination, generated):
    prometheus = generated(combination) / "deploy" / "prometheus"
    jobs = load(prometheus / "prometheus.yml")["scrape_configs"]
    suffixes = ["", "-nginx", "-node"]
    if combination["server"] == "granian":
        suffixes.append("-granian")
    if combination["tasks"] != "none":
        suffixes.append("-worker")
    assert sorted(job["job_name"] for job in jobs) == sorted(
        PROJECT + suffix for suffix in suffixes
    )
    for job in jobs:
        assert {"target_label": "service", "replacement": PROJECT} in job[
            "relabel_configs"
        ]
        assert all(
            path.startswith("targets/")
            for sd in job["file_sd_configs"]
            for path in sd["files"]
        )
