"""The layering: ``fsar`` (the library) never imports ``pipelines`` (the jobs) nor Ray, MLflow or the video
decoders at import time, no module imports another that imports it back, and no test module imports another
(shared test code is in ``tests/helpers.py`` and ``tests/conftest.py``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("pipelines", "ray", "mlflow", "av", "decord")


def module_names(package: str) -> list[str]:
    names = []
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def imports_of(name: str) -> set[str]:
    """Every module ``name`` imports, at the top or inside a function (lazy imports count too)."""
    parts = name.split(".")
    path = REPO.joinpath(*parts)
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return found


def test_every_fsar_module_imports_alone_without_the_jobs_ray_mlflow_or_decoders():
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {BLOCKED!r}:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import importlib\n"
        "importlib.import_module(sys.argv[1])\n"
    )

    def fresh_import(name: str) -> tuple[str, str]:
        proc = subprocess.run([sys.executable, "-c", blocker, name], cwd=REPO, capture_output=True, text=True)
        return name, "" if proc.returncode == 0 else proc.stderr.strip().splitlines()[-1]

    names = module_names("fsar")
    assert len(names) > 40
    with ThreadPoolExecutor(2) as pool:
        failures = {name: error for name, error in pool.map(fresh_import, names) if error}
    assert not failures, failures


def test_the_library_never_names_the_jobs():
    offenders = {name: sorted(i for i in imports_of(name) if i.split(".")[0] == "pipelines")
                 for name in module_names("fsar")}
    assert not {k: v for k, v in offenders.items() if v}


@pytest.mark.parametrize("package", ["fsar", "pipelines"])
def test_no_module_imports_another_that_imports_it_back(package):
    names = set(module_names("fsar")) | set(module_names("pipelines"))
    graph = {name: {i for i in imports_of(name) if i in names and i != name} for name in names}
    cycles = []
    for start in sorted(n for n in names if n.split(".")[0] == package):
        seen, stack = {start}, [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" → ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not cycles, cycles[:5]


def package_of(module: str) -> str:
    """``fsar.sources.features`` → ``fsar.sources``; a top-level module (``fsar.devices``) is its own package."""
    return ".".join(module.split(".")[:2])


def test_no_package_of_fsar_imports_a_package_that_imports_it_back():
    names = set(module_names("fsar"))
    graph: dict[str, set[str]] = {}
    for name in names:
        targets = {package_of(i) for i in imports_of(name) if i in names or package_of(i) in names}
        graph.setdefault(package_of(name), set()).update(t for t in targets if t != package_of(name))
    cycles = []
    for start in sorted(graph):
        seen, stack = {start}, [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    cycles.append(" → ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert len(graph) > 10
    assert not cycles, cycles[:5]


def test_no_source_file_is_over_400_lines():
    long = {str(path.relative_to(REPO)): n for package in ("fsar", "pipelines") for path in (REPO / package).rglob("*.py")
            if (n := len(path.read_text().splitlines())) > 400}
    assert not long, long


def imported_test_modules(path: Path) -> list[str]:
    """The imports of ``test_*`` modules anywhere in the file at ``path`` (``import test_x``, ``from test_x
    import y``, ``import tests.test_x``, ``from tests import test_x``, ``from .test_x import y``, ...), each
    as ``line N: <the import statement>``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
            if node.module in (None, "tests"):  # `from tests import test_x`, `from . import test_x`
                names += [alias.name for alias in node.names]
        else:
            continue
        if any(part.startswith("test_") for name in names for part in name.split(".")):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_no_test_module_imports_another():
    """A test module that imports another depends on its internals and drags in its imports and fixtures
    (as ``tests.test_x``, a second copy of it under another name): shared helpers go in ``helpers.py``,
    shared fixtures in ``conftest.py``."""
    files = sorted((REPO / "tests").glob("*.py"))
    assert len(files) > 40 and REPO / "tests" / "helpers.py" in files
    offenders = {path.name: found for path in files if (found := imported_test_modules(path))}
    assert not offenders, offenders
