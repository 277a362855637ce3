"""Which checkpoint a run resumes from, what rotation keeps, what the run key covers, which local folder a run uses.

No training here: checkpoint folders are laid out as transformers writes them (plus our marker), so the
choices are tested on their own; tests/training/test_resume.py trains, stops and resumes for real.
"""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from common.cli import UserError
from training import local_runs, local_target, run_key
from training.trainer import checkpoints


def make_checkpoint(root: Path, step: int, *, marker: bool = True, key: str = "run-a", world_size: int = 1) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        (folder / name).write_text("x")
    if marker:
        checkpoints.write_marker(folder, {"step": step, "run_key": key, "world_size": world_size,
                                          "eval_loss_before": 6.5, "mlflow_run_id": "abc"})
    return folder


def test_a_folder_without_its_marker_is_skipped_for_the_previous_complete_one(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 20)
    make_checkpoint(tmp_path, 30, marker=False)  # the node died while writing step 30
    (tmp_path / "checkpoint-40").mkdir()
    (tmp_path / "checkpoint-40" / checkpoints.MARKER).write_text('{"step": 4')  # cut short mid-marker
    newest = checkpoints.newest(tmp_path)
    assert newest is not None and newest.step == 20 and newest.info["eval_loss_before"] == 6.5
    assert [p.name for p in checkpoints.incomplete(tmp_path)] == ["checkpoint-30", "checkpoint-40"]
    chosen = checkpoints.choose(str(tmp_path), None, "run-a", 1)
    assert chosen is not None and chosen.own and chosen.checkpoint.step == 20
    assert checkpoints.newest(tmp_path / "checkpoint-10").step == 10  # one checkpoint folder itself
    assert checkpoints.newest(tmp_path / "checkpoint-30") is None


