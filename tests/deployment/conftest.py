"""Shared fixtures for the deployment tests: the scoring script loaded like the server loads it,
the real Azure ML inference server on a free 127.0.0.1 port, Prompt flow state kept out of $HOME.

Server startup is the slow part (a few seconds each), so servers are module-scoped and shared.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest

from serving_helpers import free_port, load_score_module, stop, wait_healthy
from deploy_fixtures import *  # noqa: E402,F401,F403 (the deploy/teardown tests' fixtures, shared here once)

# Prompt flow keeps its connection encryption key in the keyring; keyrings.alt's file keyring
# writes under $XDG_DATA_HOME. Keep it in the session's state folder, not in $HOME.
os.environ.setdefault(
    "XDG_DATA_HOME", str(Path(os.environ.get("PF_HOME_DIRECTORY", "/tmp/pf")).parent / "xdg-data")
)


@pytest.fixture(scope="module")
def score(tiny_model_dir: Path) -> Iterator[ModuleType]:
    """score.py with init() done on the tiny model (save_pretrained layout), in-process."""
    module = load_score_module()
    previous = os.environ.get("AZUREML_MODEL_DIR")
    os.environ["AZUREML_MODEL_DIR"] = str(tiny_model_dir)
    try:
        module.init()
        yield module
    finally:
        if previous is None:
            os.environ.pop("AZUREML_MODEL_DIR", None)
        else:
            os.environ["AZUREML_MODEL_DIR"] = previous


@pytest.fixture(scope="module")
def azure_model_root(tmp_path_factory: pytest.TempPathFactory, trained_model_dir: Path) -> Path:
    """The trainer's MLflow output laid out as Azure ML mounts it: AZUREML_MODEL_DIR/<folder>/MLmodel."""
    root = tmp_path_factory.mktemp("azureml-models") / "finetune-phi" / "1"
    root.mkdir(parents=True)
    (root / "model").symlink_to(trained_model_dir, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def inference_server(tmp_path_factory: pytest.TempPathFactory, azure_model_root: Path) -> Iterator[str]:
    """`python -m deployment.serve` (the real inference server + score.py) on the MLflow model; yields its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "deployment.serve", "--model-dir", str(azure_model_root), "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
            cwd=log.parent, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base + "/", process, log)
        yield base
    finally:
        stop(process)
