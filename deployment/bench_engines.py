"""`python -m deployment.bench_engines`: both serving engines, one run, the same model and prompts.

Not a test: the numbers depend on the machine and its load (docs/BENCHMARKS.md records them with the
machine named). For each engine (`--engines`, default transformers,vllm) it starts
`python -m deployment.serve --engine E` on a free 127.0.0.1 port, warms it up, and at each concurrency
(`--concurrency`, default 1,16,32) streams `--requests` greedy chats of `--max-tokens` tokens through
the OpenAI API, then reports:
- aggregate tokens/s: completion tokens of all chats over the wall time;
- per-stream tokens/s: each chat's completion tokens over its decode time (first token to last), median;
- time to first token, p50 and p95.

Models (`--shape`): `tiny` (default) is the untrained tiny twin built on the spot: greedy replies never
say <|end|>, so every reply is exactly --max-tokens long. `phi-3.5-mini` and `phi-4-mini` are randomly
initialised models of the published shapes (3.8B parameters, bf16; sliding_window and longrope scaling
included; nothing downloaded): the GPU benchmark. Locally `--engine vllm` runs vLLM's CPU build from
.venv-vllm (`make vllm`); on a GPU machine run it in an environment that has vLLM and this repository.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from common.cli import ArgumentParser, UserError, run_cli, say
from common import processes
from deployment.bench_scoring import REPO_ROOT, START_TIMEOUT_S, _stop, machine

QUESTION = "Tell me about the history of computing"
LONGROPE_PAIRS = {"phi-3.5-mini": 48, "phi-4-mini": 48}  # rotated dimension pairs: 96/2, and 128 x 0.75 / 2
SHAPES = {
    "phi-3.5-mini": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32064, max_position_embeddings=131072,
                         original_max_position_embeddings=4096, sliding_window=262144, tie_word_embeddings=False),
    "phi-4-mini": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=24,
                       num_key_value_heads=8, vocab_size=200064, max_position_embeddings=131072,
                       original_max_position_embeddings=4096, sliding_window=262144, partial_rotary_factor=0.75,
                       tie_word_embeddings=True),
}
"""The published config.json shapes of microsoft/Phi-3.5-mini-instruct and microsoft/Phi-4-mini-instruct."""


def build_shape(name: str, out: Path, tokenizer_from: Path) -> Path:
    """A randomly initialised model of a published shape (bf16, on the GPU when there is one), with the
    tiny twin's tokenizer and chat template (its ids fit any vocabulary)."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Phi3Config

    pairs = LONGROPE_PAIRS[name]
    rope = {"rope_type": "longrope", "short_factor": [1.0] * pairs, "long_factor": [1.0 + i / pairs for i in range(pairs)]}
    config = Phi3Config(**SHAPES[name], rope_scaling=rope, eos_token_id=0, pad_token_id=0, bos_token_id=0)
    say(f"building a random-init {name}-shaped model (about 3.8B parameters, bf16; a minute or two)")
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    stop = json.loads((tokenizer_from / "generation_config.json").read_text())["eos_token_id"]
    model.generation_config = GenerationConfig(eos_token_id=stop, pad_token_id=stop[0])
    model.save_pretrained(out)
    for item in tokenizer_from.iterdir():
        if item.name.startswith("tokenizer") or item.name == "chat_template.jinja":
            shutil.copy2(item, out / item.name)
    return out


def _start(engine: str, model_dir: Path, scratch: Path) -> tuple[subprocess.Popen, str]:
    """`python -m deployment.serve --engine E` in its own session (common.processes); its base URL once healthy."""
    port = processes.free_port()
    process, _ = processes.start([sys.executable, "-m", "deployment.serve", "--engine", engine, "--model-dir",
                                  str(model_dir), "--port", str(port)], scratch / f"{engine}-server.log", cwd=REPO_ROOT)
    base = f"http://{processes.HOST}:{port}"
    processes.wait_healthy(process, base + "/health", scratch / f"{engine}-server.log", timeout=START_TIMEOUT_S,
                           what=f"the {engine} engine's server")
    return process, base


