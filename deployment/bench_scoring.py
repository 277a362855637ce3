"""`python -m deployment.bench_scoring`: throughput and latency of the server, against the old score.py.

Not a test: numbers depend on the machine and its load. For each server it starts (on a free
127.0.0.1 port) it sends greedy /score requests (the contract dialect, which both servers speak)
at each concurrency of `--concurrency` (default 1, 8, 32) and prints completion tokens/s and
latency p50/p95, then the wall time of `--burst` requests (default 32) sent one at a time against
the same requests 16 at a time.

Servers (`--server`):
  new  `python -m deployment.serve` (continuous batching; deployment/serving/engines/)
  old  the previous deployment/score.py (`generate` behind a lock) under the Azure ML inference
       server it was written for, taken from git history (BASELINE_COMMIT) into a temp folder:
       needs `git` and azureml-inference-server-http (not pinned any more: `pip install
       azureml-inference-server-http==1.4.1` for this comparison; without it only the new server runs).

Models: without `--model-dir` the untrained tiny model is built in a temp folder (it never says
<|end|> under greedy decoding, so every reply is exactly --max-tokens long). `--phi35-shape`
builds instead a randomly initialised model of the published Phi-3.5-mini shape (3.8B parameters,
bf16, nothing downloaded): the GPU benchmark (docs/BENCHMARKS.md has the command).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from common import processes
from common.cli import ArgumentParser, UserError, run_cli, say

QUESTION = "Who founded Microsoft, and when?"
BASELINE_COMMIT = "0940f33"
"""The last commit whose deployment/score.py ran under the Azure ML inference server."""
REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 900.0
PHI35_MINI_SHAPE = dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
                        num_key_value_heads=32, vocab_size=32064, max_position_embeddings=131072)
OLD_SERVER = (
    "import sys\n"
    "from azureml_inference_server_http import amlserver\n"
    "amlserver.DEFAULT_HOST = '127.0.0.1'\n"
    "sys.argv = ['bench-old-score', '--entry_script', sys.argv[1], '--model_dir', sys.argv[2], '--port', sys.argv[3],"
    " '--worker_count', '1']\n"
    "amlserver.run()\n"
)


def _post(url: str, body: dict) -> tuple[float, dict]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        answer = json.loads(response.read())
    return time.perf_counter() - started, answer


def _start(command: list[str], health: str, log: Path, cwd: Path, env: dict[str, str] | None = None) -> tuple[Any, str]:
    """Start a server (common.processes: its own session, output to `log`), wait until `health` answers;
    returns the process and its /score URL."""
    port = processes.free_port()
    process, _ = processes.start([*command, str(port)], log, cwd=cwd, env=env)
    base = f"http://{processes.HOST}:{port}"
    processes.wait_healthy(process, base + health, log, timeout=START_TIMEOUT_S, what="the server")
    return process, base + "/score"


def _start_new(model_dir: Path, scratch: Path) -> tuple[Any, str]:
    return _start([sys.executable, "-m", "deployment.serve", "--model-dir", str(model_dir), "--port"], "/health",
                  scratch / "new-server.log", REPO_ROOT)


OLD_SERVER_PIN = "azureml-inference-server-http==1.4.1"


def _old_server_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("azureml_inference_server_http") is not None


def _start_old(model_dir: Path, scratch: Path) -> tuple[Any, str]:
    if not _old_server_installed():
        raise UserError(f"the old server runs under {OLD_SERVER_PIN}, no longer a dependency: "
                        f"`.venv/bin/pip install {OLD_SERVER_PIN}` to compare, or pass --server new")
    score = scratch / "old" / "score.py"
    score.parent.mkdir(parents=True, exist_ok=True)
    try:
        source = subprocess.run(["git", "-C", str(REPO_ROOT), "show", f"{BASELINE_COMMIT}:deployment/score.py"],
                                capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise UserError(f"cannot read the old score.py from git ({BASELINE_COMMIT}): {err}; run from a clone") from None
    score.write_bytes(source)
    env = {**os.environ, "AML_APP_INSIGHTS_ENABLED": "false",
           "GUNICORN_CMD_ARGS": (os.environ.get("GUNICORN_CMD_ARGS", "") + " --no-control-socket").strip()}
    return _start([sys.executable, "-c", OLD_SERVER, str(score), str(model_dir)], "/", scratch / "old-server.log",
                  score.parent, env)


def _stop(process: Any) -> None:
    processes.stop_group(process, timeout=30.0)


def _body(i: int, max_tokens: int) -> dict:
    return {"messages": [{"role": "user", "content": f"{QUESTION} ({i})"}], "max_tokens": max_tokens, "temperature": 0}


def run_load(url: str, requests: int, concurrency: int, max_tokens: int) -> dict:
    """`requests` requests, at most `concurrency` in flight; tokens/s over the wall time, latency percentiles."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda i: _post(url, _body(i, max_tokens)), range(requests)))
    wall = time.perf_counter() - started
    latencies = sorted(seconds for seconds, _ in results)
    tokens = sum(answer["usage"]["completion_tokens"] for _, answer in results)
    return {
        "concurrency": concurrency, "requests": requests, "wall_s": wall, "completion_tokens": tokens,
        "tokens_per_s": tokens / wall, "p50_ms": statistics.median(latencies) * 1e3,
        "p95_ms": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))] * 1e3,
    }


