"""dvc.yaml: every stage depends on its own script and on every quantlab module that script imports
(directly or through other modules), so that DVC reruns exactly the stages a code change can affect."""

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Modules that hold paths, read params or report errors, and package docstrings: they decide nothing a stage
# computes (stage checks the names in params against the registries, which is no routing).
INFRASTRUCTURE = {"quantlab/errors.py", "quantlab/config.py", "quantlab/stage.py", "quantlab/paths.py",
                  "quantlab/__init__.py", "quantlab/quantize/__init__.py", "quantlab/inference/__init__.py",
                  "quantlab/report/__init__.py"}


def module_file(dotted: str) -> str | None:
    """The file of a quantlab module or package, relative to the repository, or None if there is none."""
    path = dotted.replace(".", "/")
    return next((f for f in (f"{path}.py", f"{path}/__init__.py") if (ROOT / f).exists()), None)


def quantlab_imports(path: Path) -> set[str]:
    """The quantlab modules a file imports, anywhere in it (module-level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "quantlab":
            # `from quantlab.pkg import module` names modules; `from quantlab.module import name` a module
            found |= {module_file(f"{node.module}.{alias.name}") or module_file(node.module) for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {module_file(a.name) for a in node.names if a.name.startswith("quantlab.")}
    return found - {None}


def closure(path: str) -> set[str]:
    seen, todo = set(), [path]
    while todo:
        for module in quantlab_imports(ROOT / todo.pop()) - seen:
            seen.add(module)
            if module not in INFRASTRUCTURE:
                todo.append(module)
    return seen


def stages():
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        yield name, stage.get("do", stage)


def test_every_stage_depends_on_its_script_and_the_code_it_imports():
    for name, stage in stages():
        module = stage["cmd"].split()[2]  # python -m stages.<name> [model]
        script = module.replace(".", "/") + ".py"
        deps = set(stage["deps"])
        assert script in deps, f"{name}: {script} missing from deps"
        missing = closure(script) - INFRASTRUCTURE - deps
        assert not missing, f"{name}: add {sorted(missing)} to its deps"


def test_every_stage_that_computes_depends_on_the_pinned_arithmetic():
    """quantlab/compute.py and the compute params decide the kernels of every stage that does arithmetic."""
    for name, stage in stages():
        assert ("compute" in stage.get("params", [])) == ("quantlab/compute.py" in stage["deps"]), name
        if name not in ("check_params", "download", "pdf"):
            assert "compute" in stage["params"], f"{name}: add the compute params"


def test_every_code_dependency_exists():
    for name, stage in stages():
        for dep in stage["deps"]:
            if dep.endswith(".py") or dep.endswith(".j2"):
                assert (ROOT / dep).exists(), f"{name}: {dep} does not exist"
