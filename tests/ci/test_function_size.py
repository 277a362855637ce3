"""No function over 80 lines outside tests: a long function is a list of steps waiting for names."""
from __future__ import annotations

import ast
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 80
SKIPPED = {"tests", "runs", "node_modules"}
"""Folders that hold no project code (hidden ones too: .venv, .venv-vllm, .git), pruned before the walk enters them."""


def project_sources(root: Path) -> list[Path]:
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in SKIPPED and not name.startswith(".")]
        found += [Path(folder, name) for name in files if name.endswith(".py")]
    return sorted(found)


def long_functions(root: Path) -> list[str]:
    found = []
    for path in project_sources(root):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_over_80_lines(tmp_path: Path) -> None:
    assert long_functions(REPO_ROOT) == []
    # and the check sees one
    for folder in ("pkg", "tests", ".venv"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "long.py").write_text("def f():\n" + "    x = 1\n" * MAX_LINES)
    assert long_functions(tmp_path) == [f"pkg/long.py:1 f ({MAX_LINES + 1} lines)"]
