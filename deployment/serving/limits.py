"""How much the server takes on: the context cap, the max_tokens cap and the concurrent sequences.

Sized once, from the model and the memory left after loading it, and the same for every engine:
- `context_tokens`: the most tokens (prompt + reply) one sequence may hold; longer prompts are refused
  before they reach the engine (one giant prompt cannot hold the GPU for minutes);
- `max_tokens_cap`: the largest `max_tokens` a caller may ask for;
- `max_sequences`: how many sequences are decoded at once. The KV cache gets exactly enough blocks
  for that many full-length sequences, so an admitted request never waits for cache blocks; requests
  beyond it wait in a queue in front of the engine.
The `PHI_SERVE_*` environment variables lower (never raise past the model's) defaults.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

DEFAULT_CONTEXT_TOKENS = 4096
DEFAULT_MAX_TOKENS_CAP = 2048
DEFAULT_MAX_SEQUENCES = 32
"""The bound on concurrent sequences an A100 80 GB holds for Phi-3.5-mini at the default context:
(80 GiB - 7.6 GB weights) x 0.8 / (384 KiB x 4096 tokens) = 38 sequences. The Azure
deployment's max_concurrent_requests_per_instance is sized from it (deployment/definitions.py)."""
PAGE_SIZE = 256
ENV_CONTEXT = "PHI_SERVE_CONTEXT_TOKENS"
ENV_MAX_TOKENS = "PHI_SERVE_MAX_TOKENS"
ENV_MAX_SEQUENCES = "PHI_SERVE_MAX_SEQUENCES"


@dataclass(frozen=True)
class Limits:
    context_tokens: int
    max_tokens_cap: int
    max_sequences: int
    kv_blocks: int
    page_size: int


def env_int(name: str) -> int | None:
    """A positive integer setting from the environment (None when unset)."""
    value = os.environ.get(name)
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be at least 1, got {number}")
    return number


def kv_bytes_per_token(config: Any, dtype_bytes: int) -> int:
    """Key + value bytes one token takes in the cache, over all layers (GQA-aware)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    return 2 * int(text.num_hidden_layers) * kv_heads * head_dim * dtype_bytes


def size_limits(
    *,
    model_context: int,
    kv_per_token: int,
    cache_budget_bytes: int,
    context_tokens: int | None = None,
    max_tokens_cap: int | None = None,
    max_sequences: int | None = None,
    page_size: int = PAGE_SIZE,
) -> Limits:
    """Limits from the model's context, its KV bytes per token and the memory the cache may use."""
    context = min(model_context, context_tokens or DEFAULT_CONTEXT_TOKENS)
    if context < 2:
        raise ValueError(f"the context ({context} tokens) leaves no room for a reply")
    cap = max(1, min(max_tokens_cap or DEFAULT_MAX_TOKENS_CAP, context - 1))
    fits = max(1, cache_budget_bytes // max(1, kv_per_token * context))
    sequences = max(1, min(max_sequences or DEFAULT_MAX_SEQUENCES, fits))
    blocks_per_sequence = math.ceil(context / page_size)
    return Limits(context, cap, sequences, sequences * blocks_per_sequence, page_size)


def size_from_environment(*, model_context: int, kv_per_token: int, cache_budget_bytes: int) -> Limits:
    """`size_limits` with the operator's PHI_SERVE_* settings."""
    return size_limits(
        model_context=model_context, kv_per_token=kv_per_token, cache_budget_bytes=cache_budget_bytes,
        context_tokens=env_int(ENV_CONTEXT), max_tokens_cap=env_int(ENV_MAX_TOKENS),
        max_sequences=env_int(ENV_MAX_SEQUENCES),
    )
