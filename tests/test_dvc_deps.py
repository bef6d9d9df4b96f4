"""DVC stage deps are the code the stage runs: every file of `prelar` its command imports, found by walking
the import graph (ast) from the module `prelar.cli` dispatches the command to; nothing stale, nothing that
would re-run a stage when code it never runs changes (editing the report must not re-run pre-training)."""

import ast
import functools
from pathlib import Path

import pytest
import yaml

from prelar import cli

REPO = Path(__file__).resolve().parents[1]
PIPELINES = [REPO / "dvc.yaml", *sorted((REPO / "pipelines").glob("*/dvc.yaml"))]
INGEST = "prelar.data.ingest"  # `prelar ingest <source>` runs this module and `prelar.data.<source>`
# The modules `prelar.cli` dispatches to: an import of one of them from cli.py is a dispatch (it runs for
# that subcommand only), not code every stage runs.
DISPATCHED = {module for module, _ in cli.COMMANDS.values()} | {INGEST}


def module_file(name: str) -> Path | None:
    """The file of module `name` of this repository (a package: its __init__.py), else None."""
    base = REPO.joinpath(*name.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def _run_time_nodes(node: ast.AST):
    """`node` and the nodes under it, but not the body of `if TYPE_CHECKING:` (imports for type hints)."""
    yield node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            yield from (n for stmt in child.orelse for n in _run_time_nodes(stmt))
        else:
            yield from _run_time_nodes(child)


@functools.cache
def imports_of(name: str) -> frozenset[str]:
    """The `prelar` modules that module `name` imports, at module level or inside functions (a lazy import
    runs when its function does), or through `importlib.import_module("<constant>")`."""
    path = module_file(name)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _run_time_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from ..data import y
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # submodules among the names
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.add(node.args[0].value)
    found = {m for m in found if m.split(".")[0] == "prelar" and module_file(m)}
    return frozenset(found - DISPATCHED if name == "prelar.cli" else found)


def closure(roots: list[str]) -> set[str]:
    """`roots` and all they import, transitively, with the packages above each (their __init__ runs)."""
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += imports_of(name)
    return seen


def entry_modules(cmd: str) -> list[str]:
    """The modules a stage's `prelar ...` command runs: the CLI and the module it dispatches to."""
    argv = cmd.split()
    assert argv[0] == "prelar", f"{cmd!r}: not a `prelar` command; teach this test what it imports"
    command = argv[1]
    entry = [cli.COMMANDS[command][0] if command in cli.COMMANDS else INGEST]
    if command == "ingest":
        entry.append(f"prelar.data.{argv[2]}")  # the source, imported by name
    assert all(module_file(m) for m in entry), f"{cmd!r}: no module {entry}"
    return ["prelar.cli", *entry]


def imported_files(cmd: str) -> set[str]:
    """Repository-relative paths of the `prelar` files the command imports."""
    return {module_file(m).relative_to(REPO).as_posix() for m in closure(entry_modules(cmd))}


def covered(files: set[str], deps: list[str]) -> set[str]:
    return {f for f in files for d in deps if f == d or f.startswith(d.rstrip("/") + "/")}


def suggested_deps(files: set[str], folder: Path = REPO / "prelar") -> list[str]:
    """The shortest deps list covering exactly `files`: a folder where every .py file under it is imported."""
    rel = folder.relative_to(REPO).as_posix()
    if {p.relative_to(REPO).as_posix() for p in folder.rglob("*.py")} <= files:
        return [rel]
    deps = []
    for child in sorted(folder.iterdir()):
        path = child.relative_to(REPO).as_posix()
        if child.is_dir() and child.name != "__pycache__":
            deps += suggested_deps(files, child) if any(f.startswith(path + "/") for f in files) else []
        elif path in files:
            deps.append(path)
    return deps


def _stages() -> list[tuple[str, str, list[str]]]:
    """(name, cmd, deps relative to the repository root) of every stage; foreach/matrix stages once."""
    stages = []
    for pipeline in PIPELINES:
        for name, stage in yaml.safe_load(pipeline.read_text())["stages"].items():
            body = stage.get("do", stage)
            wdir = (pipeline.parent / body.get("wdir", ".")).resolve()
            deps = [(wdir / d).resolve().relative_to(REPO).as_posix() for d in body.get("deps", [])]
            stages.append((f"{pipeline.relative_to(REPO)}:{name}", body["cmd"], deps))
    return stages


STAGES = _stages()


def test_every_pipeline_stage_is_checked():
    names = {name.rpartition(":")[2] for name, _, _ in STAGES}
    assert {"ingest_metaworld", "pretrain", "evaluate_probe", "finetune", "report", "ingest_ssv2"} <= names


@pytest.mark.parametrize(("name", "cmd", "deps"), STAGES, ids=[s[0] for s in STAGES])
def test_stage_deps_are_the_code_it_imports(name, cmd, deps):
    files = imported_files(cmd)
    code_deps = [d for d in deps if d == "prelar" or d.startswith("prelar/")]
    hint = f"\nsuggested code deps for {name}:\n" + "\n".join(f"  - {d}" for d in suggested_deps(files))

    missing = files - covered(files, code_deps)
    assert not missing, f"{name} imports {sorted(missing)}, not in its deps (stale results)" + hint

    for dep in code_deps:  # every dep is needed: removing it leaves an imported file uncovered
        rest = [d for d in code_deps if d != dep]
        assert files - covered(files, rest), f"{name}: dep {dep} covers no file only it covers" + hint

    others = {module_file(m).relative_to(REPO).as_posix() for m in DISPATCHED}
    py_files = {p.relative_to(REPO).as_posix() for p in (REPO / "prelar").rglob("*.py")}
    needless = covered(py_files & others, code_deps) - files
    assert not needless, f"{name}: deps cover {sorted(needless)}, which it never runs" + hint


def test_the_import_walk_finds_what_pretraining_runs_and_a_removed_dep():
    """The check itself, on known facts: pretrain runs the world model, its nets and the shard reader, not
    the report; its deps without `prelar/nets` (a hand-picked list's usual gap) leave the RSSM uncovered."""
    name, cmd, deps = next(s for s in STAGES if s[0].endswith(":pretrain"))
    files = imported_files(cmd)
    assert {"prelar/world_model.py", "prelar/nets/rssm.py", "prelar/data/shards.py"} <= files
    assert "prelar/evaluate/report.py" not in files  # the report is not pre-training's code
    without = [d for d in deps if not d.startswith("prelar/nets")]
    assert "prelar/nets/rssm.py" in files - covered(files, without)
