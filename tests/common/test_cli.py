"""Every command line of the project parses with common.cli.ArgumentParser: a bad flag is one line."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SELF_CONTAINED = ("training/trainer/", "deployment/serving/")  # uploaded or built alone: cannot import common/


def test_no_command_line_builds_a_plain_argparse_parser() -> None:
    packages = [d for d in REPO_ROOT.iterdir() if (d / "__init__.py").is_file() or (d / "__main__.py").is_file()]
    plain = []
    for path in (path for package in packages for path in package.rglob("*.py")):
        name = path.relative_to(REPO_ROOT).as_posix()
        if name.startswith(("tests/", "common/cli.py", *SELF_CONTAINED)):
            continue
        if "argparse.ArgumentParser(" in path.read_text(encoding="utf-8"):
            plain.append(name)
    assert plain == [], f"use common.cli.ArgumentParser (one-line errors) in {plain}"
