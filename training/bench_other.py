"""The other speeds users feel, for `python -m training.bench --suite other`.

Each measurement runs the real command in a child process and takes its wall time and peak
RSS from `os.wait4` (the child's own rusage):

- `python -m training.submit --help` (must stay instant: no Azure SDK / torch import);
- `python -m training.submit --dry-run` against a stack outputs file written to a temp folder
  (builds and prints the Azure ML job YAML; no credential, no network);
- `python -m training.data --source FILE` on N synthetic ultrachat-shaped rows (default
  200,000 rows of ~5,500 characters, about the size of ultrachat_200k's train_sft split);
- local scoring latency and tokens/s on the tiny model, through `deployment.bench_scoring`
  (score.py under the real Azure ML inference server);
- `make demo` total time is recorded by hand (a row is left for it).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common.cli import say, step
from infra.outputs import EXAMPLE_FILE

def timed(argv: list[str], scratch: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a command to the end; its wall time, peak RSS (of the child and its waited-for children), exit code.

    Linux hands a child the parent's peak RSS at fork/exec, so a child's reported peak is never
    below this process's own peak: that floor is returned too, and a peak at the floor means
    "at most this much".
    """
    import resource

    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out_path = scratch / f"out-{time.monotonic_ns()}.log"
    with open(out_path, "wb") as out, open(out_path.with_suffix(".err"), "wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=scratch)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
    return {"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024, "peak_rss_floor_bytes": floor,
            "exit_code": process.returncode, "stdout_bytes": out_path.stat().st_size,
            "stdout": out_path.read_text(encoding="utf-8", errors="replace"),
            "stderr_tail": out_path.with_suffix(".err").read_text(encoding="utf-8", errors="replace")[-600:]}


def _repeat(what: str, argv: list[str], scratch: Path, env: dict[str, str], times: int) -> dict[str, Any]:
    runs = [timed(argv, scratch, env) for _ in range(times)]
    failed = next((r for r in runs if r["exit_code"] != 0), None)
    row: dict[str, Any] = {"what": what, "command": " ".join(argv[1:]).replace(str(scratch), "$TMP"),
                           "repeats": times, "wall_s": statistics.median(r["wall_s"] for r in runs),
                           "wall_s_min": min(r["wall_s"] for r in runs),
                           "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
                           "peak_rss_floor_bytes": max(r["peak_rss_floor_bytes"] for r in runs),
                           "stdout_bytes": runs[-1]["stdout_bytes"], "status": "ok"}
    if failed:
        row.update(status="failed", error=f"exit code {failed['exit_code']}: {failed['stderr_tail'].strip()[-300:]}")
    return row


def synthetic_chat_rows(path: Path, rows: int, row_chars: int, seed: int = 0) -> int:
    """Write `rows` ultrachat-format rows with about `row_chars` characters of message text each; returns bytes."""
    from training.bench_data import synthetic_rows, synthetic_words, write_jsonl

    words = synthetic_words()
    mean_word_chars = sum(len(w) + 1 for w in words) / len(words)
    return write_jsonl(path, synthetic_rows(rows, row_chars / mean_word_chars, seed=seed)).stat().st_size


def run_other(scratch: Path, data_rows: int, row_chars: int, scoring_requests: int,
              fraction: str = "100%") -> dict[str, Any]:
    env = {**os.environ, "FINETUNE_PHI_RUNS": str(scratch / "runs"), "STACK_OUTPUTS_FILE": ""}
    python = sys.executable
    results: list[dict[str, Any]] = []

    with step("training.submit --help (3 runs)"):
        results.append(_repeat("training.submit --help", [python, "-m", "training.submit", "--help"], scratch, env, 3))

    from training.data import prepare

    data = prepare("sample", scratch / "sample-data").out
    outputs = EXAMPLE_FILE  # the documented example stack (docs/examples/stack-outputs.json)
    with step("training.submit --dry-run (3 runs)"):
        row = _repeat("training.submit --dry-run", [python, "-m", "training.submit", "--dry-run", "--outputs-file",
                                                    str(outputs), "--data", str(data)], scratch, env, 3)
        results.append(row)

    source = scratch / "synthetic.jsonl"
    with step(f"writing {data_rows:,} synthetic chat rows"):
        size = synthetic_chat_rows(source, data_rows, row_chars)
    what = f"training.data, {data_rows:,} rows" + (f", {fraction} kept" if fraction != "100%" else "")
    with step(f"training.data on {data_rows:,} rows ({size / 2**20:,.0f} MiB), --fraction {fraction}"):
        row = _repeat(what, [python, "-m", "training.data", "--source", str(source), "--out", str(scratch / "prepared"),
                             "--fraction", fraction], scratch, env, 1)
    row.update(input_bytes=size, rows=data_rows, fraction=fraction, rows_per_s=data_rows / row["wall_s"],
               mib_per_s=size / 2**20 / row["wall_s"])
    results.append(row)
    source.unlink()

    if scoring_requests > 0:
        with step(f"local scoring on the tiny model ({scoring_requests} requests per request shape)"):
            run = timed([python, "-m", "deployment.bench_scoring", "--json", "--requests", str(scoring_requests)],
                        scratch, env)
        if run["exit_code"] != 0:
            results.append({"what": "local scoring", "status": "failed",
                            "error": f"exit code {run['exit_code']}: {run['stderr_tail'].strip()[-300:]}"})
        else:
            for shape in json.loads(run["stdout"]):
                results.append({"what": f"local scoring, {shape['shape']} request", "status": "ok",
                                "command": f"python -m deployment.bench_scoring --json --requests {scoring_requests}",
                                **shape})
    else:
        say("    local scoring skipped (--scoring-requests 0)")
    results.append({"what": "make demo (total)", "status": "not measured here",
                    "note": "recorded by hand: `time make demo` on a set-up clone"})
    return {"results": results}


def other_markdown(suite: dict[str, Any]) -> str:
    lines = ["| what | wall time | peak RSS | throughput / latency | notes |", "|---|---:|---:|---|---|"]
    # "<= X": the child's peak is at the floor Linux gives it (the measuring process's own peak)
    for r in suite["results"]:
        if "p50_ms" in r:
            lines.append(f"| {r['what']} | - | - | p50 {r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms, "
                         f"{r['completion_tokens_per_s']:.1f} completion tokens/s, {r['requests_per_s']:.2f} req/s | "
                         f"{r['requests']} sequential requests, {r['mean_completion_tokens']:.0f} tokens each |")
            continue
        if r.get("status") != "ok":
            lines.append(f"| {r['what']} | - | - | - | {r.get('status')}: {r.get('error') or r.get('note', '')} |")
            continue
        rate = f"{r['rows_per_s']:,.0f} rows/s, {r['mib_per_s']:.0f} MiB/s" if "rows_per_s" in r else "-"
        note = f"median of {r['repeats']}" if r["repeats"] > 1 else "one run"
        if "input_bytes" in r:
            note += f", input {r['input_bytes'] / 2**20:,.0f} MiB"
        at_floor = r["peak_rss_bytes"] <= r.get("peak_rss_floor_bytes", 0) * 1.01
        peak = f"{'<= ' if at_floor else ''}{r['peak_rss_bytes'] / 2**20:,.0f} MiB"
        lines.append(f"| {r['what']} | {r['wall_s']:.2f} s | {peak} | {rate} | {note} |")
    return "\n".join(lines) + "\n"