def measure(url: str, levels: Sequence[int], requests: int, burst: int, max_tokens: int) -> dict:
    for i in range(2):
        _post(url, _body(i, max_tokens))  # warm-up
    rows = [run_load(url, max(requests, level), level, max_tokens) for level in levels]
    serial = run_load(url, burst, 1, max_tokens)
    batched = run_load(url, burst, 16, max_tokens)
    return {"rows": rows, "burst": {"requests": burst, "one_at_a_time_s": serial["wall_s"],
                                    "sixteen_at_a_time_s": batched["wall_s"],
                                    "speedup": serial["wall_s"] / batched["wall_s"]}}


def build_phi35_shape(out: Path, tokenizer_from: Path) -> Path:
    """A randomly initialised model of the published Phi-3.5-mini shape (bf16), with the tiny tokenizer."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Phi3Config

    config = Phi3Config(**PHI35_MINI_SHAPE, eos_token_id=32000, pad_token_id=32000, bos_token_id=1)
    say("building a random-init Phi-3.5-mini-shaped model (3.8B parameters, bf16; a minute or two)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    stop = json.loads((tokenizer_from / "generation_config.json").read_text())["eos_token_id"]
    model.generation_config = GenerationConfig(eos_token_id=stop, pad_token_id=stop[0] if isinstance(stop, list) else stop)
    model.save_pretrained(out)
    for item in tokenizer_from.iterdir():
        if item.name.startswith("tokenizer") or item.name == "chat_template.jinja":
            shutil.copy2(item, out / item.name)
    return out


def machine() -> str:
    import torch

    from common.machine import cpu_name

    cpu = cpu_name()

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m deployment.bench_scoring", description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, help="model to serve (default: build the untrained tiny model)")
    parser.add_argument("--phi35-shape", action="store_true",
                        help="serve a random-init model of the published Phi-3.5-mini shape (the GPU benchmark)")
    parser.add_argument("--server", choices=("new", "old", "both"), default="both")
    parser.add_argument("--url", help="measure this running /score URL instead of starting a server")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrency levels (default 1,8,32)")
    parser.add_argument("--requests", type=int, default=32, help="requests per level, at least the level (default 32)")
    parser.add_argument("--burst", type=int, default=32, help="requests for the one-at-a-time vs 16-at-a-time run")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens per request (default 32)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON row per server and concurrency instead of the tables")
    parser.add_argument("--json-out", type=Path, help="also write the full results (with the burst runs) here")
    args = parser.parse_args(argv)
    try:
        levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--concurrency takes integers like 1,8,32, got {args.concurrency!r}") from None
    if not levels or min(levels) < 1 or args.requests < 1 or args.burst < 1 or args.max_tokens < 1:
        raise UserError("--concurrency levels, --requests, --burst and --max-tokens must be at least 1")
    results: dict = {"machine": machine(), "max_tokens": args.max_tokens, "servers": {}}
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp:
        scratch = Path(tmp)
        if args.url:
            results["servers"]["url"] = measure(args.url, levels, args.requests, args.burst, args.max_tokens)
        else:
            model_dir = args.model_dir
            if model_dir is None:
                from training.tiny_model import build_tiny_model

                say("building the untrained tiny model")
                model_dir = build_tiny_model(scratch / "tiny")
                if args.phi35_shape:
                    model_dir = build_phi35_shape(scratch / "phi35-shape", model_dir)
            names = ["new", "old"] if args.server == "both" else [args.server]
            if args.server == "both" and not _old_server_installed():
                say(f"note: skipping the old server: {OLD_SERVER_PIN} is not installed (pip install it to compare)")
                names.remove("old")
            for name in names:
                say(f"starting the {name} server")
                process, url = (_start_new if name == "new" else _start_old)(model_dir, scratch)
                try:
                    say(f"measuring {name}: concurrency {levels}, {args.max_tokens} tokens per reply")
                    results["servers"][name] = measure(url, levels, args.requests, args.burst, args.max_tokens)
                finally:
                    _stop(process)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if args.json:  # the rows training/bench_other.py reads
        print(json.dumps([
            {"shape": f"{name}, concurrency {row['concurrency']}", "requests": row["requests"],
             "requests_per_s": row["requests"] / row["wall_s"], "completion_tokens_per_s": row["tokens_per_s"],
             "mean_completion_tokens": row["completion_tokens"] / row["requests"],
             "p50_ms": row["p50_ms"], "p95_ms": row["p95_ms"]}
            for name, result in results["servers"].items() for row in result["rows"]
        ], indent=2))
        return 0
    print(f"machine: {results['machine']}")
    print("| server | concurrency | requests | tokens/s | p50 ms | p95 ms |\n|---|---:|---:|---:|---:|---:|")
    for name, result in results["servers"].items():
        for row in result["rows"]:
            print(f"| {name} | {row['concurrency']} | {row['requests']} | {row['tokens_per_s']:.0f} | "
                  f"{row['p50_ms']:.0f} | {row['p95_ms']:.0f} |")
    print(f"\n| server | {args.burst} requests one at a time | 16 at a time | speedup |\n|---|---:|---:|---:|")
    for name, result in results["servers"].items():
        burst = result["burst"]
        print(f"| {name} | {burst['one_at_a_time_s']:.2f} s | {burst['sixteen_at_a_time_s']:.2f} s | {burst['speedup']:.1f}x |")
    return 0


if __name__ == "__main__":
    run_cli(main)
