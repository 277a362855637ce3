"""Fixtures for the server's tests: the real server (`python -m deployment.serve`) on a free 127.0.0.1 port,
on the untrained tiny model mounted the way Azure ML mounts a registered model.

One server per engine per session, shared by every test that asks for it: vLLM's engine takes about a
minute to start on 2 cores. vLLM runs from its own environment (.venv-vllm, `make vllm`); without it the
vLLM tests skip, except under `make test` (FINETUNE_PHI_REQUIRE_VLLM=1), where they fail.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from deployment.serve import REPO_ROOT, VLLM_PYTHON
from serving.helpers import start_server, stop

VLLM_START_S = 600  # engine start is about 60 s on 2 idle cores; a busy machine takes several times that


def require_vllm_venv() -> None:
    if VLLM_PYTHON.is_file():
        return
    message = f"vLLM's CPU build is not built here ({VLLM_PYTHON.relative_to(REPO_ROOT)}): run `make vllm`"
    if os.environ.get("FINETUNE_PHI_REQUIRE_VLLM"):
        pytest.fail(message)
    pytest.skip(message)


def _azureml_mount(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """AZUREML_MODEL_DIR/<name>/<version>/<folder>, as Azure ML mounts a registered model."""
    root = tmp_path_factory.mktemp("azureml-models") / "finetune-phi" / "1"
    root.mkdir(parents=True)
    (root / "model").symlink_to(model_dir, target_is_directory=True)
    return root


def _serve(tmp_path_factory: pytest.TempPathFactory, model_dir: Path, *args: str, **kwargs) -> Iterator[str]:
    log = tmp_path_factory.mktemp("serve") / "server.log"
    process, base = start_server(_azureml_mount(tmp_path_factory, model_dir), log, *args, **kwargs)
    try:
        yield base
    finally:
        stop(process)


@pytest.fixture(scope="session")
def transformers_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[str]:
    """The transformers engine in .venv (transformers 5.23). Untrained, greedy replies never reach a stop
    token, so streaming and stop sequences have text to work on."""
    yield from _serve(tmp_path_factory, tiny_model_dir, "--engine", "transformers")


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[str]:
    """vLLM's CPU build, started the way a person does: `python -m deployment.serve --engine vllm` from .venv,
    which runs the same command in .venv-vllm."""
    require_vllm_venv()
    yield from _serve(tmp_path_factory, tiny_model_dir, "--engine", "vllm", timeout=VLLM_START_S)


@pytest.fixture(scope="session")
def transformers_519_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[str]:
    """The transformers engine in .venv-vllm (transformers<5.20): the server package runs on both versions."""
    require_vllm_venv()
    yield from _serve(tmp_path_factory, tiny_model_dir, "--engine", "transformers", python=str(VLLM_PYTHON),
                      env={"PYTHONPATH": str(REPO_ROOT)})


@pytest.fixture(scope="module")
def inference_server(transformers_server: str) -> str:
    return transformers_server
