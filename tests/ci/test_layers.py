"""The project's import graph: no cycle among its modules, and no import from a layer above.

Every import counts, at module level or inside a function (a lazy import is still a dependency).
The layers, bottom to top (docs/ARCHITECTURE.md, "Layers"):

    common      imports nothing of the project
    flows.chat  the Prompt flow, uploaded as is: only itself
    flows       common, flows.chat             (the chat page's command line)
    infra       common
    training    common, infra                  (training/trainer/: only itself, checked by its own test)
    deployment  common, infra, training, flows.chat
                (deployment/serving/, the server copied alone into its image: only itself)
    demo        everything; imported by nothing but tests
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "flows", "infra", "training", "deployment", "demo")
MAY_IMPORT = {
    "common": {"common"},
    "infra": {"common", "infra"},
    "training": {"common", "infra", "training"},
    "deployment": {"common", "infra", "training", "flows.chat", "deployment"},
    "demo": {*PACKAGES, "flows.chat"},
}
MAY_IMPORT |= {"flows.chat": {"flows.chat"}, "flows": {"common", "flows", "flows.chat"},
               "deployment.serving": {"deployment.serving"}}
MAY_IMPORT["deployment"].add("deployment.serving")
MAY_IMPORT["demo"].add("deployment.serving")
ISLANDS = ("flows.chat", "deployment.serving")
"""Packages shipped alone (the flow to Foundry, the server into its image): layers of their own."""


def layer(module: str) -> str:
    return next((island for island in ISLANDS if module == island or module.startswith(island + ".")),
                module.split(".")[0])


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in (REPO_ROOT / package).rglob("*.py")}


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports (the longest known module name each import names)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != me:
                found.add(name)
    return found


@functools.cache
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports(path, modules) for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_project_has_no_import_cycle() -> None:
    assert cycles(graph()) == []


def upward(edges: dict[str, set[str]]) -> list[str]:
    return [f"{module} imports {target}" for module, targets in sorted(edges.items()) for target in sorted(targets)
            if layer(target) not in MAY_IMPORT[layer(module)]]


def test_no_module_imports_from_a_layer_above() -> None:
    assert upward(graph()) == []


def test_the_checks_can_fail() -> None:
    """The checker sees a cycle and an upward import when there is one (so the two tests above can fail)."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert upward({"common.azure": {"infra.outputs"}, "deployment.smoke": {"demo.pipeline", "training.local_runs"},
                   "deployment.serving.app": {"common.cli"}, "deployment.local": {"deployment.serving.cli"},
                   "flows.chat.chat": {"flows.chat_page"}, "flows.chat_page": {"common.cli", "flows.chat.chat"}}) == [
        "common.azure imports infra.outputs", "deployment.serving.app imports common.cli",
        "deployment.smoke imports demo.pipeline", "flows.chat.chat imports flows.chat_page"]
    edges = graph()
    assert "deployment.rollout" in edges["deployment.azure_deploy"]  # imports are seen, relative ones too
    assert "flows.chat.endpoint_urls" in edges["flows.chat.phi_client"]


@pytest.mark.parametrize("package", ["demo"])
def test_demo_is_imported_by_nothing_but_tests(package: str) -> None:
    assert [m for m, targets in graph().items() if any(t.split(".")[0] == package for t in targets)
            and m.split(".")[0] != package] == []
