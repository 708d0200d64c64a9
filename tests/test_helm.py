"""The generated service's Helm chart: lint, valid objects, restricted pods, schema.

Each server choice's chart (with every database among them), and the chart of a
service with background tasks (its worker), is rendered with every example values
file in its ci/ directory, and every object is validated for the oldest and newest
Kubernetes the chart supports; custom resources against the vendored CRDs
(tests/crds/). The pod checks below are this project's own (no
checkov: these are the rules we hold the chart to, named one by one).
"""

import difflib
import json
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from charts import (
    KUBERNETES_VERSIONS,
    README_GENERATOR,
    RELEASE,
    chart_dir,
    containers,
    generate_readme,
    helm,
    pod_specs,
    template,
    template_error,
    validate_builtin,
    validate_custom,
    values_files,
)
from edge import trusted_proxies_conf, without_comments
from harness import check_steps, generate_service, run
from matrix import CHOICES
from options import TASK_BROKER

SERVICES = {
    "uvicorn-sqlite": {"server": "uvicorn", "database": "sqlite"},
    "granian-postgresql": {
        "server": "granian",
        "database": "postgresql",
        "websockets": "no",
    },
    "gunicorn-postgresql": {"server": "gunicorn-uvicorn", "database": "postgresql"},
}
# The task queues whose services' charts are rendered, one generated service each.
# The chart sees the choice through Chart.yaml's annotation alone and differs
# between them by the broker: Redis or the database.
TASKS = ("arq", "django")
TASK_SERVICES = {
    f"{tasks}-postgresql": {
        "server": "uvicorn",
        "database": "postgresql",
        "tasks": tasks,
    }
    for tasks in TASKS
}
# MySQL's chart: a database server as PostgreSQL's (the migration Job, no SQLite
# volume, autoscaling), with its own URL and port; the database as the broker.
TASK_SERVICES["django-mysql"] = {
    "server": "gunicorn-uvicorn",
    "database": "mysql",
    "tasks": "django",
}
SERVICES |= TASK_SERVICES
# The services of each database server: the chart's vendor-specific values.
DATABASE_SERVERS = {"postgresql": "gunicorn-postgresql", "mysql": "django-mysql"}
# (the URL of helm/ci/*-values.yaml, the port its NetworkPolicy example opens)
DATABASE_URLS = {
    "postgresql": ("postgres://app:ci-only@postgresql:5432/app", 5432),
    "mysql": ("mysql://app:ci-only@mysql:3306/app", 3306),
}
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
    "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip
# The probes each long-running container must have: the app waits for startup,
# and the exporter only needs restarting when it hangs.
PROBES = {
    "app": {"startupProbe", "livenessProbe", "readinessProbe"},
    "nginx": {"livenessProbe", "readinessProbe"},
    "nginx-exporter": {"livenessProbe"},
    # No readiness: nothing routes requests to a worker.
    "worker": {"startupProbe", "livenessProbe"},
    # None: it serves nothing, and logs each failed backup and tries again at the
    # next interval, which a restart would not do better.
    "backup": set(),
}
# The sysctls Pod Security "baseline" (and so "restricted") allows: Kubernetes'
# safe set (pod-security-admission's policy/check_sysctls.go, 1.32).
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem",
}  # fmt: skip
# The Nginx file that the chart writes from nginx.trustedProxies.
TRUSTED_PROXIES = "trusted-proxies.conf"
# Every container of ours gets a writable /tmp on a read-only root.
TMP = "/tmp"  # noqa: S108 (a path inside the pod)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    made = {}

    def make(key: str) -> Path:
        if key not in made:
            made[key] = generate_service(SERVICES[key], tmp_path_factory.mktemp(key))
        return made[key]

    return make


@pytest.fixture(scope="module")
def renders(service):
    """{values file name: objects} of a service's chart."""
    cached = {}

    def render(key: str) -> dict[str, list[dict]]:
        if key not in cached:
            project = service(key)
            cached[key] = {
                path.name: template(project, path) for path in values_files(project)
            }
        return cached[key]

    return render


def default_values(project: Path) -> Path:
    return chart_dir(project) / "ci" / "default-values.yaml"


@pytest.mark.parametrize("key", SERVICES)
def test_chart_passes_the_services_helm_step(key, service):
    """`bin/check helm`, as the service's CI runs it: helm lint --strict with every
    values file, and each rendering through kubernetes-validate (from the service's
    own `checks` group) for the oldest and newest Kubernetes."""
    project = service(key)
    assert len(values_files(project)) >= 5
    output = check_steps(project, "helm").stdout
    assert output.count("1 chart(s) linted, 0 chart(s) failed") == len(
        values_files(project)
    )


def value_keys(values: dict, prefix: str = "") -> set[str]:
    """The dotted names of the values' leaves; a list or an empty map is a leaf."""
    keys = set()
    for name, value in values.items():
        if isinstance(value, dict) and value:
            keys |= value_keys(value, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


@pytest.mark.parametrize("key", SERVICES)
def test_the_readmes_parameters_are_generated_from_values_yaml(key, service, tmp_path):
    """README.md's "Parameters" tables are what Bitnami's readme-generator-for-helm
    writes from values.yaml's `## @param` lines, and every value has one: the
    tables cannot drift from the values."""
    chart = chart_dir(service(key))
    rendered = (chart / "README.md").read_text()
    generated = tmp_path / "README.md"
    shutil.copy(chart / "README.md", generated)
    result = generate_readme(chart / "values.yaml", generated)
    assert result.returncode == 0, result.stdout + result.stderr
    diff = difflib.unified_diff(
        rendered.splitlines(keepends=True),
        generated.read_text().splitlines(keepends=True),
        "README.md",
        "README.md as readme-generator-for-helm writes it",
    )
    assert "".join(diff) == ""

    parameters = rendered.split("\n## Parameters\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([^`]+)` +\|", parameters, re.MULTILINE))
    values = yaml.safe_load((chart / "values.yaml").read_text())
    assert documented == value_keys(values)
    # values.yaml tells how to regenerate them, with the version tested here.
    package = json.loads((README_GENERATOR.parents[1] / "package.json").read_text())
    command = f"npx @bitnami/readme-generator-for-helm@{package['version']} "
    assert command in (chart / "values.yaml").read_text()


@pytest.mark.parametrize("key", SERVICES)
def test_every_rendered_object_is_valid_for_each_kubernetes_version(key, renders):
    errors, custom = [], 0
    for values, objects in renders(key).items():
        for obj in objects:
            where = f"{values} {obj['kind']}/{obj['metadata']['name']}"
            if "monitoring.coreos.com" in obj["apiVersion"] or obj[
                "apiVersion"
            ].startswith("gateway.networking.k8s.io"):
                custom += 1
                errors += [f"{where}: {e}" for e in validate_custom(obj)]
                continue
            for version in KUBERNETES_VERSIONS:
                try:
                    validate_builtin(obj, version)
                except kubernetes_validate.ValidationError as error:
                    path = "/".join(map(str, error.path))
                    errors.append(f"{where} ({version}) {path}: {error.message}")
    assert errors == []
    # ServiceMonitor, PrometheusRule and HTTPRoute were among them.
    assert custom >= 3


def test_the_validators_refuse_what_the_api_server_would(service):
    """The checks above can fail: an unknown field in a built-in object and in a
    custom resource, and a wrong type in a CRD field, are all caught."""
    project = service("uvicorn-sqlite")
    objects = template(project, chart_dir(project) / "ci" / "monitoring-values.yaml")
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_builtin(deployment, KUBERNETES_VERSIONS[0])
    monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["scrape_interval"] = "30s"
    assert validate_custom(monitor) != []
    rule = next(o for o in objects if o["kind"] == "PrometheusRule")
    rule["spec"]["groups"][0]["rules"][0]["for"] = 5
    assert validate_custom(rule) != []


