"""The evaluation gate end to end on this machine, through the command lines a user types.

Train the tiny model as `make demo` does and deploy it locally; then deploy an untrained tiny
model (`python -m training.tiny_model`): refused, non-zero exit, the live endpoint still answers
with the fine-tuned model; `python -m deployment.evaluate --target local` prints the table;
with --force the switch goes ahead.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.helpers import post

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
EVAL = ("--eval-limit", "32")
"""Every deploy of the test gates on the same 32 conversations and 32 instruction prompts (the untrained model never
stops, so each of its replies runs to max_tokens: at the default 200 of each it takes minutes on 2 cores)."""


def _cli(*argv: str, env: dict[str, str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout


def test_an_untrained_model_is_refused_and_force_overrides(tmp_path: Path, repo_root: Path, state_dir: Path) -> None:
    from common import pf_settings
    from demo.pipeline import Budget, train_command
    from deployment.metrics import score

    runs = tmp_path / "runs"
    env = {**os.environ, "FINETUNE_PHI_RUNS": str(runs), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(repo_root), os.environ.get("PYTHONPATH", "")])}
    pf_settings.apply()  # no tracing service, no telemetry in the session's PF home
    data = runs / "data"
    _ok(_cli("training.data", "--source", "sample", "--out", str(data), env=env, cwd=repo_root))
    _python, module_flag, *train = train_command(sys.executable, "tiny", data, Budget())  # the demo's own fine-tune
    assert module_flag == "-m"
    _ok(_cli(*train, env=env, cwd=repo_root))
    record_file = runs / "serve" / "endpoint.json"
    try:
        first = _ok(_cli("deployment.deploy", "--target", "local", *EVAL, env=env, cwd=repo_root))
        live = json.loads(record_file.read_text())
        assert "local endpoint:" in first and "/jobs/" in live["model_dir"]
        [baseline] = (runs / "eval").glob("*-new-port-*.json")
        baseline = json.loads(baseline.read_text())
        assert baseline["summary"]["correctness"]["mean"] > 0.3, "the fine-tuned tiny model should answer the held-out facts"
        assert len(baseline["instructions"]) == 32 and "prompt_level" in baseline["summary"]["instructions"]

        untrained = runs / "untrained"
        _ok(_cli("training.tiny_model", "--out", str(untrained), env=env, cwd=repo_root))
        refused = _cli("deployment.deploy", "--target", "local", "--model-dir", str(untrained), *EVAL, env=env, cwd=repo_root)
        assert refused.returncode != 0
        assert "was refused" in refused.stderr and "--force" in refused.stderr and "new - live" in refused.stderr
        assert "live scores reused" in refused.stderr  # same eval set, metric version and model as the baseline
        assert json.loads(record_file.read_text()) == live  # traffic unchanged: the fine-tuned server is live
        # the live endpoint still answers a held-out question the way the fine-tuned model did
        conversation = max(baseline["conversations"], key=lambda row: row["scores"]["f1_cut"])
        question = next(row for row in map(json.loads, (data / "test.jsonl").read_text().splitlines())
                        if row["messages"][-1]["content"] == conversation["reference"])
        status, answer = post(live["url"], {"messages": question["messages"][:-1], "max_tokens": 64, "temperature": 0.0})
        assert status == 200 and score(answer["output"], conversation["reference"])["f1_cut"] > 0.5

        table = _ok(_cli("deployment.evaluate", "--target", "local", "--eval-file", str(data / "test.jsonl"),
                         "--limit", "10", env=env, cwd=repo_root))
        header, correctness, instructions = table.splitlines()[:3]
        assert header.split() == ["signal", "deployment", "mean", "95%", "CI", "N", "words", "limit%"]
        assert correctness.split()[:2] == ["correctness", "local"] and correctness.split()[5] == "10"
        assert instructions.split()[:2] == ["instructions", "local"] and instructions.split()[5] == "10"

        forced = _cli("deployment.deploy", "--target", "local", "--model-dir", str(untrained), "--force", *EVAL,
                      env=env, cwd=repo_root)
        _ok(forced)
        assert "--force: moving traffic anyway" in forced.stderr
        assert Path(json.loads(record_file.read_text())["model_dir"]) == untrained
    finally:
        _cli("deployment.teardown", "--target", "local", env=env, cwd=repo_root, timeout=120)