def stream_chat(base: str, i: int, max_tokens: int) -> tuple[float, float, int]:
    """One streamed greedy chat: (seconds to the first token, seconds in all, completion tokens)."""
    import requests

    body = {"messages": [{"role": "user", "content": f"{QUESTION} ({i})"}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    started, first, tokens = time.perf_counter(), None, 0
    with requests.post(base + "/v1/chat/completions", json=body, stream=True, timeout=900) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            if first is None and event.get("choices") and event["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    end = time.perf_counter()
    return (first or end) - started, end - started, tokens


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def run_level(base: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        chats = list(pool.map(lambda i: stream_chat(base, i, max_tokens), range(requests)))
    wall = time.perf_counter() - started
    tokens = sum(t for _, _, t in chats)
    per_stream = [t / (total - ttft) for ttft, total, t in chats if total > ttft and t > 1]
    ttfts = [ttft for ttft, _, _ in chats]
    return {"concurrency": concurrency, "requests": requests, "wall_s": wall, "completion_tokens": tokens,
            "aggregate_tokens_s": tokens / wall, "per_stream_tokens_s": statistics.median(per_stream) if per_stream else 0.0,
            "ttft_p50_ms": _percentile(ttfts, 0.5) * 1e3, "ttft_p95_ms": _percentile(ttfts, 0.95) * 1e3}


def measure(base: str, levels: Sequence[int], requests: int, max_tokens: int) -> list[dict]:
    for i in range(2):
        stream_chat(base, i, max_tokens)  # warm-up
    return [run_level(base, level, max(requests, level), max_tokens) for level in levels]


def table(results: dict) -> str:
    lines = [f"machine: {results['machine']}; model: {results['shape']}; {results['max_tokens']} tokens per reply",
             "", "| engine | concurrency | chats | aggregate tokens/s | per-stream tokens/s | TTFT p50 | TTFT p95 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for engine, rows in results["engines"].items():
        lines += [f"| {engine} | {r['concurrency']} | {r['requests']} | {r['aggregate_tokens_s']:.0f} | "
                  f"{r['per_stream_tokens_s']:.0f} | {r['ttft_p50_ms']:.0f} ms | {r['ttft_p95_ms']:.0f} ms |" for r in rows]
    return "\n".join(lines)


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m deployment.bench_engines", description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=("tiny", *SHAPES), default="tiny", help="the model (default: tiny)")
    parser.add_argument("--model-dir", type=Path, help="serve this model instead of building one")
    parser.add_argument("--engines", default="transformers,vllm", help="comma-separated (default transformers,vllm)")
    parser.add_argument("--concurrency", default="1,16,32", help="comma-separated levels (default 1,16,32)")
    parser.add_argument("--requests", type=int, default=32, help="chats per level, at least the level (default 32)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per reply (default 64)")
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    try:
        args.levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--concurrency takes integers like 1,16,32, got {args.concurrency!r}") from None
    args.engine_list = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not set(args.engine_list) <= {"transformers", "vllm"} or not args.engine_list:
        raise UserError(f"--engines takes transformers and/or vllm, got {args.engines!r}")
    if not args.levels or min(args.levels) < 1 or args.requests < 1 or args.max_tokens < 2:
        raise UserError("--concurrency levels and --requests must be at least 1, --max-tokens at least 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _args(argv)
    results: dict = {"machine": machine(), "shape": str(args.model_dir or args.shape), "max_tokens": args.max_tokens,
                     "engines": {}}
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        scratch, model_dir = Path(tmp), args.model_dir
        if model_dir is None:
            from training.tiny_model import build_tiny_model

            model_dir = build_tiny_model(scratch / "tiny")
            if args.shape != "tiny":
                model_dir = build_shape(args.shape, scratch / args.shape, model_dir)
        for engine in args.engine_list:
            say(f"starting the {engine} engine (vLLM: a minute or more)")
            process, base = _start(engine, model_dir, scratch)
            try:
                say(f"measuring {engine}: concurrency {args.levels}, {args.max_tokens} tokens per reply")
                results["engines"][engine] = measure(base, args.levels, args.requests, args.max_tokens)
            finally:
                _stop(process)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(table(results))
    return 0


if __name__ == "__main__":
    run_cli(main)
