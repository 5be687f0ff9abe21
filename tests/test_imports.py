"""How the project's modules depend on each other: every module imports, the imports among them form
no cycle (a function-level import counts: it only hides the cycle until the function runs), the
two packages point one way (dataprep builds on fasthpt's small core; of fasthpt, only the commands
that orchestrate both stages import dataprep), and the CLI's entry point stays free of the heavy
training and loader stacks."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fasthpt", "dataprep")
# Third-party modules a fasthpt module may need that an install can lack (pyproject's extras).
OPTIONAL = ("ffcv", "numba", "nvidia")
# fasthpt's core: what dataprep (the writer of prepared folders) shares with the readers (the
# manifest's schema, the bytes of a raster sample). It imports nothing else of the project. names:
# what may name a folder; locks: lock descriptors forked children drop; feature_cache: the
# evaluators' files in a prepared folder, which prep counts as its own.
CORE = {"fasthpt", "fasthpt.errors", "fasthpt.fileio", "fasthpt.manifest", "fasthpt.raster_format", "fasthpt.names",
        "fasthpt.locks", "fasthpt.feature_cache"}
# ...and the one module of FFCV internals, which the .beton writer relies on as the loader does.
FFCV_FENCE = {"fasthpt.data", "fasthpt.data.ffcv_compat"}
# The commands that run both stages; the loaders, models, training and evaluation never import dataprep.
ORCHESTRATORS = ("fasthpt.cli", "fasthpt.demo", "fasthpt.embed", "fasthpt.image_folder", "fasthpt.experiment")


def project_modules() -> dict[str, Path]:
    """Dotted name -> source file of every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(node: ast.AST, package: str) -> list[str]:
    """The dotted names an import statement asks for (``from a import b`` asks for a.b and a), or
    an ``importlib.import_module("a.b")`` call with the name written out."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module":
        name = node.args[0] if node.args else None
        return [name.value] if isinstance(name, ast.Constant) and isinstance(name.value, str) else []
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: resolved against the importing module's package
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([node.module] if node.module else []))
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules its import statements run, anywhere in the file. Importing
    a.b.c runs the packages a and a.b first, unless they enclose the importer (then they are
    already running)."""
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        enclosing = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in _imported(node, package):
                parts = target.split(".")
                edges |= {m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if m in modules}
        graph[name] = edges - enclosing - {name}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start``'s imports lead to (``start`` itself only through a cycle)."""
    seen, todo = set(), list(graph[start])
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph[name])
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other (strongly connected, more than one module)."""
    reach = {name: reachable(graph, name) for name in graph}
    groups = {tuple(sorted(m for m in reach[name] if name in reach[m])) for name in graph if name in reach[name]}
    return sorted(list(g) for g in groups)


def test_cycles_reports_each_circle_and_accepts_a_dag():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": {"a"}}
    assert cycles(graph) == [["a", "b", "c"], ["d", "e"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_graph_sees_function_level_and_package_imports():
    graph = import_graph()
    assert "fasthpt.trainer_setup" in graph["fasthpt.train"]  # a module-level import
    assert "fasthpt.train" in graph["fasthpt.pretrain"]  # imported inside pretrain.run
    assert "fasthpt.data" in graph["fasthpt.trainer_setup"]  # the package runs before its module


def test_graph_sees_import_module_with_a_written_name():
    assert "fasthpt.data.ffcv_compat" in import_graph()["dataprep.writers"]


def test_no_import_cycle():
    found = cycles(import_graph())
    assert found == [], "modules that import each other: " + "; ".join(", ".join(c) for c in found)


def _into(graph: dict[str, set[str]], importers: str, imported: str) -> dict[str, list[str]]:
    """Module of package ``importers`` -> the modules of package ``imported`` it imports."""
    found = {m: sorted(e for e in edges if e.split(".")[0] == imported)
             for m, edges in graph.items() if m.split(".")[0] == importers}
    return {m: e for m, e in found.items() if e}


def test_dataprep_builds_on_fasthpts_core_only():
    outside = {m: [e for e in edges if e not in CORE | FFCV_FENCE]
               for m, edges in _into(import_graph(), "dataprep", "fasthpt").items()}
    assert {m: e for m, e in outside.items() if e} == {}


def test_the_core_imports_nothing_else_of_the_project():
    graph = import_graph()
    assert {m: sorted(reachable(graph, m) - CORE) for m in CORE} == {m: [] for m in CORE}


def test_only_the_orchestrating_commands_import_dataprep():
    users = _into(import_graph(), "fasthpt", "dataprep")
    assert users and sorted(m for m in users if not m.startswith(ORCHESTRATORS)) == []


@pytest.mark.parametrize("name", sorted(project_modules()))
def test_every_module_imports(name):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in OPTIONAL:
            pytest.skip(f"{name} needs {exc.name}, not installed here")
        raise


def _imported_by(code: list[str], cwd: Path) -> tuple[set[str], subprocess.CompletedProcess]:
    """Every module a fresh interpreter imports running ``code``, from ``-X importtime``'s report."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *code], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    names = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return names, proc


def test_cli_imports_neither_ffcv_nor_composer(tmp_path):
    names, proc = _imported_by(["-c", "import fasthpt.cli"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fasthpt.cli" in names
    heavy = sorted(n for n in names if n.split(".")[0] in ("ffcv", "composer"))
    assert heavy == [], heavy


def shadowing_names() -> list[str]:
    """Names in fasthpt/ that a top-level import could also mean: run as a file, fasthpt/train.py
    puts fasthpt/ first on sys.path, where such a name would resolve to our file instead."""
    from importlib.metadata import packages_distributions

    here = ROOT / "fasthpt"
    ours = {p.stem for p in here.glob("*.py")} | {p.name for p in here.iterdir() if (p / "__init__.py").is_file()}
    installed = set(packages_distributions()) | set(sys.stdlib_module_names) | set(sys.builtin_module_names)
    return sorted(ours & installed)


def test_nothing_in_fasthpt_shadows_a_standard_or_installed_module():
    assert shadowing_names() == []


def test_shadowing_check_sees_a_stdlib_name(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "fasthpt" / "logging").mkdir(parents=True)
    (tmp_path / "fasthpt" / "logging" / "__init__.py").write_text("")
    (tmp_path / "fasthpt" / "config.py").write_text("")
    assert shadowing_names() == ["logging"]
