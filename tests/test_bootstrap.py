"""tests/system-packages.sh, the system-package step of the README's two commands.

The selection is checked here without root or network, on a PATH of stubs; the
install path, in a pristine Debian 12 container whose Node.js is a vendor's.
"""

import os
import subprocess
from pathlib import Path

import pytest

from containers import PATH_ENV, Recipe, podman, stand_in
from matrix import TEMPLATE_DIR

SCRIPT = TEMPLATE_DIR / "tests" / "system-packages.sh"
# A package whose tool has another name, or sits at a fixed path, listed by tool.
TOOLS = {
    "python3-venv": ["python3"],
    "prometheus": ["prometheus", "promtool"],
    "nodejs": ["node"],
    "uidmap": ["newuidmap", "newgidmap"],
    "postgresql": ["/usr/lib/postgresql/15/bin/initdb"],
    "mariadb-server": ["/usr/sbin/mariadbd", "mariadb-install-db", "mariadb"],
    "libc6-dev": ["/usr/include/stdio.h"],
    # Found through pkg-config, as mysqlclient's build finds it.
    "libmariadb-dev": ["pkg-config"],
    "netavark": ["/usr/lib/podman/netavark"],
    "aardvark-dns": ["/usr/lib/podman/aardvark-dns"],
    "catatonit": ["/usr/libexec/podman/catatonit"],
}


def stub(path: Path, body: str = "exit 0") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


