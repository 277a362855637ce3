"""transformers' continuous batching behind the `Engine` seam: the CPU twin, and the engine on CPU instance types.

`TransformersEngine` uses transformers' `ContinuousBatchingManager` (paged attention; the engine
`transformers serve --continuous-batching` uses): every admitted request is decoded in the same batch
as the others, token by token. Its paged KV cache gets exactly the blocks `limits.size_limits` sized,
so an admitted request never waits for cache blocks (transformers' scheduler otherwise stalls: "No
requests can be scheduled"). On a GPU the sizing first sets aside what transformers' own memory check
(`PagedAttentionMemoryHandler`) reserves beside the cache: the attention masks and the KV read back from
it scale with every cached token (`cache_reservations`). Stop tokens come from the model's own
generation config (then its config, then the tokenizer). Greedy requests take the argmax (`GreedyArgmax`).
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
from typing import TYPE_CHECKING, Any, AsyncIterator

from deployment.serving.engines.base import Chunk, EngineError, Sampling, Stats, cut_at_stop
from deployment.serving.engines.loading import (
    CPU_CACHE_FRACTION,
    CPU_CACHE_MAX_BYTES,
    available_ram,
    remote_code,
    stop_token_ids,
)
from deployment.serving.engines.slots import SequenceSlots
from deployment.serving.limits import GPU_MAX_SEQUENCES, Limits, context_cap, kv_bytes_per_token, size_from_environment
from deployment.serving.prompt import encode_chat

if TYPE_CHECKING:  # pragma: no cover
    from deployment.serving.model_dir import ModelLocation

logger = logging.getLogger("deployment.serving.engines")

GPU_MEMORY_FRACTION = 0.8  # of the GPU memory free after loading, for the cache and what transformers reserves
GPU_MAX_BATCH_TOKENS = 4096  # tokens per forward pass: one default-context prompt; the masks grow with it
CPU_MAX_BATCH_TOKENS = 512
MIN_SAMPLING_TEMPERATURE = 1e-6  # below this sampling is greedy in all but name (and overflows)
SMALL_MODEL_PARAMETERS = 100_000_000  # below this, CPU generation runs on one thread


# -- sizing ----------------------------------------------------------------------------------------


def cache_reservations(config: Any, dtype_bytes: int, max_batch_tokens: int, max_sequences: int,
                       context: int) -> tuple[int, int]:
    """(bytes per cached token, bytes once) that transformers 5.23's PagedAttentionMemoryHandler reserves beside
    the KV cache, counted at their worst so our sizing always passes its check: every cached token is read
    back per layer at the attention peak with its KV heads repeated (sdpa), and is a column of the attention
    masks (one per attention type; asynchronous batching, which would double them, is off); once: the batch's
    activations, the masks' square part, the LM head rows and two spare cache sectors."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads, hidden, vocab = int(text.num_attention_heads), int(text.hidden_size), int(text.vocab_size)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    io, masks, groups, index = 1, 2, 2, 8  # IO copies (no async batching), attention types, cache groups, int64
    peak_heads = 2 * heads + kv_heads
    per_token = peak_heads * head_dim * dtype_bytes + io * groups * index + io * masks * dtype_bytes * max_batch_tokens
    lm_head_row = hidden * dtype_bytes + vocab * 4
    attention_peak = dtype_bytes * (hidden + heads * head_dim + 2 * kv_heads * head_dim + peak_heads * head_dim)
    blocks = math.ceil(context / 256) + 2
    batch_io = io * (8 * 4 + groups * blocks * 4 + 2 * groups * index)
    spare_sectors = 2 * 2 * 256 * kv_bytes_per_token(config, dtype_bytes)
    once = (max_batch_tokens * (max(lm_head_row, attention_peak) + batch_io)
            + io * masks * dtype_bytes * max_batch_tokens ** 2 + max_sequences * lm_head_row + spare_sectors)
    return per_token, once


