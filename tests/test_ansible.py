"""deploy/ansible/ deploys a generated service to real systemd hosts; testinfra checks.

The hosts are two podman containers running systemd as PID 1, from a local Debian 13
image (containers.SYSTEMD_HOST), their ports published on 127.0.0.1 only. The
playbook reaches them with the containers.podman connection, testinfra with its
podman backend, and the service's own bin/smoke checks each host through its Nginx.
The deploy takes packages from Debian and the service's dependencies from PyPI,
like any host would.

The service has background tasks (arq, on each host's local Redis), so it uses
PostgreSQL: each host's own, from the image, standing in for a team's database
server (the playbook only connects to one). Each host's database is its own, so
the deploy migrates each (service_database_shared: false).

The API takes writes only with a bearer token: the tests issue an API key on each
host with the role's manage wrapper (`bin/manage issue_api_key smoke`, against that
host's database), and bin/smoke and the tests' own writes send it.

The role's tracing and auth variables are checked without hosts: its environment
file and units rendered by ansible-playbook on the controller alone.

test_ansible_mysql.py deploys a MySQL service, and test_ansible_sqlite.py an SQLite
one whose backup unit it runs, each to one more host with these helpers
(deployment_to, deploy_twice, smoke_passes...).
"""

import json
import re
import secrets
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import pytest
import testinfra
import yaml

from containers import SYSTEMD_HOST, Recipe, environment, podman, stand_in
from harness import check_steps, generate_service, run, service_env
from matrix import CHOICES, TEMPLATE_DIR, default_combination, each_server
from services import free_port

pytestmark = pytest.mark.xdist_group("ansible")

IMAGE = "localhost/django-asgi-platform/debian-systemd:trixie"
PROJECT = "my-service"
DOMAIN = f"{PROJECT}.example.com"
# A service with background tasks, so with PostgreSQL (see above).
OPTIONS = {"database": "postgresql", "tasks": "arq"}
# Where each part listens on a host: the playbook's port layout, rendered as the
# service is generated (the worker's ports exist only with tasks).
LAYOUT = yaml.safe_load(
    # YAML, not HTML: rendered as cookiecutter renders it, without escaping.
    jinja2.Environment(undefined=jinja2.StrictUndefined)  # noqa: S701
    .from_string(
        (TEMPLATE_DIR / "ansible" / "group_vars" / "all" / "layout.yml").read_text()
    )
    .render(cookiecutter=OPTIONS)
)
INSTANCE_PORTS = [LAYOUT["service_port_base"] + n for n in (1, 2)]
STATUS = LAYOUT["edge_status_port"]
# Container ports published on 127.0.0.1: Nginx, the per-instance /metrics
# listeners, the task worker's /metrics, the Nginx exporter, the node exporter.
PUBLIC = LAYOUT["edge_port"]
METRICS_1, METRICS_2 = (LAYOUT["service_metrics_port_base"] + n for n in (1, 2))
WORKER_METRICS = LAYOUT["service_worker_metrics_port"]
NGINX_EXPORTER = LAYOUT["exporters_nginx_port"]
NODE_EXPORTER = LAYOUT["exporters_node_port"]
# The task worker's own /metrics and /healthz, on 127.0.0.1 inside each host.
WORKER_PORT = LAYOUT["service_worker_port"]
WORKER = f"{PROJECT}-worker.service"
UNITS = (
    f"{PROJECT}@1.service",
    f"{PROJECT}@2.service",
    WORKER,
    f"{PROJECT}-nginx.service",
    "prometheus-node-exporter.service",
    "prometheus-nginx-exporter.service",
    "redis-server.service",
)
RECAP = re.compile(
    r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)"
)


@dataclass
class Host:
    name: str  # the inventory's name
    container: str
    ports: dict  # container port -> port on 127.0.0.1

    def url(self, port: int, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[port]}{path}"

    @property
    def testinfra(self):
        return testinfra.get_host(f"podman://{self.container}")


