"""A generated service's own CI: bin/check, its workflows, bin/template-update and the
dependency-update configuration.

bin/check's cheap steps run on every combination (test_generation.py), `test`,
`helm`, `ansible` and `prometheus` where the template tests already run the
service's suite, chart, playbook and rules. Here: what ci.yml runs is what bin/check
offers, a missing tool is named, the `image` step builds with podman and writes a
CycloneDX SBOM, the `cruft` step against a real template repository, and
bin/template-update against recording stubs of cruft, git, gh and uv (no GitHub
is reachable from here), as test_kind_smoke.py does for bin/kind-smoke.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from recorded import Recorded
from template_repo import TemplateRepo

from containers import HOST_CA_BUNDLE, SERVICE_BASES, environment, stand_in
from harness import check_steps, generate_service, run, service_env
from matrix import DEFAULT_TEXT, TEMPLATE_DIR

PROJECT = DEFAULT_TEXT["project"]
# `- uses: owner/name@<commit> # <tag>`
PINNED = re.compile(r"- uses: [\w.-]+/[\w.-]+@[0-9a-f]{40} # v\d+(\.\d+)*")
OLD_COMMIT = "1" * 40
NEW_COMMIT = "2" * 40


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """The default service (no virtualenv: steps that need one make it)."""
    return generate_service({}, tmp_path_factory.mktemp("service-ci"))


def bin_check(project: Path, *args: str, env: dict | None = None):
    """bin/check's result, whatever it is."""
    return subprocess.run(
        [project / "bin" / "check", *args],
        cwd=project,
        env=env or service_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def listed_steps(project: Path) -> list[str]:
    result = bin_check(project, "--list")
    assert result.returncode == 0, result.stderr
    return [line.split()[0] for line in result.stdout.splitlines()[1:]]


def test_ci_runs_every_step_of_bin_check_and_nothing_else(service):
    """One job per step, each running `bin/check <its name>` and nothing else of
    its own: a step added to bin/check without a job, or a job that does its
    check itself, fails here."""
    steps = listed_steps(service)
    text = (service / ".github" / "workflows" / "ci.yml").read_text()
    workflow = yaml.safe_load(text)
    jobs = workflow["jobs"]
    assert sorted(jobs) == sorted(steps)
    for name, job in jobs.items():
        checks = [s["run"] for s in job["steps"] if "bin/check" in s.get("run", "")]
        assert checks == [f"bin/check {name}"], name
    assert workflow["permissions"] == {"contents": "read"}
    # Every action by commit, its tag in the comment.
    uses = [line.strip() for line in text.splitlines() if "uses:" in line]
    assert uses
    for line in uses:
        assert PINNED.fullmatch(line), f"not pinned by commit: {line}"
    services = jobs["test"]["services"]
    assert set(services) == {"redis"}, "the default service runs on SQLite"


def test_bin_check_refuses_an_unknown_step_or_none(service):
    unknown = bin_check(service, "lint", "nope")
    assert unknown.returncode == 2
    assert 'unknown step "nope"' in unknown.stderr
    # Refused before any step ran, with the list of steps.
    assert "==> bin/check lint" not in unknown.stderr
    assert "  helm " in unknown.stderr
    assert bin_check(service).returncode == 2


def test_a_missing_tool_fails_its_step_naming_how_to_install_it(service, tmp_path):
    tools = tmp_path / "tools"
    tools.mkdir()
    for name in ("bash", "dirname", "mktemp", "rm", "head"):
        (tools / name).symlink_to(shutil.which(name))
    env = service_env(PATH=str(tools))
    for step, tool in (("helm", "helm"), ("prometheus", "promtool"), ("lint", "uv")):
        result = bin_check(service, step, env=env)
        assert result.returncode == 1, result.stderr
        assert f"bin/check: {tool} is not installed: " in result.stderr
        assert "http" in result.stderr or "apt-get install" in result.stderr


@pytest.mark.parametrize("workflow", ["ci.yml", "template-update.yml"])
def test_workflows_match_githubs_schema(service, workflow):
    path = service / ".github" / "workflows" / workflow
    command = ["check-jsonschema", "--builtin-schema", "vendor.github-workflows"]
    run([*command, path], service)


def test_ci_installs_the_uv_that_the_image_and_the_hosts_install(service):
    # requirements/uv.txt pins uv, with its hashes, for the image and the hosts;
    # the workflows' setup-uv cannot read it.
    pinned = re.findall(
        r"^uv==(\S+) ", (service / "requirements" / "uv.txt").read_text(), re.M
    )
    assert len(pinned) == 1
    versions = []
    for workflow in (service / ".github" / "workflows").glob("*.yml"):
        for job in yaml.safe_load(workflow.read_text())["jobs"].values():
            for step in job.get("steps", []):
                if step.get("uses", "").startswith("astral-sh/setup-uv@"):
                    versions.append((workflow.name, step["with"]["version"]))
    assert versions
    assert {version for _, version in versions} == set(pinned), versions


def test_the_image_and_the_hosts_refuse_a_uv_that_is_not_the_pinned_bytes(
    service, tmp_path
):
    """The Dockerfile and the Ansible role install uv with pip --require-hashes
    from requirements/uv.txt: a file of the pinned version with other bytes (a
    tampered mirror, a man in the middle) is refused before it is installed."""
    requirements = service / "requirements" / "uv.txt"
    assert "--require-hashes -r /tmp/uv.txt" in (service / "Dockerfile").read_text()
    role = TEMPLATE_DIR / "ansible" / "roles" / "service" / "tasks" / "main.yml"
    (install,) = [
        t for t in yaml.safe_load(role.read_text()) if t["name"] == "Install uv"
    ]
    assert "--require-hashes" in install["ansible.builtin.pip"]["extra_args"].split()
    (version,) = re.findall(r"^uv==(\S+) ", requirements.read_text(), re.M)
    # A wheel of that name and version, which pip would take from a mirror.
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    metadata = f"uv-{version}.dist-info"
    with zipfile.ZipFile(mirror / f"uv-{version}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{metadata}/METADATA", f"Name: uv\nVersion: {version}\n")
        wheel.writestr(f"{metadata}/WHEEL", "Wheel-Version: 1.0\nTag: py3-none-any\n")
        wheel.writestr(f"{metadata}/RECORD", "")
    run([sys.executable, "-m", "venv", tmp_path / "venv"], tmp_path)
    # The mirror only: no configuration of this machine's pip.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    result = subprocess.run(
        [
            tmp_path / "venv" / "bin" / "pip",
            "install",
            "--isolated",
            "--no-deps",
            "--require-hashes",
            "--no-index",
            "--find-links",
            mirror,
            "-r",
            requirements,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0, result.stdout
    assert "DO NOT MATCH THE HASHES" in result.stderr, result.stderr
    assert not list((tmp_path / "venv" / "bin").glob("uv*")), result.stdout


def test_renovate_config_matches_renovates_schema(service):
    command = ["check-jsonschema", "--builtin-schema", "vendor.renovate"]
    run([*command, service / "renovate.json"], service)


def renovate_patterns(patterns: list[str]) -> re.Pattern:
    """Renovate's managerFilePatterns (/regex/) as one Python pattern."""
    return re.compile("|".join(f"(?:{p.strip('/')})" for p in patterns))


def test_renovate_finds_every_pin_of_uv_and_moves_them_as_one(service):
    """uv is pinned in requirements/uv.txt, with its hashes (the pip_requirements
    manager rewrites them), and in each workflow's setup-uv (a regex manager):
    every pin is one Renovate reads, in one group."""
    config = json.loads((service / "renovate.json").read_text())
    files = {
        path.relative_to(service).as_posix(): path.read_text()
        for path in service.rglob("*")
        if path.is_file() and ".venv" not in path.parts
    }
    assert "pip_requirements" in config["enabledManagers"]
    requirements = renovate_patterns(config["pip_requirements"]["managerFilePatterns"])
    assert [name for name in files if requirements.search(name)] == [
        "requirements/uv.txt"
    ]
    (pinned,) = re.findall(r"^uv==(\S+) ", files["requirements/uv.txt"], re.M)

    # Each setup-uv step's version, as the regex managers for uv read them.
    setup_uv = re.compile(r"astral-sh/setup-uv@\S+ # \S+\s+with:\s+version: ")
    found = []
    for manager in config["customManagers"]:
        if manager.get("depNameTemplate") != "uv":
            continue
        names = renovate_patterns(manager["managerFilePatterns"])
        for name, text in files.items():
            if not names.search(name):
                continue
            for match_string in manager["matchStrings"]:
                # JavaScript's named groups, in Python's spelling.
                pattern = match_string.replace("(?<", "(?P<")
                found += [(name, m["currentValue"]) for m in re.finditer(pattern, text)]
    steps = [
        name
        for name, text in files.items()
        if name.startswith(".github/workflows/")
        for _ in setup_uv.finditer(text)
    ]
    assert sorted(name for name, _ in found) == sorted(steps)
    assert {version for _, version in found} == {pinned}
    assert any(
        rule.get("matchPackageNames") == ["uv"] and rule.get("groupName")
        for rule in config["packageRules"]
    )


def test_renovate_pins_the_dockerfiles_base_image_by_digest(service):
    """The Dockerfile names its base by tag (the tests build it on local
    stand-ins, README "Layout"); Renovate's first update pins it."""
    config = json.loads((service / "renovate.json").read_text())
    assert "dockerfile" in config["enabledManagers"]
    rules = [
        rule
        for rule in config["packageRules"]
        if rule.get("matchManagers") == ["dockerfile"] and rule.get("pinDigests")
    ]
    assert rules, config["packageRules"]
    bases = re.findall(r"^FROM (\S+)", (service / "Dockerfile").read_text(), re.M)
    # Image references the dockerfile manager reads, with no digest yet.
    assert bases, "no FROM in the Dockerfile"
    assert all(re.fullmatch(r"python:[\d.]+-slim", base) for base in bases), bases


@pytest.mark.xdist_group("podman")
def test_image_step_builds_the_image_and_its_sbom(service, tmp_path):
    """`bin/check image` with podman: the image, and a CycloneDX SBOM of the Python
    packages it holds (no development tool among them)."""
    base = "docker.io/library/python:3.13-slim"
    stand_in(base, SERVICE_BASES[base])
    # A local stand-in base, never pulled; PyPI through this machine's CA bundle
    # (see containers.py). --no-cache, as the Dockerfile says for release builds
    # with Podman: buildah would reuse another build's LABEL step, and its revision
    # (containers/buildah#5501).
    options = ["--pull=never", "--no-cache"]
    if HOST_CA_BUNDLE.is_file():
        options.append(f"--volume={HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro")
    image = f"localhost/{PROJECT}:check"
    sbom = tmp_path / "sbom.cdx.json"
    env = service_env(
        CONTAINER_ENGINE="podman",
        CONTAINERS_CONF=environment()["CONTAINERS_CONF"],
        IMAGE=image,
        IMAGE_BUILD_OPTIONS=" ".join(options),
        SBOM=str(sbom),
    )
    check_steps(service, "image", env=env)
    inspect = run(["podman", "image", "inspect", image], service, env=env).stdout
    labels = json.loads(inspect)[0]["Config"]["Labels"]
    assert labels["org.opencontainers.image.revision"] == "unknown"  # not a git repo

    document = json.loads(sbom.read_text())
    assert document["bomFormat"] == "CycloneDX"
    assert document["specVersion"] == "1.5"
    components = {c["name"]: c for c in document["components"]}
    django = components["django"]
    assert django["version"] == "6.1.3"
    assert django["purl"] == "pkg:pypi/django@6.1.3"
    assert not {"pytest", "ruff", "cruft"} & set(components), "dev tools listed"


def cruft_service(tmp_path: Path) -> tuple[TemplateRepo, Path]:
    """A service made with `cruft create` from a real repository of the template."""
    repo = TemplateRepo.of_working_tree(tmp_path / "template")
    out = tmp_path / "out"
    run(["cruft", "create", "--no-input", "--output-dir", out, repo.path], tmp_path)
    return repo, out / PROJECT


def test_cruft_step_warns_when_the_template_moved_on_and_fails_when_broken(tmp_path):
    repo, project = cruft_service(tmp_path)
    up_to_date = check_steps(project, "cruft")
    assert "::warning" not in up_to_date.stdout

    repo.edit("README.md", "# django-asgi-platform", "# django-asgi-platform (new)")
    repo.commit("The template moves on")
    moved = check_steps(project, "cruft")
    assert "::warning title=Template moved on::" in moved.stdout

    cruft_file = project / ".cruft.json"
    state = json.loads(cruft_file.read_text())
    cruft_file.write_text(
        json.dumps({**state, "template": str(tmp_path / "no-such-template")})
    )
    unreachable = bin_check(project, "cruft")
    assert unreachable.returncode == 1, unreachable.stdout
    assert "cruft check failed" in unreachable.stderr

    cruft_file.write_text("{not json")
    broken = bin_check(project, "cruft")
    assert broken.returncode == 1, broken.stdout
    assert "cruft check failed" in broken.stderr


STUB = """#!{python}
# A stand-in for {name}: records its call, answers what bin/template-update reads.
import json, os, pathlib, re, sys

argv = sys.argv[1:]
entry = {{"argv": ["{name}", *argv], "cwd": os.getcwd()}}
if "{name}" == "gh" and "--body-file" in argv:
    entry["body"] = pathlib.Path(argv[argv.index("--body-file") + 1]).read_text()
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps(entry) + "\\n")
if os.environ.get("STUB_FAIL") == " ".join(["{name}", *argv[:1]]):
    sys.exit("stub: {name} " + argv[0] + " failed")
if "{name}" == "cruft" and argv[:1] == ["check"]:
    state = os.environ["STUB_TEMPLATE"]
    if state == "moved":
        sys.exit("FAILURE: Project's cruft is out of date! Run `cruft update`.")
    if state == "unreachable":
        sys.exit("Traceback ...\\ngit.exc.GitCommandError: Cmd('git') failed")
    print("SUCCESS: Good work! Project's cruft is up to date")
if "{name}" == "cruft" and argv[:1] == ["update"]:
    cruft = pathlib.Path(".cruft.json")
    cruft.write_text(cruft.read_text().replace("{old}", "{new}"))
if "{name}" == "git" and argv == ["rev-parse", "--abbrev-ref", "HEAD"]:
    print("main")
if "{name}" == "git" and argv[:3] == ["diff", "--cached", "--name-only"]:
    found = "STUB_CONFLICTS" if "-G" in argv else "STUB_REJECTED"
    print(*os.environ.get(found, "").split(), sep="\\n")
if "{name}" == "gh" and argv[:2] == ["pr", "list"]:
    print(os.environ.get("STUB_PR", ""))
"""


@pytest.fixture
def stubs(tmp_path):
    directory = tmp_path / "stubs"
    directory.mkdir()
    for name in ("cruft", "git", "gh", "uv"):
        path = directory / name
        path.write_text(
            STUB.format(
                python=sys.executable, name=name, old=OLD_COMMIT, new=NEW_COMMIT
            )
        )
        path.chmod(0o755)
    return directory


@pytest.fixture
def linked_service(service, tmp_path):
    """A copy of the default service with the .cruft.json of a template commit."""
    project = tmp_path / PROJECT
    shutil.copytree(
        service, project, symlinks=True, ignore=shutil.ignore_patterns(".venv")
    )
    cruft_state = {
        "template": "https://git.example.com/platform/django-asgi-platform.git",
        "commit": OLD_COMMIT,
        "checkout": None,
        "context": {},
        "directory": None,
    }
    (project / ".cruft.json").write_text(json.dumps(cruft_state, indent=2) + "\n")
    return project


def template_update(project: Path, stubs: Path, template="moved", **env) -> Recorded:
    log = project.parent / "calls.jsonl"
    environment = service_env(
        PATH=f"{stubs}{os.pathsep}{os.environ['PATH']}",
        STUB_LOG=str(log),
        STUB_TEMPLATE=template,
        **env,
    )
    environment.pop("BRANCH", None)
    result = subprocess.run(
        [project / "bin" / "template-update"],
        cwd=project.parent,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Recorded(result, log)


def test_up_to_date_pushes_nothing(linked_service, stubs):
    run_ = template_update(linked_service, stubs, template="up-to-date")
    assert run_.returncode == 0, run_.describe()
    assert run_.argvs == [
        ["uv", "sync", "--locked", "--group", "checks", "--quiet"],
        ["cruft", "check"],
    ]
    assert "nothing to propose" in run_.output


def test_a_moved_template_becomes_a_pull_request(linked_service, stubs):
    run_ = template_update(linked_service, stubs)
    assert run_.returncode == 0, run_.describe()
    order = [
        run_.index("cruft", "check"),
        run_.index("git", "switch", "--force-create", "template-update"),
        run_.index("cruft", "update", "--skip-apply-ask"),
        run_.index("uv", "lock"),
        run_.index("git", "add", "--all"),
        run_.index("git", "commit"),
        run_.index("git", "push", "--force", "origin", "template-update"),
        run_.index("gh", "pr", "list"),
        run_.index("gh", "pr", "create"),
    ]
    assert order == sorted(order), run_.describe()
    assert all(call["cwd"] == str(linked_service) for call in run_.calls)
    commit = run_.argvs[run_.index("git", "commit")]
    assert f"Update to the template's commit {NEW_COMMIT[:12]}" in commit
    create = run_.calls[run_.index("gh", "pr", "create")]
    argv = create["argv"]
    assert argv[argv.index("--base") + 1] == "main"
    assert argv[argv.index("--head") + 1] == "template-update"
    assert f"from {OLD_COMMIT} to {NEW_COMMIT}" in create["body"]
    assert "Every change applied cleanly" in create["body"]
    assert not run_.has("gh", "pr", "edit")


def test_conflicts_are_committed_and_the_pull_request_says_so(linked_service, stubs):
    run_ = template_update(
        linked_service,
        stubs,
        STUB_REJECTED="config/settings.py.rej",
        STUB_CONFLICTS="pyproject.toml Dockerfile",
    )
    assert run_.returncode == 0, run_.describe()
    # Everything staged (the .rej files too) before the commit.
    assert run_.index("git", "add", "--all") < run_.index("git", "commit")
    body = run_.calls[run_.index("gh", "pr", "create")]["body"]
    assert "**Conflicts to resolve before merging.**" in body
    assert "`config/settings.py.rej`" in body
    assert "conflict markers in `pyproject.toml`" in body
    assert "conflict markers in `Dockerfile`" in body
    assert "applied cleanly" not in body


def test_an_open_pull_request_is_edited_not_duplicated(linked_service, stubs):
    run_ = template_update(linked_service, stubs, STUB_PR="7")
    assert run_.returncode == 0, run_.describe()
    edit = run_.argvs[run_.index("gh", "pr", "edit")]
    assert edit[3] == "7"
    assert not run_.has("gh", "pr", "create")
    listing = run_.argvs[run_.index("gh", "pr", "list")]
    assert listing[listing.index("--head") + 1] == "template-update"
    assert listing[listing.index("--state") + 1] == "open"


@pytest.mark.parametrize(
    ("failing", "message"),
    [
        ("uv lock", "uv lock failed (exit 1)"),
        ("git push", "git push failed (exit 1)"),
        ("cruft update", "cruft update failed (exit 1)"),
    ],
)
def test_a_failing_step_stops_with_its_name(linked_service, stubs, failing, message):
    run_ = template_update(linked_service, stubs, STUB_FAIL=failing)
    assert run_.returncode == 1, run_.describe()
    assert f"template-update: {message}" in run_.output
    assert run_.argvs[-1][:2] == failing.split()
    assert not run_.has("gh", "pr", "create")


def test_an_unreachable_template_is_an_error_not_an_update(linked_service, stubs):
    run_ = template_update(linked_service, stubs, template="unreachable")
    assert run_.returncode == 1, run_.describe()
    assert "cruft check failed" in run_.output
    assert run_.argvs[-1] == ["cruft", "check"]
