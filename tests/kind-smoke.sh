#!/usr/bin/env bash
# The Kubernetes smoke test of a freshly generated service, for users and platform
# teams on a machine where Docker (or podman) and kind work: generates a service
# into a temporary directory with the template's tools, runs its bin/kind-smoke
# (a kind cluster, the image, the chart in a namespace enforcing "restricted",
# `helm test`, bin/smoke through a port-forward; the cluster is deleted at the
# end), then removes the directory.
#
#   tests/kind-smoke.sh                                   # the default options
#   tests/kind-smoke.sh database=postgresql server=granian
#
# Arguments are cookiecutter options (key=value); bin/kind-smoke's environment
# (KEEP_CLUSTER=1, KIND_NODE_IMAGE, KIND_EXPERIMENTAL_PROVIDER=podman...) passes
# through. It needs what bin/kind-smoke names (kind, kubectl, docker...) besides
# what tests/bootstrap.sh installs.
#
# No cluster can run on the template's own CI machines (kind's node image and the
# images the chart runs come from a container registry, which they cannot reach),
# so CI never runs this: tests/test_kind_smoke.py checks bin/kind-smoke's steps
# with stub commands, shellcheck and actionlint check the script and its workflow,
# and tests/test_deploy_podman.py deploys the chart's objects with podman.
set -euo pipefail
# shellcheck source=tests/bootstrap.sh
source "$(dirname "$0")/bootstrap.sh"
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
cookiecutter --no-input "$ROOT" --output-dir "$workdir" "$@"
cd "$workdir"/*/
bin/kind-smoke
