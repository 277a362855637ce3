"""Bad rows are found on this machine, before anything uploads or bills: Azure dry run, Azure submit, local."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.cli import UserError
from fakes.inputs import write_data, write_stack_outputs
from fakes.ml_client import FakeMLClient
from training import submit

CORRUPT = '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]'  # no closing brace


@pytest.fixture
def corrupt_data(tmp_path: Path) -> Path:
    data = write_data(tmp_path / "data", rows=3)
    lines = (data / "train.jsonl").read_text(encoding="utf-8").splitlines()
    lines[1] = CORRUPT
    (data / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return data


def test_azure_dry_run_names_the_file_and_line(corrupt_data: Path, tmp_path: Path) -> None:
    outputs = write_stack_outputs(tmp_path / "outputs.json")
    env = {**os.environ, "FINETUNE_PHI_RUNS": str(tmp_path / "runs")}
    done = subprocess.run(
        [sys.executable, "-m", "training.submit", "--outputs-file", str(outputs), "--data", str(corrupt_data), "--dry-run"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert done.returncode == 1
    assert done.stdout == ""  # no job YAML for a job that would fail on the node
    train = corrupt_data / "train.jsonl"
    assert f"{train}: 1 of 3 rows are not valid chat rows:\n  {train}:2: not valid JSON" in done.stderr
    assert "python -m training.data --source hf --out" in done.stderr
    assert "Traceback" not in done.stderr


def test_azure_submit_refuses_before_any_call(corrupt_data: Path, tmp_path: Path) -> None:
    fake = FakeMLClient()
    with pytest.raises(UserError, match=r"train\.jsonl:2: not valid JSON"):
        submit.main(["--outputs-file", str(write_stack_outputs(tmp_path / "outputs.json")), "--data", str(corrupt_data)],
                    ml_client=fake)
    assert fake.names() == []  # no cluster read, no upload, no job


def test_the_eval_split_is_checked_too(tmp_path: Path) -> None:
    data = write_data(tmp_path / "data")
    (data / "test.jsonl").write_text('{"messages": [{"role": "user", "content": "only a question"}]}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"test\.jsonl:1: no assistant turn"):
        submit.main(["--outputs-file", str(write_stack_outputs(tmp_path / "outputs.json")), "--data", str(data),
                     "--dry-run"])


def test_local_dry_run_refuses_the_same_rows(corrupt_data: Path) -> None:
    with pytest.raises(UserError, match=r"train\.jsonl:2: not valid JSON"):
        submit.main(["--target", "local", "--model", "tiny", "--data", str(corrupt_data), "--dry-run"])
