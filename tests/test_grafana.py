"""Lint of the Grafana component, read straight from the template (the dashboards
are copied verbatim into services). Grafana itself is not installed here: these
rules, and test_observability.py running every panel's query against a real
Prometheus, are what check the dashboards.
"""

import json
import re
import subprocess
import urllib.parse

import pytest
import yaml
from cookiecutter.environment import StrictEnvironment

import dashboards
from matrix import CHOICES, DEFAULT_TEXT, TEMPLATE_DIR

GRAFANA_DIR = TEMPLATE_DIR / "grafana"
DASHBOARD_FILES = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
FLEET_DASHBOARD_FILES = [p for p in DASHBOARD_FILES if p.name in dashboards.FLEET]
SERVICE_DASHBOARD_FILES = [p for p in DASHBOARD_FILES if p not in FLEET_DASHBOARD_FILES]
CATALOGUE = TEMPLATE_DIR / "{{cookiecutter.project}}" / "core" / "metrics.py"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# A table only where rows are services (the fleet's), which no chart shows as well.
PANEL_TYPES = {"row", "timeseries", "stat", "table"}
RATE_FUNCTIONS = {"rate", "increase", "irate"}
# Metrics of the app's own targets, filtered by instance; Nginx's come from the
# exporter's target, whose instance is another one.
APP_METRIC = re.compile(r"(django|granian)_\w+")
# Recording rules (level:metric:operations) are selectors too; they keep no instance.
METRIC = re.compile(r"(\w+:)?(django|nginx|granian)_[\w:]+")
# The first choice of each option: what a service gets by default.
DEFAULT_CHOICES = {option: choices[0] for option, choices in CHOICES.items()}
# The traces a panel's link opens in Explore, over the panel's time range, of the
# chosen Tempo data source (TraceQL): the service's request spans, named by the
# `service` label of the metrics (Helm and Ansible give OTEL_SERVICE_NAME that
# name), those at least as slow as the clicked value from a latency panel, the
# failed ones from an error panel; by route where the panel shows routes.
TEMPO = {"type": "tempo", "uid": "${tempo}"}
REQUEST_SPANS = {'resource.service.name="${service}"', "kind=server"}
SLOW = "duration>=${__value.raw}s"
FAILED = "status=error"
ROUTE = 'span.http.route="${__field.labels.route}"'
# Metrics of core/metrics.py that no panel shows, each with the reason.
UNCHARTED: dict[str, str] = {}

