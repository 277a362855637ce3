"""Fixtures for the server's tests: the real server (`python -m deployment.serve`) on a free 127.0.0.1 port,
mounted the way Azure ML mounts a registered model.

Server startup is the slow part (a few seconds each), so servers are module-scoped and shared.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from serving.helpers import start_server, stop


@pytest.fixture(scope="module")
def inference_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[str]:
    """`python -m deployment.serve` on the untrained tiny model, mounted the way Azure ML mounts a
    registered model (AZUREML_MODEL_DIR/<name>/<version>/<folder>); yields its base URL. Untrained,
    greedy replies never reach a stop token, so streaming and stop sequences have text to work on."""
    root = tmp_path_factory.mktemp("azureml-models") / "finetune-phi" / "1"
    root.mkdir(parents=True)
    (root / "model").symlink_to(tiny_model_dir, target_is_directory=True)
    log = tmp_path_factory.mktemp("serve") / "server.log"
    process, base = start_server(root, log)
    try:
        yield base
    finally:
        stop(process)
