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

from common.tool_env import ENV as TOOL_ENV

_STATE = Path(tempfile.mkdtemp(prefix="finetune-phi-tests-"))
_ENV = {
    **TOOL_ENV,  # telemetry off, as every command sets it (tests call main() without run_cli)
    "HF_HOME": str(_STATE / "hf"),
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_TRACKING_URI": (_STATE / "mlruns").as_uri(),
    "MLFLOW_ALLOW_FILE_STORE": "true",  # MLflow 3.17 refuses file: tracking URIs without it
    "PF_HOME_DIRECTORY": str(_STATE / "promptflow"),
    # keyrings.alt (Prompt flow's secret store on headless machines) writes under XDG_DATA_HOME
    "XDG_DATA_HOME": str(_STATE / "xdg-data"),
    "TOKENIZERS_PARALLELISM": "false",
    "STACK_OUTPUTS_FILE": "",
    # infra.preflight asks ARM for the caller's rights; tests/infra turns it on against a fake ARM.
    "FINETUNE_PHI_PREFLIGHT": "off",
}
os.environ.update(_ENV)
os.environ.pop("STACK_OUTPUTS_FILE")

REPO_ROOT = Path(__file__).resolve().parents[1]

pytest_plugins = ("fakes.deploy_fixtures",)
"""The deploy, rollout and teardown tests' fixtures: stack outputs, a real scoring endpoint, the MLClient fake.
(pytest takes plugins only from this top-level conftest; tests/ is on sys.path, so `fakes` imports.)"""


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
def tiny_phi4_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The untrained tiny Phi-4-mini twin (`training.tiny_model --like phi-4-mini`): GQA, partial rotary, tied embeddings."""
    from training.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-phi4-model") / "model", like="phi-4-mini")


@pytest.fixture(scope="session")
def sample_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.jsonl / test.jsonl / manifest.json prepared by `training.data` from the bundled sample."""
    from training.data import prepare

    return prepare("sample", tmp_path_factory.mktemp("sample-data") / "data").out


TINY_TRAINING_FLAGS = ["--config", "test"]  # training/trainer/presets/test.yaml: a few CPU steps of a full fine-tune


def load_fine_tune():
    """The trainer module, imported the one way everything imports it."""
    from training.trainer import fine_tune

    return fine_tune


@pytest.fixture(scope="session")
def tiny_training_flags() -> list[str]:
    """Trainer flags for a seconds-long CPU run of the tiny model (add the file/model/output flags)."""
    return list(TINY_TRAINING_FLAGS)


@pytest.fixture(scope="session")
def fine_tune():
    """The trainer module (training.trainer.fine_tune)."""
    return load_fine_tune()


@pytest.fixture(scope="session")
def trained_run(tiny_model_dir: Path, sample_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A short CPU run of the real trainer on the tiny model and the sample; its summary plus `output_dir`."""
    fine_tune = load_fine_tune()
    output_dir = tmp_path_factory.mktemp("trained") / "model"
    args = fine_tune.parse_args([
        "--model_name_or_path", str(tiny_model_dir),
        "--train_file", str(sample_data_dir / "train.jsonl"),
        "--eval_file", str(sample_data_dir / "test.jsonl"),
        "--output_dir", str(output_dir),
        *TINY_TRAINING_FLAGS,
    ])
    summary = fine_tune.train(args)
    return {**summary, "output_dir": output_dir}


@pytest.fixture(scope="session")
def trained_model_dir(trained_run: dict) -> Path:
    """The MLflow model folder (the job's named `model` output) of a short CPU training run of the tiny model."""
    return trained_run["output_dir"]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Make Prompt flow's loggers once, before any test captures output.

    Prompt flow binds a StreamHandler to whatever `sys.stderr` is when a logger of its is first made.
    Made inside a test under `capsys` (a deploy test that writes the connection), it holds that test's
    capture buffer, and a later in-process `pf` run, which redirects stdout and stderr into those same
    loggers, loops through it (RecursionError). Made here, they hold the session's stream.
    """
    try:
        import promptflow.client  # noqa: F401
    except ImportError:  # a session without the flow extra
        pass


MODEL_FIXTURES = {"tiny_model_dir", "tiny_phi4_model_dir"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `make check` (pytest-xdist, `--dist loadgroup`) the tests that need a built tiny model run on
    one worker, so only that worker builds the session's models (seconds each) and imports torch for them."""
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("tiny-models"))
