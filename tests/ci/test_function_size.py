"""No function over 80 lines outside tests: a long function is a list of steps waiting for names."""
from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 80
PENDING = {"create_app"}
"""The server's app factory (147 lines), which the serving-edge issue splits; nothing else may join it."""


def long_functions(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] in ("tests", "runs", ".venv") or relative.parts[0].startswith("."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES and node.name not in PENDING:
                    found.append(f"{relative}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_over_80_lines(tmp_path: Path) -> None:
    assert long_functions(REPO_ROOT) == []
    # and the check sees one
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "long.py").write_text("def f():\n" + "    x = 1\n" * MAX_LINES)
    assert long_functions(tmp_path) == [f"pkg/long.py:1 f ({MAX_LINES + 1} lines)"]