def size_engine(config: Any, dtype_bytes: int, *, free_bytes: int, cuda: bool,
                accept_longrope_coupling: bool = False) -> Limits:
    """The limits for this model with `free_bytes` of memory left after loading it (GPU memory, or RAM on CPU)."""
    model_context = context_cap(config, accept_longrope_coupling)
    kv_per_token = kv_bytes_per_token(config, dtype_bytes)
    if not cuda:
        budget = min(int(free_bytes * CPU_CACHE_FRACTION), CPU_CACHE_MAX_BYTES)
        return size_from_environment(model_context=model_context, kv_per_token=kv_per_token, cache_budget_bytes=budget)
    budget = int(free_bytes * GPU_MEMORY_FRACTION)
    first = size_from_environment(model_context=model_context, kv_per_token=kv_per_token, cache_budget_bytes=budget,
                                  default_sequences=GPU_MAX_SEQUENCES)
    per_token, once = cache_reservations(config, dtype_bytes, GPU_MAX_BATCH_TOKENS, GPU_MAX_SEQUENCES,
                                         first.context_tokens)
    return size_from_environment(model_context=model_context, kv_per_token=kv_per_token, cache_budget_bytes=budget,
                                 default_sequences=GPU_MAX_SEQUENCES, overhead_per_token=per_token,
                                 overhead_bytes=once)


def batching_settings(limits: Limits, cuda: bool) -> dict[str, Any]:
    """The ContinuousBatchingConfig for these limits (the engine's, and the sizing test's)."""
    return dict(
        page_size=limits.page_size,
        num_blocks=limits.kv_blocks,
        max_batch_tokens=GPU_MAX_BATCH_TOKENS if cuda else CPU_MAX_BATCH_TOKENS,
        max_memory_percent=GPU_MEMORY_FRACTION,
        max_requests_per_batch=limits.max_sequences,
        use_async_batching=False,  # it would double the masks and IO tensors (transformers resolves it off for sdpa)
        per_request_processors=True,
        allow_block_sharing=False,  # every sequence owns its blocks: capacity is what was sized
    )


def greedy_argmax_processor():
    """A continuous-batching logits processor that turns a greedy request's scores into one -inf row but for the
    argmax (the first one on ties), so sampling then draws exactly it: greedy is a true argmax, not top-k=1 plus
    a random draw among tied logits. Other requests pass through untouched."""
    import torch
    from transformers.generation.continuous_batching.cb_logits_processors import ContinuousBatchingLogitsProcessor

    class GreedyArgmax(ContinuousBatchingLogitsProcessor):
        supported_kwargs = {"greedy": int}
        ignored_kwargs = ()

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            int32_tensor.fill_(0)

        def prepare_tensor_args(self, requests_with_new_token: list) -> torch.Tensor:
            flags = [int(r.state.logit_processor_kwargs.get("greedy", 0)) for r in requests_with_new_token]
            return torch.tensor(flags, dtype=torch.int32, device="cpu")

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            greedy = tensor_arg[: scores.size(0)].bool().unsqueeze(-1)
            best = scores.argmax(dim=-1, keepdim=True)
            only_best = torch.full_like(scores, float("-inf")).scatter(-1, best, 0.0)
            return torch.where(greedy, only_best, scores)

    return GreedyArgmax()


# -- the transformers engine -----------------------------------------------------------------------


