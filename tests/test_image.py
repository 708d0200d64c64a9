"""The generated service's container image: built from its own Dockerfile, run as
production runs it (read-only root, /tmp only, its own unprivileged user).

The base is a local stand-in for python:3.13-slim (see containers.py): the sizes
reported here are the stand-in's plus the service's layers.
"""

import http.client
import importlib.util
import json
import time
import uuid
from contextlib import contextmanager
from datetime import datetime

import pytest

import services
from containers import build_service_image, image_build_args, podman
from harness import generate_service
from matrix import DEFAULT_TEXT, TEMPLATE_DIR

pytestmark = pytest.mark.xdist_group("podman")

TAG = f"localhost/{DEFAULT_TEXT['project']}:template-tests"
# The generated service ships no static file: the test adds one, which the image
# holds only if collectstatic ran in the build.
PROBE_CSS = "/* collected at build time */\n"
SECRET_KEY = "image-test-key-" + "x" * 50
# Production runs the image this way: the Kubernetes restricted profile and a
# read-only root filesystem, with only /tmp writable.
LOCKED_DOWN = (
    "--read-only",
    "--tmpfs=/tmp",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
)
MEGABYTE = 1_000_000


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    project = generate_service({}, tmp_path_factory.mktemp("image"))
    probe = project / "items" / "static" / "items" / "probe.css"
    probe.parent.mkdir(parents=True)
    probe.write_text(PROBE_CSS)
    begun = time.monotonic()
    # Fresh, so that the OCI labels are this build's and not a cached one's.
    build_service_image(project, TAG, cached=False)
    print(f"\n{TAG} built in {time.monotonic() - begun:.0f} s")
    return TAG


@pytest.fixture(scope="module")
def config(image):
    return json.loads(podman("image", "inspect", image).stdout)[0]["Config"]


@pytest.fixture
def volume():
    """A volume for SQLite at /data, which a read-only root cannot hold."""
    name = f"template-tests-{uuid.uuid4().hex[:12]}"
    podman("volume", "create", name)
    try:
        yield name
    finally:
        podman("volume", "rm", "--force", name, check=False)


def run_in(image: str, *command: str, options=()):
    """Runs a command in a new container of the image as its own user; removes it."""
    return podman("run", "--rm", *options, image, *command, check=False)


@contextmanager
def started(image: str, *options: str):
    """A detached container of the image running its CMD; removed afterwards."""
    name = f"template-tests-{uuid.uuid4().hex[:12]}"
    podman("run", "--detach", f"--name={name}", *options, image)
    try:
        yield name
    finally:
        podman("rm", "--force", "--time=5", name, check=False)