@pytest.mark.parametrize("key", SERVICES)
def test_every_pod_meets_the_restricted_pod_security_standard(key, renders):
    problems = []
    for values, objects in renders(key).items():
        for name, spec in pod_specs(objects):
            where = f"{values} {name}"
            pod = spec.get("securityContext", {})
            if pod.get("runAsNonRoot") is not True:
                problems.append(f"{where}: pod runAsNonRoot")
            if pod.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                problems.append(f"{where}: pod seccompProfile")
            if spec.get("automountServiceAccountToken") is not False:
                problems.append(f"{where}: automountServiceAccountToken")
            for flag in ("hostNetwork", "hostPID", "hostIPC"):
                if spec.get(flag):
                    problems.append(f"{where}: {flag}")
            for sysctl in pod.get("sysctls", []):
                if sysctl["name"] not in SAFE_SYSCTLS:
                    problems.append(f"{where}: sysctl {sysctl['name']}")
            for volume in spec.get("volumes", []):
                kinds = set(volume) - {"name"}
                if not kinds <= RESTRICTED_VOLUMES:
                    problems.append(f"{where}: volume {volume['name']} is {kinds}")
            for container in containers(spec):
                context = container.get("securityContext", {})
                label = f"{where} container {container['name']}"
                expected = {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "runAsNonRoot": True,
                }
                for field, value in expected.items():
                    if context.get(field) is not value:
                        problems.append(f"{label}: {field} is not {value}")
                if context.get("privileged"):
                    problems.append(f"{label}: privileged")
                if context.get("runAsUser", 1) == 0:
                    problems.append(f"{label}: runs as root")
                if context.get("capabilities", {}).get("drop") != ["ALL"]:
                    problems.append(f"{label}: capabilities not dropped")
                if context.get("capabilities", {}).get("add"):
                    problems.append(f"{label}: capabilities added")
                if any("hostPort" in port for port in container.get("ports", [])):
                    problems.append(f"{label}: hostPort")
                if (
                    not any(
                        mount["mountPath"] == TMP
                        for mount in container.get("volumeMounts", [])
                    )
                    and container["name"] != "nginx-exporter"
                ):
                    problems.append(f"{label}: no writable /tmp")
    assert problems == []


def test_granians_pods_may_hand_a_recycled_workers_connections_on(service, tmp_path):
    """server.migrateWaitingConnections sets net.ipv4.tcp_migrate_req in the app's
    pods, and only there; off by default, as Pod Security "baseline" refuses it."""
    project = service("granian-postgresql")
    values = tmp_path / "migrate-values.yaml"
    values.write_text(yaml.safe_dump({"server": {"migrateWaitingConnections": True}}))
    for given, expected in (
        ((), None),
        ((values,), [{"name": "net.ipv4.tcp_migrate_req", "value": "1"}]),
    ):
        objects = template(project, default_values(project), *given)
        web = web_objects(objects)["Deployment"]
        web_name = f"Deployment/{web['metadata']['name']}"
        for name, spec in pod_specs(objects):
            wanted = expected if name == web_name else None
            assert spec["securityContext"].get("sysctls") == wanted, name
        for version in KUBERNETES_VERSIONS:
            validate_builtin(web, version)


@pytest.mark.parametrize("key", SERVICES)
def test_containers_have_resources_probes_and_pinned_images(key, renders):
    problems = []
    for values, objects in renders(key).items():
        for name, spec in pod_specs(objects):
            long_running = name.startswith("Deployment/")
            for container in containers(spec):
                label = f"{values} {name} {container['name']}"
                resources = container.get("resources", {})
                for kind in ("requests", "limits"):
                    if set(resources.get(kind, {})) != {"cpu", "memory"}:
                        problems.append(f"{label}: {kind} lack cpu or memory")
                image = container["image"]
                tag = image.rsplit(":", 1)[-1] if ":" in image else ""
                if "@sha256:" not in image and tag in {"", "latest"}:
                    problems.append(f"{label}: image {image} is not pinned")
                if long_running and container in spec["containers"]:
                    expected = PROBES.get(container["name"])
                    if expected is None:
                        problems.append(f"{label}: a container with no probe rule")
                    elif missing := expected - set(container):
                        problems.append(f"{label}: no {sorted(missing)}")
            for app in (c for c in spec["containers"] if c["name"] == "app"):
                if app["readinessProbe"]["httpGet"]["path"] != "/readyz":
                    problems.append(f"{values} {name}: readiness is not /readyz")
    assert problems == []


@pytest.mark.parametrize(
    ("setting", "error"),
    [
        ("replicaCount=two", "replicaCount"),
        ("server.workers=many", "workers"),
        ("image.tag=latest", "tag"),
        ("replicaCont=1", "replicaCont"),
        ("ingress.hots=example.com", "hots"),
        ("config.logLevel=LOUD", "logLevel"),
        ("nginx.image.tag=", "tag"),
        ("nginx.trustedProxies={example.com}", "trustedProxies"),
        # Django's own minimum (security.W009, core.E002).
        (f"secret.secretKey={'k' * 49}", "secretKey"),
        (f"secret.secretKeyFallbacks={{{'k' * 49}}}", "secretKeyFallbacks/0"),
        # Joined by commas into one variable (DJANGO_SECRET_KEY_FALLBACKS).
        (
            f"secret.secretKeyFallbacks={{{'k' * 30}\\,{'j' * 30}}}",
            "secretKeyFallbacks/0",
        ),
        # SQLite is one pod's file.
        ("replicaCount=2", "replicaCount"),
        ("autoscaling.enabled=true", "enabled"),
        ("tracing.sampler=sometimes", "sampler"),
        ("tracing.endpoint=otel-collector:4318", "endpoint"),
        ("tracing.resourceAttributes.team=a\\,b", "resourceAttributes"),
        # A collector's token is a secret: never a plain value.
        ("tracing.headers=authorization=Bearer t", "headers"),
        ("backup.intervalSeconds=30", "intervalSeconds"),
        ("backup.intervalSeconds=hourly", "intervalSeconds"),
        ("backup.keep=0", "keep"),
        ("backup.schedule=@hourly", "schedule"),
        # Who may call the API (the service's core.auth and core.E004).
        ("config.auth.readsNeedToken=maybe", "readsNeedToken"),
        ("config.oidc.issuer=http://login.example.com", "issuer"),
        ("config.oidc.jwksUrl=login.example.com/keys", "jwksUrl"),
        ("config.oidc.algorithms={HS256}", "algorithms"),
        ("config.oidc.leewaySeconds=-1", "leewaySeconds"),
        # API_RATE_LIMIT_*: 0 requests turns the limit off, a window has a second.
        ("config.auth.rateLimit.requests=-1", "requests"),
        ("config.auth.rateLimit.requests=many", "requests"),
        ("config.auth.rateLimit.requests=1.5", "requests"),
        ("config.auth.rateLimit.seconds=0", "seconds"),
        ("config.auth.rateLimit.seconds=minute", "seconds"),
        # Deleted, it would render as 0: no limit.
        ("config.auth.rateLimit.requests=null", "requests"),
        ("config.auth.rateLimit.burst=10", "burst"),
        # The smoke test's API key is a secret: a Secret's, never a value.
        ("smokeTest.apiKey=sk_0123456789ab_secret", "apiKey"),
        ("smokeTest.apiKeySecret.name=Smoke_Key", "name"),
        # Sentry's DSN is a credential: a Secret's, never a value.
        ("sentry.dsn=https://k3y@o0.ingest.sentry.io/42", "dsn"),
        ("sentry.dsnSecret.name=Sentry_DSN", "name"),
        ("sentry.dsnSecret.name=sentry-dsn,sentry.dsnSecret.key=", "key"),
        # Sentry's own rule for environment names.
        ("sentry.environment=my env", "environment"),
        ("sentry.environment=eu/west", "environment"),
        ("sentry.environment=None", "environment"),
        (f"sentry.environment={'e' * 65}", "environment"),
    ],
)
def test_the_values_schema_refuses_wrong_values(setting, error, service):
    project = service("uvicorn-sqlite")
    message = template_error(project, default_values(project), sets=[setting])
    assert "values don't meet the specifications of the schema" in message, message
    assert error in message, message


