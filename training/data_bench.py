"""Measure `training.data` at full scale: time and peak memory on synthetic ultrachat-sized data.

    python -m training.data_bench [--rows 200000] [--row-bytes 5300] [--fraction 100%] [--keep DIR]

Writes a synthetic JSONL (default 200k rows of ~7 KB on disk, ~1.4 GB like ultrachat_200k train_sft)
into a temporary folder, runs `python -m training.data --source FILE` on it in a child process,
and reports wall time and the child's peak RSS. Not a test: run it by hand, record the numbers
in docs/TRAINING.md.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from common.cli import say

WORDS = ("the model answers questions about data and training on a small cluster with several GPUs "
         "über café naïve 東京 Αθήνα 🙂").split()


def write_synthetic(path: Path, rows: int, row_bytes: int, seed: int = 0) -> int:
    """Write `rows` chat rows of about `row_bytes` each; return the file size."""
    rng = random.Random(seed)
    chunk = " ".join(rng.choice(WORDS) for _ in range(4000))
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        for i in range(rows):
            turns = rng.randint(1, 4)
            size = max(40, int(rng.gauss(row_bytes, row_bytes / 3) / (1.34 * turns)))
            messages = []
            for t in range(turns):
                start = rng.randrange(0, len(chunk) - size - 1) if len(chunk) > size + 1 else 0
                messages.append({"role": "user", "content": f"question {i}.{t}: " + chunk[start:start + size // 3]})
                messages.append({"role": "assistant", "content": chunk[start:start + size]})
            prompt = messages[0]["content"]
            out.write(json.dumps({"prompt": prompt, "prompt_id": f"{i:064x}", "messages": messages},
                                 ensure_ascii=False) + "\n")
            if i and i % 50_000 == 0:
                say(f"    generated {i:,} rows")
    return path.stat().st_size


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.data_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--row-bytes", type=int, default=5_300)
    parser.add_argument("--fraction", default="100%")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args(argv)

    work = args.keep or Path(tempfile.mkdtemp(prefix="data-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        source = work / "synthetic.jsonl"
        started = time.perf_counter()
        size = write_synthetic(source, args.rows, args.row_bytes)
        say(f"synthetic data: {args.rows:,} rows, {size / 1e9:.2f} GB in {time.perf_counter() - started:.0f}s")
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "training.data", "--source", str(source),
                               "--out", str(work / "out"), "--fraction", args.fraction])
        elapsed = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
        if proc.returncode != 0:
            say(f"training.data failed (exit {proc.returncode})")
            return proc.returncode
        print(json.dumps({"rows": args.rows, "source_gb": round(size / 1e9, 2), "fraction": args.fraction,
                          "seconds": round(elapsed, 1), "peak_rss_mb": round(peak_mb)}))
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    from common.cli import run_cli

    run_cli(main)
