"""vLLM behind the `Engine` seam: the engine of the GPU deployments (and, on CPUs, vLLM's CPU build).

Our app stays in front: it renders the chat template and tokenises (deployment/serving/prompt.py), and
vLLM's `AsyncLLM` takes token ids. So none of vLLM's own routes (`/v1/completions`, `/tokenize`,
`/metrics`, `/v1/load_lora_adapter`, ...) exists here, and the checks in front of the engine are the
same for both engines.

The same settings size both engines (limits.py): PHI_SERVE_CONTEXT_TOKENS is vLLM's `max_model_len`
(without it vLLM sizes its KV cache for the model's whole 131,072-token context) and
PHI_SERVE_MAX_SEQUENCES its `max_num_seqs` (requests past it wait in front of vLLM, in engines/slots.py, as
for the transformers engine). On a GPU vLLM takes `GPU_MEMORY_UTILIZATION` of the memory
and fills what the weights leave with KV blocks; on a CPU it gets exactly the cache the limits sized.
LoRA adapters (deployment/serving/adapters.py): `enable_lora` with `max_lora_rank` and `max_loras` sized from
the adapters' own configs, and each request's adapter as its `LoRARequest` (the request's `model` picks it).
"""
from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, AsyncIterator, Mapping

from deployment.serving.engines.base import Chunk, EngineError, Sampling, Stats
from deployment.serving.engines.loading import cpu_cache_budget, remote_code, stop_token_ids
from deployment.serving.engines.slots import SequenceSlots
from deployment.serving.limits import GPU_MAX_SEQUENCES, Limits, context_cap, kv_bytes_per_token, size_from_environment
from deployment.serving.prompt import encode_chat

if TYPE_CHECKING:  # pragma: no cover
    from deployment.serving.adapters import Adapter
    from deployment.serving.model_dir import ModelLocation

logger = logging.getLogger("deployment.serving.engines")

GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default share of the GPU: weights, activations, then KV blocks
FINISH_REASONS = {"stop": "stop", "length": "length"}  # vLLM's "abort" never reaches a caller that stayed