def get(port: int, path: str, host: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_for_health(name: str, port: int, host: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if get(port, "/healthz", host)[0] == 200:
                return
        except OSError:
            pass
        running = podman("inspect", "--format={{.State.Running}}", name).stdout
        if running.strip() != "true":
            break
        time.sleep(0.5)
    logs = podman("logs", name, check=False)
    pytest.fail(f"the container never answered /healthz:\n{logs.stdout}\n{logs.stderr}")


def test_image_runs_as_a_numeric_non_root_user(config):
    user, _, group = config["User"].partition(":")
    # Numeric, so that runAsNonRoot can check it without the image's /etc/passwd.
    assert user.isdigit(), f"USER {config['User']!r} is not a numeric uid"
    assert int(user) != 0, f"USER {config['User']!r} is root"
    assert group.isdigit(), f"USER {config['User']!r} names no numeric group"


def test_image_carries_the_oci_labels(config):
    build_args = image_build_args()
    expected = {
        "title": DEFAULT_TEXT["project"],
        "description": DEFAULT_TEXT["description"],
        "version": "0.1.0",
        "authors": DEFAULT_TEXT["author"],
        "vendor": DEFAULT_TEXT["author"],
        "created": build_args["CREATED"],
        "revision": build_args["REVISION"],
    }
    prefix = "org.opencontainers.image."
    labels = {
        key.removeprefix(prefix): value
        for key, value in config["Labels"].items()
        if key.startswith(prefix)
    }
    assert labels == expected, "the image's OCI labels are missing or wrong"
    assert datetime.fromisoformat(labels["created"]).tzinfo is not None, (
        f"created={labels['created']!r} is not an RFC 3339 time"
    )
    # The template's commit, as the template's facts read it from this checkout,
    # which the image's service was generated from.
    spec = importlib.util.spec_from_file_location(
        "template_facts", TEMPLATE_DIR / "hooks" / "facts.py"
    )
    facts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(facts)
    template_prefix = "org.django-asgi-platform.template."
    template_labels = {
        key.removeprefix(template_prefix): value
        for key, value in config["Labels"].items()
        if key.startswith(template_prefix)
    }
    assert template_labels == {
        "version": facts.template_version(),
        "date": facts.template_date(),
    }, "the image's template labels are missing or wrong"


def test_build_only_secret_key_stays_out_of_the_image(config):
    names = [variable.partition("=")[0] for variable in config["Env"]]
    assert "DJANGO_SECRET_KEY" not in names, (
        "the image's environment holds a secret key: production must set its own"
    )


def test_local_and_development_files_stay_out_of_the_image(image):
    # .env holds the generated local secret key: .dockerignore must keep it out.
    paths = "/app/.env /app/tests /app/deploy /app/db.sqlite3"
    result = run_in(
        image,
        "sh",
        "-c",
        f'for path in {paths}; do test -e "$path" && echo "$path"; done; true',
    )
    assert result.stdout.split() == [], (
        f"the build context let {result.stdout.split()} into the image"
    )


def test_image_has_no_compiler_or_build_tool(image):
    tools = "gcc cc c++ make uv pip pip3"
    result = run_in(
        image,
        "sh",
        "-c",
        f'for tool in {tools}; do command -v "$tool"; done; '
        'test -e /opt/uv && echo /opt/uv; python -c "import pip" 2>/dev/null '
        "&& echo 'python -m pip'; true",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [], (
        f"build tools left in the final image: {result.stdout.split()}"
    )


def test_static_files_are_collected_into_the_image(image):
    result = run_in(image, "cat", "/app/staticfiles/items/probe.css")
    assert result.returncode == 0, (
        f"collectstatic did not put items/probe.css in /app/staticfiles:\n"
        f"{result.stderr}"
    )
    assert result.stdout == PROBE_CSS


def test_app_user_cannot_write_the_app_directory(image):
    # Without --read-only: the ownership alone must keep the app out of its code.
    result = run_in(
        image,
        "sh",
        "-c",
        "id -u; for dir in /app /app/.venv /app/config /app/staticfiles; do "
        'touch "$dir/x" 2>/dev/null && echo "$dir"; done; true',
    )
    uid, *writable = result.stdout.split()
    assert uid == "10001", f"the container runs as uid {uid}, not the image's user"
    assert writable == [], f"the app user can write to {writable}"


def test_image_serves_probes_on_a_read_only_root(image, volume):
    host = DEFAULT_TEXT["domain"]
    # :U gives the new volume to the image's user, as fsGroup does in a pod.
    options = (
        *LOCKED_DOWN,
        f"--volume={volume}:/data:U",
        "--env=DATABASE_URL=sqlite:////data/db.sqlite3",
        f"--env=DJANGO_SECRET_KEY={SECRET_KEY}",
        f"--env=DJANGO_ALLOWED_HOSTS={host}",
    )
    migrate = run_in(
        image, "python", "manage.py", "migrate", "--noinput", options=options
    )
    assert migrate.returncode == 0, (
        f"migrate failed on a read-only root:\n{migrate.stdout}\n{migrate.stderr}"
    )
    touch = run_in(image, "touch", "/app/x", options=options)
    assert touch.returncode != 0, "/app is writable in a --read-only container"

    port = services.free_port()
    with started(image, *options, f"--publish=127.0.0.1:{port}:8000") as name:
        wait_for_health(name, port, host)
        for path in ("/healthz", "/readyz"):
            status, body = get(port, path, host)
            assert status == 200, f"GET {path}: {status} {body!r}"
        # The server is PID 1 (bin/serve execs it), which ignores any signal it
        # has no handler for: SIGTERM must still stop it, well before SIGKILL.
        stopping = time.monotonic()
        podman("stop", "--time=20", name)
        seconds = time.monotonic() - stopping
        code = podman("inspect", "--format={{.State.ExitCode}}", name).stdout
        assert seconds < 15, f"SIGTERM took {seconds:.0f} s to stop the server"
        assert code.strip() == "0", f"the server exited {code.strip()} on SIGTERM"


def test_image_size(image, record_property):
    size = int(podman("image", "inspect", "--format={{.Size}}", image).stdout)
    base = podman(
        "image", "inspect", "--format={{.Size}}", "docker.io/library/python:3.13-slim"
    ).stdout
    record_property("image_size_mb", round(size / MEGABYTE))
    print(
        f"\n{image}: {size / MEGABYTE:.0f} MB uncompressed "
        f"(its base, the local stand-in for python:3.13-slim: "
        f"{int(base) / MEGABYTE:.0f} MB)"
    )
    assert size < 400 * MEGABYTE, f"the image is {size / MEGABYTE:.0f} MB"
