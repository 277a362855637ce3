"""The transformers engine's memory sizing against transformers' own memory check, on the real model shapes.

The configs are the published config.json values of microsoft/Phi-3.5-mini-instruct and
microsoft/Phi-4-mini-instruct (no hub here), except the LongRoPE factor lists: their length is the
published one, their values (which no memory figure depends on) are placeholders. The GPU is an A100
80 GB with the bf16 weights loaded. Our sizing (`size_engine`) picks the limits; transformers 5.23's
`PagedAttentionCache`, built on the meta device (nothing is allocated) with that memory figure, runs
its `PagedAttentionMemoryHandler` check on the continuous-batching config the engine would pass.
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from unittest import mock

import pytest

from deployment.serving.engines.transformers_engine import GPU_MAX_BATCH_TOKENS, batching_settings, size_engine
from deployment.serving.limits import ENV_CONTEXT, ENV_MAX_REQUESTS, ENV_MAX_SEQUENCES, ENV_MAX_TOKENS

REPO_ROOT = Path(__file__).resolve().parents[2]
A100_80GB = 80 * 1024**3

PHI35_MINI = dict(  # microsoft/Phi-3.5-mini-instruct config.json
    architectures=["Phi3ForCausalLM"], hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=32, vocab_size=32064, max_position_embeddings=131072,
    original_max_position_embeddings=4096, sliding_window=262144, rope_theta=10000.0, tie_word_embeddings=False,
    rope_scaling={"type": "longrope", "long_factor": [1.0] * 48, "short_factor": [1.0] * 48},
    bos_token_id=1, eos_token_id=32000, pad_token_id=32000, rms_norm_eps=1e-05,
)
PHI35_MINI_PARAMETERS = 3_821_079_552
PHI4_MINI = dict(  # microsoft/Phi-4-mini-instruct config.json
    architectures=["Phi3ForCausalLM"], hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
    num_attention_heads=24, num_key_value_heads=8, vocab_size=200064, max_position_embeddings=131072,
    original_max_position_embeddings=4096, sliding_window=262144, rope_theta=10000.0, tie_word_embeddings=True,
    partial_rotary_factor=0.75,
    rope_scaling={"type": "longrope", "long_factor": [1.0] * 48, "short_factor": [1.0] * 48},
    bos_token_id=199999, eos_token_id=199999, pad_token_id=199999, rms_norm_eps=1e-05,
)
PHI4_MINI_PARAMETERS = 3_836_021_760
MODELS = {"phi-3.5-mini": (PHI35_MINI, PHI35_MINI_PARAMETERS), "phi-4-mini": (PHI4_MINI, PHI4_MINI_PARAMETERS)}
SETTINGS = (ENV_CONTEXT, ENV_MAX_TOKENS, ENV_MAX_SEQUENCES, ENV_MAX_REQUESTS)


def documented_settings() -> list[tuple[str, str]]:
    """Every `PHI_SERVE_<NAME>=<number>` docs/SERVING.md shows."""
    text = (REPO_ROOT / "docs" / "SERVING.md").read_text(encoding="utf-8")
    return sorted(set(re.findall(r"\b(PHI_SERVE_[A-Z_]+)=(\d+)\b", text)))


def _config(shape: dict):
    from transformers import Phi3Config

    config = Phi3Config(**shape)
    config._attn_implementation = "sdpa"  # the engine loads with sdpa: transformers then reserves the masks
    return config


def transformers_check(config, limits, weights: int, total: int = A100_80GB):
    """transformers' own cache sizing and memory check for the engine's settings; MemoryError if it refuses."""
    import torch
    from transformers.generation.configuration_utils import ContinuousBatchingConfig
    from transformers.generation.continuous_batching import cache as cb_cache
    from transformers.generation.continuous_batching.distributed import DistributedHelper
    from transformers.generation.continuous_batching.initialization import resolve_continuous_batching_config

    settings = ContinuousBatchingConfig(**batching_settings(limits, cuda=True))
    resolved = resolve_continuous_batching_config(config, settings, None, True, torch.device("cuda"))
    # what torch.cuda reports once the weights are loaded: total, reserved, allocated
    with mock.patch.object(cb_cache, "get_device_and_memory_breakdown", lambda: ("cuda", total, weights, weights)):
        return cb_cache.PagedAttentionCache(config, resolved, device="meta", distributed_helper=DistributedHelper(None, None),
                                            dtype=torch.bfloat16, model_supports_logits_to_keep=True)


def _size(shape: dict, parameters: int, **env: str):
    weights = 2 * parameters
    with mock.patch.dict("os.environ", {name: env.get(name, "") for name in SETTINGS}):
        return size_engine(_config(shape), 2, free_bytes=A100_80GB - weights, cuda=True)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("setting", [None, *documented_settings()], ids=lambda s: "defaults" if s is None else "=".join(s))
def test_every_documented_setting_passes_transformers_memory_check(model: str, setting) -> None:
    shape, parameters = MODELS[model]
    limits = _size(shape, parameters, **dict([setting] if setting else []))
    cache = transformers_check(_config(shape), limits, 2 * parameters)
    assert cache.num_blocks >= limits.kv_blocks  # every admitted sequence has its blocks
    assert cache.max_batch_tokens == GPU_MAX_BATCH_TOKENS
    assert limits.context_tokens <= 4096  # LongRoPE: never past original_max_position_embeddings by default


def test_sizing_uses_the_memory_transformers_allows_and_no_more() -> None:
    """At the default context, with the bound lifted: ours passes, a tenth more sequences would not (no idle
    memory), and Phi-4-mini's smaller KV cache buys about two and a half times the sequences."""
    sizes = {}
    for model, (shape, parameters) in MODELS.items():
        limits = _size(shape, parameters, **{ENV_MAX_SEQUENCES: "100000"})
        transformers_check(_config(shape), limits, 2 * parameters)
        tenth_more = math.ceil(limits.max_sequences * 1.1)
        more = dataclasses.replace(limits, max_sequences=tenth_more, kv_blocks=tenth_more * 16)
        with pytest.raises(MemoryError):
            transformers_check(_config(shape), more, 2 * parameters)
        sizes[model] = limits.max_sequences
    assert sizes["phi-3.5-mini"] >= 32  # the documented default bound fits
    assert sizes["phi-4-mini"] >= 2.4 * sizes["phi-3.5-mini"]


def test_the_old_sizing_fails_transformers_check() -> None:
    """The bug this sizing fixes: 80% of free memory for the KV cache alone ("38 fit") left nothing for what
    transformers reserves beside it, and its check refused (the generation thread died with a MemoryError)."""
    from deployment.serving.limits import size_limits

    weights = 2 * PHI35_MINI_PARAMETERS
    old = size_limits(model_context=4096, kv_per_token=384 * 1024, cache_budget_bytes=int((A100_80GB - weights) * 0.8),
                      max_sequences=100000)
    assert old.max_sequences == 38
    with pytest.raises(MemoryError):
        transformers_check(_config(PHI35_MINI), old, weights)