class Machine:
    """A PATH of stub tools and a root for the fixed paths: nothing of the host's."""

    def __init__(self, tmp_path: Path):
        self.bin = tmp_path / "bin"
        self.root = tmp_path / "root"
        self.bin.mkdir()
        self.root.mkdir()

    def provide(self, *packages: str, body: str = "exit 0") -> None:
        for package in packages:
            for tool in TOOLS.get(package, [package]):
                if tool.startswith("/"):
                    stub(self.root / tool.lstrip("/"), body)
                else:
                    stub(self.bin / tool, body)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["/bin/bash", str(SCRIPT), *args],
            env={"PATH": str(self.bin), "SYSTEM_ROOT": str(self.root)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def missing(self) -> list[str]:
        result = self.run("missing")
        assert result.returncode == 0, result.stderr
        return result.stdout.split()


@pytest.fixture
def machine(tmp_path):
    return Machine(tmp_path)


@pytest.fixture
def every_package(tmp_path_factory):
    """What the script asks for on a machine that has nothing."""
    packages = Machine(tmp_path_factory.mktemp("empty")).missing()
    assert {"postgresql", "mariadb-server", "nginx", "podman", "nodejs", "npm"} <= set(
        packages
    )
    return packages


def test_only_the_missing_packages_are_asked_for(machine, every_package):
    # A vendor's Node.js: node and an npm that are not Debian's, but run.
    stub(machine.bin / "npm", "echo 10.8.2")
    stub(machine.bin / "node", "echo v20.20.2")
    present = {"python3-venv", "postgresql", "nginx", "catatonit", "unzip"}
    machine.provide(*present)
    expected = [p for p in every_package if p not in {*present, "npm", "nodejs"}]
    assert machine.missing() == expected


def test_nothing_is_asked_for_when_every_tool_works(machine, every_package):
    machine.provide(*every_package)
    assert machine.missing() == []
    result = machine.run("install")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_a_tool_that_does_not_run_counts_as_missing(machine, every_package):
    machine.provide(*every_package)
    stub(machine.bin / "npm", "echo 'npm: cannot find module' >&2; exit 1")
    stub(machine.bin / "promtool", "exit 127")
    assert machine.missing() == ["prometheus", "npm"]


def test_mariadbd_counts_in_sbin_though_path_lacks_it(machine, every_package):
    # Debian's mariadbd is in /usr/sbin, which a user's PATH may not hold.
    machine.provide(*every_package)
    assert not (machine.bin / "mariadbd").exists()
    assert machine.missing() == []
    (machine.root / "usr/sbin/mariadbd").unlink()
    assert machine.missing() == ["mariadb-server"]
    stub(machine.bin / "mariadbd")
    assert machine.missing() == []


def test_libmariadb_counts_only_when_pkg_config_finds_it(machine, every_package):
    machine.provide(*every_package)
    # pkg-config itself works, but knows no MySQL client library.
    stub(machine.bin / "pkg-config", 'case "$1" in --version) exit 0 ;; esac; exit 1')
    assert machine.missing() == ["libmariadb-dev"]
    # MariaDB's libmariadb.pc, as Debian's libmariadb-dev ships it.
    stub(
        machine.bin / "pkg-config",
        'case "$*" in --version|"--exists libmariadb") exit 0 ;; esac; exit 1',
    )
    assert machine.missing() == []


def test_apt_is_asked_for_exactly_the_missing_packages_and_may_remove_nothing(
    machine, tmp_path, every_package
):
    if os.geteuid() != 0:
        pytest.fail("the README's commands and this suite run as root")
    machine.provide(*every_package)
    for package in ("redis-server", "shellcheck", "npm"):
        (machine.bin / package).unlink()
    calls = tmp_path / "apt-get.calls"
    # apt-get that records its arguments and "installs" the tools it is given.
    stub(
        machine.bin / "apt-get",
        f'echo "$*" >> {calls}\n'
        'for word in "$@"; do case $word in -*|install|update) ;; *)\n'
        f'  printf "#!/bin/sh\\nexit 0\\n" > {machine.bin}/$word; '
        f"/bin/chmod +x {machine.bin}/$word ;; esac; done",
    )
    result = machine.run("install")
    assert result.returncode == 0, result.stderr
    assert "installing redis-server shellcheck npm" in result.stderr
    assert calls.read_text().splitlines() == [
        "update -qq",
        "install -y -qq --no-install-recommends --no-remove "
        "redis-server shellcheck npm",
    ]


def test_a_package_apt_refuses_is_named_with_its_reason(
    machine, tmp_path, every_package
):
    if os.geteuid() != 0:
        pytest.fail("the README's commands and this suite run as root")
    machine.provide(*every_package)
    (machine.bin / "npm").unlink()
    (machine.bin / "shellcheck").unlink()
    # What apt says on a machine whose vendor nodejs conflicts with Debian's npm.
    stub(
        machine.bin / "apt-get",
        'case "$*" in\n'
        "  update*) exit 0 ;;\n"
        '  *-s*shellcheck) echo "Inst shellcheck (0.9.0-1 Debian:12)"; exit 0 ;;\n'
        "  *-s*npm) echo 'Some packages could not be installed.'\n"
        "    echo 'The following packages have unmet dependencies:'\n"
        "    echo ' nodejs : Conflicts: npm'\n"
        "    echo 'E: Unable to correct problems, you have held broken packages.'\n"
        "    exit 100 ;;\n"
        "  *) echo 'E: Unable to correct problems, you have held broken packages.'\n"
        "    exit 100 ;;\n"
        "esac",
    )
    result = machine.run("install")
    assert result.returncode == 1
    assert "apt-get could not install shellcheck npm" in result.stderr
    assert "npm cannot be installed; apt says:\n nodejs : Conflicts: npm" in (
        result.stderr
    )
    assert "shellcheck cannot be installed" not in result.stderr
    assert "Nothing was removed or replaced" in result.stderr
    assert "make that tool work from PATH" in result.stderr


# A vendor's Node.js in the stand-in: the `nodejs` package of NodeSource, which
# these machines ship, carries its own npm and conflicts with Debian's `npm`. Its
# node and npm here are LOCAL STAND-INS that only answer --version: the test is of
# the package step, which must leave them alone.
VENDOR_NODEJS_CONTROL = """\
Package: nodejs
Version: 20.99.0-1vendor1
Architecture: all
Maintainer: Test Vendor <vendor@example.invalid>
Conflicts: npm
Description: stand-in for a vendor's Node.js that ships its own npm
"""
DEBIAN_12 = Recipe("bookworm", ("ca-certificates",), (PATH_ENV,))
# What the suite runs for real after the package step, beyond the step's own checks.
TOOLS_AT_WORK = """
set -eux
python3 -m venv /tmp/venv && /tmp/venv/bin/python -c 'import sys'
/usr/lib/postgresql/15/bin/initdb --version
mariadbd --version
# What building mysqlclient from source needs: a C compiler, the C library's
# headers, and MariaDB's client library found by pkg-config.
printf '#include <mysql.h>\nint main(void) { return !mysql_get_client_version(); }\n' \
  > /tmp/client.c
gcc /tmp/client.c $(pkg-config --cflags --libs libmariadb) -o /tmp/client
/tmp/client
# A throwaway MariaDB of tests/services.py, as its user and with its binaries.
(cd /tmp && python3 -c '
import sys, tempfile
from pathlib import Path
sys.path.insert(0, "/template/tests")
import services
with tempfile.TemporaryDirectory() as workdir, services.mariadb(Path(workdir)) as url:
    print(services.mariadb_query(url, "SELECT VERSION()"))
')
redis-server --version
nginx -t
promtool --version
podman --version
runc --version
node --version
npm --version
test "$(dpkg-query -W -f '${Version}' nodejs)" = 20.99.0-1vendor1
test "$(dpkg-query -W -f '${db:Status-Status}' npm 2>/dev/null)" != installed
"""


@pytest.mark.xdist_group("podman")
def test_the_package_step_installs_everything_on_a_pristine_debian_12(tmp_path):
    image = stand_in("localhost/bootstrap-debian-12:pristine", DEBIAN_12)
    package = tmp_path / "nodejs-vendor"
    for tool, version in (("node", "v20.99.0"), ("npm", "10.99.0")):
        stub(package / "usr" / "bin" / tool, f"echo {version}")
    (package / "DEBIAN").mkdir()
    (package / "DEBIAN" / "control").write_text(VENDOR_NODEJS_CONTROL)
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(package)],
        capture_output=True,
        check=True,
    )
    script = (
        "set -e\n"
        "dpkg -i /work/nodejs-vendor.deb >/dev/null\n"
        "/template/tests/system-packages.sh install\n"
        'test -z "$(/template/tests/system-packages.sh missing)"\n'
        f"{TOOLS_AT_WORK}"
    )
    result = podman(
        "run",
        "--rm",
        f"--volume={TEMPLATE_DIR / 'tests'}:/template/tests:ro",
        f"--volume={tmp_path}:/work:ro",
        image,
        "bash",
        "-c",
        script,
        timeout=1500,
        check=False,
    )
    output = result.stdout + result.stderr
    for unreachable in ("Could not resolve", "Failed to fetch"):
        assert unreachable not in output, (
            f"the container could not reach Debian's archive:\n{output[-3000:]}"
        )
    assert result.returncode == 0, output[-5000:]
    assert "system-packages: installing python3-venv postgresql" in output
    assert " npm" not in output.split("installing", 1)[1].splitlines()[0]