def test_earlier_secret_keys_are_in_the_secret_joined(service):
    """DJANGO_SECRET_KEY_FALLBACKS (config/settings.py reads it as a comma
    separated list) only while a rotation keeps earlier keys."""
    project = service("uvicorn-sqlite")

    def secret(*sets) -> dict:
        (found,) = [
            obj
            for obj in template(project, default_values(project), sets=sets)
            if obj["kind"] == "Secret"
        ]
        return found["stringData"]

    assert "DJANGO_SECRET_KEY_FALLBACKS" not in secret()
    earlier = ["k" * 50, "j" * 60]
    fallbacks = secret(f"secret.secretKeyFallbacks={{{','.join(earlier)}}}")
    assert fallbacks["DJANGO_SECRET_KEY_FALLBACKS"] == ",".join(earlier)


def test_the_chart_refuses_what_the_schema_cannot_express(service):
    project = service("granian-postgresql")
    assert "secret.secretKey (DJANGO_SECRET_KEY) is required" in template_error(project)
    key = f"secret.secretKey={'k' * 50}"
    assert "secret.databaseUrl" in template_error(project, sets=[key])
    assert "terminationGracePeriodSeconds must exceed" in template_error(
        project, default_values(project), sets=["terminationGracePeriodSeconds=35"]
    )
    assert "httpRoute.parentRefs" in template_error(
        project, default_values(project), sets=["httpRoute.enabled=true"]
    )
    # A token the issuer made for any other service would open this one.
    assert "config.oidc.audience (OIDC_AUDIENCE) is required" in template_error(
        project,
        default_values(project),
        sets=["config.oidc.issuer=https://login.example.com"],
    )


def test_each_database_server_has_a_rendered_chart():
    """A new database choice gets a service here, with its URL and port."""
    servers = set(CHOICES["database"]) - {"sqlite"}
    assert set(DATABASE_SERVERS) == set(DATABASE_URLS) == servers
    for database, key in DATABASE_SERVERS.items():
        assert SERVICES[key]["database"] == database


@pytest.mark.parametrize("database", DATABASE_SERVERS)
def test_a_database_servers_url_and_port_are_its_own(database, service, renders):
    """The ci/ examples give the app's and the migration Job's Secrets the
    server's own URL, and the NetworkPolicy example of the gateway opens its port
    and no other server's; the schema takes its URLs and refuses another
    server's; without one, the chart refuses to render, naming no vendor."""
    key = DATABASE_SERVERS[database]
    project = service(key)
    url, port = DATABASE_URLS[database]
    for values, objects in renders(key).items():
        urls = [
            o["stringData"]["DATABASE_URL"]
            for o in objects
            if o["kind"] == "Secret" and "DATABASE_URL" in o.get("stringData", {})
        ]
        # The release's Secret and the migration hook's, unless a Secret of
        # one's own holds it.
        expected = [] if values == "existing-secret-values.yaml" else [url, url]
        assert urls == expected, values
    others = {other for _, other in DATABASE_URLS.values()} - {port}
    policies = [
        o for o in renders(key)["gateway-values.yaml"] if o["kind"] == "NetworkPolicy"
    ]
    assert policies  # the web's, and the worker's if it has one
    for policy in policies:
        rules = policy["spec"]["egress"]
        ports = {p["port"] for rule in rules for p in rule.get("ports", [])}
        assert port in ports, policy["metadata"]["name"]
        assert not ports & others, policy["metadata"]["name"]

    for other, (other_url, _) in DATABASE_URLS.items():
        sets = [f"secret.databaseUrl={other_url}"]
        if other == database:
            template(project, default_values(project), sets=sets)
        else:
            message = template_error(project, default_values(project), sets=sets)
            assert "values don't meet the specifications of the schema" in message
            assert "databaseUrl" in message, message
    message = template_error(project, sets=[f"secret.secretKey={'k' * 50}"])
    assert (
        "secret.databaseUrl (DATABASE_URL of the database server) is required"
        in message
    ), message


@pytest.mark.parametrize("database", DATABASE_SERVERS)
def test_the_schema_takes_every_url_scheme_of_the_services_engine(database, service):
    """django-environ, which reads DATABASE_URL in the service, names each
    engine by several schemes (postgres://, pgsql://, mysql2://...): the schema
    takes every one that selects the service's engine, and refuses the others of
    those databases (PostGIS, MySQL Connector/Python, django-prometheus)."""
    project = service(DATABASE_SERVERS[database])
    # The django-environ of the service's own lock.
    command = ["uv", "run", "--locked", "--no-dev", "python", "-c", DB_SCHEMES]
    schemes = json.loads(run(command, project).stdout)
    engine = f"django.db.backends.{database}"
    assert engine in schemes.values()
    for scheme, scheme_engine in schemes.items():
        if not ("postg" in scheme_engine or "mysql" in scheme_engine):
            continue
        sets = [f"secret.databaseUrl={scheme}://app:ci-only@db:5432/app"]
        if scheme_engine == engine:
            template(project, default_values(project), sets=sets)
        else:
            message = template_error(project, default_values(project), sets=sets)
            assert "databaseUrl" in message, (scheme, message)


# The schemes django-environ knows, and the engine each one selects.
DB_SCHEMES = "import environ, json; print(json.dumps(environ.Env.DB_SCHEMES))"


