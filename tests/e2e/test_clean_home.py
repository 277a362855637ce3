"""No tool state in $HOME: `make setup`, `make demo` and the README's commands, run as a user runs them.

The commands run in a shell like a user's (the activated .venv, none of the variables tests/conftest.py
sets, HOME an empty folder). Afterwards HOME may hold only what deploy documents (docs/CHAT.md): Prompt
flow's connection store in ~/.promptflow, and keyrings.alt's file with its encryption key. Package
caches (pip, npm) would be allowed too; none of these commands installs anything. Prompt flow's own
options come from the repository's pf.yaml, telemetry switches from each command (common/tool_env.py).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ALLOWED = {
    # Prompt flow's connection store (PF_HOME_DIRECTORY's default): the database of the phi_endpoint
    # connection and its locks, and the version-check file `pf flow test` writes there on every run
    # (no setting turns it off; it lives where the store lives).
    ".promptflow/pf.sqlite", ".promptflow/pf.sqlite.lock", ".promptflow/encryption_key.lock",
    ".promptflow/pf_version_check.json",
    ".local/share/python_keyring/keyring_pass.cfg",  # keyrings.alt: the key that encrypts the connection's secret
}
PACKAGE_CACHES = (".cache/pip/", ".npm/")


def users_shell(home: Path, runs: Path) -> dict[str, str]:
    """`source .venv/bin/activate` in a fresh login shell: no test isolation variables, HOME empty."""
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH") + tuple(k for k in os.environ if k.startswith("PIP_"))
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(HOME=str(home), VIRTUAL_ENV=str(VENV_BIN.parent), PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
               FINETUNE_PHI_RUNS=str(runs),  # run outputs under tmp, as runs/ would be
               HF_HUB_OFFLINE="1")  # this machine has no model hub; nothing below needs one
    return env


def run(command: list[str], env: dict[str, str], timeout: int = 600) -> str:
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command}: {done.stderr[-3000:]}"
    return done.stdout


def setup_recipe(stamp: Path) -> list[str]:
    """The commands `make setup` runs when its stamp is stale (`make -n`: printed, not run)."""
    done = subprocess.run(["make", "--no-print-directory", "-n", "setup", f"STAMP={stamp}"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    joined = done.stdout.replace("\\\n", " ")  # a recipe line continued with a backslash is one shell command
    return [line.strip() for line in joined.splitlines() if line.strip()]


def run_make_setup(env: dict[str, str], tmp_path: Path) -> None:
    """Every step of make setup's recipe except the two package installs (which fill pip's cache, an
    allowed package cache, and would reinstall the shared .venv); then `make setup` itself when its
    stamp is fresh (a no-op that still reads the Makefile)."""
    stamp = tmp_path / "setup-stamp"
    recipe = setup_recipe(stamp)
    installs = [line for line in recipe if " -m pip install " in line]
    assert len(installs) == 2 and recipe[-2:] == [f"touch {stamp}", 'echo "==> .venv is ready"']
    for line in recipe:
        if line not in installs:
            subprocess.run(["bash", "-c", line], cwd=REPO_ROOT, env=env, check=True, timeout=300, capture_output=True)
    assert stamp.exists()
    if subprocess.run(["make", "-q", "setup"], cwd=REPO_ROOT, capture_output=True).returncode == 0:
        run(["make", "setup"], env)


def readme_commands(env: dict[str, str], runs: Path) -> None:
    """The README's offline path by hand, in the activated environment (no make)."""
    python = "python"
    run([python, "-m", "training.data", "--source", "sample", "--out", str(runs / "data")], env)
    run([python, "-m", "training.submit", "--target", "local", "--model", "tiny", "--data", str(runs / "data"),
         "--max-steps", "2"], env)
    try:
        run([python, "-m", "deployment.deploy", "--target", "local", "--eval-limit", "2"], env)
        run([python, "-m", "deployment.evaluate", "--target", "local", "--limit", "2"], env)
        answer = run(["pf", "flow", "test", "--flow", "flows/chat", "--inputs", "question=Who founded Intel?"], env)
        assert '"answer"' in answer
    finally:
        run([python, "-m", "deployment.teardown", "--target", "local"], env)
    outputs = {**env, "STACK_OUTPUTS_FILE": "docs/examples/stack-outputs.json"}
    run([python, "-m", "training.submit", "--dry-run", "--data", str(runs / "data")], outputs)
    run([python, "-m", "deployment.deploy", "--dry-run"], outputs)


def what_is_in(home: Path) -> set[str]:
    return {str(path.relative_to(home)) for path in home.rglob("*") if not path.is_dir()}


def test_setup_demo_and_readme_commands_leave_home_clean(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = users_shell(home, tmp_path / "runs")

    run_make_setup(env, tmp_path)
    assert what_is_in(home) == set(), "make setup wrote to HOME"

    fresh = tmp_path / "fresh-stamp"  # setup is done: make demo must not reinstall
    fresh.touch()
    demo_env = {**env, "FINETUNE_PHI_RUNS": str(tmp_path / "demo-runs")}
    printed = run(["make", "demo", f"STAMP={fresh}", "DEMO_FLAGS=--max-steps 4 --questions 1"], demo_env, timeout=900)
    assert "demo finished" in printed
    assert what_is_in(home) == set(), "make demo wrote to HOME"

    readme_commands(env, tmp_path / "runs")
    left = {name for name in what_is_in(home) if not name.startswith(PACKAGE_CACHES)}
    assert left <= ALLOWED, f"tool state in HOME: {sorted(left - ALLOWED)}"
    assert ".promptflow/pf.yaml" not in left and not (home / ".config").exists()
