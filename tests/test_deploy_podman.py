"""The local deploy path: the default service's image, built from its Dockerfile,
run from its Helm chart with `podman kube play`, checked by its own bin/smoke
through 127.0.0.1, then torn down. A database=mysql service goes the same way
against a real MariaDB, its migrations run by the chart's Job (see the end).

podman is not a Kubernetes cluster. Between `helm template` and `podman kube
play` the test changes only what podman cannot take, each for a stated reason:
- Objects podman has no use for (Service, NetworkPolicy, PodDisruptionBudget,
  ServiceAccount, the `helm test` pod) are left out: the Service is replaced by
  publishing its ports on 127.0.0.1, and `helm test` runs the same bin/smoke
  that this test runs from outside.
- The Deployment becomes the Pod its controller would make, without the
  checksum annotations (they only roll Deployments, and podman refuses
  annotation values longer than 63 characters) and with `restartPolicy: Never`:
  podman 4.3 applies the pod's policy to init containers too and restarts a
  finished init container forever (containers/podman#16343).
- Only the Service's ports are declared, each published on 127.0.0.1: podman 4.3
  publishes every other containerPort on all of the host's addresses.
- Secrets are created with `podman secret create` in the JSON form that podman's
  environment lookup reads: a Secret played from YAML cannot be read back by
  podman 4.3 (containers/podman#16269).
Probes are not run by podman without systemd: the test asks them from inside
the app container, as the kubelet would (Nginx never serves them publicly).

The API takes writes only with a bearer token. Once the deployment answers, the
test does what the chart's README tells an operator: it issues an API key in the
app container (`python manage.py issue_api_key smoke`, against the deployment's
own database) and keeps it in the Secret that smokeTest.apiKeySecret names (a
podman secret here); bin/smoke gets it in SMOKE_API_KEY, from outside and in the
`helm test` pod alike.

The MySQL deploy connects to a MariaDB server (tests/services.py's, from Debian's
binaries), which stands for the team's database server that a deploy only
connects to. podman changes two more things there:
- The chart's migration Job (a pre-install hook) becomes the Pod its controller
  would make, played and awaited before the Deployment's pod starts, as Helm
  awaits the hook; it must succeed.
- A pod cannot reach this machine's 127.0.0.1, and the tests never aim at the
  bridge's private addresses: so each pod's own network namespace, made and
  left unstarted by `podman kube play --start=false`, gets 127.0.0.1:3306,
  forwarded to the server's Unix socket on this machine, before any of its
  containers starts. DATABASE_URL is the TCP URL a cluster's Secret would hold.
"""

import base64
import copy
import json
import re
import subprocess
import tempfile
import time
import urllib.request
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from charts import template
from containers import NGINX, NGINX_EXPORTER, build_service_image, podman, stand_in
from edge import wait_until_ok
from harness import run, service_env
from matrix import DEFAULT_TEXT, default_combination
from services import MariaDB, create_database, free_port, mariadb_query

pytestmark = pytest.mark.xdist_group("podman")

IMAGE = f"localhost/{DEFAULT_TEXT['project']}"
TAG = "podman-deploy"
HOST = DEFAULT_TEXT["domain"]
# The sidecars' images by container name, and what stands in for each here.
SIDECARS = {"nginx": NGINX, "nginx-exporter": NGINX_EXPORTER}
# The Service's ports: published on 127.0.0.1 instead.
PUBLISHED = ("http", "metrics", "nginx-metrics")
PLAYED_KINDS = {"ConfigMap", "PersistentVolumeClaim"}
# What `manage.py issue_api_key` prints: the new key alone.
API_KEY = re.compile(r"sk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")
SMOKE_API_KEY = "SMOKE_API_KEY"
# The MySQL deploy's image, and its database server's port inside each pod.
MYSQL_TAG = "podman-deploy-mysql"
MYSQL_PORT = 3306


@dataclass
class Database:
    """A database of a server that the deployment connects to (see the module)."""

    url: str  # DATABASE_URL, as the pods reach it
    host_url: str  # as this machine reaches it
    socket: Path  # the server's Unix socket, to which the pods' port leads


