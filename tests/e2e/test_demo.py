"""The offline end-to-end path (`make demo`) with a smaller training budget.

Checks each hand-off: the data files, the MLflow model, the real server's answer (and one through the openai client),
the real Prompt flow runtime's answer, and that nothing is left running afterwards.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests

from demo.pipeline import DEMO_TRAIN_FLAGS, Budget, run_demo
from deployment import local
from training import local_runs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_demo_pipeline_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs"
    monkeypatch.setenv("FINETUNE_PHI_RUNS", str(runs))
    probed: dict = {}

    def probe_server() -> None:
        record = local.read_record()
        assert record is not None, "deploy wrote no endpoint record"
        probed["pid"] = record.pid
        reply = requests.post(
            record.url,
            # greedy: this checks the serving hand-off, not sampling (the server's own tests cover that)
            json={"messages": [{"role": "user", "content": "Who founded Microsoft?"}], "max_tokens": 24, "temperature": 0},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        probed["body"] = reply.json()
        bad = requests.post(record.url, json={"messages": []}, timeout=60)
        probed["bad_status"] = bad.status_code

    # greedy: the flow's answer is the same every run (sampling a 6-epoch tiny model may emit <|end|> first)
    budget = Budget(epochs=6, questions=1, extra_train_flags=DEMO_TRAIN_FLAGS, greedy_chat=True)
    result = run_demo(budget, env=dict(os.environ), on_deployed=probe_server)

    # the demo's room: everything it made is under runs/demo/, nothing in the user's runs/
    room = runs / "demo"
    assert not (runs / "data").exists() and not (runs / "jobs").exists() and not (runs / "serve").exists()
    monkeypatch.setenv("FINETUNE_PHI_RUNS", str(room))  # read what the demo made, as its steps did

    # data hand-off
    data = room / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["counts"]["train"] + manifest["counts"]["test"] == manifest["counts"]["selected"]
    assert (data / "train.jsonl").stat().st_size > 0 and (data / "test.jsonl").stat().st_size > 0

    # training hand-off: an MLflow model where deployment looks for it, and learning happened
    model_dir = local_runs.latest_model_dir()
    assert (model_dir / "MLmodel").is_file()
    assert result.eval_loss_before is not None and result.eval_loss_after is not None
    assert result.eval_loss_after < result.eval_loss_before * 0.8

    # serving hand-off: the real server answered the contract shape, refused a bad one
    body = probed["body"]
    assert isinstance(body["output"], str)
    assert body["finish_reason"] in ("stop", "length")
    assert 0 < body["usage"]["completion_tokens"] <= 24 and body["usage"]["prompt_tokens"] > 0
    assert probed["bad_status"] == 400

    # chat hand-off: the real `pf flow test` answered a held-out question
    assert len(result.answers) == 1
    question, answer, reference = result.answers[0]
    assert question and reference and answer.strip()
    # and the same question through the official openai client on /v1/chat/completions: both greedy, both
    # ANSWER_MAX_TOKENS long, so the flow reached the same server and model and got the very same reply
    assert result.openai_answer == (question, answer)

    # teardown: nothing left running, record gone, every step timed
    assert not _pid_alive(probed["pid"])
    assert local.read_record() is None
    assert {"data", "train", "deploy", "chat-1", "teardown", "total"} <= set(result.timings)

    # Prompt flow state stayed under runs/demo/, not in the caller's PF_HOME_DIRECTORY (~/.promptflow),
    # where it would replace and then delete the connection to a real endpoint; Prompt flow's options
    # came from the repository's pf.yaml, so none was written there
    assert (room / "promptflow" / "pf.sqlite").is_file()
    assert not (room / "promptflow" / "pf.yaml").exists()
