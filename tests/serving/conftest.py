"""Fixtures for the server's tests: the real server (`python -m deployment.serve`) on a free 127.0.0.1 port,
mounted the way Azure ML mounts a registered model.

Server startup is the slow part (a few seconds each), so servers are module-scoped and shared.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

from serving.helpers import start_server, stop

if TYPE_CHECKING:
    from serving.azurite import Azurite


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


@pytest.fixture(scope="session")
def tiny_lora_adapters(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    """Two LoRA adapters of the tiny model, of different ranks, that answer differently: NAME -> PEFT folder."""
    from serving.lora import make_lora_adapter

    root = tmp_path_factory.mktemp("adapters")
    return {"support": make_lora_adapter(tiny_model_dir, root / "support", rank=8, seed=1),
            "legal": make_lora_adapter(tiny_model_dir, root / "legal", rank=16, seed=2)}


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator["Azurite"]:
    """Azurite's blob service over HTTPS with OAuth (serving/azurite.py), once per session."""
    from serving.azurite import start_azurite

    emulator = start_azurite(tmp_path_factory.mktemp("azurite"))
    try:
        yield emulator
    finally:
        emulator.stop()
