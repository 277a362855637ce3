"""How much the server takes on: the context cap, the max_tokens cap, the concurrent sequences, the requests held.

Sized once, from the model and the memory left after loading it, and the same for every engine:
- `context_tokens`: the most tokens (prompt + reply) one sequence may hold; longer prompts are refused
  before they reach the engine (one giant prompt cannot hold the GPU for minutes). For a LongRoPE model
  (Phi-3.5-mini, Phi-4-mini) it is at most `original_max_position_embeddings` unless the operator accepts
  the coupling (`context_cap`): past that position the rotary factors switch for the whole batch;
- `max_tokens_cap`: the largest `max_tokens` a caller may ask for;
- `max_sequences`: how many sequences are decoded at once. The KV cache gets exactly enough blocks
  for that many full-length sequences, so an admitted request never waits for cache blocks; requests
  beyond it wait in a queue in front of the engine;
- `max_requests`: the most requests held at once, decoding or queued; past it the server answers 503 with
  Retry-After (deployment/serving/edge.py). By default twice `max_sequences`: what a managed online
  endpoint with `max_concurrent_requests_per_instance = max_sequences` admits to one instance before it
  answers 429 itself (`admission_bound`), so the container never answers 503 to a request the endpoint let in.
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
"""The bound on concurrent sequences on CPU, and the Azure deployment's setting (deployment/definitions.py).
On a GPU the default is what the memory holds, up to GPU_MAX_SEQUENCES: on an A100 80 GB that is 35 for
Phi-3.5-mini and 88 for Phi-4-mini at the default context (tests/serving/test_sizing.py checks both
against transformers' own memory check)."""
GPU_MAX_SEQUENCES = 256  # vLLM's default max_num_seqs
ADMISSION_FACTOR = 2  # a managed online endpoint admits 2 x max_concurrent_requests_per_instance x instances
PAGE_SIZE = 256
ENV_CONTEXT = "PHI_SERVE_CONTEXT_TOKENS"
ENV_MAX_TOKENS = "PHI_SERVE_MAX_TOKENS"
ENV_MAX_SEQUENCES = "PHI_SERVE_MAX_SEQUENCES"
ENV_MAX_REQUESTS = "PHI_SERVE_MAX_REQUESTS"


@dataclass(frozen=True)
class Limits:
    context_tokens: int
    max_tokens_cap: int
    max_sequences: int
    kv_blocks: int
    page_size: int
    max_requests: int


def admission_bound(max_concurrent_requests_per_instance: int, instance_count: int = 1) -> int:
    """What a managed online endpoint admits before it answers 429 (Microsoft's troubleshooting doc): the
    requests one container must be able to hold, since nothing promises they are spread evenly."""
    return ADMISSION_FACTOR * max_concurrent_requests_per_instance * instance_count


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


def longrope_original_context(config: Any) -> int | None:
    """`original_max_position_embeddings` of a LongRoPE model (the position past which it switches to its long
    factors), else None."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
    kind = rope.get("rope_type") or rope.get("type")
    if kind != "longrope":
        return None
    original = rope.get("original_max_position_embeddings") or getattr(text, "original_max_position_embeddings", None)
    return int(original) if original else None


def context_cap(config: Any, accept_longrope_coupling: bool = False) -> int:
    """The longest sequence the model may be given: its `max_position_embeddings`, and for a LongRoPE model its
    `original_max_position_embeddings` unless the coupling is accepted. Past that position transformers (and
    vLLM) switch every co-batched sequence to the long factors: one long chat would change the others' replies."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    context = int(getattr(text, "max_position_embeddings", 0) or DEFAULT_CONTEXT_TOKENS)
    original = longrope_original_context(config)
    if original and not accept_longrope_coupling:
        context = min(context, original)
    return context


def size_limits(
    *,
    model_context: int,
    kv_per_token: int,
    cache_budget_bytes: int,
    context_tokens: int | None = None,
    max_tokens_cap: int | None = None,
    max_sequences: int | None = None,
    max_requests: int | None = None,
    default_sequences: int = DEFAULT_MAX_SEQUENCES,
    overhead_per_token: int = 0,
    overhead_bytes: int = 0,
    page_size: int = PAGE_SIZE,
) -> Limits:
    """Limits from the model's context, its KV bytes per token and the memory the cache may use.

    `overhead_per_token` and `overhead_bytes` are what the engine reserves beside the cache itself for each
    cached token and once (transformers' attention masks and KV read-back; transformers_engine.py)."""
    context = min(model_context, context_tokens or DEFAULT_CONTEXT_TOKENS)
    if context < 2:
        raise ValueError(f"the context ({context} tokens) leaves no room for a reply")
    cap = max(1, min(max_tokens_cap or DEFAULT_MAX_TOKENS_CAP, context - 1))
    blocks_per_sequence = math.ceil(context / page_size)
    per_sequence = blocks_per_sequence * page_size * max(1, kv_per_token + overhead_per_token)
    fits = max(1, (cache_budget_bytes - overhead_bytes) // per_sequence)
    sequences = max(1, min(max_sequences or default_sequences, fits))
    held = max_requests or ADMISSION_FACTOR * sequences
    return Limits(context, cap, sequences, sequences * blocks_per_sequence, page_size, held)


def size_from_environment(**sizing: Any) -> Limits:
    """`size_limits` with the operator's PHI_SERVE_* settings."""
    return size_limits(
        **sizing, context_tokens=env_int(ENV_CONTEXT), max_tokens_cap=env_int(ENV_MAX_TOKENS),
        max_sequences=env_int(ENV_MAX_SEQUENCES), max_requests=env_int(ENV_MAX_REQUESTS),
    )
