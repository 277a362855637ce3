"""What every engine decides the same way before it loads a model: remote code, stop tokens, CPU memory."""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from deployment.serving.model_dir import ModelLocation

logger = logging.getLogger("deployment.serving.engines")

CPU_CACHE_FRACTION = 0.25  # of the available RAM
CPU_CACHE_MAX_BYTES = 8 << 30


def remote_code(location: "ModelLocation", allowed: bool) -> bool:
    """Run the model folder's own Python code only when transformers lacks the architecture and the
    operator allowed it. MLmodel's trust_remote_code (the registry pipeline sets it) is a request, not
    a permission: Phi-3 and Phi-4 are built into transformers, so their remote code is never needed."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(location.weights_dir, trust_remote_code=False)
        if location.trust_remote_code:
            logger.info("MLmodel asks for trust_remote_code; the architecture is built into transformers: not needed")
        return False
    except ValueError:
        if allowed:
            return True
        raise ValueError(
            f"the model in {location.weights_dir} needs its own Python code (an architecture transformers "
            "does not ship); serve it only if you trust that code: --trust-remote-code"
        ) from None


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The model's stop tokens: generation config, else model config, else the tokenizer's eos.
    `model` is anything with `generation_config` and `config` (a loaded model, or both read from its folder)."""
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        ids = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value]) if v is not None and int(v) >= 0]
        if ids:
            return list(dict.fromkeys(ids))
    if getattr(tokenizer, "eos_token_id", None) is not None:
        return [int(tokenizer.eos_token_id)]
    raise ValueError("the model names no stop token (generation_config.json eos_token_id): replies would never end")


def available_ram() -> int:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def cpu_cache_budget() -> int:
    """The bytes a KV cache may take in RAM."""
    return min(int(available_ram() * CPU_CACHE_FRACTION), CPU_CACHE_MAX_BYTES)
