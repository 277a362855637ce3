"""Test-wide isolation: no tool state in $HOME, no network hubs, no telemetry.

HF, MLflow and Prompt flow all write to per-user folders by default; every test session gets
its own folders under pytest's base temp dir instead. These are set at import time of this
conftest, which pytest loads before any test module imports promptflow or mlflow.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_STATE = Path(tempfile.mkdtemp(prefix="finetune-phi-tests-"))
_ENV = {
    "HF_HOME": str(_STATE / "hf"),
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "MLFLOW_TRACKING_URI": (_STATE / "mlruns").as_uri(),
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PF_HOME_DIRECTORY": str(_STATE / "promptflow"),
    "PF_DISABLE_TRACING": "true",
    "TOKENIZERS_PARALLELISM": "false",
    "STACK_OUTPUTS_FILE": "",
}
os.environ.update(_ENV)
os.environ.pop("STACK_OUTPUTS_FILE")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def state_dir() -> Path:
    """The session's private folder for HF / MLflow / Prompt flow state."""
    return _STATE


# ---------------------------------------------------------------- training fixtures (session scope)
# Built once per session and shared by every area's tests: treat the folders as read-only.

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly built, untrained tiny Phi-3 (save_pretrained layout), from `training.tiny_model`."""
    from training.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def sample_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.jsonl / test.jsonl / manifest.json prepared by `training.data` from the bundled sample."""
    from training.data import prepare

    return prepare("sample", tmp_path_factory.mktemp("sample-data") / "data").out
