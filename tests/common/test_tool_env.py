"""Every command runs with telemetry off and without the SDK's credential-chain dump (common/tool_env.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.tool_env import ENV
from fakes.inputs import write_data, write_stack_outputs

PRINT_ENV = "from common.cli import run_cli; import os; run_cli(lambda argv: print(*(os.environ.get(k) for k in {keys!r})))"


def _without_tool_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ENV}


def test_run_cli_sets_the_project_environment_and_a_callers_choice_wins() -> None:
    keys = sorted(ENV)
    code = PRINT_ENV.format(keys=keys)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_without_tool_env(), timeout=60)
    assert done.stdout.split() == [ENV[k] for k in keys]
    opted_in = {**_without_tool_env(), "MLFLOW_DISABLE_TELEMETRY": "false"}
    code = PRINT_ENV.format(keys=["MLFLOW_DISABLE_TELEMETRY"])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=opted_in, timeout=60)
    assert done.stdout.split() == ["false"]


def _signed_out_env(tmp_path: Path) -> dict[str, str]:
    """No credential anywhere: an empty HOME and Azure CLI folder, no AZURE_* variables."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "MSI_", "IDENTITY_"))}
    env.update(HOME=str(home), AZURE_CONFIG_DIR=str(home / "azure-cli"), FINETUNE_PHI_PREFLIGHT="on",
               FINETUNE_PHI_RUNS=str(tmp_path / "runs"))
    return env


@pytest.mark.parametrize("command", [
    ["infra.preflight", "--for", "submit"],
    pytest.param(["training.submit", "--no-stream"], marks=pytest.mark.slow),  # imports azure-ai-ml: seconds
])
def test_not_signed_in_is_one_line_and_verbose_shows_the_credential_chain(command: list[str], tmp_path: Path) -> None:
    """The real DefaultAzureCredential, with nothing to sign in with: it fails on this machine, offline."""
    outputs = write_stack_outputs(tmp_path / "outputs.json")
    argv = [sys.executable, "-m", *command, "--outputs-file", str(outputs)]
    if command[0] == "training.submit":
        argv += ["--data", str(write_data(tmp_path / "data"))]
    env = _signed_out_env(tmp_path)
    quiet = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert quiet.returncode == 1
    errors = [line for line in quiet.stderr.splitlines() if not line.startswith(("==>", "    "))]
    assert len(errors) == 1 and errors[0].startswith("error: checking your permissions on workspace ws-phi: "
                                                     "not signed in to Azure"), quiet.stderr
    assert "EnvironmentCredential" not in quiet.stderr
    home = Path(env["HOME"])
    assert {p.name for p in home.iterdir()} <= {"azure-cli"}  # no ~/.IdentityService (the shared token cache)
    verbose = subprocess.run(argv + ["--verbose"], capture_output=True, text=True, env=env, timeout=120)
    assert verbose.returncode == 1 and "not signed in to Azure" in verbose.stderr.splitlines()[-1]
    assert "EnvironmentCredential" in verbose.stderr and "Attempted credentials" in verbose.stderr
