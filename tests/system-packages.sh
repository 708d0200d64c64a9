#!/usr/bin/env bash
# The Debian packages the template's commands run for real, installed one by one
# as they are missing; tests/bootstrap.sh and tests/bench.sh call it.
#
#   tests/system-packages.sh missing [PACKAGE...]   # prints the missing ones, one a line
#   tests/system-packages.sh install [PACKAGE...]   # installs the missing ones (root, apt)
#
# Without PACKAGE: every package the template's tests and demo need.
#
# A package counts as present when what it provides works here, whoever packaged
# it: a machine may ship a vendor's Node.js whose `nodejs` carries its own npm and
# conflicts with Debian's `npm`, and asking apt for `npm` there fails for the whole
# list. So each package has a check of its own (a tool on PATH that runs), only
# the failing ones are asked for, and apt may never remove anything to install
# them (--no-remove). SYSTEM_ROOT prefixes the few checks that look at fixed
# paths, so that tests can point them at a directory of their own.
set -euo pipefail

# gcc, libc6-dev, pkg-config and libmariadb-dev build mysqlclient, the MySQL driver
# of services generated with database=mysql: it has no Linux wheel, so `uv sync`
# compiles it from source (mysqlclient finds the client library with pkg-config).
DEFAULT_PACKAGES=(python3-venv postgresql mariadb-server gcc libc6-dev pkg-config
  libmariadb-dev redis-server shellcheck nginx prometheus prometheus-nginx-exporter
  podman runc iptables netavark aardvark-dns catatonit uidmap debootstrap socat unzip
  nodejs npm)
SYSTEM_ROOT=${SYSTEM_ROOT:-}

# Succeeds when what $1 provides works here. Like the rest of this script, it runs
# only shell builtins, the checked tools and apt-get, so a PATH of stubs decides alone.
provided() {
  case $1 in
    python3-venv) python3 -c 'import ensurepip, venv' ;;
    postgresql) compgen -G "$SYSTEM_ROOT/usr/lib/postgresql/*/bin/initdb" ;;
    # tests/services.py runs all three; mariadbd is in sbin, which a user's PATH
    # may lack.
    mariadb-server)
      { mariadbd --version || "$SYSTEM_ROOT/usr/sbin/mariadbd" --version; } &&
        command -v mariadb-install-db && mariadb --version ;;
    libc6-dev) [[ -e $SYSTEM_ROOT/usr/include/stdio.h ]] ;;
    # Found as mysqlclient's build finds it (the names it tries, in its order).
    libmariadb-dev)
      pkg-config --exists mysqlclient || pkg-config --exists mariadb ||
        pkg-config --exists libmariadb ;;
    prometheus) prometheus --version && promtool --version ;;
    nginx) nginx -v ;;
    netavark | aardvark-dns) "$SYSTEM_ROOT/usr/lib/podman/$1" --version ;;
    catatonit) "$SYSTEM_ROOT/usr/libexec/podman/catatonit" --version ;;
    uidmap) command -v newuidmap && command -v newgidmap ;;
    nodejs) node --version ;;
    unzip) unzip -v ;;
    socat) socat -V ;;
    wrk) command -v wrk ;;
    # The rest are named after the tool they provide.
    *) "$1" --version ;;
  esac >/dev/null 2>&1
}

missing() {
  local package
  for package in "$@"; do
    provided "$package" || printf '%s\n' "$package"
  done
}

die() { printf 'system-packages: %s\n' "$*" >&2; exit 1; }

# The lines of apt's output that say why (its errors and dependency lines), not
# its progress; all of it when none match.
reasons() {
  local line found=""
  while IFS= read -r line; do
    if [[ $line == " "* || $line == E:* ]]; then found+="$line"$'\n'; fi
  done <<<"$1"
  printf '%s' "${found:-$1$'\n'}"
}

# apt's own account of why it cannot install each of $@ (a dry run apiece).
explain() {
  local package output
  for package in "$@"; do
    if ! output=$(apt-get install -s --no-remove --no-install-recommends "$package" 2>&1); then
      printf '\n%s cannot be installed; apt says:\n%s' "$package" "$(reasons "$output")"
    fi
  done
}

install() {
  local wanted output
  mapfile -t wanted < <(missing "$@")
  ((${#wanted[@]})) || return 0
  if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null; then
    die "missing: ${wanted[*]}. On Debian, as root: apt-get install ${wanted[*]}
(elsewhere, install what provides them: each is checked by its tool working on PATH)"
  fi
  printf 'system-packages: installing %s\n' "${wanted[*]}" >&2
  output=$(apt-get update -qq 2>&1) || die "apt-get update failed:
$output"
  if ! output=$(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends --no-remove "${wanted[@]}" 2>&1); then
    die "apt-get could not install ${wanted[*]}:
$(reasons "$output")
$(explain "${wanted[@]}")

Nothing was removed or replaced. Where another vendor's package already provides
the tool (a nodejs that carries its own npm, say), make that tool work from PATH
and run this again: a working tool satisfies its package. Otherwise install the
package named above by hand, resolving what apt reports, and run this again."
  fi
  mapfile -t wanted < <(missing "${wanted[@]}")
  ((${#wanted[@]} == 0)) || die "installed, but still not working: ${wanted[*]}"
}

command=${1:-}
shift || true
(($#)) || set -- "${DEFAULT_PACKAGES[@]}"
case $command in
  missing) missing "$@" ;;
  install) install "$@" ;;
  *) die "usage: $0 missing|install [PACKAGE...]" ;;
esac
