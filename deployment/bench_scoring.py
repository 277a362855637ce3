"""`python -m deployment.bench_scoring`: latency and throughput of score.py under the real inference server.

Starts `python -m deployment.serve` on a free 127.0.0.1 port (or measures `--url`, a running
endpoint that needs no key), sends `--requests` sequential chats per request shape after one
warm-up, prints requests/s, completion tokens/s and latency percentiles, then stops the server.
Without `--model-dir` it builds the untrained tiny model in a temp folder. Not a test: numbers
depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Sequence

from common.cli import UserError, run_cli, say

QUESTION = "Who founded Microsoft, and when?"


def _bodies(max_tokens: int) -> dict[str, dict]:
    messages = [{"role": "user", "content": QUESTION}]
    return {
        "contract": {"messages": messages, "max_tokens": max_tokens, "temperature": 0},
        "registry": {"input_data": {"input_string": messages, "parameters": {"max_new_tokens": max_tokens}}},
        "mlflow": {"input_data": [QUESTION], "params": {"max_new_tokens": max_tokens}},
    }


def _post(url: str, body: dict) -> tuple[float, dict]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        answer = json.loads(response.read())
    return time.perf_counter() - started, answer


def _start(model_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    from deployment.local import _free_port

    port = _free_port()
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "deployment.serve", "--model-dir", str(model_dir), "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
            cwd=log.parent,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(f"the server exited with code {process.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url + "/", timeout=2):
                return process, url + "/score"
        except OSError:
            time.sleep(0.5)
    _stop(process)
    raise UserError(f"the server did not answer within 300s; see {log}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def measure(url: str, requests: int, max_tokens: int) -> list[dict]:
    rows = []
    for shape, body in _bodies(max_tokens).items():
        _post(url, body)  # warm-up
        latencies, tokens = [], 0
        started = time.perf_counter()
        for _ in range(requests):
            seconds, answer = _post(url, body)
            latencies.append(seconds)
            tokens += answer["usage"]["completion_tokens"]
        wall = time.perf_counter() - started
        latencies.sort()
        rows.append({
            "shape": shape,
            "requests": requests,
            "requests_per_s": requests / wall,
            "completion_tokens_per_s": tokens / wall,
            "mean_completion_tokens": tokens / requests,
            "p50_ms": statistics.median(latencies) * 1e3,
            "p95_ms": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] * 1e3,
        })
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployment.bench_scoring", description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, help="model to serve (default: build the untrained tiny model)")
    parser.add_argument("--url", help="measure this running scoring URL instead of starting a server")
    parser.add_argument("--requests", type=int, default=20, help="requests per shape (default 20)")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens per request (default 64)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.max_tokens < 1:
        raise UserError("--requests and --max-tokens must be at least 1")
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as scratch:
        process = None
        url = args.url
        if not url:
            model_dir = args.model_dir
            if model_dir is None:
                from training.tiny_model import build_tiny_model

                say("building the untrained tiny model")
                model_dir = build_tiny_model(Path(scratch) / "tiny")
            say("starting the inference server")
            process, url = _start(model_dir, Path(scratch) / "server.log")
        try:
            say(f"measuring {url}: {args.requests} requests per shape, max_tokens {args.max_tokens}")
            rows = measure(url, args.requests, args.max_tokens)
        finally:
            if process is not None:
                _stop(process)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'shape':<10} {'req/s':>7} {'tok/s':>8} {'tokens':>7} {'p50 ms':>8} {'p95 ms':>8}")
    for row in rows:
        print(f"{row['shape']:<10} {row['requests_per_s']:>7.2f} {row['completion_tokens_per_s']:>8.1f} "
              f"{row['mean_completion_tokens']:>7.1f} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
