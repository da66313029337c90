"""The package reads as the data flows: foundations below every domain, domains in the order the
data flows, each importing only what is below it; no import circle; no private Dagster API."""

from __future__ import annotations

import ast
from pathlib import Path

from churn_assets_tests.helpers import REPO

PACKAGE = REPO / "churn_assets"
# Domains in the order the data flows: a domain imports only foundations and domains before it.
DOMAINS = ["bronze", "silver", "gold", "ml", "dashboards", "campaigns", "automation"]
# The entry points above everything: they may import anything, nothing imports them.
TOP = {"churn_assets.definitions", "churn_assets.cli", "churn_assets.summary"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every churn_assets module a file imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("churn_assets"):
                found.add(node.module)
                # `from churn_assets.defs.ml import registry` imports a module too
                found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("churn_assets"))
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def layer(module: str) -> tuple[int, str]:
    """(rank, label): foundations 0, domains 1.. in data-flow order, entry points last."""
    if module in TOP:
        return len(DOMAINS) + 1, "entry point"
    parts = module.split(".")
    if len(parts) > 2 and parts[1] == "defs":
        return DOMAINS.index(parts[2]) + 1, f"defs/{parts[2]}"
    if module == "churn_assets.defs":
        return 1, "defs"
    return 0, "foundation"


def test_every_domain_folder_is_known():
    folders = sorted(p.name for p in (PACKAGE / "defs").iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(DOMAINS)


def test_imports_only_go_down_the_layers():
    wrong = []
    for module, imported in graph().items():
        rank, label = layer(module)
        for target in imported:
            target_rank, target_label = layer(target)
            same_layer = label == target_label  # a domain's own modules; the entry points among themselves
            if not (target_rank < rank or same_layer or rank == 0 == target_rank):
                wrong.append(f"{module} ({label}) imports {target} ({target_label})")
    assert wrong == []


def test_no_import_circle():
    edges = graph()
    seen: dict[str, int] = {}  # 1 = on the current path, 2 = done
    circles = []

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(edges[node]):
            if seen.get(nxt) == 1:
                circles.append(" -> ".join([*path[path.index(nxt) :], nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[node] = 2

    for start in sorted(edges):
        if start not in seen:
            visit(start, [start])
    assert circles == []


def test_no_private_dagster_api_and_one_reader_of_the_environment():
    private, environ = [], []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if "os.environ" in text and path.name != "settings.py":
            environ.append(str(path.relative_to(REPO)))
    # The tests and benchmarks use Dagster's public API too (they are examples users copy).
    for folder in (PACKAGE, REPO / "churn_assets_tests", REPO / "benchmarks"):
        for path in folder.rglob("*.py"):
            if path.name != "test_layers.py" and "dagster._" in path.read_text(encoding="utf-8"):
                private.append(str(path.relative_to(REPO)))
    assert private == [] and environ == []


def test_the_checker_sees_a_wrong_import(tmp_path):
    # The rule can fail: an up-arrow written into a foundation module is reported.
    bad = tmp_path / "bad.py"
    bad.write_text("from churn_assets.defs.ml.train import train\n")
    assert "churn_assets.defs.ml.train" in imports_of(bad)
    assert layer("churn_assets.warehouse")[0] < layer("churn_assets.defs.ml.train")[0]
