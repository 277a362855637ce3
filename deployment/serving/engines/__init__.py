"""The engines behind the server, and the choice between them (`--engine auto|vllm|transformers`).

`auto` picks vLLM where a CUDA GPU and vLLM are both present (the GPU image), else transformers'
continuous batching (CPU instance types, `make demo`, most tests). Each engine module is imported only
when chosen: vLLM's import alone takes seconds.
"""
from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from deployment.serving.engines.base import Engine
    from deployment.serving.model_dir import ModelLocation

ENGINES = ("auto", "vllm", "transformers")


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def choose(name: str) -> str:
    """The engine `name` stands for: `auto` becomes vllm on a CUDA GPU with vLLM installed, else transformers."""
    if name != "auto":
        return name
    if not vllm_installed():
        return "transformers"
    import torch

    return "vllm" if torch.cuda.is_available() else "transformers"


def load_engine(name: str, location: "ModelLocation", model_id: str, *, trust_remote_code: bool = False,
                accept_longrope_coupling: bool = False) -> "Engine":
    """Load the chosen engine (`vllm` or `transformers`) on the model."""
    options = {"trust_remote_code": trust_remote_code, "accept_longrope_coupling": accept_longrope_coupling}
    if name == "vllm":
        from deployment.serving.engines.vllm_engine import VllmEngine

        return VllmEngine(location, model_id, **options)
    from deployment.serving.engines.transformers_engine import TransformersEngine

    return TransformersEngine(location, model_id, **options)