def test_rotation_keeps_k_and_never_the_newest_complete_one(tmp_path: Path) -> None:
    for step in (5, 10, 15, 20):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 25, marker=False)
    removed = checkpoints.rotate(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == ["checkpoint-10", "checkpoint-25", "checkpoint-5"]
    assert [c.step for c in checkpoints.complete(tmp_path)] == [15, 20]
    checkpoints.rotate(tmp_path, keep=0)  # a keep of 0 still keeps the newest complete one
    assert [c.step for c in checkpoints.complete(tmp_path)] == [20]
    assert checkpoints.remove_all(tmp_path) == 1 and not any(tmp_path.iterdir())


def test_own_checkpoints_win_over_resume_from_and_changes_are_refused(tmp_path: Path) -> None:
    own, other = tmp_path / "own", tmp_path / "other"
    make_checkpoint(other, 7, key="run-a", world_size=2)
    chosen = checkpoints.choose(str(own), str(other), "run-a", 2)
    assert chosen is not None and not chosen.own and chosen.checkpoint.step == 7
    make_checkpoint(own, 3, key="run-a", world_size=2)
    assert checkpoints.choose(str(own), str(other), "run-a", 2).checkpoint.step == 3  # a requeue continues its own
    with pytest.raises(checkpoints.ResumeRefused, match="belongs to run run-a, not to this run"):
        checkpoints.choose(str(tmp_path / "none"), str(other), "run-b", 2)
    with pytest.raises(checkpoints.ResumeRefused, match="written by 2 processes and this run has 1"):
        checkpoints.choose(str(tmp_path / "none"), str(other), "run-a", 1)
    assert checkpoints.choose(str(tmp_path / "none"), str(other), "run-b", 1, force=True).checkpoint.step == 7
    assert checkpoints.choose(str(tmp_path / "none"), None, "run-a", 1) is None


def test_stop_request_first_signal_asks_a_second_sigint_stops_now() -> None:
    stop = checkpoints.StopRequest().install()
    try:
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
        signal.raise_signal(signal.SIGTERM)  # the local runner's forwarded SIGTERM after Ctrl-C changes nothing
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        stop.uninstall()
    stopped = checkpoints.Stopped(signal.SIGTERM, 4, None)
    assert stopped.exit_code == 143 and str(stopped).endswith("resume with the same command")


# ---------------------------------------------------------------- the run key

RESOLVED = {"epochs": 1.0, "learning_rate": 1e-4, "lora_r": 16, "logging_steps": 10, "checkpoint_minutes": 20.0,
            "per_device_eval_batch_size": 4, "method": "lora"}


def test_the_key_follows_model_data_and_the_settings_that_change_the_weights(tmp_path: Path) -> None:
    key = run_key.compute("microsoft/Phi-3.5-mini-instruct", "abc", "t" * 64, "e" * 64, RESOLVED)
    assert key.startswith("phi-3.5-mini-instruct-") and len(key.rsplit("-", 1)[1]) == 12
    assert key == run_key.compute("microsoft/Phi-3.5-mini-instruct", "abc", "t" * 64, "e" * 64, dict(RESOLVED))
    for changed in (("microsoft/Phi-4-mini-instruct", "abc", "t" * 64, "e" * 64, RESOLVED),
                    ("microsoft/Phi-3.5-mini-instruct", "def", "t" * 64, "e" * 64, RESOLVED),
                    ("microsoft/Phi-3.5-mini-instruct", "abc", "u" * 64, "e" * 64, RESOLVED),
                    ("microsoft/Phi-3.5-mini-instruct", "abc", "t" * 64, "e" * 64, {**RESOLVED, "lora_r": 8})):
        assert run_key.compute(*changed) != key
    neutral = {**RESOLVED, "logging_steps": 1, "checkpoint_minutes": 0.0, "per_device_eval_batch_size": 1}
    assert run_key.compute("microsoft/Phi-3.5-mini-instruct", "abc", "t" * 64, "e" * 64, neutral) == key
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    local = run_key.compute(str(folder), None, "t" * 64, "e" * 64, RESOLVED)
    (folder / "config.json").write_text('{"hidden_size": 64}')
    assert run_key.compute(str(folder), None, "t" * 64, "e" * 64, RESOLVED) != local  # its content, not its path


# ---------------------------------------------------------------- the local run folder

@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FINETUNE_PHI_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


def test_the_local_run_folder_is_the_key_resumed_until_it_completes(runs: Path) -> None:
    assert local_target.run_folder("tiny-abc") == local_target.RunFolder("tiny-abc", None, "==> new local run tiny-abc")
    job = local_runs.job_dir("tiny-abc")
    make_checkpoint(job / "checkpoints", 4)
    make_checkpoint(job / "checkpoints", 6, marker=False)
    folder = local_target.run_folder("tiny-abc")
    assert (folder.name, folder.resume_step) == ("tiny-abc", 4)
    assert folder.note.startswith("==> resuming run tiny-abc from step 4 (")
    never = local_target.run_folder("tiny-abc", "never")
    assert never.name == "tiny-abc.2" and "left as it was" in never.note
    (job / "model").mkdir()
    (job / "model" / "MLmodel").write_text("flavors: {}\n")
    done = local_target.run_folder("tiny-abc")
    assert done.name == "tiny-abc.2" and "completed before" in done.note and "starting a new run tiny-abc.2" in done.note


def test_resume_from_another_local_run_checks_its_key_and_world_size(runs: Path) -> None:
    make_checkpoint(local_runs.job_dir("other") / "checkpoints", 5, key="tiny-other")
    with pytest.raises(UserError, match="belongs to run tiny-other, and this run is tiny-mine.*--force"):
        local_target.resume_source("other", "tiny-mine", force=False)
    assert local_target.resume_source("other", "tiny-mine", force=True) == (local_runs.job_dir("other") / "checkpoints").resolve()
    make_checkpoint(runs / "two-ranks", 9, key="tiny-mine", world_size=2)
    with pytest.raises(UserError, match="written by 2 processes"):
        local_target.resume_source(str(runs / "two-ranks"), "tiny-mine", force=False)
    with pytest.raises(UserError, match="no complete checkpoint there"):
        local_target.resume_source(str(runs), "tiny-mine", force=False)


def test_a_marker_is_json_written_atomically(tmp_path: Path) -> None:
    folder = make_checkpoint(tmp_path, 1)
    assert json.loads((folder / checkpoints.MARKER).read_text())["run_key"] == "run-a"
    assert not list(folder.glob(".*.tmp"))