@dataclass
class Deployed:
    project: Path
    ports: dict  # the Service's port names -> their ports on 127.0.0.1
    pod: str
    objects: list  # as the chart rendered them
    api_key: str  # bin/smoke's, issued in the deployment
    api_key_secret: str  # the (podman) Secret holding it, as an operator makes it
    database: Database | None = None  # None: SQLite, the pod's own file
    migrations: str = ""  # the migration Job's output, with a database server


def smoke_secret_name(release: str) -> str:
    return f"{release}-smoke-api-key"


def deploy_values(
    workdir: Path, release: str, tag: str = TAG, database: Database | None = None
) -> Path:
    """What a team sets for a first deploy: the image, a secret key (and the
    database server's URL), one worker (no Redis here, so events must stay in
    one process), the proxies in front, the Secret that will hold the smoke
    test's API key."""
    secret = {"secretKey": f"podman-deploy-{uuid.uuid4().hex}{uuid.uuid4().hex}"}
    if database is not None:
        secret["databaseUrl"] = database.url
    values = {
        "image": {"repository": IMAGE, "tag": tag},
        "secret": secret,
        "server": {"workers": 1},
        # This machine stands for the ingress that ends TLS: whatever reaches the
        # published port, and the helm test's bin/smoke in the pod, is it.
        "nginx": {"trustedProxies": ["0.0.0.0/0", "::/0"]},
        "smokeTest": {"apiKeySecret": {"name": smoke_secret_name(release)}},
    }
    path = workdir / "podman-values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def as_played(objects: list[dict], ports: dict[str, int]) -> tuple[list, list]:
    """(objects for `podman kube play`, Secrets to create first): see the module."""
    played, secrets = [], []
    for obj in objects:
        if obj["kind"] == "Secret":
            secrets.append(obj)
        elif obj["kind"] in PLAYED_KINDS:
            played.append(obj)
        elif obj["kind"] == "Deployment":
            # A copy: the rendered objects stay as the chart rendered them.
            template_ = copy.deepcopy(obj["spec"]["template"])
            for container in template_["spec"]["containers"]:
                container["ports"] = [
                    {**port, "hostIP": "127.0.0.1", "hostPort": ports[port["name"]]}
                    for port in container.get("ports", [])
                    if port["name"] in ports
                ]
            played.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": obj["metadata"]["name"],
                        "labels": template_["metadata"]["labels"],
                    },
                    "spec": {**template_["spec"], "restartPolicy": "Never"},
                }
            )
    return played, secrets


def job_as_pod(job: dict) -> dict:
    """The Pod a Job's controller would make (see the module)."""
    template_ = copy.deepcopy(job["spec"]["template"])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": job["metadata"]["name"],
            "labels": template_["metadata"]["labels"],
        },
        "spec": template_["spec"],
    }


@contextmanager
def database_port(pod: str, socket: Path):
    """127.0.0.1:MYSQL_PORT in `pod`'s network namespace, leading to the server's
    `socket`, while the context lasts: the pod's infra container (its network
    namespace) is started, none of its own containers."""
    infra = podman(
        "pod", "inspect", pod, "--format", "{{.InfraContainerID}}"
    ).stdout.strip()
    podman("start", infra)
    pid = podman("inspect", "--format", "{{.State.Pid}}", infra).stdout.strip()
    # socat, in the pod's network namespace, forwards each connection; with -d -d
    # it says when it listens (and logs each connection: into a file, which
    # never fills up as a pipe would).
    with tempfile.TemporaryFile(mode="w+") as log:
        forwarder = subprocess.Popen(
            [
                "nsenter", f"--net=/proc/{pid}/ns/net", "--", "socat", "-d", "-d",
                f"TCP-LISTEN:{MYSQL_PORT},bind=127.0.0.1,fork,reuseaddr",
                f"UNIX-CONNECT:{socket}",
            ],
            stderr=log,
        )  # fmt: skip

        def said() -> str:
            log.seek(0)
            return log.read()

        try:
            deadline = time.monotonic() + 10
            while "listening on" not in said():
                assert forwarder.poll() is None, said()
                assert time.monotonic() < deadline, "socat did not listen in 10 s"
                time.sleep(0.05)
            yield
        finally:
            forwarder.terminate()
            forwarder.wait(timeout=10)


