"""Podman for the template tests: a project-local configuration and local base images.

No container registry is reachable from our machines, so every image that a
Dockerfile or the chart names (python:3.13-slim, the Nginx and exporter images) is
built here from Debian packages with debootstrap and tagged with the name it
stands in for. Those images are LOCAL STAND-INS for the tests only: the Dockerfile
and the chart keep the real names, and users pull the real images. A stand-in does
the same job at the same path (`python3.13`, `nginx`, the exporter's flags), which
is all the tests rely on.
"""

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from matrix import TEMPLATE_DIR

CACHE = TEMPLATE_DIR / ".cache" / "containers"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# Marks an image as a stand-in, with the hash of the recipe it was built from.
STAND_IN_LABEL = "org.django-asgi-platform.stand-in"
# The sandboxes our tests run in refuse podman's default ulimits.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[network]
network_backend = "netavark"

[engine]
# crun refuses the hybrid cgroup hierarchy of these machines; runc runs on it.
runtime = "runc"
"""


def environment() -> dict:
    """The environment for podman: the project's containers.conf, never /etc's edits."""
    CACHE.mkdir(parents=True, exist_ok=True)
    conf = CACHE / "containers.conf"
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(
    *args: str,
    cwd: Path | None = None,
    timeout: float = 600,
    check=True,
    input: str | None = None,
):
    """Runs podman; a failure fails the test with podman's output."""
    result = subprocess.run(
        ["podman", *args],
        cwd=cwd,
        input=input,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check:
        assert result.returncode == 0, (
            f"podman {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


@dataclass(frozen=True)
class Recipe:
    """A Debian root filesystem standing in for an image of the same role."""

    suite: str
    packages: tuple[str, ...]
    # Dockerfile instructions for `podman import --change` (ENV, USER, CMD...).
    changes: tuple[str, ...] = ()
    # Packages of which only the C headers (usr/include) are copied in, not the
    # package itself nor its dependencies: what an official image has from its
    # own build of the software, which no package of the image holds.
    headers_of: tuple[str, ...] = ()
    # Files written into the root: (path in it, text).
    files: tuple[tuple[str, str], ...] = ()

    @property
    def digest(self) -> str:
        recipe = (self.suite, self.packages, self.changes)
        # Recipes without headers or files keep the digest (and images) they had.
        if self.headers_of or self.files:
            recipe = (*recipe, self.headers_of, self.files)
        text = repr(recipe)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


PATH_ENV = "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The official Debian images' apt configuration (debian:*-slim, under the
# official python, nginx... images): an `apt-get install` in a Dockerfile's RUN
# leaves neither the downloaded packages nor apt's caches in its layer.
DEBIAN_IMAGE_APT_CLEAN = (
    "etc/apt/apt.conf.d/docker-clean",
    'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb'
    ' /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
    'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb'
    ' /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
    'Dir::Cache::pkgcache "";\n'
    'Dir::Cache::srcpkgcache "";\n',
)
# python:3.13-slim: Debian 13's Python is 3.13, with venv and Python's headers
# (Python.h, for a build stage that compiles a C extension, such as mysqlclient
# for database=mysql): the official image has both. Only the headers of
# libpython3.13-dev, not the package: the official image has neither its static
# library nor its dependencies (libc's headers), which such a Dockerfile must
# install itself, as it does with the official one. Its apt sources are Debian
# 13's (debootstrap's mirror) and its apt keeps no caches in a layer, as the
# official image's.
PYTHON_313 = Recipe(
    "trixie",
    ("python3", "python3-venv", "ca-certificates"),
    (PATH_ENV, "ENV LANG=C.UTF-8", 'CMD ["python3"]'),
    headers_of=("libpython3.13-dev",),
    files=(DEBIAN_IMAGE_APT_CLEAN,),
)
# nginxinc/nginx-unprivileged: Debian's Nginx, run by the chart's own command, and
# stopped gracefully (SIGQUIT) like the official image.
NGINX = Recipe("trixie", ("nginx",), (PATH_ENV, "USER 101", "STOPSIGNAL SIGQUIT"))
# nginx/nginx-prometheus-exporter: Debian's build of the same exporter, which takes
# the same --nginx.scrape-uri and --web.listen-address flags.
NGINX_EXPORTER = Recipe(
    "trixie",
    ("prometheus-nginx-exporter",),
    (PATH_ENV, "USER 65534", 'ENTRYPOINT ["/usr/bin/prometheus-nginx-exporter"]'),
)
# The stand-in of each base image a service's Dockerfile may name. Python 3.12 has
# none: no Debian release ships it as its python3.
SERVICE_BASES = {"docker.io/library/python:3.13-slim": PYTHON_313}
# These machines reach PyPI through a TLS-inspecting proxy whose CA only the
# machine's own bundle holds; an image build mounts it over the base's bundle for
# its RUN steps only, so it lands in no layer.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

# A Debian 13 VM for the Ansible tests: systemd as PID 1 (`podman run --systemd=always
# IMAGE /sbin/init`), Python and python3-apt for Ansible's modules, sudo for its
# become (as a fleet's hosts have it; Ansible pipelines through sudo, not su),
# iproute2 for testinfra's socket checks. Everything the service needs, the playbook
# installs, except its PostgreSQL: a team's database server, which the deploy only
# connects to; each test host runs Debian's, on 127.0.0.1, in its stead.
SYSTEMD_HOST = Recipe(
    "trixie",
    (
        "systemd",
        "systemd-sysv",
        "dbus",
        "python3",
        "python3-apt",
        "sudo",
        "ca-certificates",
        "iproute2",
        "postgresql",
    ),
    (PATH_ENV, "ENV LANG=C.UTF-8", "STOPSIGNAL SIGRTMIN+3", 'CMD ["/sbin/init"]'),
)
# The same VM for a MySQL service (tests/test_ansible_mysql.py): Debian's MariaDB,
# on 127.0.0.1, in PostgreSQL's stead, standing in for a team's MySQL or MariaDB
# server. An image of its own, so that the PostgreSQL hosts stay as they are.
SYSTEMD_MYSQL_HOST = Recipe(
    SYSTEMD_HOST.suite,
    (*(p for p in SYSTEMD_HOST.packages if p != "postgresql"), "mariadb-server"),
    SYSTEMD_HOST.changes,
)

# MySQL itself, beside the MariaDB the suites run on (tests/services.py): the
# two differ where a service relies on them. Debian ships MySQL in unstable only
# (mysql-9.7 in 2026-12). A test server of its own, not a stand-in for an image
# a service names.
MYSQL_SERVER = Recipe("sid", ("mysql-server-core", "mysql-client-core"), (PATH_ENV,))
MYSQL_SERVER_IMAGE = "localhost/template-tests-mysql:sid"


@contextmanager
def _lock(name: str):
    """One builder per image across pytest-xdist workers."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _built_from(reference: str) -> str | None:
    result = podman(
        "image",
        "inspect",
        "--format",
        f'{{{{index .Labels "{STAND_IN_LABEL}"}}}}',
        reference,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def stand_in(reference: str, recipe: Recipe) -> str:
    """Makes `reference` resolve to a local image built from `recipe`; returns it.

    An image already built from the same recipe is reused; a real image of that
    name is never overwritten (the machine may have pulled it).
    """
    with _lock(recipe.digest):
        label = _built_from(reference)
        # A real image (no label) is used as it is; a stand-in of an older recipe
        # is replaced.
        if label in (recipe.digest, ""):
            return reference
        image = f"localhost/stand-in:{recipe.digest}"
        if _built_from(image) != recipe.digest:
            _build(image, recipe)
        podman("tag", image, reference)
        return reference


def _build(image: str, recipe: Recipe) -> None:
    assert shutil.which("debootstrap"), "debootstrap is missing: run tests/run.sh"
    with tempfile.TemporaryDirectory(prefix="stand-in-", dir=CACHE) as workdir:
        rootfs = Path(workdir) / "rootfs"
        result = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(recipe.packages)}",
                recipe.suite,
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert result.returncode == 0, f"debootstrap failed:\n{result.stdout[-3000:]}"
        if recipe.headers_of:
            _copy_headers(rootfs, recipe.headers_of)
        for path, text in recipe.files:
            (rootfs / path).write_text(text)
        # What a slim image leaves out too: package lists and documentation.
        for path in (
            "var/lib/apt/lists",
            "var/cache/apt",
            "usr/share/doc",
            "usr/share/man",
            "usr/share/info",
        ):
            shutil.rmtree(rootfs / path, ignore_errors=True)
        tar = subprocess.Popen(
            ["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE
        )
        changes = [*recipe.changes, f"LABEL {STAND_IN_LABEL}={recipe.digest}"]
        result = subprocess.run(
            ["podman", "import", *(f"--change={c}" for c in changes), "-", image],
            stdin=tar.stdout,
            env=environment(),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        tar.wait()
        assert result.returncode == 0, f"podman import failed:\n{result.stderr}"


def _copy_headers(rootfs: Path, packages: tuple[str, ...]) -> None:
    """Copies the usr/include of `packages` into `rootfs`, fetched by the root's
    own apt (its suite's versions) and unpacked by its own dpkg-deb and tar,
    without installing them."""
    script = (
        "set -e; cd /tmp; apt-get update -qq; "
        f"apt-get download -qq {' '.join(packages)}; "
        'for deb in *.deb; do dpkg-deb --fsys-tarfile "$deb" '
        "| tar -x -C / ./usr/include; done; rm -f ./*.deb"
    )
    result = subprocess.run(
        ["chroot", str(rootfs), "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, (
        f"copying the headers of {', '.join(packages)} failed:\n"
        f"{(result.stdout + result.stderr)[-3000:]}"
    )


def _qualified(reference: str) -> str:
    """The full name podman gives a Dockerfile's short one (python:3.13-slim)."""
    first, _, rest = reference.partition("/")
    if not rest:
        return f"docker.io/library/{reference}"
    if "." in first or ":" in first or first == "localhost":
        return reference
    return f"docker.io/{reference}"


def _bases(dockerfile: Path) -> set[str]:
    """The images a Dockerfile's stages start from, other than its own stages."""
    bases, stages = set(), set()
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words[:1] == ["FROM"]:
            image = next(word for word in words[1:] if not word.startswith("--"))
            if image not in stages:
                bases.add(_qualified(image))
            if len(words) >= 4 and words[-2].upper() == "AS":
                stages.add(words[-1])
    return bases


def image_build_args() -> dict[str, str]:
    """OCI `created` and `revision` of an image built from this checkout: the
    commit and its date, so that rebuilding an unchanged checkout changes nothing."""
    result = subprocess.run(
        ["git", "-C", str(TEMPLATE_DIR), "log", "-1", "--format=%H %cI"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:  # not a git checkout: an export of the template
        created = datetime.now(UTC).isoformat(timespec="seconds")
        return {"CREATED": created, "REVISION": "unknown"}
    revision, created = result.stdout.split()
    return {"CREATED": created, "REVISION": revision}


def build_service_image(project: Path, tag: str, *, cached: bool = True) -> str:
    """Builds a generated service's image from its own Dockerfile; returns `tag`.

    The Dockerfile's bases resolve to local stand-ins, never to a registry.
    `cached=False` rebuilds every step: buildah reuses a cached LABEL step whose
    build args changed (containers/buildah#5501), so only a fresh build shows
    the labels the Dockerfile sets.
    """
    for base in _bases(project / "Dockerfile"):
        assert base in SERVICE_BASES, (
            f"{project.name}'s Dockerfile starts from {base}, which has no local "
            f"stand-in (only {', '.join(SERVICE_BASES)}), and no registry is "
            "reachable here to pull it"
        )
        stand_in(base, SERVICE_BASES[base])
    build_args = [f"--build-arg={k}={v}" for k, v in image_build_args().items()]
    ca_bundle = []
    if HOST_CA_BUNDLE.is_file():
        ca_bundle = [f"--volume={HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    # Two pytest-xdist workers building one tag would each replace the other's.
    with _lock("build-" + re.sub(r"[^A-Za-z0-9_.-]", "_", tag)):
        podman(
            "build",
            "--pull=never",
            *([] if cached else ["--no-cache"]),
            *ca_bundle,
            *build_args,
            f"--tag={tag}",
            str(project),
            timeout=1800,
        )
    return tag
