"""A generated service's Helm chart, rendered and validated by the template tests."""

import copy
import subprocess
from functools import cache
from pathlib import Path

import kubernetes_validate
import yaml
from jsonschema import Draft7Validator

from matrix import TEMPLATE_DIR

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest
# that this helm knows.
KUBERNETES_VERSIONS = ("1.30.0", "1.35.0")
CRDS = TEMPLATE_DIR / "tests" / "crds"
# Bitnami's readme-generator-for-helm, which tests/bootstrap.sh installs from npm.
README_GENERATOR = (
    TEMPLATE_DIR / ".cache" / "readme-generator" / "node_modules" / "@bitnami"
    / "readme-generator-for-helm" / "bin" / "index.js"
)  # fmt: skip
RELEASE = "shop"
NAMESPACE = "shop"


def chart_dir(project: Path) -> Path:
    return project / "deploy" / "helm"


def values_files(project: Path) -> list[Path]:
    return sorted((chart_dir(project) / "ci").glob("*-values.yaml"))


def helm(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["helm", *args], cwd=cwd, capture_output=True, text=True, check=False
    )


def generate_readme(values: Path, readme: Path) -> subprocess.CompletedProcess:
    """Rewrites the "Parameters" section of `readme` from the `## @param` lines of
    `values`; fails when a value has no @param, or a @param no value."""
    assert README_GENERATOR.is_file(), (
        f"{README_GENERATOR} is missing: run tests/bootstrap.sh (tests/run.sh does)"
    )
    command = ["node", str(README_GENERATOR), "--values", str(values)]
    return subprocess.run(
        [*command, "--readme", str(readme)], capture_output=True, text=True, check=False
    )


def _render(project: Path, values, sets, release: str) -> subprocess.CompletedProcess:
    return helm(
        "template",
        release,
        str(chart_dir(project)),
        "--namespace",
        NAMESPACE,
        *(arg for path in values for arg in ("-f", str(path))),
        *(arg for item in sets for arg in ("--set", item)),
        cwd=project,
    )


def template(project: Path, *values: Path, sets=(), release=RELEASE) -> list[dict]:
    """The objects `helm template` renders, tests and hooks included."""
    result = _render(project, values, sets, release)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def template_error(project: Path, *values: Path, sets=()) -> str:
    """The error of a render that must fail."""
    result = _render(project, values, sets, RELEASE)
    assert result.returncode != 0, f"rendered, but should have failed:\n{sets}"
    return result.stderr


def pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    """(kind/name, pod spec) of every object that runs pods."""
    found = []
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "Pod":
            found.append((name, obj["spec"]))
        elif obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            found.append((name, obj["spec"]["template"]["spec"]))
    return found


def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def validate_builtin(obj: dict, version: str) -> None:
    """kubernetes-validate, strict: unknown fields are errors too."""
    kubernetes_validate.validate(obj, version, strict=True)


def strict(schema: dict) -> dict:
    """A CRD's structural schema as the API server applies it with strict field
    validation: unknown fields are errors, int-or-string takes either."""
    schema = copy.deepcopy(schema)

    def visit(node):
        if isinstance(node, dict):
            if node.pop("x-kubernetes-int-or-string", False):
                node.pop("type", None)
                node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
            if node.pop("nullable", False) and "type" in node:
                node["type"] = [node["type"], "null"]
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


@cache
def crd_validators() -> dict:
    """{(apiVersion, kind): validator} of every vendored CRD's served versions."""
    validators = {}
    for path in CRDS.glob("*.yaml"):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = strict(version["schema"]["openAPIV3Schema"])
                validators[(f"{group}/{version['name']}", kind)] = Draft7Validator(
                    schema
                )
    return validators


def validate_custom(obj: dict) -> list[str]:
    """Errors of a custom resource against its vendored CRD's openAPIV3Schema."""
    key = (obj["apiVersion"], obj["kind"])
    validator = crd_validators().get(key)
    assert validator is not None, f"no vendored CRD for {key} in {CRDS}"
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(obj)
    ]