def play(manifest: Path, pod: str, database: Database | None, stack: ExitStack):
    """`podman kube play`; with a database server, its port is in the pod's
    network before any of its containers starts (see the module)."""
    if database is None:
        podman("kube", "play", str(manifest), timeout=300)
        return
    podman("kube", "play", "--start=false", str(manifest), timeout=300)
    stack.enter_context(database_port(pod, database.socket))
    podman("pod", "start", pod, timeout=300)


def migrate(job: dict, workdir: Path, database: Database) -> str:
    """Plays the migration Job's Pod and waits for it, as Helm waits for the
    hook; returns its output. A failed migration fails the deploy. The finished
    pod goes, and its forwarded port with it."""
    pod = job["metadata"]["name"]
    manifest = workdir / "migrate.yaml"
    manifest.write_text(yaml.safe_dump(job_as_pod(job)))
    (container,) = job["spec"]["template"]["spec"]["containers"]
    name = f"{pod}-{container['name']}"
    with ExitStack() as stack:
        stack.callback(podman, "pod", "rm", "--force", pod, check=False)
        play(manifest, pod, database, stack)
        deadline = job["spec"]["activeDeadlineSeconds"]
        code = podman("wait", name, timeout=deadline).stdout.strip()
        output = podman("logs", name, check=False)
    logs = output.stdout + output.stderr
    assert code == "0", f"the migration Job failed ({code}):\n{logs[-6000:]}"
    return logs


def create_secret(secret: dict) -> str:
    data = {
        key: base64.b64encode(value.encode()).decode()
        for key, value in secret["stringData"].items()
    }
    name = secret["metadata"]["name"]
    podman("secret", "rm", name, check=False)
    result = podman("secret", "create", name, "-", check=False, input=json.dumps(data))
    assert result.returncode == 0, result.stderr
    return name


def issue_api_key(pod: str) -> str:
    """A new API key, issued as the chart's README says: in the app's container,
    with its environment, against the deployment's database."""
    issued = podman(
        "exec", f"{pod}-app", "python", "manage.py", "issue_api_key", "smoke"
    ).stdout.strip()
    # Not in the message: a key is never printed.
    assert API_KEY.fullmatch(issued), "manage.py issue_api_key printed no key"
    return issued


def create_api_key_secret(name: str, api_key: str) -> str:
    """The operator's Secret of the key, as podman keeps one for `podman run
    --secret ...,type=env`: the value itself, through standard input."""
    podman("secret", "rm", name, check=False)
    result = podman("secret", "create", name, "-", check=False, input=api_key)
    assert result.returncode == 0, result.stderr
    return name