def test_nginx_prometheus_and_grafana_come_from_their_components(service, renders):
    """The chart embeds the service's deploy/ files themselves, through symbolic
    links: nothing is copied, so nothing can drift."""
    key = "granian-postgresql"
    project = service(key)
    deploy = project / "deploy"
    for component in ("nginx", "prometheus", "grafana"):
        link = chart_dir(project) / "files" / component
        assert link.is_symlink(), f"{link} is a copy, not a link"
        assert link.resolve() == (deploy / component).resolve()
    objects = renders(key)["monitoring-values.yaml"]
    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)

    nginx = next(c for c in by_kind["ConfigMap"] if c["metadata"]["name"].endswith(
        "-nginx"))  # fmt: skip
    # And trusted-proxies.conf, which each deployment writes (test_nginx_trusts...).
    assert {k: v for k, v in nginx["data"].items() if k != TRUSTED_PROXIES} == {
        path.name: path.read_text() for path in (deploy / "nginx").glob("*.conf")
    }
    rules = [
        group
        for path in sorted((deploy / "prometheus" / "rules").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
    ]
    assert by_kind["PrometheusRule"][0]["spec"]["groups"] == rules
    dashboards = {
        name: json.loads(text)
        for config in by_kind["ConfigMap"]
        if config["metadata"]["labels"].get("grafana_dashboard") == "1"
        for name, text in config["data"].items()
    }
    assert dashboards == {
        path.name: json.loads(path.read_text())
        for path in (deploy / "grafana" / "dashboards").glob("*.json")
    }
    # A Granian service on PostgreSQL: its server's and its pools' dashboards too.
    assert set(dashboards) == {
        "service.json",
        "granian.json",
        "fleet.json",
        "database.json",
    }


@pytest.mark.parametrize("key", [*DATABASE_SERVERS.values(), "uvicorn-sqlite"])
def test_a_database_server_gets_the_pools_dashboard(key, renders):
    """database.json, the asyncio read pool's (and Django's pool's) metrics, comes
    with every database server, each of which exports them; SQLite has no pool."""
    objects = renders(key)["monitoring-values.yaml"]
    dashboards = {
        name
        for config in objects
        if config["kind"] == "ConfigMap"
        and config["metadata"]["labels"].get("grafana_dashboard") == "1"
        for name in config["data"]
    }
    assert ("database.json" in dashboards) == (SERVICES[key]["database"] != "sqlite")


def nginx_sidecar(objects: list[dict]) -> tuple[dict, dict]:
    """(the Nginx container of the web's pods, its ConfigMap's files)."""
    config = next(
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-nginx")
    )
    (container,) = [
        c
        for name, spec in pod_specs(objects)
        if name.startswith("Deployment/")
        for c in spec["containers"]
        if c["name"] == "nginx"
    ]
    return container, config["data"]


def nginx_test(files: dict[str, str], command: list[str], workdir: Path) -> str:
    """`nginx -T` of the sidecar's files as its command runs them (its -g
    included), with Debian's Nginx: the configuration it would load."""
    assert shutil.which("nginx"), "nginx is missing: run the tests with tests/run.sh"
    for name, text in files.items():
        (workdir / name).write_text(text)
    directives = command[command.index("-g") + 1]
    main = workdir / "nginx.conf"
    result = subprocess.run(
        [
            "nginx",
            "-T",
            "-q",
            "-e",
            "stderr",
            "-p",
            workdir,
            "-c",
            main,
            "-g",
            directives,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_nginx_trusts_only_the_configured_proxies(service, renders, tmp_path):
    """By default Nginx believes no X-Forwarded-* header: the chart cannot know
    the ingress's addresses, and every private range would let any pod choose its
    client address and scheme. nginx.trustedProxies names them; an Ingress or an
    HTTPRoute without them is refused (its clients would all be redirected to
    https and share one address's limits)."""
    key = "granian-postgresql"
    rendered = renders(key)
    container, files = nginx_sidecar(rendered["default-values.yaml"])
    loaded = nginx_test(files, container["command"], tmp_path)
    assert "set_real_ip_from" not in loaded
    assert re.search(r"\$from_trusted_proxy \{\s*default 0;\s*\}", loaded), loaded
    container, files = nginx_sidecar(rendered["ingress-values.yaml"])
    (tmp_path / "ingress").mkdir()
    loaded = nginx_test(files, container["command"], tmp_path / "ingress")
    assert "set_real_ip_from 10.244.0.0/16;" in loaded
    assert "10.244.0.0/16 1;" in loaded
    # What test_edge.py's spoof test runs Nginx on, for the same proxies.
    assert without_comments(files[TRUSTED_PROXIES]) == trusted_proxies_conf(
        ("10.244.0.0/16",)
    )
    project = service(key)
    untrusting = tmp_path / "untrusting-values.yaml"
    untrusting.write_text(yaml.safe_dump({"nginx": {"trustedProxies": []}}))
    for example in ("ingress-values.yaml", "gateway-values.yaml"):
        values = chart_dir(project) / "ci" / example
        message = template_error(project, values, untrusting)
        assert "nginx.trustedProxies is required with ingress.enabled" in message


@pytest.mark.parametrize(
    ("cpu", "workers"), [("250m", 1), ("1", 1), ("1500m", 2), ("4", 4), (3, 3)]
)
def test_nginx_runs_a_worker_per_cpu_of_its_limit(service, tmp_path, cpu, workers):
    """Not `worker_processes auto`, which counts the node's CPUs: a 64-core node
    would give a 500m sidecar 64 workers."""
    project = service("uvicorn-sqlite")
    values = tmp_path / "cpu-values.yaml"
    values.write_text(
        yaml.safe_dump({"nginx": {"resources": {"limits": {"cpu": cpu}}}})
    )
    container, files = nginx_sidecar(template(project, default_values(project), values))
    assert f"worker_processes {workers};" in container["command"][-1]
    # The command's count is the only one: nginx.conf sets none of its own.
    loaded = nginx_test(files, container["command"], tmp_path)
    assert not re.search(r"^\s*worker_processes\s", loaded, re.MULTILINE)


@pytest.mark.parametrize(
    "key", ["granian-postgresql", "uvicorn-sqlite", *TASK_SERVICES]
)
def test_scrape_jobs_are_those_the_rules_select(key, service, renders):
    """The ServiceMonitors name their jobs as deploy/prometheus/prometheus.yml does
    for VMs, and label them with the service: the same rules work on both."""
    project = service(key)
    config = yaml.safe_load((project / "deploy/prometheus/prometheus.yml").read_text())
    vm_jobs = {job["job_name"] for job in config["scrape_configs"]} - {
        f"{project.name}-node"
    }
    labels = [
        {r["targetLabel"]: r["replacement"] for r in endpoint["relabelings"]}
        for monitor in renders(key)["monitoring-values.yaml"]
        if monitor["kind"] == "ServiceMonitor"
        for endpoint in monitor["spec"]["endpoints"]
    ]
    assert {label["job"] for label in labels} == vm_jobs
    assert {label["service"] for label in labels} == {project.name}


def test_a_changed_setting_or_secret_rolls_the_pods(service):
    project = service("uvicorn-sqlite")

    def annotations(*sets):
        objects = template(project, default_values(project), sets=sets)
        deployment = next(o for o in objects if o["kind"] == "Deployment")
        return deployment["spec"]["template"]["metadata"]["annotations"]

    before = annotations()
    config = annotations("config.logLevel=DEBUG")
    secret = annotations("secret.redisUrl=redis://redis:6379/1")
    assert config["checksum/config"] != before["checksum/config"]
    assert config["checksum/secret"] == before["checksum/secret"]
    assert secret["checksum/secret"] != before["checksum/secret"]
    assert secret["checksum/nginx"] == before["checksum/nginx"]


def test_an_existing_secret_replaces_the_charts_own(service, renders):
    key = "granian-postgresql"
    objects = renders(key)["existing-secret-values.yaml"]
    secret_name = f"{service(key).name}-secrets"
    assert [o for o in objects if o["kind"] == "Secret"] == []
    for name, spec in pod_specs(objects):
        for container in containers(spec):
            refs = [
                ref["secretRef"]["name"]
                for ref in container.get("envFrom", [])
                if "secretRef" in ref
            ] + [
                env["valueFrom"]["secretKeyRef"]["name"]
                for env in container.get("env", [])
                if "secretKeyRef" in env.get("valueFrom", {})
            ]
            assert set(refs) <= {secret_name}, f"{name}: {refs}"
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" not in annotations


@pytest.mark.parametrize("key", DATABASE_SERVERS.values())
def test_migrations_run_before_the_new_version(key, renders):
    """A database server (PostgreSQL, MySQL): a pre-install/pre-upgrade hook Job,
    with its own hook Secret that exists before it; SQLite: an init container of
    the one pod."""
    objects = renders(key)["default-values.yaml"]
    hooks = {
        o["kind"]: o["metadata"]["annotations"]
        for o in objects
        if "helm.sh/hook" in o["metadata"].get("annotations", {})
        and o["metadata"]["labels"]["app.kubernetes.io/component"] == "migrations"
    }
    assert hooks["Job"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert hooks["Secret"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(hooks["Secret"]["helm.sh/hook-weight"]) < int(
        hooks["Job"]["helm.sh/hook-weight"]
    )
    deployment = web_objects(objects)["Deployment"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    sqlite = renders("uvicorn-sqlite")["default-values.yaml"]
    assert not [o for o in sqlite if o["kind"] == "Job"]
    pod = next(o for o in sqlite if o["kind"] == "Deployment")["spec"]["template"]
    (prepare,) = pod["spec"]["initContainers"]
    assert "manage.py migrate --noinput" in " ".join(prepare["command"])


def helm_default_timeout() -> int:
    """Seconds of the --timeout that helm upgrade waits with by default, as this
    helm states it."""
    result = helm("upgrade", "--help", cwd=Path.cwd())
    match = re.search(r"--timeout duration .*\(default (\d+)m(\d+)s\)", result.stdout)
    assert match, result.stdout
    return int(match[1]) * 60 + int(match[2])


def migration_deadline_maximum(project: Path) -> int:
    schema = json.loads((chart_dir(project) / "values.schema.json").read_text())
    migrations = schema["properties"]["migrations"]["properties"]
    return migrations["activeDeadlineSeconds"]["maximum"]


@pytest.mark.parametrize("key", DATABASE_SERVERS.values())
def test_the_migration_hooks_end_before_helm_stops_waiting(key, service, renders):
    """The Job's deadline, and the most the schema allows, are below Helm's default
    --timeout: the Job has ended when Helm stops waiting. A Job per revision, so
    that before-hook-creation never deletes one a retried upgrade finds running;
    its migrations take the database's lock. The hook Secret with the database
    URL goes when the hooks succeed, and when the Job fails (Helm 3.19+ and 4
    delete the earlier hooks by their hook-succeeded policy then)."""
    objects = renders(key)["default-values.yaml"]
    (job,) = (o for o in objects if o["kind"] == "Job")
    (secret,) = (
        o
        for o in objects
        if o["kind"] == "Secret"
        and "helm.sh/hook" in o["metadata"].get("annotations", {})
    )
    timeout = helm_default_timeout()
    assert job["spec"]["activeDeadlineSeconds"] < timeout
    assert migration_deadline_maximum(service(key)) < timeout
    # helm template renders revision 1.
    assert job["metadata"]["name"] == f"{secret['metadata']['name']}-1"
    policies = {
        o["kind"]: set(
            o["metadata"]["annotations"]["helm.sh/hook-delete-policy"].split(",")
        )
        for o in (job, secret)
    }
    assert policies == {
        "Job": {"before-hook-creation"},
        "Secret": {"before-hook-creation", "hook-succeeded"},
    }
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == [
        "python",
        "manage.py",
        "migrate_locked",
        "--noinput",
    ]
    assert {env["valueFrom"]["secretKeyRef"]["name"] for env in container["env"]} == {
        secret["metadata"]["name"]
    }


def test_the_schema_refuses_a_migration_deadline_helm_would_not_wait_for(service):
    project = service("granian-postgresql")
    maximum = migration_deadline_maximum(project)
    template(
        project,
        default_values(project),
        sets=[f"migrations.activeDeadlineSeconds={maximum}"],
    )
    message = template_error(
        project,
        default_values(project),
        sets=[f"migrations.activeDeadlineSeconds={helm_default_timeout()}"],
    )
    assert "values don't meet the specifications of the schema" in message, message
    assert "activeDeadlineSeconds" in message, message


@pytest.mark.parametrize("key", DATABASE_SERVERS.values())
def test_autoscaling_owns_the_replica_count(key, renders):
    objects = renders(key)["autoscaling-values.yaml"]
    deployment = web_objects(objects)["Deployment"]
    assert "replicas" not in deployment["spec"]
    (hpa,) = (
        o for o in objects
        if o["kind"] == "HorizontalPodAutoscaler"
        and o["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    )  # fmt: skip
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
    default = renders(key)["default-values.yaml"]
    assert not [o for o in default if o["kind"] == "HorizontalPodAutoscaler"]


def test_the_app_port_is_closed_to_the_cluster(renders):
    """NetworkPolicy: Nginx's port for clients, metrics ports for Prometheus (and
    the helm test pod), nothing for the app's own port."""
    objects = renders("granian-postgresql")["ingress-values.yaml"]
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy")
    ports = {
        port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]
    }
    assert ports == {"http", "metrics", "nginx-metrics", "granian-metrics"}
    service = next(o for o in objects if o["kind"] == "Service")
    assert {p["targetPort"] for p in service["spec"]["ports"]} == ports
    grace = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]
    assert grace["spec"]["terminationGracePeriodSeconds"] > 10 + 30
    assert RELEASE in policy["metadata"]["name"]


def worker_objects(objects: list[dict]) -> dict[str, dict]:
    """{kind: object} of the task worker's objects."""
    return {
        o["kind"]: o
        for o in objects
        if o["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        == "worker"
    }


def web_objects(objects: list[dict]) -> dict[str, dict]:
    """{kind: object} of the app's objects (one of each kind among these)."""
    kinds = {
        "Deployment", "Service", "ServiceMonitor", "NetworkPolicy",
        "PodDisruptionBudget",
    }  # fmt: skip
    return {
        o["kind"]: o
        for o in objects
        if o["kind"] in kinds and o not in worker_objects(objects).values()
    }


def selects(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


@pytest.mark.parametrize("key", TASK_SERVICES)
def test_the_worker_runs_bin_worker_as_the_app_runs(key, renders):
    """The same image, settings, Secret, identity and restrictions as the app; its
    own command, environment, probes and grace period."""
    objects = renders(key)["default-values.yaml"]
    worker = worker_objects(objects)["Deployment"]
    web = web_objects(objects)["Deployment"]
    pod, web_pod = worker["spec"]["template"], web["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    app = next(c for c in web_pod["spec"]["containers"] if c["name"] == "app")

    assert container["command"] == ["bin/worker"]
    for field in ("image", "envFrom", "securityContext"):
        assert container[field] == app[field], field
    for field in (
        "serviceAccountName",
        "securityContext",
        "automountServiceAccountToken",
    ):
        assert pod["spec"][field] == web_pod["spec"][field], field
    annotations = pod["metadata"]["annotations"]
    assert annotations["checksum/config"] == web_pod["metadata"]["annotations"][
        "checksum/config"]  # fmt: skip
    assert "checksum/secret" in annotations

    env = {e["name"]: e["value"] for e in container["env"]}
    assert env.pop("METRICS_DIR").startswith(f"{TMP}/")
    assert env == {
        "WORKER_CONCURRENCY": "2",
        "WORKER_SHUTDOWN_TIMEOUT": "60",
        "WORKER_METRICS_HOST": "0.0.0.0",  # noqa: S104 (the pod's own address)
        "WORKER_METRICS_PORT": "9500",
    }
    assert container["ports"] == [{"name": "metrics", "containerPort": 9500}]
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # Nothing routes requests to it: no readiness, nothing to drain.
    assert "readinessProbe" not in container
    assert "lifecycle" not in container
    assert pod["spec"]["terminationGracePeriodSeconds"] > 60
    assert worker["spec"]["replicas"] == 2


@pytest.mark.parametrize("key", TASK_SERVICES)
def test_nothing_of_the_app_selects_the_workers_pods(key, renders):
    """The app's Deployment (and so its autoscaler), Service, ServiceMonitor,
    NetworkPolicy and PodDisruptionBudget select the app's pods only, and the
    worker's objects its own."""
    objects = renders(key)["monitoring-values.yaml"]
    worker, web = worker_objects(objects), web_objects(objects)
    worker_pod = worker["Deployment"]["spec"]["template"]["metadata"]["labels"]
    web_pod = web["Deployment"]["spec"]["template"]["metadata"]["labels"]
    pod_selectors = {
        "Deployment": lambda o: o["spec"]["selector"]["matchLabels"],
        "Service": lambda o: o["spec"]["selector"],
        "NetworkPolicy": lambda o: o["spec"]["podSelector"]["matchLabels"],
        "PodDisruptionBudget": lambda o: o["spec"]["selector"]["matchLabels"],
    }
    for kind, selector in pod_selectors.items():
        assert not selects(selector(web[kind]), worker_pod), kind
        assert selects(selector(worker[kind]), worker_pod), kind
        assert not selects(selector(worker[kind]), web_pod), kind
    monitor = worker["ServiceMonitor"]["spec"]["selector"]["matchLabels"]
    assert selects(monitor, worker["Service"]["metadata"]["labels"])
    assert not selects(monitor, web["Service"]["metadata"]["labels"])
    assert not selects(
        web["ServiceMonitor"]["spec"]["selector"]["matchLabels"],
        worker["Service"]["metadata"]["labels"],
    )


COMPONENT = "app.kubernetes.io/component"


def selectors(obj: dict) -> list[dict]:
    """The label selectors of an object of the chart."""
    spec = obj.get("spec", {})
    match obj["kind"]:
        case "Deployment":
            spread = spec["template"]["spec"].get("topologySpreadConstraints", [])
            return [spec["selector"]["matchLabels"]] + [
                constraint["labelSelector"]["matchLabels"] for constraint in spread
            ]
        case "Service":
            return [spec["selector"]]
        case "PodDisruptionBudget" | "ServiceMonitor":
            return [spec["selector"]["matchLabels"]]
        case "NetworkPolicy":
            return [spec["podSelector"]["matchLabels"]]
    return []


@pytest.mark.parametrize("key", SERVICES)
def test_every_selector_holds_its_objects_component(key, renders):
    """Each object of a component carries app.kubernetes.io/component and selects
    on it: no object of the web selects the worker's pods, nor the reverse."""
    problems, checked = [], 0
    for values, objects in renders(key).items():
        for obj in objects:
            component = obj["metadata"]["labels"].get(COMPONENT)
            for selector in selectors(obj):
                checked += 1
                if component is None or selector.get(COMPONENT) != component:
                    name = f"{obj['kind']}/{obj['metadata']['name']}"
                    problems.append(f"{values} {name}: {component} {selector}")
            if obj["kind"] == "Deployment":
                pod = obj["spec"]["template"]["metadata"]["labels"]
                if pod.get(COMPONENT) != component:
                    problems.append(f"{values} {obj['metadata']['name']}: pods")
    assert problems == []
    assert checked > 0


@pytest.mark.parametrize("key", TASK_SERVICES)
def test_the_worker_is_scraped_as_on_vms_and_closed_to_the_rest(key, service, renders):
    project = service(key)
    objects = renders(key)["monitoring-values.yaml"]
    worker, web = worker_objects(objects), web_objects(objects)
    assert worker["Service"]["spec"]["clusterIP"] == "None"
    assert worker["Service"]["spec"]["ports"] == [
        {"name": "metrics", "port": 9500, "targetPort": "metrics"}
    ]
    (endpoint,) = worker["ServiceMonitor"]["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["path"] == "/metrics"
    labels = {r["targetLabel"]: r["replacement"] for r in endpoint["relabelings"]}
    assert labels == {"job": f"{project.name}-worker", "service": project.name}
    assert worker["ServiceMonitor"]["metadata"]["labels"]["release"] == (
        "kube-prometheus-stack"
    )

    policy = worker["NetworkPolicy"]["spec"]
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"port": "metrics"}]
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": monitoring}}]
    assert policy["egress"] == web["NetworkPolicy"]["spec"]["egress"]
    limited = worker_objects(renders(key)["gateway-values.yaml"])["NetworkPolicy"]
    gateway_web = web_objects(renders(key)["gateway-values.yaml"])["NetworkPolicy"]
    assert limited["spec"]["egress"] == gateway_web["spec"]["egress"] != [{}]


@pytest.mark.parametrize("key", TASK_SERVICES)
def test_the_chart_refuses_a_worker_that_cannot_work(key, service):
    project = service(key)
    values = default_values(project)
    assert "worker.terminationGracePeriodSeconds must exceed" in template_error(
        project, values, sets=["worker.terminationGracePeriodSeconds=60"]
    )
    template(project, values, sets=["worker.terminationGracePeriodSeconds=61"])
    assert "worker.autoscaling.minReplicas must not exceed" in template_error(
        project, values,
        sets=["worker.autoscaling.enabled=true", "worker.autoscaling.minReplicas=11"],
    )  # fmt: skip
    without_redis = ["secret.redisUrl="]
    if TASK_BROKER[SERVICES[key]["tasks"]] == "redis":
        message = template_error(project, values, sets=without_redis)
        assert "secret.redisUrl (REDIS_URL, the broker of" in message, message
    else:
        template(project, values, sets=without_redis)
    # A Secret of one's own may hold REDIS_URL: the chart cannot look.
    existing = chart_dir(project) / "ci" / "existing-secret-values.yaml"
    objects = template(project, existing)
    (secret_ref,) = [
        ref["secretRef"]["name"]
        for ref in worker_objects(objects)["Deployment"]["spec"]["template"]["spec"][
            "containers"][0]["envFrom"]
        if "secretRef" in ref
    ]  # fmt: skip
    assert secret_ref == f"{project.name}-secrets"


@pytest.mark.parametrize(
    ("setting", "error"),
    [
        ("worker.concurrency=many", "concurrency"),
        ("worker.concurrency=0", "concurrency"),
        ("worker.replicas=2", "replicas"),
        ("worker.autoscaling.enabeld=true", "enabeld"),
    ],
)
def test_the_values_schema_refuses_wrong_worker_values(setting, error, service):
    project = service(next(iter(TASK_SERVICES)))
    message = template_error(project, default_values(project), sets=[setting])
    assert "values don't meet the specifications of the schema" in message, message
    assert error in message, message


@pytest.mark.parametrize("key", TASK_SERVICES)
def test_the_worker_has_its_own_autoscaler_and_disruption_budget(key, service, renders):
    default = worker_objects(renders(key)["default-values.yaml"])
    assert "HorizontalPodAutoscaler" not in default
    assert default["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1

    objects = renders(key)["autoscaling-values.yaml"]
    worker = worker_objects(objects)
    assert "replicas" not in worker["Deployment"]["spec"]
    hpa = worker["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == worker["Deployment"]["metadata"]["name"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 8)
    web_hpa = next(
        o for o in objects
        if o["kind"] == "HorizontalPodAutoscaler" and o not in worker.values()
    )  # fmt: skip
    assert web_hpa["spec"]["scaleTargetRef"]["name"] == web_objects(objects)[
        "Deployment"]["metadata"]["name"]  # fmt: skip

    project = service(key)
    objects = template(project, default_values(project),
                       sets=["worker.podDisruptionBudget.enabled=false"])  # fmt: skip
    assert "PodDisruptionBudget" not in worker_objects(objects)
    assert [o for o in objects if o["kind"] == "PodDisruptionBudget"]


def test_a_service_without_tasks_has_no_worker(service, renders):
    project = service("granian-postgresql")
    for values, objects in renders("granian-postgresql").items():
        assert worker_objects(objects) == {}, values
        assert not [o for o in objects if o["metadata"]["name"].endswith("-worker")]
    message = template_error(project, default_values(project),
                             sets=["worker.concurrency=2"])  # fmt: skip
    assert "worker" in message, message


OTEL = re.compile(r"OTEL_|K8S_")


def container_env(objects: list[dict]) -> dict[str, dict[str, dict]]:
    """{container name: {variable: its env entry}} of the Deployments' containers."""
    return {
        container["name"]: {env["name"]: env for env in container.get("env", [])}
        for name, spec in pod_specs(objects)
        if name.startswith("Deployment/")
        for container in spec["containers"]
    }


@pytest.mark.parametrize("key", SERVICES)
def test_no_traces_unless_an_endpoint_is_set(key, renders):
    """Off by default: no OTEL_ variable reaches a pod (the service then loads none
    of OpenTelemetry), and no egress opens for a collector."""
    for values, objects in renders(key).items():
        if values == "gateway-values.yaml":
            continue
        for container, env in container_env(objects).items():
            assert not [n for n in env if OTEL.match(n)], f"{values} {container}"
        for policy in (o for o in objects if o["kind"] == "NetworkPolicy"):
            ports = [
                port["port"]
                for rule in policy["spec"]["egress"]
                for port in rule.get("ports", [])
            ]
            assert 4318 not in ports, values


@pytest.mark.parametrize("key", ["granian-postgresql", *TASK_SERVICES])
def test_traces_go_to_the_collector_from_the_app_and_the_worker(key, service, renders):
    """ci/gateway-values.yaml sends traces: the app's and the worker's containers
    get the standard variables, named as their metrics are, with the pod's
    Kubernetes names; the collector's token from its own Secret; egress to the
    collector's port only, from both."""
    project = service(key)
    objects = renders(key)["gateway-values.yaml"]
    env = container_env(objects)
    tracing = {"app"} | ({"worker"} if key in TASK_SERVICES else set())
    assert {c for c, variables in env.items() if "OTEL_SERVICE_NAME" in variables} == (
        tracing
    )
    (label,) = {
        relabel["replacement"]
        for monitor in renders(key)["monitoring-values.yaml"]
        if monitor["kind"] == "ServiceMonitor"
        for endpoint in monitor["spec"]["endpoints"]
        for relabel in endpoint["relabelings"]
        if relabel["targetLabel"] == "service"
    }
    deployments = {
        c["name"]: o["metadata"]["name"]
        for o in objects
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
    }
    for container in tracing:
        variables = env[container]
        values = {n: v["value"] for n, v in variables.items() if "value" in v}
        assert values["OTEL_EXPORTER_OTLP_ENDPOINT"] == (
            "http://otel-collector.observability:4318"
        )
        assert values["OTEL_SERVICE_NAME"] == label == project.name
        assert values["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
        assert values["OTEL_TRACES_SAMPLER_ARG"] == "0.1"
        assert variables["OTEL_EXPORTER_OTLP_HEADERS"]["valueFrom"] == {
            "secretKeyRef": {
                "name": "otel-collector-token",
                "key": "OTEL_EXPORTER_OTLP_HEADERS",
            }
        }
        attributes = dict(
            pair.split("=", 1) for pair in values["OTEL_RESOURCE_ATTRIBUTES"].split(",")
        )
        assert attributes == {
            "k8s.namespace.name": "$(K8S_NAMESPACE_NAME)",
            "k8s.pod.name": "$(K8S_POD_NAME)",
            "k8s.node.name": "$(K8S_NODE_NAME)",
            "k8s.deployment.name": deployments[container],
            "k8s.container.name": container,
            "deployment.environment": "production",
        }
        # Kubernetes expands $(VAR) only of the variables defined before it.
        names = list(variables)
        for variable, field in (
            ("K8S_NAMESPACE_NAME", "metadata.namespace"),
            ("K8S_POD_NAME", "metadata.name"),
            ("K8S_NODE_NAME", "spec.nodeName"),
        ):
            assert variables[variable]["valueFrom"] == {
                "fieldRef": {"fieldPath": field}
            }
            assert names.index(variable) < names.index("OTEL_RESOURCE_ATTRIBUTES")
    collector = {
        "ports": [{"port": 4318, "protocol": "TCP"}],
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "observability"}
                }
            }
        ],
    }
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    assert len(policies) == len(tracing)
    for policy in policies:
        assert collector in policy["spec"]["egress"]


@pytest.mark.parametrize(
    ("sets", "port"),
    [
        (["tracing.endpoint=https://otlp.example.com"], 443),
        (["tracing.endpoint=http://otel-collector"], 80),
        (["tracing.endpoint=https://otlp.example.com:4443/otlp"], 4443),
    ],
)
def test_the_collectors_port_comes_from_the_endpoint(sets, port, service):
    project = service("uvicorn-sqlite")
    gateway = chart_dir(project) / "ci" / "gateway-values.yaml"
    (policy,) = (
        o for o in template(project, gateway, sets=sets) if o["kind"] == "NetworkPolicy"
    )
    rules = [r for r in policy["spec"]["egress"] if "to" in r]
    assert rules == [
        {
            "ports": [{"port": port, "protocol": "TCP"}],
            "to": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "observability"}
                    }
                }
            ],
        }
    ]
    # All egress allowed: nothing to add.
    (policy,) = (
        o
        for o in template(project, default_values(project), sets=sets)
        if o["kind"] == "NetworkPolicy"
    )
    assert policy["spec"]["egress"] == [{}]


@pytest.mark.parametrize("ratio", [1.5, -0.1, "0.5"])
def test_the_values_schema_refuses_a_sampler_ratio_outside_0_to_1(
    ratio, service, tmp_path
):
    """A number from 0 to 1 (from a values file or --set-json: --set makes 0.5 a
    string)."""
    project = service("uvicorn-sqlite")
    values = tmp_path / "ratio-values.yaml"
    values.write_text(yaml.safe_dump({"tracing": {"samplerRatio": ratio}}))
    message = template_error(project, default_values(project), values)
    assert "values don't meet the specifications of the schema" in message, message
    assert "samplerRatio" in message, message
    values.write_text(
        yaml.safe_dump(
            {"tracing": {"endpoint": "http://otel-collector:4318", "samplerRatio": 0.5}}
        )
    )
    app = container_env(template(project, default_values(project), values))["app"]
    assert app["OTEL_TRACES_SAMPLER_ARG"]["value"] == "0.5"


def test_a_sampler_without_ratio_gets_no_ratio(service):
    project = service("uvicorn-sqlite")
    objects = template(
        project,
        default_values(project),
        sets=[
            "tracing.endpoint=http://otel-collector:4318",
            "tracing.sampler=parentbased_always_on",
        ],
    )
    app = container_env(objects)["app"]
    assert app["OTEL_TRACES_SAMPLER"]["value"] == "parentbased_always_on"
    assert "OTEL_TRACES_SAMPLER_ARG" not in app
    assert "OTEL_EXPORTER_OTLP_HEADERS" not in app


@pytest.mark.parametrize("key", SERVICES)
def test_no_sentry_unless_a_dsn_secret_is_set(key, renders):
    """Off by default: no SENTRY_ variable reaches a pod (the service then never
    imports sentry-sdk), whatever the values file, traces on or off."""
    for values, objects in renders(key).items():
        for container, env in container_env(objects).items():
            sentry = [name for name in env if name.startswith("SENTRY_")]
            assert sentry == [], f"{values} {container}"


def code_containers_env(objects: list[dict]) -> dict[str, dict[str, dict]]:
    """container_env, for every container that runs the service's code: the
    Deployments' and their init containers, and the migration Job's."""
    return {
        container["name"]: {env["name"]: env for env in container.get("env", [])}
        for name, spec in pod_specs(objects)
        if name.startswith(("Deployment/", "Job/"))
        for container in [*spec.get("initContainers", []), *spec["containers"]]
    }


@pytest.mark.parametrize(
    "key", ["uvicorn-sqlite", "granian-postgresql", *TASK_SERVICES]
)
def test_errors_go_to_sentry_from_every_process_of_the_service(key, service):
    """With sentry.dsnSecret.name, every container that runs the service's code
    (the app, the worker, the migrations, SQLite's backups) gets SENTRY_DSN from
    that Secret, never a value, and SENTRY_ENVIRONMENT; no other container does.
    With traces or without: they do not depend on each other."""
    project = service(key)
    sqlite = key == "uvicorn-sqlite"
    sentry = (
        {"app"}
        | ({"worker"} if key in TASK_SERVICES else set())
        | ({"prepare", "backup"} if sqlite else {"migrate"})
    )
    backup = ["backup.enabled=true"] if sqlite else []
    gateway = chart_dir(project) / "ci" / "gateway-values.yaml"
    # (values file, --set, the Secret's key, SENTRY_ENVIRONMENT)
    cases = [
        (
            default_values(project),
            ["sentry.dsnSecret.name=sentry", *backup],
            "SENTRY_DSN",
            "production",
        ),
        (
            gateway,
            [
                "sentry.dsnSecret.name=sentry",
                "sentry.dsnSecret.key=dsn",
                "sentry.environment=staging",
                *backup,
            ],
            "dsn",
            "staging",
        ),
    ]
    for values, sets, secret_key, environment in cases:
        objects = template(project, values, sets=sets)
        env = code_containers_env(objects)
        assert {
            container
            for container, variables in env.items()
            if any(name.startswith("SENTRY_") for name in variables)
        } == sentry, values.name
        for container in sentry:
            assert env[container]["SENTRY_DSN"] == {
                "name": "SENTRY_DSN",
                "valueFrom": {"secretKeyRef": {"name": "sentry", "key": secret_key}},
            }
            assert env[container]["SENTRY_ENVIRONMENT"] == {
                "name": "SENTRY_ENVIRONMENT",
                "value": environment,
            }
        for container in sentry & {"app", "worker"}:
            # Traces stay as the values file has them.
            tracing = "OTEL_SERVICE_NAME" in env[container]
            assert tracing == (values == gateway), f"{values.name} {container}"
        for deployment in (o for o in objects if o["kind"] == "Deployment"):
            for version in KUBERNETES_VERSIONS:
                validate_builtin(deployment, version)


def backup_sidecar(objects: list[dict]) -> dict | None:
    """The web pod's backup container, if it has one."""
    pod = web_objects(objects)["Deployment"]["spec"]["template"]["spec"]
    return next((c for c in pod["containers"] if c["name"] == "backup"), None)


def test_the_sqlite_database_is_backed_up_by_a_sidecar_of_its_pod(service, renders):
    """manage.py backup_database --every, from the app's image, settings and Secret,
    on the app's own volume (a ReadWriteOnce claim: no other pod could mount it);
    its interval and the backups kept from the values; off when disabled."""
    project = service("uvicorn-sqlite")
    objects = renders("uvicorn-sqlite")["default-values.yaml"]
    pod = web_objects(objects)["Deployment"]["spec"]["template"]["spec"]
    app = next(c for c in pod["containers"] if c["name"] == "app")
    backup = backup_sidecar(objects)
    assert backup["command"] == [
        "python", "manage.py", "backup_database", "/data/backups",
        "--keep", "7", "--every", "3600",
    ]  # fmt: skip
    for same in ("image", "envFrom", "securityContext"):
        assert backup[same] == app[same], same
    mounts = {m["mountPath"]: m["name"] for m in backup["volumeMounts"]}
    assert mounts == {"/tmp": "tmp", "/data": "data"}  # noqa: S108 (in the pod)
    (data,) = (v for v in pod["volumes"] if v["name"] == "data")
    assert data["persistentVolumeClaim"]["claimName"] == f"{RELEASE}-my-service"

    objects = template(
        project,
        default_values(project),
        sets=["backup.intervalSeconds=600", "backup.keep=3"],
    )
    assert backup_sidecar(objects)["command"][-4:] == ["--keep", "3", "--every", "600"]
    objects = template(project, default_values(project), sets=["backup.enabled=false"])
    assert backup_sidecar(objects) is None


@pytest.mark.parametrize("key", [k for k in SERVICES if "sqlite" not in k])
def test_a_database_servers_service_has_no_backup_sidecar(key, service, renders):
    """pg_dump or mariadb-dump, or the provider's snapshots, back up a database
    server: the chart has no backup values to set."""
    for values, objects in renders(key).items():
        assert backup_sidecar(objects) is None, values
    project = service(key)
    assert "backup:" not in (chart_dir(project) / "values.yaml").read_text()
    message = template_error(project, default_values(project),
                             sets=["backup.enabled=true"])  # fmt: skip
    assert "backup" in message, message


def smoke_test_container(objects: list[dict]) -> dict:
    """The container of `helm test`'s pod."""
    (pod,) = (
        o
        for o in objects
        if o["kind"] == "Pod"
        and o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"
    )
    (container,) = pod["spec"]["containers"]
    return container


@pytest.mark.parametrize("key", SERVICES)
def test_the_smoke_test_sends_the_api_key_of_its_secret(key, service, renders):
    """bin/smoke's writes need an API key: helm test's pod gets it as SMOKE_API_KEY
    from the Secret that smokeTest.apiKeySecret names (which the operator makes
    from `manage.py issue_api_key`), in its environment, never on its command
    line. Without a Secret it gets none, and bin/smoke's writes fail."""
    project = service(key)
    rendered = renders(key)
    assert "env" not in smoke_test_container(rendered["default-values.yaml"])
    container = smoke_test_container(rendered["ingress-values.yaml"])
    assert container["env"] == [
        {
            "name": "SMOKE_API_KEY",
            "valueFrom": {
                "secretKeyRef": {
                    "name": f"{project.name}-smoke-api-key",
                    "key": "SMOKE_API_KEY",
                }
            },
        }
    ]
    assert not [word for word in container["command"] if "key" in word.lower()]
    objects = template(
        project,
        default_values(project),
        sets=[
            "smokeTest.apiKeySecret.name=api-keys",
            "smokeTest.apiKeySecret.key=smoke",
        ],
    )
    (variable,) = smoke_test_container(objects)["env"]
    assert variable == {
        "name": "SMOKE_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "api-keys", "key": "smoke"}},
    }


def app_settings(objects: list[dict]) -> dict[str, str]:
    """The ConfigMap of settings that every container of the service reads, the
    app's and the worker's (service.envFrom)."""
    names = {
        ref["configMapRef"]["name"]
        for name, spec in pod_specs(objects)
        if name.startswith("Deployment/")
        for container in spec["containers"]
        if container["name"] in ("app", "worker")
        for ref in container["envFrom"]
        if "configMapRef" in ref
    }
    (name,) = names
    (config,) = (
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name
    )
    return config["data"]


@pytest.mark.parametrize("key", SERVICES)
def test_who_may_call_the_api_is_set_from_the_values(key, service, renders):
    """config.auth and config.oidc become the service's API_AUTH_READS and OIDC_*
    variables (core.auth), the OIDC ones only with an issuer."""
    project = service(key)
    default = app_settings(renders(key)["default-values.yaml"])
    assert default["API_AUTH_READS"] == "false"
    # The service's own defaults (config/settings.py), written out.
    assert default["API_RATE_LIMIT_REQUESTS"] == "6000"
    assert default["API_RATE_LIMIT_SECONDS"] == "60"
    assert not [name for name in default if name.startswith("OIDC_")]
    settings = app_settings(renders(key)["ingress-values.yaml"])
    assert {n: v for n, v in settings.items() if n.startswith("OIDC_")} == {
        "OIDC_ISSUER": "https://login.example.com/realms/platform",
        "OIDC_AUDIENCE": project.name,
        "OIDC_ALGORITHMS": "RS256,ES256",
        "OIDC_LEEWAY_SECONDS": "30",
    }
    if key != "uvicorn-sqlite":
        return
    objects = template(
        project,
        default_values(project),
        sets=[
            "config.auth.readsNeedToken=true",
            "config.oidc.issuer=http://127.0.0.1:8443",
            "config.oidc.audience=api://shop",
            "config.oidc.jwksUrl=http://127.0.0.1:8443/keys",
            "config.oidc.leewaySeconds=0",
        ],
    )
    settings = app_settings(objects)
    assert settings["API_AUTH_READS"] == "true"
    assert settings["API_RATE_LIMIT_REQUESTS"] == "6000"
    assert {n: v for n, v in settings.items() if n.startswith("OIDC_")} == {
        "OIDC_ISSUER": "http://127.0.0.1:8443",
        "OIDC_AUDIENCE": "api://shop",
        "OIDC_JWKS_URL": "http://127.0.0.1:8443/keys",
        "OIDC_ALGORITHMS": "RS256",
        "OIDC_LEEWAY_SECONDS": "0",
    }


@pytest.mark.parametrize(
    ("rate_limit", "expected"),
    [
        # From a values file, a number is a float to Helm: printed as it is,
        # 1000000 would reach the app as 1e+06, which env.int refuses.
        ({"requests": 1000000, "seconds": 3600}, ("1000000", "3600")),
        # 0 turns the limit off (core.ratelimit).
        ({"requests": 0}, ("0", "60")),
        ({"seconds": 1}, ("6000", "1")),
    ],
    ids=["a-million-per-hour", "off", "per-second"],
)
def test_the_rate_limit_is_set_from_the_values(rate_limit, expected, service, tmp_path):
    """config.auth.rateLimit becomes the settings' API_RATE_LIMIT_REQUESTS and
    API_RATE_LIMIT_SECONDS (core.ratelimit), as whole numbers; what is not set
    keeps its default."""
    project = service("uvicorn-sqlite")
    values = tmp_path / "rate-limit-values.yaml"
    values.write_text(yaml.safe_dump({"config": {"auth": {"rateLimit": rate_limit}}}))
    settings = app_settings(template(project, default_values(project), values))
    assert (
        settings["API_RATE_LIMIT_REQUESTS"],
        settings["API_RATE_LIMIT_SECONDS"],
    ) == expected