class TransformersEngine:
    """transformers' continuous batching manager, started once, shared by every request."""

    def __init__(self, location: "ModelLocation", model_id: str, *, trust_remote_code: bool = False,
                 accept_longrope_coupling: bool = False) -> None:
        import torch

        self.model_id = model_id
        self.location = location
        self.cuda = torch.cuda.is_available()
        self.device = "cuda" if self.cuda else "cpu"
        self._load(trust_remote_code)
        self.stop_ids = stop_token_ids(self.model, self.tokenizer)
        self.limits = self._size(accept_longrope_coupling)
        self._manager = self._start_manager()
        self.stats = Stats()
        self._slots = SequenceSlots(self.limits.max_sequences, self.stats)

    def _load(self, trust_remote_code: bool) -> None:
        """The tokenizer and the model, in bf16 (or the MLmodel's fp16) on a GPU, fp32 on CPU."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        location = self.location
        if self.cuda:  # bf16 where the GPU has it, unless MLmodel's load kwargs ask for fp16
            bf16 = torch.cuda.is_bf16_supported() and location.dtype != "float16"
            dtype = torch.bfloat16 if bf16 else torch.float16
        else:
            dtype = torch.float32
        remote = remote_code(location, trust_remote_code)
        self.tokenizer = AutoTokenizer.from_pretrained(location.tokenizer_dir, trust_remote_code=remote)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer in {location.tokenizer_dir} has no chat template")
        self.model = AutoModelForCausalLM.from_pretrained(
            location.weights_dir, dtype=dtype, trust_remote_code=remote, attn_implementation="sdpa"
        ).to(self.device).eval()
        self.threads = None
        if not self.cuda:
            if not os.environ.get("OMP_NUM_THREADS") and self.model.num_parameters() < SMALL_MODEL_PARAMETERS:
                torch.set_num_threads(1)  # a tiny model's matrices are too small to split across threads
            self.threads = torch.get_num_threads()

    def _size(self, accept_longrope_coupling: bool) -> Limits:
        import torch

        config = self.model.config
        free = torch.cuda.mem_get_info()[0] if self.cuda else available_ram()
        limits = size_engine(config, self.model.dtype.itemsize, free_bytes=free, cuda=self.cuda,
                             accept_longrope_coupling=accept_longrope_coupling)
        text = config.get_text_config()
        if limits.context_tokens > context_cap(config, False):
            logger.warning("the context cap (%d) passes this LongRoPE model's original_max_position_embeddings (%d): "
                           "a chat past it changes every chat decoded beside it (--accept-longrope-coupling)",
                           limits.context_tokens, text.original_max_position_embeddings)
        return limits

    def _start_manager(self) -> Any:
        """transformers' manager with per-request temperature/top_p/top_k and the greedy argmax, started."""
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
        from transformers.generation.continuous_batching.cb_logits_processors import (
            ContinuousBatchingLogitsProcessorList,
        )
        from transformers.generation.logits_process import (
            LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
        )

        self.vocab_size = int(self.model.config.get_text_config().vocab_size)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        generation = GenerationConfig(
            do_sample=True, max_new_tokens=self.limits.max_tokens_cap, eos_token_id=self.stop_ids, pad_token_id=pad,
            use_cache=False,
        )
        manager = self.model.init_continuous_batching(
            generation_config=generation,
            continuous_batching_config=ContinuousBatchingConfig(**batching_settings(self.limits, self.cuda)),
        )
        # Per request: greedy first (its one surviving token then passes the warpers), then the sampling knobs;
        # the warpers' values here are only defaults, every request sets its own.
        processors = LogitsProcessorList([greedy_argmax_processor(), TemperatureLogitsWarper(1.0),
                                          TopKLogitsWarper(self.vocab_size), TopPLogitsWarper(1.0)])
        per_request = ContinuousBatchingLogitsProcessorList(processors, per_request_processors=True)
        # It counts the argument rows of the processors it converted; GreedyArgmax needs one too.
        per_request.tensors_required = sum(hasattr(p, "prepare_tensor_args") for p in per_request.logits_processor)
        manager.logit_processor = per_request
        manager.start()
        return manager

    def describe(self) -> str:
        limits = self.limits
        threads = f", {self.threads} CPU threads" if self.threads else ""
        return (
            f"{self.location.describe()} on {self.device} ({str(self.model.dtype).replace('torch.', '')}{threads}); "
            f"context {limits.context_tokens} tokens, max_tokens cap {limits.max_tokens_cap}, "
            f"{limits.max_sequences} concurrent sequences ({limits.kv_blocks} KV blocks of {limits.page_size} tokens), "
            f"{limits.max_requests} requests held at once, stop tokens {self.stop_ids}"
        )

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        return encode_chat(self.tokenizer, messages)

    def problem(self) -> str | None:
        error = self._manager.background_thread_status.fatal_error
        if error is not None:
            return f"the generation loop stopped ({type(error).__name__})"
        if not self._manager.is_running():
            return "the generation loop is not running"
        return None

    def _sampling_kwargs(self, sampling: Sampling) -> dict[str, Any]:
        if sampling.temperature < MIN_SAMPLING_TEMPERATURE:
            return {"greedy": 1, "temperature": 1.0, "top_p": 1.0, "top_k": self.vocab_size}
        return {"greedy": 0, "temperature": float(sampling.temperature), "top_p": float(sampling.top_p),
                "top_k": self.vocab_size}

    async def generate(self, prompt_ids: list[int], sampling: Sampling, request_id: str) -> AsyncIterator[Chunk]:
        """Stream one reply. Waits for a free sequence slot first; aborts the sequence if the caller goes."""
        problem = self.problem()
        if problem:
            raise EngineError(problem)
        async with self._slots.held() as slot:
            outputs: asyncio.Queue = asyncio.Queue()
            try:
                self._manager.register_result_handler(request_id, outputs.put_nowait)
                added = self._manager.add_request(
                    prompt_ids, request_id=request_id, max_new_tokens=sampling.max_new_tokens, streaming=True,
                    eos_token_id=self.stop_ids, **self._sampling_kwargs(sampling),
                )
                if added is None:
                    raise EngineError("the engine is not accepting requests")
                async for chunk in self._decode(outputs, sampling, request_id):
                    slot.finished = chunk.finish_reason is not None
                    yield chunk
            finally:
                if not slot.finished:  # the caller left, or the reply failed: stop decoding it
                    self.abort(request_id)
                self._forget(request_id)

    async def _decode(self, outputs: asyncio.Queue, sampling: Sampling, request_id: str) -> AsyncIterator[Chunk]:
        """The manager's outputs for one request as text chunks, held back where a stop sequence may begin."""
        from tokenizers.decoders import DecodeStream

        decoder = DecodeStream([], skip_special_tokens=True)
        backend = self.tokenizer.backend_tokenizer
        text, sent, seen = "", 0, 0
        hold = max((len(s) for s in sampling.stop), default=1) - 1
        while True:
            output = await outputs.get()
            if output.error is not None:
                raise EngineError(f"generation failed: {str(output.error)[:200]}")
            tokens = output.generated_tokens
            for token in tokens[seen:]:
                if token not in self.stop_ids:
                    text += decoder.step(backend, token) or ""
            seen = len(tokens)
            cut = cut_at_stop(text, sampling.stop)
            if cut >= 0:
                self._manager.cancel_request(request_id)
                yield Chunk(text[sent:cut], "stop", len(tokens))
                return
            if output.is_finished():
                reason = "stop" if tokens and tokens[-1] in self.stop_ids else "length"
                yield Chunk(text[sent:], reason, len(tokens))
                return
            safe = len(text) - hold
            if safe > sent:
                yield Chunk(text[sent:safe])
                sent = safe

    def abort(self, request_id: str) -> None:
        """Stop the sequence, queued in the manager or decoding (the manager ignores an id it no longer holds)."""
        self._manager.cancel_request(request_id)

    def _forget(self, request_id: str) -> None:
        router = self._manager.output_router
        with router._lock:  # the router's own lock: its handlers are called from the generation thread
            router.result_handlers.pop(request_id, None)

    def close(self) -> None:
        try:
            self._manager.stop(block=True, timeout=10)
        except Exception as err:  # noqa: BLE001 - shutting down: log, never raise
            logger.warning("stopping the generation loop: %s", err)