@contextmanager
def deployed(
    project: Path, workdir: Path, tag: str = TAG, database: Database | None = None
):
    """`project` running in podman from its chart, with the smoke test's API key
    issued in it (Deployed); with a database server, migrated by the chart's Job
    first."""
    build_service_image(project, f"{IMAGE}:{tag}")
    # A release of its own: pods, volumes and secrets are named after it.
    release = f"podman-{uuid.uuid4().hex[:8]}"
    values = deploy_values(workdir, release, tag, database)
    objects = template(project, values, release=release)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        if container["name"] in SIDECARS:
            stand_in(container["image"], SIDECARS[container["name"]])
    ports = {name: free_port() for name in PUBLISHED}
    played, secrets = as_played(objects, ports)
    manifest = workdir / "play.yaml"
    manifest.write_text(yaml.safe_dump_all(played))
    volumes = [o["metadata"]["name"] for o in played if o["kind"] != "Pod"]
    names = [create_secret(secret) for secret in secrets]
    pod = deployment["metadata"]["name"]
    try:
        with ExitStack() as stack:
            migrations = ""
            jobs = [o for o in objects if o["kind"] == "Job"]
            assert len(jobs) == (0 if database is None else 1), jobs
            if database is not None:
                migrations = migrate(jobs[0], workdir, database)
            play(manifest, pod, database, stack)
            # Through Nginx, which never serves the probes publicly: the API
            # answers once the app and its database do.
            api = f"http://127.0.0.1:{ports['http']}/api/items?limit=1"
            headers = {"Host": HOST, "X-Forwarded-Proto": "https"}
            wait_until_ok(urllib.request.Request(api, headers=headers), seconds=90)
            # After the install, as an operator: the key, and the Secret holding it.
            api_key = issue_api_key(pod)
            names.append(create_api_key_secret(smoke_secret_name(release), api_key))
            yield Deployed(
                project, ports, pod, objects, api_key, names[-1], database, migrations
            )
    finally:
        logs = podman("pod", "logs", pod, check=False).stdout
        print(f"\n--- logs of pod {pod} ---\n{logs[-6000:]}")
        podman("kube", "down", str(manifest), check=False)
        podman("pod", "rm", "--force", pod, check=False)
        for name in names:
            podman("secret", "rm", name, check=False)
        for name in volumes:
            podman("volume", "rm", "--force", name, check=False)


@pytest.fixture(scope="module")
def deployment(generated, tmp_path_factory):
    """The default service running in podman from its chart (Deployed)."""
    project = generated(default_combination())
    with deployed(project, tmp_path_factory.mktemp("podman-deploy")) as deployment:
        yield deployment


def smoke_checks_pass(deployment: Deployed) -> str:
    """bin/smoke from outside, with the key in its environment; its output."""
    project, ports = deployment.project, deployment.ports
    result = run(
        [
            project / ".venv" / "bin" / "python", "bin/smoke",
            f"http://127.0.0.1:{ports['http']}",
            f"--host={HOST}",
            f"--metrics=http://127.0.0.1:{ports['metrics']}/metrics",
            f"--nginx-metrics=http://127.0.0.1:{ports['nginx-metrics']}/metrics",
        ],
        project,
        env=service_env(SMOKE_API_KEY=deployment.api_key),
        timeout=120,
    )  # fmt: skip
    print(result.stdout)
    assert "FAIL" not in result.stdout
    assert result.stdout.count("ok ") >= 9, result.stdout
    # Refused without a token, written with it.
    for check in ("write without a token refused", "API round trip", "export"):
        assert re.search(rf"^ok\s+{check}$", result.stdout, re.MULTILINE), check
    assert deployment.api_key not in result.stdout + result.stderr
    return result.stdout


def test_the_deployed_service_passes_the_smoke_checks(deployment):
    """bin/smoke from outside, with the key in its environment."""
    smoke_checks_pass(deployment)


def test_every_container_runs_locked_down(deployment):
    """What the chart asks for reaches the containers: a read-only root, the
    chart's unprivileged user, no capabilities, no privilege escalation."""
    pod = deployment.pod
    inspected = json.loads(podman("pod", "inspect", pod, "--format", "json").stdout)
    info = inspected[0] if isinstance(inspected, list) else inspected
    names = [c["Name"] for c in info["Containers"] if not c["Name"].endswith("-infra")]
    assert {f"{pod}-{name}" for name in ("app", "nginx", "nginx-exporter")} <= set(
        names
    )
    problems = []
    for name in names:
        container = json.loads(podman("container", "inspect", name).stdout)[0]
        host = container["HostConfig"]
        if not host["ReadonlyRootfs"]:
            problems.append(f"{name}: writable root filesystem")
        if container["Config"]["User"] in ("", "0", "root"):
            problems.append(f"{name}: runs as root")
        if host.get("CapAdd") or container.get("EffectiveCaps"):
            problems.append(f"{name}: capabilities {container.get('EffectiveCaps')}")
        if "no-new-privileges" not in " ".join(host.get("SecurityOpt") or []):
            problems.append(f"{name}: may gain privileges")
    assert problems == []
    touched = podman("exec", f"{pod}-app", "touch", "/app/written", check=False)
    assert touched.returncode != 0, "the app could write its own code"


PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
# What a probe's answer says when the instance is fit for it.
PROBE_STATUS = {"/healthz": "ok", "/readyz": "ready"}


def test_the_probes_answer_as_the_kubelet_asks_them(deployment):
    """Each probe of the app container, as rendered (path, port, Host header),
    asked inside the pod's network: what the kubelet would get."""
    pod, objects = deployment.pod, deployment.objects
    deployed = next(o for o in objects if o["kind"] == "Deployment")
    containers = deployed["spec"]["template"]["spec"]["containers"]
    app = next(c for c in containers if c["name"] == "app")
    ports = {port["name"]: port["containerPort"] for port in app["ports"]}
    probes = [app[kind]["httpGet"] for kind in PROBES]
    assert {probe["path"] for probe in probes} == set(PROBE_STATUS)
    for probe in probes:
        headers = {h["name"]: h["value"] for h in probe.get("httpHeaders", [])}
        url = f"http://127.0.0.1:{ports[probe['port']]}{probe['path']}"
        ask = (
            "import json, urllib.request; "
            f"r = urllib.request.urlopen(urllib.request.Request({url!r}, "
            f"headers={headers!r}), timeout=10); "
            "print(r.status, json.load(r)['status'])"
        )
        answer = podman("exec", f"{pod}-app", "python", "-c", ask).stdout.split()
        assert answer == ["200", PROBE_STATUS[probe["path"]]], (probe, answer)


def test_the_backup_sidecar_backed_the_database_up_at_the_pods_start(deployment):
    """SQLite's online backups (backup.enabled, the default): the sidecar's first
    copy, taken once the pod's init container had migrated, is in /data/backups,
    passes SQLite's integrity check and holds the app's schema."""
    assert deployment.database is None, "the default service is on SQLite"
    check = (
        "import glob, sqlite3; "
        "paths = sorted(glob.glob('/data/backups/*.sqlite3')); "
        "db = sqlite3.connect(f'file:{paths[-1]}?mode=ro', uri=True); "
        "print(len(paths), db.execute('pragma integrity_check').fetchone()[0], "
        "db.execute('select count(*) from django_migrations "
        "where app = ?', ['items']).fetchone()[0])"
    )
    pod = deployment.pod
    backups, integrity, migrations = podman(
        "exec", f"{pod}-backup", "python", "-c", check
    ).stdout.split()
    assert (int(backups), integrity) == (1, "ok")
    assert int(migrations) >= 1
    logged = [
        json.loads(line)
        for line in podman("logs", f"{pod}-backup").stdout.splitlines()
        if line.startswith("{")
    ]
    assert [line["message"] for line in logged] == ["database backed up"], logged


def test_the_app_itself_is_not_published(deployment):
    """Only Nginx's ports leave the pod: nothing on the host reaches 8000."""
    ports, pod = deployment.ports, deployment.pod
    inspected = json.loads(podman("pod", "inspect", pod, "--format", "json").stdout)
    info = inspected[0] if isinstance(inspected, list) else inspected
    published = {
        int(binding["HostPort"])
        for bindings in info["InfraConfig"]["PortBindings"].values()
        for binding in bindings
    }
    assert published == set(ports.values())