# PromQL, as far as these checks need it: label matchers and ranges are kept whole,
# string literals are skipped, so that nothing inside them reads as a name or a
# parenthesis.
TOKEN = re.compile(
    r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    | (?P<matchers>\{(?:"(?:\\.|[^"\\])*"|[^}"])*\})
    | (?P<range>\[[^\]]*\])
    | (?P<number>(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)
    | (?P<name>[A-Za-z_:][\w:]*)
    | (?P<open>\()
    | (?P<close>\))
    | (?P<other>\S)
    """,
    re.VERBOSE,
)
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:\\.|[^"\\])*)"')
# A burn-rate alert's condition (alerts.yml): the SLI over a window above burn rate
# times error budget; and a fleet panel's burn rate: the SLI over a window / budget.
BURN_CONDITION = re.compile(
    r"service:django_http_request_(\w+):ratio_rate(\w+)\{[^}]*\} > ([\d.]+) \* ([\d.]+)"
)
BURN_QUERY = re.compile(
    r"service:django_http_request_(\w+):ratio_rate(\w+)\{[^}]*\} / ([\d.]+)"
)


def parse(expr: str) -> tuple[list[dict], list[tuple[str, str | None]]]:
    """The metric selectors of an expression, and its range vectors.

    A selector: its metric name, label matchers and the function whose argument it
    is (None at the top level, "" in plain parentheses). A range vector: its
    duration and that function.
    """
    tokens = [(m.lastgroup, m.group()) for m in TOKEN.finditer(expr)]
    selectors, ranges, calls = [], [], []
    for index, (kind, text) in enumerate(tokens):
        previous = tokens[index - 1] if index else (None, "")
        following = tokens[index + 1] if index + 1 < len(tokens) else (None, "")
        enclosing = calls[-1] if calls else None
        if kind == "open":
            # A function's or aggregation's name, by/without's label list, or "".
            calls.append(previous[1] if previous[0] == "name" else "")
        elif kind == "close":
            calls.pop()
        elif kind == "name" and METRIC.fullmatch(text) and following[0] != "open":
            matchers = following[1] if following[0] == "matchers" else "{}"
            selectors.append(
                {
                    "metric": text,
                    "matchers": set(MATCHER.findall(matchers)),
                    "function": enclosing,
                }
            )
        elif kind == "range":
            ranges.append((text[1:-1], enclosing))
    assert not calls, f"unbalanced parentheses in {expr}"
    return selectors, ranges


each_dashboard = pytest.mark.parametrize(
    "dashboard_file", DASHBOARD_FILES, ids=[path.name for path in DASHBOARD_FILES]
)
each_fleet_dashboard = pytest.mark.parametrize(
    "dashboard_file", FLEET_DASHBOARD_FILES, ids=[p.name for p in FLEET_DASHBOARD_FILES]
)
# The dashboards of one service (not the fleet's).
each_service_dashboard = pytest.mark.parametrize(
    "dashboard_file",
    SERVICE_DASHBOARD_FILES,
    ids=[path.name for path in SERVICE_DASHBOARD_FILES],
)


@pytest.fixture
def dashboard(dashboard_file):
    return dashboards.load(dashboard_file)


def panels_and_rows(dashboard: dict) -> list[dict]:
    return [
        *dashboard["panels"],
        *(panel for row in dashboard["panels"] for panel in row.get("panels", [])),
    ]


def every_query(dashboard: dict):
    """(panel title, selectors, ranges) for every target."""
    for title, expr in dashboards.queries(dashboard):
        yield title, *parse(expr)


def render(path) -> str:
    """A file of the component as the post-generation hook renders it."""
    context = {"cookiecutter": DEFAULT_TEXT}
    environment = StrictEnvironment(context=context, keep_trailing_newline=True)
    return environment.from_string(path.read_text()).render(**context)


def test_there_are_dashboards():
    assert {path.name for path in DASHBOARD_FILES} >= {
        "service.json",
        "granian.json",
        "fleet.json",
    }


@each_dashboard
def test_dashboard_is_valid_json(dashboard_file):
    dashboards.load(dashboard_file)


@each_dashboard
def test_dashboard_is_provisionable_in_current_grafana(dashboard_file, dashboard):
    assert dashboard["schemaVersion"] >= 39, dashboard_file.name
    assert "__inputs" not in dashboard, (
        f"{dashboard_file.name}: provisioned, not imported"
    )
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"]), dashboard_file.name
    for key in ("title", "tags", "time", "refresh"):
        assert dashboard.get(key), f"{dashboard_file.name}: no {key}"


def test_dashboard_uids_are_unique():
    uids = [dashboards.load(path)["uid"] for path in DASHBOARD_FILES]
    assert len(uids) == len(set(uids)), uids


@each_dashboard
def test_datasource_variable_chooses_a_prometheus(dashboard_file, dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource", dashboard_file.name
    assert variables["datasource"]["query"] == "prometheus", dashboard_file.name


@each_service_dashboard
def test_service_and_instance_variables_come_from_one_metric(dashboard_file, dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    service, instance = variables["service"], variables["instance"]
    for variable in (service, instance):
        assert variable["type"] == "query", f"{dashboard_file.name}: {variable}"
        assert variable["datasource"] == DATASOURCE, (
            f"{dashboard_file.name}: {variable}"
        )
    source = re.fullmatch(r"label_values\((\w+), service\)", service["query"])
    assert source, f"{dashboard_file.name}: service query {service['query']}"
    assert not service.get("multi"), dashboard_file.name
    assert not service.get("includeAll"), dashboard_file.name
    assert instance["query"] == (
        f'label_values({source[1]}{{service="$service"}}, instance)'
    ), f"{dashboard_file.name}: instance query {instance['query']}"
    assert instance["multi"], dashboard_file.name
    assert instance["includeAll"], dashboard_file.name
    assert instance["allValue"] == ".*", dashboard_file.name


@each_fleet_dashboard
def test_fleet_variable_chooses_any_services(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"datasource", "service"}
    service = variables["service"]
    assert service["type"] == "query"
    assert service["datasource"] == DATASOURCE
    assert service["query"] == "label_values(django_build_info, service)"
    assert service["multi"]
    assert service["includeAll"]
    assert service["allValue"] == dashboards.ALL
    assert service["current"]["value"] == "$__all"


@each_fleet_dashboard
def test_fleet_panels_open_the_service_dashboard_of_their_service(dashboard):
    """A click on a service's row or line opens service.json for that service, with
    the same data source and time range."""
    uid = dashboards.load(GRAFANA_DIR / "dashboards" / "service.json")["uid"]
    for panel in dashboards.panels(dashboard):
        # A table's rows name their service in a field, a chart's lines in a label.
        service = (
            "${__data.fields.service}"
            if panel["type"] == "table"
            else "${__field.labels.service}"
        )
        urls = [link["url"] for link in panel["fieldConfig"]["defaults"]["links"]]
        assert urls == [
            f"/d/{uid}/{uid}?var-service={service}"
            "&${datasource:queryparam}&${__url_time_range}"
        ], panel["title"]


def alert_burn_rates() -> list[tuple[str, str, float, float]]:
    """(SLI, long window, burn rate, error budget) of every burn-rate alert, as
    rules/alerts.yml renders for a service."""
    context = {"cookiecutter": {**DEFAULT_TEXT, **DEFAULT_CHOICES}}
    environment = StrictEnvironment(context=context)
    rules = yaml.safe_load(
        environment.from_string(
            (TEMPLATE_DIR / "prometheus" / "rules" / "alerts.yml").read_text()
        ).render(**context)
    )
    return [
        (sli, window, float(burn_rate), float(budget))
        for group in rules["groups"]
        for rule in group["rules"]
        for sli, window, burn_rate, budget in BURN_CONDITION.findall(rule["expr"])
    ]


@each_fleet_dashboard
def test_fleet_burn_rates_use_the_alerts_objectives(dashboard):
    """The dashboard is copied verbatim, not rendered: it repeats the error budgets
    of alerts.yml, and marks the burn rate at which the alert of that window fires.
    """
    alerts = alert_burn_rates()
    budgets = {sli: budget for sli, _, _, budget in alerts}
    burn_rates = {window: burn_rate for _, window, burn_rate, _ in alerts}
    assert set(budgets) == {"errors", "slow"}, alerts
    shown = set()
    for panel in dashboards.panels(dashboard):
        steps = {
            step["value"]
            for field in (
                panel["fieldConfig"]["defaults"],
                *(
                    {p["id"]: p["value"] for p in override["properties"]}
                    for override in panel["fieldConfig"]["overrides"]
                ),
            )
            for step in field.get("thresholds", {}).get("steps", [])
        }
        for target in panel["targets"]:
            for sli, window, budget in BURN_QUERY.findall(target["expr"]):
                assert float(budget) == budgets[sli], f"{panel['title']}: {sli}"
                assert burn_rates[window] in steps, f"{panel['title']}: {steps}"
                shown.add(sli)
    assert shown == set(budgets)


@each_dashboard
def test_panel_types_are_current(dashboard_file, dashboard):
    types = {panel["type"] for panel in panels_and_rows(dashboard)}
    assert types <= PANEL_TYPES, f"{dashboard_file.name}: {types - PANEL_TYPES}"


@each_dashboard
def test_panel_ids_are_unique(dashboard_file, dashboard):
    ids = [panel["id"] for panel in panels_and_rows(dashboard)]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, f"{dashboard_file.name}: panel ids {duplicates}"


@each_dashboard
def test_panels_have_a_grid_position(dashboard_file, dashboard):
    for panel in panels_and_rows(dashboard):
        position = panel.get("gridPos", {})
        assert set(position) == {"h", "w", "x", "y"}, (
            f"{dashboard_file.name}: {panel['title']}: gridPos {position}"
        )
        assert position["x"] + position["w"] <= 24, (
            f"{dashboard_file.name}: {panel['title']} is wider than the dashboard"
        )


@each_dashboard
def test_panels_query_the_templated_datasource(dashboard_file, dashboard):
    for panel in dashboards.panels(dashboard):
        where = f"{dashboard_file.name}: {panel['title']}"
        assert panel.get("datasource") == DATASOURCE, where
        assert panel.get("targets"), f"{where}: no query"
        for target in panel["targets"]:
            assert target.get("datasource") == DATASOURCE, f"{where}: {target}"
            assert target.get("expr", "").strip(), f"{where}: empty query"


@each_dashboard
def test_panels_have_units(dashboard_file, dashboard):
    for panel in dashboards.panels(dashboard):
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        assert unit, f"{dashboard_file.name}: {panel['title']}: no unit"


@each_dashboard
def test_queries_use_only_the_dashboard_variables(dashboard_file, dashboard):
    for title, expr in dashboards.queries(dashboard):
        try:
            dashboards.instant(expr, service="s", rate_interval="1m")
        except ValueError as error:
            pytest.fail(f"{dashboard_file.name}: {title}: {error}")


@each_dashboard
def test_queries_are_valid_promql(dashboard_file, dashboard, tmp_path):
    # promtool parses expressions only in rule files: each query as a recording rule.
    rules_file = tmp_path / "query.yml"
    for title, expr in dashboards.queries(dashboard):
        query = dashboards.instant(expr, service="s", rate_interval="1m")
        rule = {"record": "panel_query", "expr": query}
        rules_file.write_text(
            yaml.safe_dump({"groups": [{"name": "g", "rules": [rule]}]})
        )
        result = subprocess.run(
            ["promtool", "check", "rules", rules_file],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, (
            f"{dashboard_file.name}: {title}: {result.stdout}{result.stderr}"
        )


@each_dashboard
def test_rates_use_the_rate_interval(dashboard_file, dashboard):
    for title, _, ranges in every_query(dashboard):
        for duration, function in ranges:
            if function in RATE_FUNCTIONS:
                assert duration == "$__rate_interval", (
                    f"{dashboard_file.name}: {title}: {function}(...[{duration}])"
                )


@each_dashboard
def test_counters_appear_only_inside_rates(dashboard_file, dashboard):
    for title, selectors, _ in every_query(dashboard):
        for selector in selectors:
            if dashboards.is_counter(selector["metric"]):
                assert selector["function"] in RATE_FUNCTIONS, (
                    f"{dashboard_file.name}: {title}: counter {selector['metric']} "
                    f"in {selector['function'] or 'no function'}(), not in a rate"
                )


@each_dashboard
def test_selectors_filter_by_service(dashboard_file, dashboard):
    # A fleet dashboard's $service is a regular expression: one, several or all.
    operator = "=~" if dashboard_file.name in dashboards.FLEET else "="
    for title, selectors, _ in every_query(dashboard):
        for selector in selectors:
            assert ("service", operator, "$service") in selector["matchers"], (
                f"{dashboard_file.name}: {title}: {selector['metric']} without "
                f'service{operator}"$service"'
            )


@each_dashboard
def test_app_selectors_filter_by_instance(dashboard_file, dashboard):
    for title, selectors, _ in every_query(dashboard):
        for selector in selectors:
            needed = bool(APP_METRIC.fullmatch(selector["metric"])) and (
                dashboard_file.name not in dashboards.FLEET
            )
            by_instance = ("instance", "=~", "$instance") in selector["matchers"]
            assert by_instance == needed, (
                f"{dashboard_file.name}: {title}: {selector['metric']} "
                f'{"needs" if needed else "must not have"} instance=~"$instance"'
            )


def test_every_metric_of_the_catalogue_is_on_a_dashboard():
    catalogue = {
        name + ("_total" if kind == "Counter" else "")
        for kind, name in re.findall(
            r'\b(Counter|Gauge|Histogram)\(\s*"(\w+)"', CATALOGUE.read_text()
        )
    }
    assert len(catalogue) > 10, "no metrics found in core/metrics.py"
    charted = {
        re.sub(r"_(bucket|count|sum)$", "", selector["metric"])
        for path in DASHBOARD_FILES
        for _, selectors, _ in every_query(dashboards.load(path))
        for selector in selectors
    }
    assert catalogue - charted == set(UNCHARTED), (
        f"on no dashboard: {sorted(catalogue - charted - set(UNCHARTED))}; "
        f"listed in UNCHARTED but charted: {sorted(set(UNCHARTED) & charted)}"
    )


def test_dashboard_provider_loads_the_dashboards_into_the_service_folder():
    provisioning = yaml.safe_load(
        render(GRAFANA_DIR / "provisioning" / "dashboards.yml")
    )
    [provider] = provisioning["providers"]
    assert provider["type"] == "file"
    assert provider["folder"] == DEFAULT_TEXT["project"]
    assert provider["allowUiUpdates"] is False
    path = provider["options"]["path"]
    assert path == f"/var/lib/grafana/dashboards/{DEFAULT_TEXT['project']}"


def test_example_datasource_is_a_prometheus_with_a_fixed_uid():
    provisioning = yaml.safe_load(
        render(GRAFANA_DIR / "provisioning" / "datasources.yml")
    )
    [datasource] = provisioning["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["uid"]


def explore_links(panel: dict) -> list[dict]:
    """The Explore pane each of a panel's links opens (Grafana's schemaVersion 1
    URL: the panes as JSON in one query parameter)."""
    panes = []
    for link in panel["fieldConfig"]["defaults"].get("links", []):
        url = urllib.parse.urlsplit(link["url"])
        if url.path != "/explore":
            continue
        query = urllib.parse.parse_qs(url.query)
        assert query["schemaVersion"] == ["1"], link["url"]
        (pane,) = json.loads(query["panes"][0]).values()
        panes.append(pane)
    return panes


def shows(panel: dict) -> tuple[bool, bool, bool]:
    """Whether a panel shows request latency, request errors, and by route."""
    latency = errors = by_route = False
    for target in panel["targets"]:
        selectors, _ = parse(target["expr"])
        for selector in selectors:
            metric = selector["metric"]
            latency |= metric == "django_http_request_duration_seconds_bucket"
            errors |= metric == "django_http_exceptions_total" or (
                metric == "django_http_requests_total"
                and ("status", "=~", "5..") in selector["matchers"]
            )
        by_route |= bool(re.search(r"\bby \([^)]*\broute\b", target["expr"]))
    return latency, errors, by_route


@each_service_dashboard
def test_latency_and_error_panels_open_their_traces(dashboard_file, dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for panel in dashboards.panels(dashboard):
        where = f"{dashboard_file.name}: {panel['title']}"
        latency, errors, by_route = shows(panel)
        panes = explore_links(panel)
        if not (latency or errors):
            assert panes == [], where
            continue
        # A data source variable, as for Prometheus: each Grafana names its own.
        assert variables["tempo"] == {
            "name": "tempo",
            "label": "Traces",
            "type": "datasource",
            "query": "tempo",
        }, dashboard_file.name
        (pane,) = panes
        assert pane["datasource"] == TEMPO["uid"], where
        assert pane["range"] == {"from": "${__from}", "to": "${__to}"}, where
        (query,) = pane["queries"]
        assert query["datasource"] == TEMPO, where
        assert query["queryType"] == "traceql", where
        traceql = query["query"]
        assert traceql[0] + traceql[-1] == "{}", where
        conditions = set(traceql[1:-1].split(" && "))
        expected = REQUEST_SPANS | {SLOW if latency else FAILED}
        assert conditions == expected | ({ROUTE} if by_route else set()), where


def test_the_service_dashboard_opens_the_traces_of_slow_and_failed_requests():
    """The rule above holds for more than no panel at all."""
    panels = dashboards.panels(
        dashboards.load(GRAFANA_DIR / "dashboards" / "service.json")
    )
    linked = [shows(panel) for panel in panels if explore_links(panel)]
    assert sum(latency for latency, _, _ in linked) >= 3
    assert sum(errors for _, errors, _ in linked) >= 3
    assert any(by_route for _, _, by_route in linked)
