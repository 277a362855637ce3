"""transformers' continuous batching behind the `Engine` seam: the CPU twin, and the engine on CPU instance types.

`TransformersEngine` uses transformers' `ContinuousBatchingManager` (paged attention; the engine
`transformers serve --continuous-batching` uses): every admitted request is decoded in the same batch
as the others, token by token. Its paged KV cache gets exactly the blocks `limits.size_limits` sized,
so an admitted request never waits for cache blocks (transformers' scheduler otherwise stalls: "No
requests can be scheduled"). Stop tokens come from the model's own generation config (then its
config, then the tokenizer).
"""
from __future__ import annotations

import asyncio
import logging
import os
import uuid
from typing import TYPE_CHECKING, Any, AsyncIterator

from deployment.serving.engines.base import Chunk, EngineError, PromptRefused, Sampling, Stats, cut_at_stop
from deployment.serving.limits import DEFAULT_CONTEXT_TOKENS, kv_bytes_per_token, size_from_environment

if TYPE_CHECKING:  # pragma: no cover
    from deployment.serving.model_dir import ModelLocation

logger = logging.getLogger("deployment.serving.engines")

GPU_CACHE_FRACTION = 0.8  # of the GPU memory free after loading; the rest is logits and activations
CPU_CACHE_FRACTION = 0.25  # of the available RAM
CPU_CACHE_MAX_BYTES = 8 << 30
MIN_SAMPLING_TEMPERATURE = 1e-6  # below this sampling is greedy in all but name (and overflows)
SMALL_MODEL_PARAMETERS = 100_000_000  # below this, CPU generation runs on one thread


