"""Project hygiene that CI depends on."""

from pathlib import Path
from conftest import REPO, run_command



def _quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```bash\n")[1:]
    return [block.split("```", 1)[0].strip() for block in blocks]


def test_ci_runs_exactly_the_readme_test_command():
    commands = _quick_start_commands()
    assert len(commands) == 2, "the README's quick start has exactly two commands: main job, tests"
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci_lines[-1] == commands[1]
    assert "monai.bundle run training --config_file configs/train.json" in commands[0]


def _config_texts():
    """Every JSON config of configs/ (tasks, options, recipes, networks included) with its path."""
    import json

    for path in sorted((REPO / "configs").rglob("*.json")):
        yield path, json.loads(path.read_text())


def test_no_config_addresses_a_list_element_by_index():
    """Overlays and references target names (``train#augment``), never positions (``...#transforms#5``):
    inserting a transform into a list must not silently retarget another file."""
    import re

    index = re.compile(r"#\d+(#|\b)")
    found = []

    def walk(node, path, where):
        if isinstance(node, dict):
            for key, value in node.items():
                if index.search(key):
                    found.append(f"{path}: key {where}{key}")
                walk(value, path, f"{where}{key}#")
        elif isinstance(node, list):
            for value in node:
                walk(value, path, where)
        elif isinstance(node, str) and node[:1] in "$@%" and index.search(node):
            found.append(f"{path}: {where[:-1]} = {node[:80]}")

    for path, config in _config_texts():
        walk(config, path.relative_to(REPO), "")
    assert not found, "configs address list elements by index:\n" + "\n".join(found)


def test_readme_task_table_lists_the_registry():
    """README's table of tasks names exactly the folders of configs/tasks/ (the registry is the one list)."""
    from transfuse_bundle.tools.tasks import task_names

    text = (REPO / "README.md").read_text()
    section = text.split("## Tasks", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1].strip(" `") for line in section.splitlines() if line.startswith("| `")]
    assert rows == task_names()


def test_readme_task_commands_are_the_registry_s():
    """The commands README shows for each task are those ``python -m transfuse_bundle.tools.tasks`` prints (the merge
    order of transfuse_bundle.tools.tasks.CHAINS), so the docs cannot drift from the task folders."""
    import sys

    from transfuse_bundle.tools.tasks import commands, task_names

    section = (REPO / "README.md").read_text().split("## Tasks", 1)[1].split("\n## ", 1)[0]
    shown = [line.removesuffix(" --dataset_dir DIR") for line in section.split("```bash\n", 1)[1].split("```")[0].splitlines()
             if line.startswith("python -m monai.bundle")]
    assert shown == [command for task in task_names() for command in commands(task).values()]
    printed = run_command([sys.executable, "-m", "transfuse_bundle.tools.tasks"]).stdout
    assert all(command in printed for command in shown)


def _repository_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored files (git), or, without git, the files of the top-level folders."""
    import subprocess

    try:
        listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                 capture_output=True, check=True).stdout.decode()
        files = [REPO / name for name in listing.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):  # an unpacked archive: no .git
        files = [p for top in REPO.iterdir() if not top.name.startswith(".") or top.name == ".ci"
                 for p in ([top] if top.is_file() else top.rglob("*"))]
    return [p for p in files if p.is_file() and "__pycache__" not in p.parts]


def test_nothing_edits_sys_path():
    """The package is imported because it is installed (pip install -e .) or is the bundle root MONAI puts on the
    path, never because a file pushes a folder onto sys.path."""
    needle = b"sys.path." + b"insert"  # spelt in two parts so that this file does not match itself
    offenders = [str(p.relative_to(REPO)) for p in _repository_files() if needle in p.read_bytes()]
    assert not offenders, f"{needle.decode()} in {offenders}: import the installed package instead"


#: requirements a ``--no-deps`` file leaves out on purpose (requirements-monailabel.txt says why).
DELIBERATELY_MISSING = {"requirements-monailabel.txt": {"sam2", "ninja", "numpymaxflow"}}


def test_no_deps_requirement_files_pin_every_runtime_dependency():
    """``pip install --no-deps -r F`` after ``pip install -e .`` installs nothing F does not pin, so each
    package F pins must find its runtime requirements in the project's own dependencies (and theirs) or in F.
    The dev venv hides a gap: the ``[test]`` extra's mlflow brings cloudpickle, which joblib imports."""
    import tomllib
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    def runtime_requirements(name: str) -> set[str]:
        requirements = (Requirement(text) for text in metadata.requires(name) or [])
        return {canonicalize_name(r.name) for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})}

    installed, todo = set(), [Requirement(text).name for text in
                              tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    while todo:  # everything `pip install -e .` installs
        name = canonicalize_name(todo.pop())
        if name not in installed:
            installed.add(name)
            todo.extend(runtime_requirements(name))
    gaps = {}
    for path in sorted(REPO.glob("requirements-*.txt")):
        lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
        pins = {canonicalize_name(Requirement(line).name) for line in lines if line}
        available = installed | pins | DELIBERATELY_MISSING.get(path.name, set())
        for pin in sorted(pins):
            missing = runtime_requirements(pin) - available
            if missing:
                gaps[f"{path.name}: {pin}"] = sorted(missing)
    assert not gaps, f"runtime requirements neither installed by the project nor pinned: {gaps}"


def test_constraints_pin_within_the_declared_ranges_and_metadata_states_them():
    """pyproject.toml declares ranges (installable next to other MONAI tools), constraints.txt pins the tested set
    (the README's test set-up installs with it), and configs/metadata.json states the versions a bundle is made with:
    every pin lies in its declared range, and the metadata's versions are the pins."""
    import json
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = (line.split("#", 1)[0].strip() for line in (REPO / "constraints.txt").read_text().splitlines())
    pins = {canonicalize_name(r.name): str(r.specifier).removeprefix("==") for r in map(Requirement, filter(None, lines))}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [Requirement(t) for t in project["dependencies"] + project["optional-dependencies"]["cpu"]
                + project["optional-dependencies"]["test"] if not t.startswith("transfuse-bundle")]
    for requirement in declared:
        assert str(requirement.specifier).count("==") == 0, f"{requirement}: pyproject.toml declares ranges, pins go to constraints.txt"
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name]), f"constraints.txt pins {name}=={pins[name]} outside {requirement}"
    meta = json.loads((REPO / "configs" / "metadata.json").read_text())
    stated = {"monai": meta["monai_version"], "torch": meta["pytorch_version"], "numpy": meta["numpy_version"],
              **meta["required_packages_version"]}
    assert {name: pins.get(canonicalize_name(name)) for name in stated} == stated
    ci = (REPO / ".ci" / "run").read_text()
    assert "-c constraints.txt" in ci and "requirements-hub.txt" in ci