@dataclass
class Deployment:
    project: Path
    hosts: list
    inventory: Path
    secret_key: str
    database_password: str
    runs: list  # the output of every playbook run
    # The API key of bin/smoke and the tests' writes, by host name (api_key()).
    api_keys: dict = field(default_factory=dict)

    def playbook(self, playbook: str, *args: str) -> subprocess.CompletedProcess:
        """Runs one of deploy/ansible/'s playbooks on the hosts, failing or not."""
        result = subprocess.run(
            [
                shutil.which("ansible-playbook"),
                "-i",
                self.inventory,
                self.project / "deploy" / "ansible" / playbook,
                *args,
            ],
            cwd=self.project,
            env=service_env(
                **environment(),
                ANSIBLE_NOCOLOR="1",
                ANSIBLE_LOCAL_TEMP=str(self.inventory.parent / "ansible-local"),
            ),
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        self.runs.append(result.stdout)
        return result

    def deploy(self, playbook: str = "site.yml") -> str:
        result = self.playbook(playbook)
        assert result.returncode == 0, f"{playbook}:\n{result.stdout}\n{result.stderr}"
        return result.stdout


def deploy_under_load(deployment, playbook: str) -> None:
    """Runs the playbook while a client loop reads from and writes to every host:
    no request of the loop fails (Nginx retries a read on the other instance, never
    a write), every item it created is there afterwards, and no host is
    unreachable or failed."""
    keys = {host.name: api_key(deployment, host) for host in deployment.hosts}
    clients = ClientLoop(deployment.hosts, keys)
    clients.start()
    try:
        output = deployment.deploy(playbook)
    finally:
        clients.stopped.set()
        clients.join(timeout=30)
    assert clients.sent > 50, f"the loop did not run during {playbook}"
    failed_hosts = {name for name, _ in clients.failures}
    assert clients.failures == [], {
        name: host.testinfra.check_output(
            f"journalctl --no-pager --lines=40 --unit {PROJECT}-nginx"
        )
        for host in deployment.hosts
        if (name := host.name) in failed_hosts
    }
    assert len(clients.created) > 20, clients.created
    for host, item_id in clients.created:
        assert api_status(host, f"/api/items/{item_id}") == 200, (host.name, item_id)
        # Under Nginx's limit of 50 requests a second per client address.
        time.sleep(0.025)
    for name, counts in recap(output).items():
        assert counts[2:] == (0, 0), name


def recap(output: str) -> dict:
    """{host: (ok, changed, unreachable, failed)} from a playbook's PLAY RECAP."""
    lines = output[output.rindex("PLAY RECAP") :].splitlines()[1:]
    return {
        m.group(1): tuple(int(m.group(i)) for i in range(2, 6))
        for line in lines
        if (m := RECAP.match(line))
    }


def start_host(name: str, cleanup: list, image: str = IMAGE) -> Host:
    container = f"ansible-{name}-{uuid.uuid4().hex[:8]}"
    ports = {port: free_port() for port in (PUBLIC, METRICS_1, METRICS_2)}
    ports[WORKER_METRICS] = free_port()
    ports |= {port: free_port() for port in (NGINX_EXPORTER, NODE_EXPORTER)}
    cleanup.append(container)
    podman(
        "run",
        "--detach",
        "--name",
        container,
        "--hostname",
        name,
        # systemd inside runs each unit's sandbox (namespaces, capability sets) as on
        # a VM only with the privileges a VM's init has; without, it refuses units
        # such as Debian's redis-server.
        "--privileged",
        "--systemd=always",
        *(f"--publish=127.0.0.1:{host}:{port}" for port, host in ports.items()),
        image,
        "/sbin/init",
    )
    return Host(name, container, ports)


def trust_this_machines_authorities(host: Host) -> None:
    """Our machines reach PyPI through a proxy that signs TLS with a local authority;
    the hosts must trust what this machine trusts (nothing, elsewhere)."""
    local = Path("/usr/local/share/ca-certificates")
    if not any(local.glob("*.crt")):
        return
    podman("cp", f"{local}/.", f"{host.container}:{local}/")
    podman("exec", host.container, "update-ca-certificates")


def create_database(host: Host, password: str) -> str:
    """The service's role and database in the host's PostgreSQL; returns its URL."""
    name = PROJECT.replace("-", "_")
    for statement in (
        f"CREATE ROLE {name} LOGIN PASSWORD '{password}'",
        f"CREATE DATABASE {name} OWNER {name} ENCODING 'UTF8'",
    ):
        podman(
            "exec",
            host.container,
            "runuser",
            "-u",
            "postgres",
            "--",
            "psql",
            "--quiet",
            "--set=ON_ERROR_STOP=1",
            f"--command={statement}",
        )
    return f"postgres://{name}:{password}@127.0.0.1:5432/{name}"


def wait_until_booted(host: Host) -> None:
    state = podman(
        "exec",
        host.container,
        "timeout",
        "120",
        "systemctl",
        "is-system-running",
        "--wait",
        check=False,
        timeout=150,
    ).stdout.strip()
    # Degraded: a privileged container cannot load kernel modules
    # (systemd-modules-load); the units the deploy adds are checked one by one.
    assert state in ("running", "degraded"), f"{host.name} did not boot: {state}"


@contextmanager
def deployment_to(
    workdir: Path,
    names: tuple[str, ...],
    *,
    options: dict = OPTIONS,
    image: str = IMAGE,
    recipe: Recipe = SYSTEMD_HOST,
    database: Callable[[Host, str], str] = create_database,
    prometheus: bool = True,
) -> Iterator[Deployment]:
    """The service generated with `options` (on the defaults), new hosts `names`
    started from `image` (built from `recipe`), each with a database of its own
    that `database(host, password)` creates and returns the URL of, and the
    inventory of a deploy to them; with `prometheus`, the first host is
    Prometheus's too (the playbook's last play). The hosts are removed
    afterwards."""
    for tool in ("ansible-playbook", "ansible-lint", "podman"):
        assert shutil.which(tool), f"{tool} is missing: run the tests with tests/run.sh"
    stand_in(image, recipe)
    defaults = {option: choices[0] for option, choices in CHOICES.items()}
    project = generate_service(defaults | options, workdir)
    # The service's virtualenv runs bin/smoke here; the hosts build their own.
    run(["uv", "sync", "--locked", "--quiet"], project)
    containers = []
    with pytest.MonkeyPatch.context() as patch:
        # testinfra's podman backend runs podman with this environment.
        patch.setenv("CONTAINERS_CONF", environment()["CONTAINERS_CONF"])
        try:
            hosts = [start_host(name, containers, image) for name in names]
            for host in hosts:
                trust_this_machines_authorities(host)
                wait_until_booted(host)
            secret_key = secrets.token_urlsafe(50)
            database_password = secrets.token_urlsafe(24)
            inventory = workdir / "inventory.yml"
            inventory.write_text(
                json.dumps(
                    {
                        "service": {
                            "hosts": {
                                h.name: {
                                    "ansible_host": h.container,
                                    "service_database_url": database(
                                        h, database_password
                                    ),
                                }
                                for h in hosts
                            },
                            "vars": {
                                "ansible_connection": "containers.podman.podman",
                                "ansible_python_interpreter": "/usr/bin/python3",
                                # Modules reach the host's Python on its stdin, with
                                # no temporary files to copy, mark and remove: fewer
                                # podman execs a task. Become is sudo's (Ansible's su
                                # does not pipeline), as on a fleet's hosts.
                                "ansible_pipelining": True,
                                "service_secret_key": secret_key,
                                "redis_local_enabled": True,
                                "service_database_shared": False,
                                # The test machine stands for the load balancer:
                                # what reaches a host's published port is it.
                                "edge_trusted_proxies": ["0.0.0.0/0", "::/0"],
                            },
                        },
                        "prometheus": {
                            "hosts": {hosts[0].name: None} if prometheus else {}
                        },
                    }
                )
            )
            yield Deployment(
                project, hosts, inventory, secret_key, database_password, []
            )
        finally:
            if containers:
                podman("rm", "--force", "--time", "0", *containers, check=False)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    with deployment_to(tmp_path_factory.mktemp("ansible"), ("host1", "host2")) as d:
        yield d


def deploy_twice(deployment: Deployment) -> tuple[dict, dict]:
    """Version A deployed, then the same deploy again: the recap of each."""
    first = recap(deployment.deploy())
    second = recap(deployment.deploy())
    return first, second


@pytest.fixture(scope="module")
def deployed(deployment):
    """Version A deployed, then the same deploy again."""
    return deployment, *deploy_twice(deployment)


def assert_second_run_changed_nothing(
    deployment: Deployment, first: dict, second: dict
):
    """The first deploy changed each host and failed none; the second changed
    nothing anywhere."""
    names = [h.name for h in deployment.hosts]
    assert set(names) <= set(first)
    assert set(names) <= set(second)
    for name in names:
        assert first[name][1] > 0, f"the first deploy changed nothing on {name}"
        assert first[name][2:] == (0, 0)
        assert second[name][2:] == (0, 0)
    assert {name: counts[1] for name, counts in second.items()} == dict.fromkeys(
        second, 0
    )


def test_a_second_run_changes_nothing(deployed):
    assert_second_run_changed_nothing(*deployed)


def test_services_are_active_and_enabled(deployed):
    deployment, _, _ = deployed
    for host in deployment.hosts:
        machine = host.testinfra
        for unit in UNITS:
            service = machine.service(unit)
            assert service.is_running, f"{unit} on {host.name}"
            assert service.is_enabled, f"{unit} on {host.name}"
        # The service's Nginx replaces Debian's (port 80, /etc/nginx).
        assert not machine.service("nginx.service").is_running
        assert not machine.service("nginx.service").is_enabled


# Our units; the exporters' and Redis's are Debian's own.
OWN_UNITS = UNITS[:4]
EXPOSURE = re.compile(r"Overall exposure level for (\S+): (\d+\.\d+)")


def exposure(host: Host, unit: str) -> tuple[float, str]:
    """systemd's own rating of `unit`'s sandbox on `host`, 0 (locked down) to 10
    (none; up to 2.0 is "OK"), and its report. Printed, since the figures go into
    the release notes."""
    result = host.testinfra.run(f"systemd-analyze security {unit}")
    assert result.rc == 0, result.stderr
    found = EXPOSURE.search(result.stdout)
    assert found, result.stdout
    assert found.group(1) == unit, result.stdout
    print(f"{host.name} {unit}: exposure {found.group(2)}")
    return float(found.group(2)), result.stdout


def test_every_own_unit_is_sandboxed_to_an_exposure_of_at_most_2(deployed):
    deployment, _, _ = deployed
    for host in deployment.hosts:
        for unit in OWN_UNITS:
            rating, report = exposure(host, unit)
            assert rating <= 2.0, report


def listening(machine) -> set:
    return set(machine.socket.get_listening_sockets())


def test_the_app_listens_only_on_localhost_and_nginx_on_the_public_port(deployed):
    deployment, _, _ = deployed
    for host in deployment.hosts:
        sockets = listening(host.testinfra)
        for port in INSTANCE_PORTS:
            assert f"tcp://127.0.0.1:{port}" in sockets
            assert [s for s in sockets if s.endswith(f":{port}")] == [
                f"tcp://127.0.0.1:{port}"
            ]
        assert f"tcp://0.0.0.0:{PUBLIC}" in sockets
        # stub_status stays internal; the exporter publishes it.
        assert [s for s in sockets if s.endswith(f":{STATUS}")] == [
            f"tcp://127.0.0.1:{STATUS}"
        ]


def test_files_owners_and_modes(deployed):
    deployment, _, _ = deployed
    for host in deployment.hosts:
        machine = host.testinfra
        user = machine.user(PROJECT)
        assert 0 < user.uid < 1000, "not a system user"
        assert user.shell == "/usr/sbin/nologin"
        env = machine.file(f"/etc/{PROJECT}/env")
        assert (env.user, env.group, env.mode) == ("root", PROJECT, 0o640)
        assert f"DJANGO_SECRET_KEY={json.dumps(deployment.secret_key)}" in (
            env.content_string
        )
        assert 'REDIS_URL="redis://127.0.0.1:6379/0"' in env.content_string
        current = machine.file(f"/opt/{PROJECT}/current")
        assert current.is_symlink
        assert current.linked_to.startswith(f"/opt/{PROJECT}/releases/")
        release = machine.file(current.linked_to)
        assert (release.user, release.mode) == ("root", 0o755)
        # The local development .env (DJANGO_DEBUG=true) never reaches a host.
        assert not machine.file(f"{current.linked_to}/.env").exists
        assert machine.file(f"{current.linked_to}/.venv/bin/uvicorn").is_file
        data = machine.file(f"/var/lib/{PROJECT}")
        assert (data.user, data.mode) == (PROJECT, 0o750)
        assert (
            f'DATABASE_URL="postgres://my_service:{deployment.database_password}'
            '@127.0.0.1:5432/my_service"'
        ) in env.content_string
        for instance in (1, 2):
            unit = f"{PROJECT}@{instance}.service"
            pid = machine.check_output(f"systemctl show -p MainPID --value {unit}")
            assert machine.file(f"/proc/{pid}").user == PROJECT
            properties = dict(
                line.split("=", 1)
                for line in machine.check_output(
                    f"systemctl show {unit} -p NoNewPrivileges -p ProtectSystem "
                    "-p PrivateTmp -p Restart -p TimeoutStopUSec -p User"
                ).splitlines()
            )
            assert properties == {
                "NoNewPrivileges": "yes",
                "ProtectSystem": "strict",
                "PrivateTmp": "yes",
                "Restart": "on-failure",
                "TimeoutStopUSec": "45s",
                "User": PROJECT,
            }


def worker_health(machine) -> int:
    """The status of the task worker's /healthz, asked from inside the host."""
    url = f"http://127.0.0.1:{WORKER_PORT}/healthz"
    return int(
        machine.check_output(
            f"python3 -c 'import urllib.request; "
            f'print(urllib.request.urlopen("{url}", timeout=5).status)\''
        )
    )


def unit_properties(machine, unit: str, *names: str) -> dict:
    output = machine.check_output(
        f"systemctl show {unit} " + " ".join(f"-p {name}" for name in names)
    )
    return dict(line.split("=", 1) for line in output.splitlines())


def test_the_task_worker_runs_as_the_service_user_on_localhost(deployed):
    deployment, _, _ = deployed
    for host in deployment.hosts:
        machine = host.testinfra
        properties = unit_properties(
            machine,
            WORKER,
            "NoNewPrivileges",
            "ProtectSystem",
            "PrivateTmp",
            "Restart",
            "KillSignal",
            "KillMode",
            "TimeoutStopUSec",
            "User",
        )
        assert properties == {
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "PrivateTmp": "yes",
            "Restart": "on-failure",
            "KillSignal": "15",
            # SIGTERM reaches bin/worker only, which hands it to the queue's worker.
            "KillMode": "mixed",
            # WORKER_SHUTDOWN_TIMEOUT (60 s) for running tasks, then 15 s more.
            "TimeoutStopUSec": "1min 15s",
            "User": PROJECT,
        }
        # bin/worker and the queue's worker process it starts: the unit's cgroup.
        pids = re.findall(
            r"^/proc/(\d+)/cgroup$",
            machine.run(f"grep -ls '/{WORKER}$' /proc/[0-9]*/cgroup").stdout,
            re.MULTILINE,
        )
        assert len(pids) >= 2, pids
        for pid in pids:
            assert machine.file(f"/proc/{pid}").user == PROJECT, pid
        pid = machine.check_output(f"systemctl show -p MainPID --value {WORKER}")
        assert pid in pids
        environ = machine.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ")
        for setting in (
            f"WORKER_METRICS_PORT={WORKER_PORT}",
            "WORKER_CONCURRENCY=2",
            "WORKER_SHUTDOWN_TIMEOUT=60",
            f"METRICS_DIR=/run/{PROJECT}-worker",
            "REDIS_URL=redis://127.0.0.1:6379/0",
        ):
            assert setting in environ.splitlines(), setting
        sockets = listening(machine)
        assert [s for s in sockets if s.endswith(f":{WORKER_PORT}")] == [
            f"tcp://127.0.0.1:{WORKER_PORT}"
        ]
        assert worker_health(machine) == 200
        # Nginx publishes the worker's /metrics, nothing else of it.
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(host.url(WORKER_METRICS, "/healthz"), timeout=10)
        assert error.value.code == 404


def tasks_succeeded(host: Host, task: str = "items.record_change") -> float:
    """django_tasks_succeeded_total of a task on the host's worker, through Nginx."""
    with urllib.request.urlopen(
        host.url(WORKER_METRICS, "/metrics"), timeout=10
    ) as response:
        text = response.read().decode()
    assert "django_task_queue_depth{" in text
    sample = re.compile(
        rf'^django_tasks_succeeded_total\{{task="{re.escape(task)}"\}} (\S+)$',
        re.MULTILINE,
    )
    return sum(float(value) for value in sample.findall(text))


# What `manage.py issue_api_key` prints: the new key alone.
API_KEY = re.compile(r"sk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")


def api_key(deployment: Deployment, host: Host) -> str:
    """The API key of the host's writes, issued once, as the README tells a team:
    by the role's manage wrapper (the service user, the environment file, the live
    release: the host's own database, which the deploy migrated)."""
    if host.name not in deployment.api_keys:
        issued = podman(
            "exec",
            host.container,
            f"/opt/{PROJECT}/bin/manage",
            "issue_api_key",
            "smoke",
        ).stdout.strip()
        # Not in the message: a key is never printed.
        assert API_KEY.fullmatch(issued), "manage.py issue_api_key printed no key"
        deployment.api_keys[host.name] = issued
    return deployment.api_keys[host.name]


def item_post(host: Host, key: str, name: str) -> urllib.request.Request:
    """A POST of a new item named `name` through the host's Nginx, with `key`."""
    item = {"name": name, "category": "ansible", "price": "1.00"}
    return urllib.request.Request(
        host.url(PUBLIC, "/api/items"),
        data=json.dumps(item).encode(),
        method="POST",
        headers={
            "Host": DOMAIN,
            "X-Forwarded-Proto": "https",
            "Content-Type": "application/json",
            "Authorization": f"Bearer {key}",
        },
    )


def a_task_runs(deployment: Deployment, host: Host) -> None:
    """An item POSTed through the host's Nginx: its change is recorded by a task
    (items.record_change), which the host's worker runs within seconds."""
    before = tasks_succeeded(host)
    request = item_post(
        host, api_key(deployment, host), f"ansible-{uuid.uuid4().hex[:12]}"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
    deadline = time.monotonic() + 30
    while tasks_succeeded(host) <= before:
        assert time.monotonic() < deadline, f"no task ran on {host.name}'s worker"
        time.sleep(0.5)


def test_each_hosts_worker_runs_the_tasks_of_its_instances(deployed):
    deployment, _, _ = deployed
    for host in deployment.hosts:
        a_task_runs(deployment, host)


def test_secrets_never_reach_logs(deployed):
    deployment, _, _ = deployed
    # The API keys too: issue_api_key prints its key to the caller alone.
    keys = [api_key(deployment, host) for host in deployment.hosts]
    hidden = (deployment.secret_key, deployment.database_password, *keys)
    for output in deployment.runs:
        for secret in hidden:
            assert secret not in output
    for host in deployment.hosts:
        journal = host.testinfra.check_output("journalctl --no-pager -o cat")
        assert journal, "an empty journal proves nothing"
        for secret in hidden:
            assert secret not in journal


def smoke(deployment: Deployment, host: Host):
    """bin/smoke through the host's Nginx, with the host's API key in its
    environment (never an argument), as the README runs it."""
    return run(
        [
            deployment.project / ".venv" / "bin" / "python",
            "bin/smoke",
            host.url(PUBLIC),
            "--host",
            DOMAIN,
            "--metrics",
            host.url(METRICS_1, "/metrics"),
            "--metrics",
            host.url(METRICS_2, "/metrics"),
            "--nginx-metrics",
            host.url(NGINX_EXPORTER, "/metrics"),
        ],
        deployment.project,
        env=service_env(SMOKE_API_KEY=api_key(deployment, host)),
        timeout=120,
    ).stdout


# What bin/smoke checks of a service with tasks and WebSockets.
SMOKE_CHECKS = (
    "metrics and probes are not public",
    "write without a token refused",
    "API round trip",
    "export",
    "background task",
    "SSE event",
    "WebSocket broadcast",
    # Each instance's /metrics through Nginx, and the Nginx exporter.
    "app metrics",
    "Nginx exporter",
)


def smoke_passes(deployment: Deployment, host: Host) -> None:
    """bin/smoke through the host's Nginx passes, each of SMOKE_CHECKS ok."""
    output = smoke(deployment, host)
    for check in SMOKE_CHECKS:
        assert re.search(rf"^ok\s+{check}", output, re.MULTILINE), output


def test_smoke_through_each_hosts_nginx(deployed):
    deployment, _, _ = deployed
    for host in deployment.hosts:
        smoke_passes(deployment, host)


def test_the_node_exporter_answers(deployed):
    # bin/smoke checks the Nginx exporter (test_smoke_through_each_hosts_nginx).
    deployment, _, _ = deployed
    for host in deployment.hosts:
        with urllib.request.urlopen(host.url(NODE_EXPORTER, "/metrics")) as response:
            assert b"node_cpu_seconds_total" in response.read()


def test_prometheus_gets_file_sd_targets(deployed):
    deployment, _, _ = deployed
    machine = deployment.hosts[0].testinfra
    expected = {
        "app.json": [
            f"{h.container}:{p}"
            for h in deployment.hosts
            for p in (METRICS_1, METRICS_2)
        ],
        "nginx.json": [f"{h.container}:{NGINX_EXPORTER}" for h in deployment.hosts],
        "node.json": [f"{h.container}:{NODE_EXPORTER}" for h in deployment.hosts],
        "worker.json": [f"{h.container}:{WORKER_METRICS}" for h in deployment.hosts],
    }
    for name, targets in expected.items():
        groups = json.loads(
            machine.file(f"/etc/prometheus/targets/{name}").content_string
        )
        assert [group["targets"] for group in groups] == [targets]
    # Only the Prometheus hosts get them.
    assert not deployment.hosts[1].testinfra.file("/etc/prometheus/targets").exists


def build_versions(host: Host) -> set:
    versions = set()
    for port in (METRICS_1, METRICS_2):
        with urllib.request.urlopen(host.url(port, "/metrics")) as response:
            text = response.read().decode()
        versions |= set(re.findall(r'django_build_info\{[^}]*version="([^"]+)"', text))
    return versions


class ClientLoop(threading.Thread):
    """Through each host's Nginx, a few a second until stopped or bounded: GETs,
    and every other request a POST of a new item (with the host's API key in
    `keys`), whose (host, id) it keeps in `created`."""

    def __init__(self, hosts: list, keys: dict, seconds: float = 600, limit=6000):
        super().__init__(daemon=True)
        self.hosts, self.keys, self.seconds, self.limit = hosts, keys, seconds, limit
        self.stopped = threading.Event()
        self.sent, self.failures, self.created = 0, [], []

    def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self.stopped.is_set() and time.monotonic() < deadline:
            if self.sent >= self.limit:
                break
            host = self.hosts[self.sent % len(self.hosts)]
            writes = (self.sent // len(self.hosts)) % 2 == 1
            if writes:
                request = item_post(host, self.keys[host.name], f"loop-{self.sent}")
            else:
                request = urllib.request.Request(
                    host.url(PUBLIC, "/api/items?limit=1"),
                    headers={"Host": DOMAIN, "X-Forwarded-Proto": "https"},
                )
            self.sent += 1
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    if response.status != (201 if writes else 200):
                        self.failures.append((host.name, response.status))
                    elif writes:
                        self.created.append((host, json.load(response)["id"]))
            except urllib.error.HTTPError as error:
                answer = (request.method, error.code, error.read()[:300], time.time())
                self.failures.append((host.name, answer))
            except (urllib.error.URLError, OSError) as error:
                self.failures.append((host.name, (request.method, repr(error))))
            time.sleep(0.1)


def live_releases(deployment: Deployment) -> dict:
    return {
        h.name: h.testinfra.file(f"/opt/{PROJECT}/current").linked_to
        for h in deployment.hosts
    }


def invocations(host: Host) -> dict:
    """Each instance's and the worker's systemd invocation: a restart changes it."""
    return {
        unit: unit_properties(host.testinfra, unit, "InvocationID")
        for unit in (f"{PROJECT}@1.service", f"{PROJECT}@2.service", WORKER)
    }


def api_status(host: Host, path: str = "/api/items?limit=1") -> int:
    """The status of a read of the API through the host's Nginx."""
    request = urllib.request.Request(
        host.url(PUBLIC, path),
        headers={"Host": DOMAIN, "X-Forwarded-Proto": "https"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def test_a_build_that_fails_on_one_host_switches_no_host(deployed):
    """The second host cannot build a new release (uv finds no interpreter there):
    the deploy stops on every host before the migrations and the rollout, and both
    hosts keep serving the live release, their instances untouched."""
    deployment, _, _ = deployed
    failing = deployment.hosts[1]
    live = live_releases(deployment)
    started = {h.name: invocations(h) for h in deployment.hosts}
    # Any change of the source is a new release, which every host builds.
    change = deployment.project / "failed-build.txt"
    change.write_text("a release the second host cannot build\n")
    python = (
        "{{ 'python3.99' if inventory_hostname == '" + failing.name + "'"
        " else 'python' ~ service_python_version }}"
    )
    try:
        result = deployment.playbook(
            "site.yml", "--extra-vars", json.dumps({"service_python": python})
        )
    finally:
        change.unlink()
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "No interpreter found for Python 3.99" in output, output
    assert recap(output)[failing.name][3] == 1, output
    # The other host built it, and stopped there too.
    assert "TASK [service : Install the virtualenv from uv.lock]" in output
    assert "TASK [service : Collect the static files]" not in output
    assert "TASK [service : Check for unapplied migrations]" not in output
    assert "PLAY [Roll out one host at a time]" not in output
    assert live_releases(deployment) == live
    for host in deployment.hosts:
        assert build_versions(host) == {"0.1.0"}
        assert invocations(host) == started[host.name]
        assert api_status(host) == 200


# A migration of a new release that fails when it runs (its SQL is refused).
FAILING_MIGRATION = """from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("items", "0003_itemchange_change_id")]
    operations = [migrations.RunSQL("SELECT no_such_function()")]
"""


def test_a_migration_that_fails_switches_no_host(deployed):
    """A new release whose migration fails: the deploy stops on every host before
    the rollout, the database keeps its schema (the migration's transaction rolls
    back), and both hosts keep serving the live release, their instances
    untouched."""
    deployment, _, _ = deployed
    live = live_releases(deployment)
    started = {h.name: invocations(h) for h in deployment.hosts}
    migration = deployment.project / "items" / "migrations" / "0004_fails.py"
    migration.write_text(FAILING_MIGRATION)
    try:
        result = deployment.playbook("site.yml")
    finally:
        migration.unlink()
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "no_such_function" in output, output
    assert "TASK [service : Apply the migrations]" in output, output
    assert "PLAY [Roll out one host at a time]" not in output, output
    assert live_releases(deployment) == live
    for host in deployment.hosts:
        assert invocations(host) == started[host.name]
        assert api_status(host) == 200


def test_deploying_a_new_version_fails_no_request(deployed):
    deployment, _, _ = deployed
    for host in deployment.hosts:
        assert build_versions(host) == {"0.1.0"}
    releases_before = {
        h.name: h.testinfra.file(f"/opt/{PROJECT}/current").linked_to
        for h in deployment.hosts
    }
    workers_before = {
        h.name: unit_properties(h.testinfra, WORKER, "InvocationID")
        for h in deployment.hosts
    }
    settings = deployment.project / "config" / "settings.py"
    text = settings.read_text()
    assert 'SERVICE_VERSION = "0.1.0"' in text
    settings.write_text(
        text.replace('SERVICE_VERSION = "0.1.0"', 'SERVICE_VERSION = "0.2.0"')
    )
    deploy_under_load(deployment, "site.yml")
    for host in deployment.hosts:
        assert build_versions(host) == {"0.2.0"}
        release = host.testinfra.file(f"/opt/{PROJECT}/current").linked_to
        assert release != releases_before[host.name]
        # The previous release stays for a while: a rollback is one more deploy.
        assert host.testinfra.file(releases_before[host.name]).is_directory
        # The worker restarted on the new release, once the instances had.
        machine = host.testinfra
        assert (
            unit_properties(machine, WORKER, "InvocationID")
            != (workers_before[host.name])
        )
        pid = machine.check_output(f"systemctl show -p MainPID --value {WORKER}")
        assert machine.file(f"/proc/{pid}/cwd").linked_to == release
        started = {
            unit: int(
                unit_properties(machine, unit, "ActiveEnterTimestampMonotonic")[
                    "ActiveEnterTimestampMonotonic"
                ]
            )
            for unit in (f"{PROJECT}@1.service", f"{PROJECT}@2.service", WORKER)
        }
        assert started[WORKER] > max(started[f"{PROJECT}@{n}.service"] for n in (1, 2))
        assert worker_health(machine) == 200
    for host in deployment.hosts:
        smoke(deployment, host)
        a_task_runs(deployment, host)


def test_rolling_back_brings_the_previous_release_back_and_fails_no_request(deployed):
    """After the deploy of 0.2.0 above: rollback.yml, under the same client loop,
    makes 0.1.0 live again host by host, and records 0.2.0 as the previous."""
    deployment, _, _ = deployed
    for host in deployment.hosts:
        assert build_versions(host) == {"0.2.0"}
    live = live_releases(deployment)
    previous = {
        h.name: h.testinfra.file(f"/opt/{PROJECT}/previous").linked_to
        for h in deployment.hosts
    }
    for host in deployment.hosts:
        assert previous[host.name] not in ("", live[host.name])
    deploy_under_load(deployment, "rollback.yml")
    assert live_releases(deployment) == previous
    for host in deployment.hosts:
        machine = host.testinfra
        assert build_versions(host) == {"0.1.0"}
        # A second rollback would bring 0.2.0 back.
        assert machine.file(f"/opt/{PROJECT}/previous").linked_to == live[host.name]
        pid = machine.check_output(f"systemctl show -p MainPID --value {WORKER}")
        assert machine.file(f"/proc/{pid}/cwd").linked_to == previous[host.name]
        assert worker_health(machine) == 200
    for host in deployment.hosts:
        a_task_runs(deployment, host)


def test_sqlite_on_two_hosts_is_refused_before_any_host_is_reached(tmp_path):
    """SQLite is each host's own file: an inventory of two hosts is refused by the
    playbook's first task, on the controller, before any host is reached. The
    hosts do not exist: with one of them the check passes and the deploy goes on
    to reach it (and fails there)."""
    defaults = {option: choices[0] for option, choices in CHOICES.items()}
    project = generate_service(defaults | {"database": "sqlite"}, tmp_path)

    def deploy(*hosts: str) -> subprocess.CompletedProcess:
        inventory = tmp_path / f"inventory-{len(hosts)}.json"
        inventory.write_text(
            json.dumps(
                {
                    "service": {
                        "hosts": {h: {"ansible_host": f"{h}.invalid"} for h in hosts},
                        "vars": {"service_secret_key": secrets.token_urlsafe(50)},
                    }
                }
            )
        )
        return subprocess.run(
            [
                shutil.which("ansible-playbook"),
                "-i",
                inventory,
                project / "deploy" / "ansible" / "site.yml",
            ],
            cwd=project,
            env=service_env(
                ANSIBLE_NOCOLOR="1", ANSIBLE_LOCAL_TEMP=str(tmp_path / "local")
            ),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    refused = deploy("app-1", "app-2")
    assert refused.returncode != 0
    assert (
        "uses SQLite, a file on each host: the 2 hosts of the group `service` "
        "(app-1, app-2) would each hold different data"
    ) in refused.stdout, refused.stdout
    assert "Gathering Facts" not in refused.stdout
    assert "UNREACHABLE" not in refused.stdout
    one = deploy("app-1")
    assert "ok: [app-1]" in one.stdout, one.stdout
    assert "TASK [Gathering Facts]" in one.stdout
    assert "UNREACHABLE" in one.stdout


@pytest.fixture(scope="module")
def role_files(tmp_path_factory):
    """Renders the service role's environment file and units on the controller
    alone, as a deploy would for the host `app-1.internal` (the role's defaults and
    fixed variables, the playbook's group_vars, the given variables on top),
    after the role's secret key, tracing, Sentry and auth checks: no host, a few
    seconds a run. The service is generated with OPTIONS, or the options given.
    Returns {file name: text}, or the failed run."""
    workdir = tmp_path_factory.mktemp("role-files")
    projects = {}
    runs = iter(range(100))

    def render(
        variables: dict, options: dict = OPTIONS
    ) -> dict[str, str] | subprocess.CompletedProcess:
        key = json.dumps(options, sort_keys=True)
        if key not in projects:
            projects[key] = generate_service(
                {option: choices[0] for option, choices in CHOICES.items()} | options,
                workdir / f"service-{len(projects)}",
            )
        project = projects[key]
        ansible = project / "deploy" / "ansible"
        role = ansible / "roles" / "service"
        out = workdir / f"run-{next(runs)}"
        out.mkdir()
        # The units the role installs for such a service.
        templates = {"env": "env.j2", "instance.service": "service@.service.j2"}
        if options.get("tasks", "none") != "none":
            templates["worker.service"] = "worker.service.j2"
        if options.get("database") == "sqlite":
            templates["backup.service"] = "backup.service.j2"
            templates["backup.timer"] = "backup.timer.j2"
        playbook = [
            {
                "hosts": "service",
                "gather_facts": False,
                "vars_files": [
                    str(ansible / "group_vars" / "all" / "service.yml"),
                    str(ansible / "group_vars" / "all" / "layout.yml"),
                    str(role / "defaults" / "main.yml"),
                    str(role / "vars" / "main.yml"),
                ],
                "tasks": [
                    *(
                        {"ansible.builtin.import_tasks": str(role / "tasks" / checks)}
                        for checks in (
                            "secret_key.yml",
                            "tracing.yml",
                            "sentry.yml",
                            "auth.yml",
                        )
                    ),
                    *(
                        {
                            "ansible.builtin.template": {
                                "src": str(role / "templates" / source),
                                "dest": str(out / name),
                                "mode": "0600",
                            }
                        }
                        for name, source in templates.items()
                    ),
                ],
            }
        ]
        (out / "play.yml").write_text(json.dumps(playbook))
        inventory = {
            "service": {
                "hosts": {
                    "app-1.internal": {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": shutil.which("python"),
                    }
                }
            }
        }
        (out / "inventory.json").write_text(json.dumps(inventory))
        (out / "vars.json").write_text(
            json.dumps({"service_secret_key": "k" * 50} | variables)
        )
        result = subprocess.run(
            [
                shutil.which("ansible-playbook"),
                "-i",
                out / "inventory.json",
                "-e",
                f"@{out / 'vars.json'}",
                out / "play.yml",
            ],
            cwd=project,
            env=service_env(ANSIBLE_NOCOLOR="1", ANSIBLE_LOCAL_TEMP=str(out / "tmp")),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            return result
        return {name: (out / name).read_text() for name in templates}

    return render


def env_file(text: str) -> dict[str, str]:
    """The variables of an environment file as the role writes it (JSON values)."""
    return {
        name: json.loads(value)
        for name, value in (
            line.split("=", 1)
            for line in text.splitlines()
            if line and not line.startswith("#")
        )
    }


def test_traces_are_off_unless_an_endpoint_is_set(role_files):
    files = role_files({})
    assert not [name for name in env_file(files["env"]) if name.startswith("OTEL_")]
    # The instances and the task worker all read that one file.
    for unit in ("instance.service", "worker.service"):
        assert f"EnvironmentFile=/etc/{PROJECT}/env\n" in files[unit], unit


def test_traces_go_to_the_collector_from_the_instances_and_the_worker(role_files):
    """The standard OTEL_* variables in the environment file both read, named as
    the metrics' `service` label; the token as it came (from the Vault)."""
    files = role_files(
        {
            "service_otel_endpoint": "http://otel-collector.internal:4318",
            "service_otel_sampler_ratio": 0.25,
            "service_otel_headers": "authorization=Bearer t0ken",
            "service_otel_resource_attributes": {
                "deployment.environment": "production"
            },
        }
    )
    otel = {
        name: value
        for name, value in env_file(files["env"]).items()
        if name.startswith("OTEL_")
    }
    assert otel == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.internal:4318",
        "OTEL_SERVICE_NAME": PROJECT,
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer t0ken",
        "OTEL_RESOURCE_ATTRIBUTES": (
            "host.name=app-1.internal,deployment.environment=production"
        ),
    }
    files = role_files(
        {
            "service_otel_endpoint": "http://otel-collector.internal:4318",
            "service_otel_sampler": "parentbased_always_on",
        }
    )
    variables = env_file(files["env"])
    assert variables["OTEL_TRACES_SAMPLER"] == "parentbased_always_on"
    assert "OTEL_TRACES_SAMPLER_ARG" not in variables
    assert "OTEL_EXPORTER_OTLP_HEADERS" not in variables


@pytest.mark.parametrize(
    "variables",
    [
        {"service_otel_sampler_ratio": 1.5},
        {"service_otel_sampler": "sometimes"},
        {"service_otel_endpoint": "otel-collector:4318"},
        {"service_otel_resource_attributes": {"team": "a,b"}},
    ],
    ids=lambda v: next(iter(v)),
)
def test_the_role_refuses_bad_tracing_variables(variables, role_files):
    result = role_files({"service_otel_endpoint": "http://otel:4318"} | variables)
    assert isinstance(result, subprocess.CompletedProcess), variables
    assert "TASK [Check the tracing variables]" in result.stdout, result.stdout
    assert "service_otel_sampler_ratio a number from 0 to 1" in result.stdout, (
        result.stdout
    )


# A DSN as Sentry gives it: https://<key>@<host>/<project>.
SENTRY_DSN = "https://k3y@o0.ingest.sentry.io/42"


def test_errors_go_to_sentry_only_with_a_dsn(role_files):
    """SENTRY_DSN as it came (from the Vault) and SENTRY_ENVIRONMENT in the
    environment file that the instances and the worker read; neither without a
    DSN (the service then never imports sentry-sdk)."""
    variables = env_file(role_files({})["env"])
    assert not [name for name in variables if name.startswith("SENTRY_")]
    for given, sentry_environment in (
        ({"service_sentry_dsn": SENTRY_DSN}, "production"),
        (
            {"service_sentry_dsn": SENTRY_DSN, "service_sentry_environment": "staging"},
            "staging",
        ),
    ):
        variables = env_file(role_files(given)["env"])
        assert {n: v for n, v in variables.items() if n.startswith("SENTRY_")} == {
            "SENTRY_DSN": SENTRY_DSN,
            "SENTRY_ENVIRONMENT": sentry_environment,
        }


@pytest.mark.parametrize(
    "variables",
    [
        {"service_sentry_dsn": "o0.ingest.sentry.io/42"},
        {"service_sentry_dsn": "ftp://k3y@o0.ingest.sentry.io/42"},
        # Without its key, Sentry refuses the events.
        {"service_sentry_dsn": "https://o0.ingest.sentry.io/42"},
        # Sentry's own rule for environment names.
        {"service_sentry_environment": "my env"},
        {"service_sentry_environment": "eu/west"},
        {"service_sentry_environment": "None"},
        {"service_sentry_environment": "e" * 65},
    ],
    ids=lambda v: f"{next(iter(v))}={next(iter(v.values()))}",
)
def test_the_role_refuses_bad_sentry_variables(variables, role_files):
    result = role_files({"service_sentry_dsn": SENTRY_DSN} | variables)
    assert isinstance(result, subprocess.CompletedProcess), variables
    assert "TASK [Check the Sentry variables]" in result.stdout, result.stdout
    assert "service_sentry_dsn must be empty or a Sentry DSN" in result.stdout, (
        result.stdout
    )
    # The DSN is a credential: the refusal does not show it.
    assert "k3y" not in result.stdout + result.stderr, result.stdout


def test_who_may_call_the_api_is_set_in_the_environment_file(role_files):
    """API_AUTH_READS always (false by default), the OIDC variables of the service
    (core.auth) only with an issuer, as the role's variables give them."""
    variables = env_file(role_files({})["env"])
    assert variables["API_AUTH_READS"] == "false"
    # The service's own defaults (config/settings.py), written out.
    assert variables["API_RATE_LIMIT_REQUESTS"] == "6000"
    assert variables["API_RATE_LIMIT_SECONDS"] == "60"
    assert not [name for name in variables if name.startswith("OIDC_")]
    files = role_files(
        {
            "service_api_auth_reads": True,
            "service_oidc_issuer": "https://login.example.com/realms/platform",
            "service_oidc_audience": PROJECT,
            "service_oidc_algorithms": ["RS256", "ES256"],
        }
    )
    variables = env_file(files["env"])
    assert variables["API_AUTH_READS"] == "true"
    assert {n: v for n, v in variables.items() if n.startswith("OIDC_")} == {
        "OIDC_ISSUER": "https://login.example.com/realms/platform",
        "OIDC_AUDIENCE": PROJECT,
        "OIDC_ALGORITHMS": "RS256,ES256",
        "OIDC_LEEWAY_SECONDS": "30",
    }
    variables = env_file(
        role_files(
            {
                "service_oidc_issuer": "http://127.0.0.1:8443",
                "service_oidc_audience": "api://shop",
                "service_oidc_jwks_url": "http://127.0.0.1:8443/keys",
                "service_oidc_leeway_seconds": 0,
            }
        )["env"]
    )
    assert variables["OIDC_JWKS_URL"] == "http://127.0.0.1:8443/keys"
    assert variables["OIDC_LEEWAY_SECONDS"] == "0"


def test_earlier_secret_keys_reach_the_env_file_joined(role_files):
    """DJANGO_SECRET_KEY_FALLBACKS (config/settings.py reads it as a comma
    separated list) only while a rotation keeps earlier keys."""
    assert "DJANGO_SECRET_KEY_FALLBACKS" not in env_file(role_files({})["env"])
    earlier = ["k" * 50, "j" * 60]
    variables = env_file(role_files({"service_secret_key_fallbacks": earlier})["env"])
    assert variables["DJANGO_SECRET_KEY_FALLBACKS"] == ",".join(earlier)


@pytest.mark.parametrize(
    "fallbacks",
    [
        # Django's own minimum (security.W009, the service's core.E002).
        ["k" * 49],
        ["k" * 50, ""],
        # The keys are joined by commas into one variable.
        ["k" * 30 + "," + "j" * 30],
        # One key, not a list: it would be joined letter by letter.
        "k" * 50,
    ],
    ids=["short", "empty", "comma", "string"],
)
def test_the_role_refuses_bad_secret_key_fallbacks(fallbacks, role_files):
    result = role_files({"service_secret_key_fallbacks": fallbacks})
    assert isinstance(result, subprocess.CompletedProcess), fallbacks
    assert "TASK [Check the secret key's fallbacks]" in result.stdout, result.stdout
    # The keys are secrets: the failure says which task, never what it was given.
    assert "fatal: [app-1.internal]: FAILED!" in result.stdout, result.stdout
    assert "k" * 30 not in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"service_api_rate_limit_requests": 100}, ("100", "60")),
        ({"service_api_rate_limit_seconds": 3600}, ("6000", "3600")),
        # 0 turns the limit off (core.ratelimit).
        ({"service_api_rate_limit_requests": 0}, ("0", "60")),
        # As -e on the command line gives them: strings, written as numbers.
        (
            {
                "service_api_rate_limit_requests": "1000000",
                "service_api_rate_limit_seconds": "1",
            },
            ("1000000", "1"),
        ),
    ],
    ids=["requests", "seconds", "off", "strings"],
)
def test_the_rate_limit_variables_reach_the_env_file(given, expected, role_files):
    """API_RATE_LIMIT_REQUESTS per API_RATE_LIMIT_SECONDS (core.ratelimit), as the
    role's variables give them; what is not given keeps its default."""
    variables = env_file(role_files(given)["env"])
    assert (
        variables["API_RATE_LIMIT_REQUESTS"],
        variables["API_RATE_LIMIT_SECONDS"],
    ) == expected


@pytest.mark.parametrize(
    "variables",
    [
        # A token the issuer made for another service would open this one.
        {"service_oidc_audience": ""},
        {"service_oidc_issuer": "http://login.example.com"},
        {"service_oidc_jwks_url": "login.example.com/keys"},
        # Anyone holding the JWKS could sign HS256 tokens.
        {"service_oidc_algorithms": ["RS256", "HS256"]},
        {"service_oidc_algorithms": []},
        {"service_oidc_leeway_seconds": -1},
        # API_RATE_LIMIT_*: 0 requests turns the limit off, a window has a second.
        {"service_api_rate_limit_requests": -1},
        {"service_api_rate_limit_requests": "many"},
        {"service_api_rate_limit_requests": 1.5},
        {"service_api_rate_limit_requests": True},
        {"service_api_rate_limit_seconds": 0},
        {"service_api_rate_limit_seconds": -60},
        {"service_api_rate_limit_seconds": "minute"},
    ],
    ids=lambda v: f"{next(iter(v))}={next(iter(v.values()))}",
)
def test_the_role_refuses_bad_auth_variables(variables, role_files):
    # What test_who_may_call_the_api_is_set_in_the_environment_file passes with.
    good = {
        "service_oidc_issuer": "https://login.example.com",
        "service_oidc_audience": PROJECT,
    }
    result = role_files(good | variables)
    assert isinstance(result, subprocess.CompletedProcess), variables
    assert "TASK [Check the API's auth variables]" in result.stdout, result.stdout
    assert "service_oidc_audience is required with an" in result.stdout, result.stdout
    assert "service_api_rate_limit_seconds a whole number of seconds, at least 1" in (
        result.stdout
    ), result.stdout


def test_a_sqlite_hosts_database_is_backed_up_by_a_sandboxed_timer(role_files):
    """The timer starts manage.py backup_database at service_backup_on_calendar,
    keeping service_backup_keep backups, as the service user with the instances'
    environment and sandbox, allowed to write its backups' directory too."""
    sqlite = {"database": "sqlite"}
    files = role_files({}, sqlite)
    assert "OnCalendar=hourly\n" in files["backup.timer"]
    assert "Persistent=true\n" in files["backup.timer"]
    assert "WantedBy=timers.target\n" in files["backup.timer"]
    unit = files["backup.service"]
    for line in (
        "Type=oneshot",
        f"User={PROJECT}",
        f"EnvironmentFile=/etc/{PROJECT}/env",
        f"WorkingDirectory=/opt/{PROJECT}/current",
        f"ExecStart=/opt/{PROJECT}/current/.venv/bin/python manage.py "
        f"backup_database /var/backups/{PROJECT} --keep 7",
        f"ReadWritePaths=/var/lib/{PROJECT}",
        f"ReadWritePaths=/var/backups/{PROJECT}",
    ):
        assert f"\n{line}\n" in unit, line
    # The instances' sandbox, all of it (hardening.conf.j2).
    instance = files["instance.service"]
    sandbox = instance[instance.index("NoNewPrivileges=") : instance.index("UMask=")]
    assert sandbox in unit

    files = role_files(
        {"service_backup_on_calendar": "*-*-* 02:30:00", "service_backup_keep": 14},
        sqlite,
    )
    assert "OnCalendar=*-*-* 02:30:00\n" in files["backup.timer"]
    assert (
        f"backup_database /var/backups/{PROJECT} --keep 14\n"
        in (files["backup.service"])
    )


# The URL of each database of the template, as its README's example; SQLite's is
# the role's default, the host's own file.
DATABASE_URLS = {
    "sqlite": None,
    "postgresql": "postgres://my_service:password@db.internal:5432/my_service",
    "mysql": "mysql://my_service:password@db.internal:3306/my_service",
}
# The service each database's role files are rendered for.
DATABASE_OPTIONS = {"postgresql": OPTIONS}


def test_the_role_takes_every_database_of_the_template():
    """service_database's choices, in each entry point that reads it, are
    cookiecutter.json's: a new database is refused until the role knows it."""
    meta = TEMPLATE_DIR / "ansible" / "roles" / "service" / "meta"
    specs = yaml.safe_load((meta / "argument_specs.yml").read_text())["argument_specs"]
    entries = {
        entry: spec["options"]["service_database"]["choices"]
        for entry, spec in specs.items()
        if "service_database" in spec["options"]
    }
    assert entries == dict.fromkeys(("main", "rollout"), CHOICES["database"])
    assert set(DATABASE_URLS) == set(CHOICES["database"])


@pytest.mark.parametrize("database", CHOICES["database"])
def test_the_database_url_reaches_the_env_file(database, role_files):
    """DATABASE_URL is service_database_url, for any database; unset, it is the
    host's own file with SQLite, and empty with a database server (which the
    role's first check refuses: the deployer must name the server)."""
    options = DATABASE_OPTIONS.get(database, {"database": database})
    default = env_file(role_files({}, options)["env"])["DATABASE_URL"]
    if DATABASE_URLS[database] is None:
        assert default == f"sqlite:////var/lib/{PROJECT}/db.sqlite3"
        return
    assert default == ""
    url = DATABASE_URLS[database]
    files = role_files({"service_database_url": url}, options)
    assert env_file(files["env"])["DATABASE_URL"] == url


def test_each_unit_gets_the_whole_sandbox_line_by_line(role_files):
    """The shared sandbox (hardening.conf.j2) ends each unit's sandbox lines
    without being joined to the line after it: systemd would ignore both."""
    units = role_files({}) | role_files({}, {"database": "sqlite"})
    for name in ("instance.service", "worker.service", "backup.service"):
        lines = units[name].splitlines()
        assert "NoNewPrivileges=yes" in lines, name
        assert "UMask=0027" in lines, name
    for name in ("instance.service", "worker.service"):
        assert "LimitNOFILE=65536" in units[name].splitlines(), name


# Each server, and the task worker's unit, ports and targets beside Granian's.
RENDERINGS = [
    *each_server(),
    {**default_combination(), "server": "granian"}
    | {"database": "postgresql", "tasks": "arq"},
]


@pytest.mark.parametrize(
    "combination",
    RENDERINGS,
    ids=lambda c: c["server"] + ("" if c["tasks"] == "none" else f"-{c['tasks']}"),
)
def test_each_servers_rendering_passes_ansible_lint(combination, tmp_path):
    project = generate_service(combination, tmp_path)
    ansible = project / "deploy" / "ansible"
    # As the service's CI runs them: `bin/check ansible`, with ansible-core and
    # ansible-lint from the service's own `checks` group.
    check_steps(project, "ansible")
    facts = (ansible / "group_vars" / "all" / "service.yml").read_text()
    assert f"service_server: {combination['server']}\n" in facts
    assert f"service_tasks: {combination['tasks']}\n" in facts


def test_the_role_builds_the_mysql_driver_with_what_the_image_builds_it_with():
    """mysqlclient is compiled where it is installed: in the image's build stage
    and on each host. Both get the same build packages; a host also needs
    Debian's Python headers, which the official Python image has."""
    tasks = yaml.safe_load(
        (
            TEMPLATE_DIR / "ansible" / "roles" / "service" / "tasks" / "main.yml"
        ).read_text()
    )
    [task] = [t for t in tasks if t.get("when") == "service_database == 'mysql'"]
    on_hosts = set(task["ansible.builtin.apt"]["name"])
    dockerfile = (TEMPLATE_DIR / "{{cookiecutter.project}}" / "Dockerfile").read_text()
    build_stage = dockerfile.split("FROM python:")[1]
    [installed] = re.findall(
        r"apt-get install -y --no-install-recommends ([^\\\n]+)", build_stage
    )
    assert on_hosts == {*installed.split(), "python3-dev"}
