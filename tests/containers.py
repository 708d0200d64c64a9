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
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
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


def podman(*args: str, cwd: Path | None = None, timeout: float = 600, check=True):
    """Runs podman; a failure fails the test with podman's output."""
    result = subprocess.run(
        ["podman", *args],
        cwd=cwd,
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

    @property
    def digest(self) -> str:
        text = repr((self.suite, self.packages, self.changes))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


PATH_ENV = "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# python:3.13-slim: Debian 13's Python is 3.13, with venv (the official image has it).
PYTHON_313 = Recipe(
    "trixie",
    ("python3", "python3-venv", "ca-certificates"),
    (PATH_ENV, "ENV LANG=C.UTF-8", 'CMD ["python3"]'),
)
# nginxinc/nginx-unprivileged: Debian's Nginx, run by the chart's own command.
NGINX = Recipe("trixie", ("nginx",), (PATH_ENV, "USER 101"))
# nginx/nginx-prometheus-exporter: Debian's build of the same exporter, which takes
# the same --nginx.scrape-uri and --web.listen-address flags.
NGINX_EXPORTER = Recipe(
    "trixie",
    ("prometheus-nginx-exporter",),
    (PATH_ENV, "USER 65534", 'ENTRYPOINT ["/usr/bin/prometheus-nginx-exporter"]'),
)

# A Debian 13 VM for the Ansible tests: systemd as PID 1 (`podman run --systemd=always
# IMAGE /sbin/init`), Python and python3-apt for Ansible's modules, iproute2 for
# testinfra's socket checks. Everything the service needs, the playbook installs.
SYSTEMD_HOST = Recipe(
    "trixie",
    (
        "systemd",
        "systemd-sysv",
        "dbus",
        "python3",
        "python3-apt",
        "ca-certificates",
        "iproute2",
    ),
    (PATH_ENV, "ENV LANG=C.UTF-8", "STOPSIGNAL SIGRTMIN+3", 'CMD ["/sbin/init"]'),
)


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
        if label == recipe.digest:
            return reference
        assert label in (None, ""), f"{reference} exists and is not a stand-in"
        if label is None:
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
