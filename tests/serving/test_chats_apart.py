"""Chats stay apart on the transformers engine: a greedy reply does not depend on who shares its batch.

On both twins at the server's defaults, six short greedy chats get the same replies alone and while the
longest chat the server accepts (prompt + reply = the context cap) and four others decode beside them.
The context cap keeps every position under the twins' `original_max_position_embeddings`, where
LongRoPE would switch the whole batch to its long factors. With `--accept-longrope-coupling` and a
longer cap, the same run shows the coupling that flag accepts. Also: every PHI_SERVE_* value the docs
show starts the server on the twin.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from serving.helpers import start_server, stop
from serving.test_sizing import documented_settings

pytestmark = pytest.mark.slow

SHORT = [f"Question {i}: what is the capital of country number {i}?" for i in range(6)]
OTHERS = [f"Another chat, number {i}, about the weather today." for i in range(4)]


def _ask(base: str, content: str, max_tokens: int = 24, temperature: float = 0.0) -> str:
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": temperature}
    response = requests.post(base + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def _long_prompt(model_dir: Path, tokens: int) -> tuple[str, int]:
    """A user message whose chat prompt is at most `tokens` tokens long, and its length."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def length(text: str) -> int:
        encoded = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                tokenize=True, return_dict=True)
        return len(encoded["input_ids"])

    unit = "The sea is wide and the ships are many. "
    low, high = 1, tokens  # the most units whose prompt fits (each unit is at least one token)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if length(unit * middle) <= tokens else (low, middle - 1)
    return unit * low, length(unit * low)


def _beside_a_long_chat(base: str, long_prompt: str, long_reply: int) -> tuple[list[str], dict]:
    """The six short chats, sent once the long chat is decoding, with four others; the long chat's timings."""
    body = {"messages": [{"role": "user", "content": long_prompt}], "max_tokens": long_reply, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    long_chat: dict = {}

    def stream_long() -> None:  # an untrained twin's tokens may all be special (no text): usage tells the count
        with requests.post(base + "/v1/chat/completions", json=body, stream=True, timeout=600) as response:
            for line in response.iter_lines():
                if b'"usage"' in line and b'"prompt_tokens"' in line:
                    long_chat["usage"] = line
        long_chat["ended"] = time.monotonic()

    thread = threading.Thread(target=stream_long)
    thread.start()
    health = base + "/health"
    deadline = time.monotonic() + 60
    while requests.get(health, timeout=10).json()["in_flight"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    # No pause here: the short chats join the long one in its prefill (512 tokens a step) or early in its
    # decoding. Decoding moves every sequence in the batch one token a step, so the long chat's hundreds of
    # reply tokens outlast the short chats' 24 by construction, not by the machine's speed.
    replies: dict[int, str] = {}
    ended: list[float] = []

    def short(i: int) -> None:
        replies[i] = _ask(base, SHORT[i])
        ended.append(time.monotonic())

    workers = [threading.Thread(target=short, args=(i,)) for i in range(len(SHORT))]
    workers += [threading.Thread(target=_ask, args=(base, text, 48, 0.8)) for text in OTHERS]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(300)
    thread.join(600)
    assert long_chat["ended"] > max(ended), "the long chat ended before the short ones: they were not batched together"
    return [replies[i] for i in range(len(SHORT))], long_chat


@pytest.fixture(params=["phi-3.5-mini", "phi-4-mini"])
def twin(request) -> Path:
    return request.getfixturevalue("tiny_model_dir" if request.param == "phi-3.5-mini" else "tiny_phi4_model_dir")


def _serve(model_dir: Path, tmp_path: Path, *args: str, env: dict | None = None) -> Iterator[str]:
    process, base = start_server(model_dir, tmp_path / "server.log", *args, env=env)
    try:
        yield base
    finally:
        stop(process)


def test_short_greedy_chats_are_the_same_beside_the_longest_chat(twin: Path, tmp_path: Path) -> None:
    for base in _serve(twin, tmp_path):
        cap = requests.get(base + "/health", timeout=10).json()["limits"]["context_tokens"]
        alone = [_ask(base, text) for text in SHORT]
        prompt, length = _long_prompt(twin, cap - 600)
        beside, long_chat = _beside_a_long_chat(base, prompt, cap - length)  # prompt + reply: the longest accepted
        assert b'"total_tokens":%d' % cap in long_chat["usage"]
        assert beside == alone


def test_the_coupling_flag_accepts_a_longer_context_that_changes_other_chats(tiny_phi4_model_dir: Path,
                                                                             tmp_path: Path) -> None:
    """Past original_max_position_embeddings (4,096 on the Phi-4-mini twin) LongRoPE switches every co-batched
    sequence to its long factors: the short chats' greedy replies change while the long chat decodes there."""
    for base in _serve(tiny_phi4_model_dir, tmp_path, "--accept-longrope-coupling",
                       env={"PHI_SERVE_CONTEXT_TOKENS": "8192"}):
        assert requests.get(base + "/health", timeout=10).json()["limits"]["context_tokens"] == 8192
        alone = [_ask(base, text) for text in SHORT]
        prompt, _length = _long_prompt(tiny_phi4_model_dir, 5000)
        beside, _ = _beside_a_long_chat(base, prompt, 600)
        assert sum(a != b for a, b in zip(alone, beside)) >= 1
    assert "passes this LongRoPE model's original_max_position_embeddings" in (tmp_path / "server.log").read_text()


def test_without_the_flag_a_longer_context_is_capped(tiny_phi4_model_dir: Path, tmp_path: Path) -> None:
    for base in _serve(tiny_phi4_model_dir, tmp_path, env={"PHI_SERVE_CONTEXT_TOKENS": "8192"}):
        assert requests.get(base + "/health", timeout=10).json()["limits"]["context_tokens"] == 4096


@pytest.mark.parametrize("name, value", documented_settings(), ids=lambda v: str(v))
def test_every_documented_setting_starts_the_server_on_the_twin(name: str, value: str, tiny_model_dir: Path,
                                                                tmp_path: Path) -> None:
    field = {"PHI_SERVE_CONTEXT_TOKENS": "context_tokens", "PHI_SERVE_MAX_TOKENS": "max_tokens",
             "PHI_SERVE_MAX_SEQUENCES": "max_sequences", "PHI_SERVE_MAX_REQUESTS": "max_requests"}[name]
    for base in _serve(tiny_model_dir, tmp_path, env={name: value}):
        limits = requests.get(base + "/health", timeout=10).json()["limits"]
        context = min(2048, int(value)) if field == "context_tokens" else limits["context_tokens"]  # the twin: 2,048
        expected = min(int(value), context - 1) if field == "max_tokens" else min(int(value), context) \
            if field == "context_tokens" else int(value)
        assert limits[field] == expected
        assert _ask(base, SHORT[0], max_tokens=4)