def test_the_helm_test_pod_passes_from_inside_the_pod(deployment):
    """`helm test`'s pod, as rendered: the image's own bin/smoke with the Service's
    addresses, and the API key from the Secret smokeTest.apiKeySecret names, in
    its environment. podman has no Service, so it runs in the deployed pod's
    network and each Service address becomes the container port the Service
    targets; the Secret's key reaches it as Kubernetes gives it, a variable."""
    pod, objects = deployment.pod, deployment.objects
    test_pod = next(
        o
        for o in objects
        if o["kind"] == "Pod"
        and o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"
    )
    (container,) = test_pod["spec"]["containers"]
    (variable,) = container["env"]
    assert variable == {
        "name": SMOKE_API_KEY,
        "valueFrom": {
            "secretKeyRef": {
                "name": deployment.api_key_secret,
                "key": SMOKE_API_KEY,
            }
        },
    }
    secret = variable["valueFrom"]["secretKeyRef"]["name"]
    service = next(o for o in objects if o["kind"] == "Service")
    deployed = next(o for o in objects if o["kind"] == "Deployment")
    container_ports = {
        port["name"]: port["containerPort"]
        for c in deployed["spec"]["template"]["spec"]["containers"]
        for port in c.get("ports", [])
    }
    addresses = {
        f"http://{service['metadata']['name']}:{port['port']}": (
            f"http://127.0.0.1:{container_ports[port['targetPort']]}"
        )
        for port in service["spec"]["ports"]
    }
    command = []
    for word in container["command"]:
        for address, local in addresses.items():
            word = word.replace(address + "/", local + "/")
            if word.endswith(address):
                word = word.removesuffix(address) + local
        command.append(word)
    assert command != container["command"], "no Service address was replaced"
    context = container["securityContext"]
    result = podman(
        "run", "--rm", f"--pod={pod}", "--read-only", "--tmpfs=/tmp",
        f"--user={context['runAsUser']}:{context['runAsGroup']}",
        "--cap-drop=ALL", "--security-opt=no-new-privileges",
        f"--secret={secret},type=env,target={SMOKE_API_KEY}",
        container["image"], *command,
        check=False, timeout=180,
    )  # fmt: skip
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    for check in ("write without a token refused", "API round trip", "export"):
        assert re.search(rf"^ok\s+{check}$", result.stdout, re.MULTILINE), check


@pytest.fixture(scope="module")
def mysql_deployment(generated, tmp_path_factory):
    """A database=mysql service deployed the same way, against a MariaDB server
    of its own (Deployed)."""
    project = generated({**default_combination(), "database": "mysql"})
    workdir = tmp_path_factory.mktemp("podman-deploy-mysql")
    # Not under pytest's temporary directory: that one is private to root, and
    # the server runs as the `mysql` user.
    with tempfile.TemporaryDirectory(prefix="podman-deploy-mariadb-") as server_dir:
        server = MariaDB(Path(server_dir))
        server.start()
        try:
            name = "podman_deploy"
            database = Database(
                url=f"mysql://root:{server.password}@127.0.0.1:{MYSQL_PORT}/{name}",
                host_url=create_database(server.url, name),
                socket=server.socket,
            )
            with deployed(project, workdir, MYSQL_TAG, database) as deployment:
                yield deployment
        finally:
            server.stop("immediate")


def test_a_mysql_service_migrated_by_its_job_passes_the_smoke_checks(
    mysql_deployment,
):
    """database=mysql, deployed as the default service is, on a real MariaDB: the
    chart's migration Job ran (and succeeded) before the pod started, bin/smoke
    passes, and what it wrote is in MariaDB."""
    begun = time.monotonic()
    database = mysql_deployment.database
    assert re.search(
        r"Applying items\.0001_\w+\.\.\. OK", mysql_deployment.migrations
    ), mysql_deployment.migrations
    applied = mariadb_query(
        database.host_url, "SELECT COUNT(*) FROM django_migrations WHERE app = 'items'"
    )
    assert int(applied) > 0
    # The API key issued in the deployment is MariaDB's.
    keys = "SELECT COUNT(*) FROM core_apikey WHERE name = 'smoke'"
    assert mariadb_query(database.host_url, keys).strip() == "1"
    items = "SELECT COUNT(*) FROM items_item"
    before = int(mariadb_query(database.host_url, items))
    smoke_checks_pass(mysql_deployment)
    # The items its event checks wrote through the deployment (the round trip
    # deletes its own) are in MariaDB.
    assert int(mariadb_query(database.host_url, items)) > before
    print(f"\nsmoke checks on MySQL took {time.monotonic() - begun:.0f} s")
