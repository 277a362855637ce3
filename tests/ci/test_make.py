"""The Makefile's wiring, read with `make -n` (prints the commands, runs none of them)."""
from __future__ import annotations

import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def planned(*target: str) -> list[str]:
    done = subprocess.run(["make", "--no-print-directory", "-n", *target], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [line.strip() for line in done.stdout.splitlines() if line.strip() and not line.startswith("#")]


def position(lines: list[str], fragment: str) -> int:
    return next(i for i, line in enumerate(lines) if fragment in line)


def test_check_lints_then_runs_only_the_fast_tests() -> None:
    lines = planned("check")
    ruff, actionlint = position(lines, ".venv/bin/ruff check ."), position(lines, "actionlint -shellcheck= -pyflakes=")
    pytest = position(lines, "-m pytest")
    assert ruff < actionlint < pytest
    assert '-m "not slow and not e2e"' in lines[pytest] and "-n auto" in lines[pytest]  # pytest-xdist, every core


def test_test_lints_then_runs_everything_and_lists_the_slowest() -> None:
    lines = planned("test")
    pytest = position(lines, "-m pytest")
    assert position(lines, ".venv/bin/ruff check .") < pytest and position(lines, "actionlint") < pytest
    assert "--durations=15" in lines[pytest] and " -m " not in lines[pytest].split("pytest", 1)[1]


def test_azure_smoke_runs_the_smoke_module_on_the_smoke_stack() -> None:
    assert planned("azure-smoke", "DRY_RUN=1")[-1] == ".venv/bin/python -m deployment.smoke --stack smoke --dry-run"
    assert planned("azure-smoke", "STACK=mine")[-1] == ".venv/bin/python -m deployment.smoke --stack mine"


def test_test_builds_the_vllm_venv_then_requires_it() -> None:
    """`make test` (so CI on a fresh clone) builds .venv-vllm from its lock before the suite, and the suite
    then fails, rather than skips, vLLM's tests when that environment is missing."""
    lines = planned("-B", "test")  # -B: as on a fresh clone, where no stamp exists yet
    pytest = position(lines, "-m pytest")
    assert position(lines, "-r requirements-vllm.lock") < pytest
    assert position(lines, "--no-index torch==2.13.0+cpu") < position(lines, "-r requirements-vllm.lock")
    assert "download.pytorch.org/whl/cpu" in lines[position(lines, "--no-index torch==2.13.0+cpu")]  # the fallback
    assert lines[pytest].startswith("env -u PYTHONDONTWRITEBYTECODE FINETUNE_PHI_REQUIRE_VLLM=1 ")


def test_test_installs_azurite_from_its_lock_before_the_tests() -> None:
    """`make test` (CI) installs the pinned Azurite when its lock changed (-W: as if it had), before pytest."""
    lines = planned("-W", "tools/azurite/package-lock.json", "test")
    npm = position(lines, "npm ci --prefix tools/azurite")
    assert npm < position(lines, "-m pytest")
