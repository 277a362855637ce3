"""`python -m demo --like phi-4-mini`: the same offline path on the Phi-4-mini twin."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from demo.pipeline import DEMO_TRAIN_FLAGS, Budget, run_demo
from deployment import local
from training import local_runs

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_help_offers_the_twins_and_an_unknown_one_is_refused() -> None:
    shown = subprocess.run([sys.executable, "-m", "demo", "--help"], cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0 and "--like {phi-3.5-mini,phi-4-mini}" in shown.stdout
    refused = subprocess.run([sys.executable, "-m", "demo", "--like", "phi-5"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 2 and "invalid choice: 'phi-5'" in refused.stderr


def test_make_demo_passes_like_only_when_set(repo_root: Path) -> None:
    def demo_command(*assignments: str) -> str:
        proc = subprocess.run(["make", "--no-print-directory", "-n", "-o", ".venv/.setup-complete", "demo", *assignments], cwd=repo_root,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().splitlines()[-1]

    assert demo_command().endswith("-m demo")  # `make demo` keeps its default
    assert demo_command("LIKE=phi-4-mini").endswith("-m demo --like phi-4-mini")


@pytest.mark.e2e
@pytest.mark.slow
def test_demo_runs_on_the_phi4_mini_twin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs"
    monkeypatch.setenv("FINETUNE_PHI_RUNS", str(runs))
    budget = Budget(epochs=6, questions=1, extra_train_flags=DEMO_TRAIN_FLAGS, greedy_chat=True)  # reproducible answers
    result = run_demo(budget, env=dict(os.environ), like="phi-4-mini")

    assert {"twin", "data", "train", "deploy", "chat-1", "teardown"} <= set(result.timings)
    monkeypatch.setenv("FINETUNE_PHI_RUNS", str(runs / "demo"))  # the demo's room
    config = json.loads((local_runs.latest_model_dir() / "model" / "config.json").read_text())
    assert config["num_key_value_heads"] < config["num_attention_heads"] and config["tie_word_embeddings"] is True
    assert config["partial_rotary_factor"] == 0.75
    assert not (local_runs.tiny_model_dir() / "config.json").exists()  # the Phi-3.5 twin was not built
    assert result.eval_loss_after < result.eval_loss_before * 0.8
    (question, answer, reference), = result.answers
    assert question and reference and answer.strip()
    assert "<|end|>" not in answer and "<|assistant|>" not in answer  # the reply ended at the stop token
    assert result.openai_answer == (question, answer)  # the OpenAI route too, greedy: the very same reply
    assert local.read_record() is None
