"""How much one endpoint instance takes on, per (instance type, base model), decided offline for the dry run.

The container's engine sizes itself at start from the memory it finds (deployment/serving/limits.py);
the endpoint's own settings must agree with it before anything bills, so they are computed here from
the published facts, with no network:
- the model's bf16 weights and KV bytes per token (training/models.py, the supported-model table);
- the instance's GPU memory and memory bandwidth (GPU_SPECS below).

GPU instance types run vLLM: `max_model_len` = the context cap (PHI_SERVE_CONTEXT_TOKENS), and
`max_num_seqs` (PHI_SERVE_MAX_SEQUENCES) = the full-length sequences the KV cache holds once vLLM's
share of the GPU has the weights. Phi-4-mini's KV (128 KiB a token, GQA) is a third of Phi-3.5-mini's
(384 KiB), so it holds about 3x the chats. `max_concurrent_requests_per_instance` is that number; the
endpoint admits twice that many per instance before it answers 429 (Microsoft's troubleshooting doc),
so the container holds (decoding and queued) that bound over all N instances (PHI_SERVE_MAX_REQUESTS)
before it answers 503.

The request timeout covers a queued request: one full reply of the max_tokens cap while it waits, one
for its own, at a per-stream decode rate estimated from memory bandwidth (every decode step reads the
weights and the batch's KV cache) at DECODE_EFFICIENCY of the peak. An estimate, not a measurement
(docs/BENCHMARKS.md); capped at Azure's maximum of 180 s.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from common.cli import UserError
from deployment.serving.engines.vllm_engine import GPU_MEMORY_UTILIZATION
from deployment.serving.limits import (
    DEFAULT_CONTEXT_TOKENS as CONTEXT_TOKENS,
    DEFAULT_MAX_SEQUENCES as CPU_MAX_SEQUENCES,
    DEFAULT_MAX_TOKENS_CAP as MAX_TOKENS_CAP,
    ENV_CONTEXT,
    ENV_MAX_REQUESTS,
    ENV_MAX_SEQUENCES,
    ENV_MAX_TOKENS,
    admission_bound,
)
from deployment.serving.cli import ENV_ENGINE

GIB = 1 << 30
BF16_BYTES = 2
DECODE_EFFICIENCY = 0.5  # share of peak memory bandwidth a decode step reaches (an estimate)
MEAN_CONTEXT_SHARE = 0.5  # a full batch's sequences are half-way through their context on average
AZURE_MAX_TIMEOUT_MS = 180_000
MIN_TIMEOUT_MS = 60_000


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    bandwidth_bytes_s: float


GPU_SPECS: dict[str, Gpu] = {
    "standard_nc24ads_a100_v4": Gpu("A100 80 GB PCIe", 80, 1.94e12),
    "standard_nc40ads_h100_v5": Gpu("H100 NVL 94 GB", 94, 3.9e12),
}
"""One GPU per instance, from NVIDIA's data sheets; the endpoint instance types with a GPU."""


@dataclass(frozen=True)
class ServingSize:
    instance_type: str
    base_model: str
    engine: str  # "vllm" on GPU instance types, "transformers" on CPU ones
    context_tokens: int
    max_tokens: int
    max_sequences: int
    request_timeout_ms: int
    per_stream_tokens_s: float | None  # the estimate the timeout rests on (GPU types)

    @property
    def max_concurrent_requests(self) -> int:
        return self.max_sequences

    def environment(self, instance_count: int = 1) -> dict[str, str]:
        """The container's PHI_SERVE_* settings (deployment/serving/limits.py reads them). The requests one
        container holds are what the endpoint may admit to it before its own 429: the admission bound of
        all N instances, since nothing promises an even spread."""
        held = admission_bound(self.max_concurrent_requests, instance_count)
        return {ENV_ENGINE: self.engine, ENV_CONTEXT: str(self.context_tokens), ENV_MAX_TOKENS: str(self.max_tokens),
                ENV_MAX_SEQUENCES: str(self.max_sequences), ENV_MAX_REQUESTS: str(held)}

    def describe(self) -> str:
        rate = f", ~{self.per_stream_tokens_s:.0f} tokens/s per stream (estimate)" if self.per_stream_tokens_s else ""
        return (f"{self.base_model} on {self.instance_type}: {self.engine}, context {self.context_tokens}, "
                f"{self.max_sequences} concurrent chats per instance, timeout {self.request_timeout_ms // 1000} s{rate}")


def base_model_names() -> tuple[str, ...]:
    from training.models import MODELS

    return tuple(m.key for m in MODELS if m.hub_id)


def _model(base_model: str):
    from training.models import find

    model = find(base_model)
    if model is None or not model.hub_id:
        raise UserError(f"unknown base model {base_model!r}: pick one of {', '.join(base_model_names())}")
    return model


def serving_size(instance_type: str, base_model: str) -> ServingSize:
    """The engine, caps and endpoint settings for one instance of `instance_type` serving `base_model`."""
    model = _model(base_model)
    gpu = GPU_SPECS.get(instance_type.lower())
    if gpu is None:
        return ServingSize(instance_type, model.key, "transformers", CONTEXT_TOKENS, MAX_TOKENS_CAP,
                           CPU_MAX_SEQUENCES, AZURE_MAX_TIMEOUT_MS, None)
    weights = model.params_b * 1e9 * BF16_BYTES
    kv_per_token = model.kv_kib_per_token * 1024
    cache = gpu.memory_gib * GIB * GPU_MEMORY_UTILIZATION - weights
    if cache < kv_per_token * CONTEXT_TOKENS:
        raise UserError(f"{model.key} does not fit one {gpu.name} of {instance_type} with a {CONTEXT_TOKENS}-token "
                        "context: pick a larger --instance-type")
    sequences = int(cache // (kv_per_token * CONTEXT_TOKENS))
    step_bytes = weights + sequences * kv_per_token * CONTEXT_TOKENS * MEAN_CONTEXT_SHARE
    per_stream = gpu.bandwidth_bytes_s * DECODE_EFFICIENCY / step_bytes  # one token per sequence per step
    timeout_ms = math.ceil(2 * MAX_TOKENS_CAP / per_stream * 1000)
    return ServingSize(instance_type, model.key, "vllm", CONTEXT_TOKENS, MAX_TOKENS_CAP, sequences,
                       min(AZURE_MAX_TIMEOUT_MS, max(MIN_TIMEOUT_MS, timeout_ms)), per_stream)