class VllmEngine:
    """vLLM's AsyncLLM, started once (its engine core runs in a child process), shared by every request."""

    def __init__(self, location: "ModelLocation", model_id: str, *, trust_remote_code: bool = False,
                 accept_longrope_coupling: bool = False, adapters: Mapping[str, "Adapter"] | None = None) -> None:
        import torch
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig
        from vllm.v1.engine.async_llm import AsyncLLM

        self.model_id = model_id
        self.location = location
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        remote = remote_code(location, trust_remote_code)
        self.tokenizer = AutoTokenizer.from_pretrained(location.tokenizer_dir, trust_remote_code=remote)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer in {location.tokenizer_dir} has no chat template")
        config = AutoConfig.from_pretrained(location.weights_dir, trust_remote_code=remote)
        try:
            generation = GenerationConfig.from_pretrained(location.weights_dir)
        except OSError:  # no generation_config.json: the model config and the tokenizer name the stop tokens
            generation = None
        self.stop_ids = stop_token_ids(SimpleNamespace(generation_config=generation, config=config), self.tokenizer)
        self.dtype = self._dtype(location)
        self.limits = self._limits(config, accept_longrope_coupling)
        self.adapters = dict(adapters or {})
        self._lora = _lora_requests(self.adapters)
        self._llm = AsyncLLM.from_engine_args(self._engine_args(remote))
        self._aborts: set[asyncio.Task] = set()
        self.stats = Stats()
        self._slots = SequenceSlots(self.limits.max_sequences, self.stats)

    def _dtype(self, location: "ModelLocation") -> str:
        if self.device == "cpu":
            return "float32"  # as the transformers engine on CPU: the twins' replies agree
        return location.dtype if location.dtype in ("float16", "bfloat16") else "auto"

    def _limits(self, config: Any, accept_longrope_coupling: bool) -> Limits:
        """As the transformers engine: LongRoPE models capped at original_max_position_embeddings unless the
        coupling is accepted (vLLM's Phi-3 rotary also switches factors for the whole batch)."""
        model_context = context_cap(config, accept_longrope_coupling)
        dtype_bytes = 4 if self.dtype == "float32" else 2
        if self.device == "cuda":
            import torch

            free, _total = torch.cuda.mem_get_info()
            budget = int(free * GPU_MEMORY_UTILIZATION) - _weights_bytes(self.location)
        else:
            budget = cpu_cache_budget()
        self.kv_per_token = kv_bytes_per_token(config, dtype_bytes)
        if model_context > context_cap(config, False):
            logger.warning("the context cap passes this LongRoPE model's original_max_position_embeddings: a chat past "
                           "it changes every chat decoded beside it (--accept-longrope-coupling)")
        gpu = {"default_sequences": GPU_MAX_SEQUENCES} if self.device == "cuda" else {}
        return size_from_environment(model_context=model_context, kv_per_token=self.kv_per_token,
                                     cache_budget_bytes=max(budget, 1), **gpu)

    def _engine_args(self, remote: bool) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs

        cpu = self.device == "cpu"
        limits = self.limits
        return AsyncEngineArgs(
            **_lora_args(self.adapters),
            model=str(self.location.weights_dir), tokenizer=str(self.location.tokenizer_dir),
            dtype=self.dtype, trust_remote_code=remote, seed=0,
            max_model_len=limits.context_tokens, max_num_seqs=limits.max_sequences,
            # CPU: exactly the cache the limits sized; GPU: vLLM fills what the weights leave.
            kv_cache_memory_bytes=limits.max_sequences * limits.context_tokens * self.kv_per_token if cpu else None,
            gpu_memory_utilization=GPU_MEMORY_UTILIZATION,
            enforce_eager=cpu,  # torch.compile on CPU costs minutes at start for no gain on small batches
            disable_log_stats=True, enable_log_requests=False,  # prompts and replies never reach the log
        )

    def describe(self) -> str:
        limits = self.limits
        return (
            f"{self.location.describe()} on vLLM ({self.device}, {self.dtype}); context {limits.context_tokens} "
            f"tokens (max_model_len), max_tokens cap {limits.max_tokens_cap}, {limits.max_sequences} concurrent "
            f"sequences (max_num_seqs), stop tokens {self.stop_ids}"
            + (f"; LoRA adapters {', '.join(f'{n} (rank {a.rank})' for n, a in self.adapters.items())}"
               if self.adapters else "")
        )

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        return encode_chat(self.tokenizer, messages)

    def problem(self) -> str | None:
        return "the vLLM engine stopped" if self._llm.errored else None

    def _sampling_params(self, sampling: Sampling) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        greedy = sampling.temperature <= 0
        return SamplingParams(
            max_tokens=sampling.max_new_tokens, temperature=0.0 if greedy else sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p, stop=list(sampling.stop) or None,
            stop_token_ids=self.stop_ids, skip_special_tokens=True, output_kind=RequestOutputKind.DELTA,
        )

    def _lora_request(self, adapter: str | None) -> Any:
        if adapter is None:
            return None
        if adapter not in self._lora:  # the app names only adapters it was started with (ModelNames)
            raise EngineError(f"adapter {adapter!r} is not loaded in this engine")
        return self._lora[adapter]

    async def generate(self, prompt_ids: list[int], sampling: Sampling, request_id: str) -> AsyncIterator[Chunk]:
        """Stream one reply. Waits for a free sequence slot first (slots.py); aborts in vLLM if the caller goes."""
        from vllm.inputs import TokensPrompt

        problem = self.problem()
        if problem:
            raise EngineError(problem)
        lora = self._lora_request(sampling.adapter)
        async with self._slots.held() as slot:
            tokens = 0
            stream = self._llm.generate(TokensPrompt(prompt_token_ids=list(prompt_ids)),
                                        self._sampling_params(sampling), request_id=request_id, lora_request=lora)
            try:
                async for output in stream:
                    piece = output.outputs[0]
                    tokens += len(piece.token_ids)
                    reason = FINISH_REASONS.get(piece.finish_reason or "") if output.finished else None
                    if output.finished and reason is None:
                        raise EngineError(f"generation ended with {piece.finish_reason!r}")
                    slot.finished = output.finished
                    yield Chunk(piece.text, reason, tokens if output.finished else 0)
            except EngineError:
                raise
            except Exception as err:  # vLLM's own errors (engine dead, bad request) become one short line
                raise EngineError(f"vLLM: {type(err).__name__}: {str(err)[:200]}") from None
            finally:
                await stream.aclose()  # a caller that left: vLLM aborts the request now, not when it is collected

    def abort(self, request_id: str) -> None:
        """Abort in vLLM, queued or running (AsyncLLM.abort is a coroutine; vLLM ignores an id it no longer holds)."""
        task = asyncio.get_running_loop().create_task(self._llm.abort(request_id))
        self._aborts.add(task)  # held until done: a dropped task could be collected before it runs
        task.add_done_callback(self._aborts.discard)

    def close(self) -> None:
        try:
            self._llm.shutdown()
        except Exception as err:  # noqa: BLE001 - shutting down: log, never raise
            logger.warning("stopping the vLLM engine: %s", err)


def _weights_bytes(location: "ModelLocation") -> int:
    return sum(path.stat().st_size for path in location.weights_dir.glob("*.safetensors"))


def _lora_args(adapters: Mapping[str, "Adapter"]) -> dict[str, Any]:
    """vLLM's LoRA settings: off without adapters; else sized from the adapters' own ranks (adapters.sized_for)."""
    if not adapters:
        return {}
    from deployment.serving.adapters import sized_for

    max_rank, max_loras = sized_for(adapters)
    return {"enable_lora": True, "max_lora_rank": max_rank, "max_loras": max_loras}


def _lora_requests(adapters: Mapping[str, "Adapter"]) -> dict[str, Any]:
    """NAME -> its LoRARequest (ids from 1, as vLLM requires); vLLM loads each at its first request."""
    if not adapters:
        return {}
    from vllm.lora.request import LoRARequest

    return {name: LoRARequest(name, number, str(adapter.path)) for number, (name, adapter) in enumerate(adapters.items(), 1)}