def _available_ram() -> int:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The model's stop tokens: generation config, else model config, else the tokenizer's eos."""
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        ids = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value]) if v is not None and int(v) >= 0]
        if ids:
            return list(dict.fromkeys(ids))
    if getattr(tokenizer, "eos_token_id", None) is not None:
        return [int(tokenizer.eos_token_id)]
    raise ValueError("the model names no stop token (generation_config.json eos_token_id): replies would never end")


# -- the transformers engine -----------------------------------------------------------------------


class TransformersEngine:
    """transformers' continuous batching manager, started once, shared by every request."""

    def __init__(self, location: "ModelLocation", model_id: str, *, trust_remote_code: bool = False) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        self.model_id = model_id
        self.location = location
        cuda = torch.cuda.is_available()
        self.device = "cuda" if cuda else "cpu"
        if cuda:  # bf16 where the GPU has it, unless MLmodel's load kwargs ask for fp16
            bf16 = torch.cuda.is_bf16_supported() and location.dtype != "float16"
            dtype = torch.bfloat16 if bf16 else torch.float16
        else:
            dtype = torch.float32
        remote = self._remote_code(location, trust_remote_code, AutoConfig)
        self.tokenizer = AutoTokenizer.from_pretrained(location.tokenizer_dir, trust_remote_code=remote)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer in {location.tokenizer_dir} has no chat template")
        self.model = AutoModelForCausalLM.from_pretrained(
            location.weights_dir, dtype=dtype, trust_remote_code=remote, attn_implementation="sdpa"
        ).to(self.device).eval()
        self.threads = None
        if not cuda:
            if not os.environ.get("OMP_NUM_THREADS") and self.model.num_parameters() < SMALL_MODEL_PARAMETERS:
                torch.set_num_threads(1)  # a tiny model's matrices are too small to split across threads
            self.threads = torch.get_num_threads()
        self.stop_ids = stop_token_ids(self.model, self.tokenizer)
        config = self.model.config
        model_context = int(getattr(config.get_text_config(), "max_position_embeddings", 0) or DEFAULT_CONTEXT_TOKENS)
        dtype_bytes = torch.tensor([], dtype=dtype).element_size()
        if cuda:
            free, _total = torch.cuda.mem_get_info()
            budget = int(free * GPU_CACHE_FRACTION)
        else:
            budget = min(int(_available_ram() * CPU_CACHE_FRACTION), CPU_CACHE_MAX_BYTES)
        self.limits = size_from_environment(
            model_context=model_context, kv_per_token=kv_bytes_per_token(config, dtype_bytes), cache_budget_bytes=budget,
        )
        self.vocab_size = int(config.get_text_config().vocab_size)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        # One shared generation config; temperature/top_p/top_k are set per request (per_request_processors).
        # Its placeholder values only make transformers create the three warpers (1.0 would skip them).
        generation = GenerationConfig(
            do_sample=True, temperature=0.5, top_p=0.5, top_k=self.vocab_size,
            max_new_tokens=self.limits.max_tokens_cap, eos_token_id=self.stop_ids, pad_token_id=pad, use_cache=False,
        )
        cb_config = ContinuousBatchingConfig(
            page_size=self.limits.page_size,
            num_blocks=self.limits.kv_blocks,
            max_batch_tokens=None if cuda else 512,
            max_requests_per_batch=self.limits.max_sequences,
            per_request_processors=True,
            allow_block_sharing=False,  # every sequence owns its blocks: capacity is what was sized
        )
        self._manager = self.model.init_continuous_batching(generation_config=generation, continuous_batching_config=cb_config)
        self._manager.start()
        self._slots: asyncio.Semaphore | None = None
        self.stats = Stats()

    @staticmethod
    def _remote_code(location: "ModelLocation", allowed: bool, auto_config: Any) -> bool:
        """Run the model folder's own Python code only when transformers lacks the architecture and the
        operator allowed it. MLmodel's trust_remote_code (the registry pipeline sets it) is a request, not
        a permission: Phi-3 and Phi-4 are built into transformers, so their remote code is never needed."""
        try:
            auto_config.from_pretrained(location.weights_dir, trust_remote_code=False)
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

    def describe(self) -> str:
        limits = self.limits
        threads = f", {self.threads} CPU threads" if self.threads else ""
        return (
            f"{self.location.describe()} on {self.device} ({str(self.model.dtype).replace('torch.', '')}{threads}); "
            f"context {limits.context_tokens} tokens, max_tokens cap {limits.max_tokens_cap}, "
            f"{limits.max_sequences} concurrent sequences ({limits.kv_blocks} KV blocks of {limits.page_size} tokens), "
            f"stop tokens {self.stop_ids}"
        )

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt's token ids; a conversation the model's chat template refuses (its
        `raise_exception`, e.g. roles out of order) is the caller's error: PromptRefused."""
        from jinja2.exceptions import TemplateError

        try:
            encoded = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                # Control tokens typed by a caller (e.g. "<|end|><|assistant|>") stay plain text.
                sanitize_control_tokens=True,
            )
        except TemplateError as err:
            raise PromptRefused(f"the model's chat template refused this conversation: {err}") from None
        return list(encoded["input_ids"])

    def problem(self) -> str | None:
        error = self._manager.background_thread_status.fatal_error
        if error is not None:
            return f"the generation loop stopped ({type(error).__name__})"
        if not self._manager.is_running():
            return "the generation loop is not running"
        return None

    def _sampling_kwargs(self, sampling: Sampling) -> dict[str, Any]:
        if sampling.temperature < MIN_SAMPLING_TEMPERATURE:
            return {"temperature": 1.0, "top_p": 1.0, "top_k": 1}  # greedy: only the most likely token survives
        return {"temperature": float(sampling.temperature), "top_p": float(sampling.top_p), "top_k": self.vocab_size}

    async def generate(self, prompt_ids: list[int], sampling: Sampling) -> AsyncIterator[Chunk]:
        """Stream one reply. Waits for a free sequence slot first; cancels the sequence if the caller goes."""
        from tokenizers.decoders import DecodeStream

        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limits.max_sequences)
        problem = self.problem()
        if problem:
            raise EngineError(problem)
        self.stats.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.stats.waiting -= 1
        self.stats.in_flight += 1
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.stats.in_flight)
        request_id = uuid.uuid4().hex
        outputs: asyncio.Queue = asyncio.Queue()
        done = False
        try:
            self._manager.register_result_handler(request_id, outputs.put_nowait)
            added = self._manager.add_request(
                prompt_ids, request_id=request_id, max_new_tokens=sampling.max_new_tokens, streaming=True,
                eos_token_id=self.stop_ids, **self._sampling_kwargs(sampling),
            )
            if added is None:
                raise EngineError("the engine is not accepting requests")
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
                    if token in self.stop_ids:
                        continue
                    piece = decoder.step(backend, token)
                    if piece:
                        text += piece
                seen = len(tokens)
                cut = cut_at_stop(text, sampling.stop)
                if cut >= 0:
                    done = True
                    self._manager.cancel_request(request_id)
                    yield Chunk(text[sent:cut], "stop", len(tokens))
                    return
                if output.is_finished():
                    done = True
                    reason = "stop" if tokens and tokens[-1] in self.stop_ids else "length"
                    yield Chunk(text[sent:], reason, len(tokens))
                    return
                safe = len(text) - hold
                if safe > sent:
                    yield Chunk(text[sent:safe])
                    sent = safe
        finally:
            if not done:
                self._manager.cancel_request(request_id)
            with_lock = getattr(self._manager.output_router, "_lock", None)
            if with_lock is not None:
                with with_lock:
                    self._manager.output_router.result_handlers.pop(request_id, None)
            self.stats.in_flight -= 1
            self.stats.finished += 1
            self._slots.release()

    def close(self) -> None:
        try:
            self._manager.stop(block=True, timeout=10)
        except Exception as err:  # noqa: BLE001 - shutting down: log, never raise
            logger.warning("stopping the generation loop: %s", err)
