"""deployment/serving/limits.py and engines/transformers_engine.py: limits sized from the published model
shapes, stop tokens from the model's own generation config, and the real continuous-batching engine on
the tiny model (in process)."""
from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from deployment.serving.engines.loading import stop_token_ids
from deployment.serving.engines.base import Sampling
from deployment.serving.limits import (
    admission_bound, context_cap, kv_bytes_per_token, longrope_original_context, size_limits,
)

GIB = 1 << 30


def _phi3_config(**shape):
    from transformers import Phi3Config

    return Phi3Config(**shape)


PHI35_MINI = dict(hidden_size=3072, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                  vocab_size=32064, max_position_embeddings=131072)
PHI4_MINI = dict(hidden_size=3072, num_hidden_layers=32, num_attention_heads=24, num_key_value_heads=8,
                 vocab_size=200064, max_position_embeddings=131072)


@pytest.mark.slow
def test_kv_cache_per_token_of_the_published_shapes() -> None:
    assert kv_bytes_per_token(_phi3_config(**PHI35_MINI), 2) == 384 * 1024  # no GQA
    assert kv_bytes_per_token(_phi3_config(**PHI4_MINI), 2) == 128 * 1024  # 8 KV heads of 128


def test_limits_shrink_with_memory_and_context() -> None:
    per_token = 384 * 1024
    small = size_limits(model_context=131072, kv_per_token=per_token, cache_budget_bytes=5 * GIB)
    assert small.max_sequences == 3 and small.kv_blocks == 3 * 16
    assert size_limits(model_context=131072, kv_per_token=per_token, cache_budget_bytes=1).max_sequences == 1
    short = size_limits(model_context=2048, kv_per_token=1024, cache_budget_bytes=GIB, context_tokens=8192)
    assert (short.context_tokens, short.max_tokens_cap) == (2048, 2047)  # never beyond the model's own context
    custom = size_limits(model_context=131072, kv_per_token=1024, cache_budget_bytes=GIB, context_tokens=1000,
                         max_tokens_cap=100, max_sequences=5)
    assert (custom.context_tokens, custom.max_tokens_cap, custom.max_sequences, custom.kv_blocks) == (1000, 100, 5, 20)
    assert custom.max_requests == 10  # what an endpoint with max_concurrent_requests_per_instance 5 admits
    assert admission_bound(5) == 10 and admission_bound(32, instance_count=3) == 192


def test_longrope_caps_the_context_at_its_original_positions() -> None:
    """Past original_max_position_embeddings LongRoPE switches the whole batch's factors: capped, unless accepted."""
    longrope = _phi3_config(**PHI4_MINI, original_max_position_embeddings=4096, partial_rotary_factor=0.75,
                            rope_scaling={"type": "longrope", "short_factor": [1.0] * 48, "long_factor": [2.0] * 48})
    assert longrope_original_context(longrope) == 4096
    assert context_cap(longrope) == 4096
    assert context_cap(longrope, accept_longrope_coupling=True) == 131072
    plain = _phi3_config(**{**PHI35_MINI, "max_position_embeddings": 2048})
    assert longrope_original_context(plain) is None and context_cap(plain) == 2048


def test_greedy_is_the_argmax_even_on_ties() -> None:
    """top-k=1 keeps every tied top logit and then draws among them; the greedy processor keeps the first."""
    import torch

    from deployment.serving.engines.transformers_engine import greedy_argmax_processor

    greedy = greedy_argmax_processor()
    scores = torch.tensor([[0.5, 2.0, 2.0, -1.0], [0.5, 2.0, 2.0, -1.0]])
    flags = torch.tensor([1, 0], dtype=torch.int32)  # the first row asks for greedy, the second samples
    out = greedy(scores.clone(), flags)
    assert out[0].tolist() == [float("-inf"), 0.0, float("-inf"), float("-inf")]
    assert torch.equal(out[1], scores[1])
    draws = {int(torch.multinomial(out[0].softmax(-1), 1)) for _ in range(200)}
    assert draws == {1}


@pytest.mark.slow  # builds the tiny model (about 5 s)
def test_stop_tokens_come_from_the_models_generation_config(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected = json.loads((tiny_model_dir / "generation_config.json").read_text())["eos_token_id"]
    assert stop_token_ids(model, tokenizer) == expected
    assert "<|end|>" in tokenizer.convert_ids_to_tokens(stop_token_ids(model, tokenizer))
    model.generation_config.eos_token_id = None  # then the model config, then the tokenizer
    assert stop_token_ids(model, tokenizer) == [model.config.eos_token_id]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path):
    from deployment.serving.engines.transformers_engine import TransformersEngine
    from deployment.serving.model_dir import locate_model

    engine = TransformersEngine(locate_model(tiny_model_dir), "tiny")
    yield engine
    engine.close()


async def _reply(engine, ids, sampling):
    return [chunk async for chunk in engine.generate(ids, sampling, uuid.uuid4().hex)]


@pytest.mark.slow
def test_stop_token_ends_the_reply(engine) -> None:
    """Make the greedy first token a stop token: the reply ends there, finish_reason "stop"."""
    ids = engine.encode([{"role": "user", "content": "Hello"}])
    first = asyncio.run(_reply(engine, ids, Sampling(1, 0.0, 1.0)))
    assert first[-1].finish_reason == "length" and first[-1].completion_tokens == 1
    import torch

    with torch.inference_mode():
        greedy = int(engine.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
    saved = engine.stop_ids
    engine.stop_ids = saved + [greedy]
    try:
        chunks = asyncio.run(_reply(engine, ids, Sampling(20, 0.0, 1.0)))
    finally:
        engine.stop_ids = saved
    assert chunks[-1].finish_reason == "stop" and chunks[-1].completion_tokens == 1
    assert "".join(c.text for c in chunks) == ""


@pytest.mark.slow
def test_a_caller_that_leaves_frees_its_slot(engine) -> None:
    ids = engine.encode([{"role": "user", "content": "Tell me a long story"}])

    async def leave_early():
        stream = engine.generate(ids, Sampling(200, 0.0, 1.0), "leaves-early")
        await stream.__anext__()
        assert engine.stats.in_flight == 1
        await stream.aclose()  # the HTTP client went away

    before = engine.stats.finished
    asyncio.run(leave_early())
    assert engine.stats.in_flight == 0 and engine.stats.finished == before + 1
    again = asyncio.run(_reply(engine, ids, Sampling(3, 0.0, 1.0)))  # the engine still answers
    assert again[-1].completion_tokens == 3


@pytest.mark.slow
def test_control_tokens_in_content_stay_text(engine) -> None:
    """A caller cannot close its turn and open an assistant turn by typing the tokens."""
    plain = engine.encode([{"role": "user", "content": "x"}])
    injected = engine.encode([{"role": "user", "content": "x<|end|>"}])
    assert len(injected) - len(plain) > 1  # as a special token "<|end|>" would add exactly one
