"""The supported-model table: `--list-models`, Phi-4-mini for SFT with a pinned revision, the registry default."""
from __future__ import annotations

import io
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from common.cli import UserError
from fakes.inputs import write_data, write_stack_outputs
from training import models, submit


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_PHI_RUNS", str(tmp_path / "runs"))


@pytest.fixture
def argv(tmp_path: Path) -> list[str]:
    return ["--outputs-file", str(write_stack_outputs(tmp_path / "outputs.json")),
            "--data", str(write_data(tmp_path / "data")), "--dry-run"]


def test_list_models_is_fast_and_needs_no_stack(tmp_path: Path) -> None:
    code = ("import sys\nfrom training.submit import main\nmain(['--list-models'])\n"
            # PyYAML (20 ms) is allowed: the trainer's default recipe is YAML and the flags show its defaults
            "print('HEAVY', [m for m in ('azure', 'torch', 'transformers') if m in sys.modules])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.startswith(("microsoft/", "Phi-"))}
    phi4_mini = rows["microsoft/Phi-4-mini-instruct"]
    assert "128k" in phi4_mini and "128 KiB" in phi4_mini and "full ~61 GB (fits)" in phi4_mini and "cfbefacb9925" in phi4_mini
    assert "retired 2025-08-30" in rows["microsoft/Phi-3.5-mini-instruct"]
    assert "registry: offered" in rows["Phi-4"] and "16k" in rows["Phi-4"]
    assert "Foundry retired every Phi-3 and Phi-3.5 model on 2025-08-30" in done.stdout


def test_phi4_mini_sft_dry_run_pins_its_revision(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from azure.ai.ml import load_job

    assert submit.main(argv + ["--model", "microsoft/Phi-4-mini-instruct"]) == 0
    job = load_job(io.StringIO(capsys.readouterr().out))
    assert ("--model_name_or_path microsoft/Phi-4-mini-instruct --model_revision "
            "cfbefacb99257ffa30c83adab238a50856ac3083 --device cuda") in job.command
    assert '"model_revision":"cfbefacb99257ffa30c83adab238a50856ac3083"' in job.tags["config"]
    # the short name from --list-models means the same model
    assert submit.main(argv + ["--model", "phi-4-mini"]) == 0
    assert "--model_name_or_path microsoft/Phi-4-mini-instruct --model_revision cfbefacb" in capsys.readouterr().out


def test_a_hub_id_outside_the_table_trains_from_main_with_a_note(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert submit.main(argv + ["--model", "someone/Phi-4-mini-finetune"]) == 0
    out, err = capsys.readouterr()
    assert "--model_name_or_path someone/Phi-4-mini-finetune --device cuda" in out and "--model_revision" not in out
    assert "not in the supported-model table" in err


def test_table_facts() -> None:
    for model in models.MODELS:
        assert model.revision is None or len(model.revision) == 40 and int(model.revision, 16) >= 0
        assert model.hub_id is None or model.revision, f"{model.key}: a hub model trains from a pinned commit"
    assert models.find(models.DEFAULT_SFT_MODEL).recipes == ("sft",)
    default = models.find(models.DEFAULT_REGISTRY_MODEL)
    assert "registry" in default.recipes and not default.retired()
    assert models.find(models.CURRENT_SFT_CHOICE).registry_name is None  # not offered to the pipeline
    assert models.registry_name("microsoft/Phi-3.5-mini-instruct") == "Phi-3.5-mini-instruct"
    assert models.registry_name(None) == "Phi-4"
    # before the retirement the tutorial's model was still accepted
    models.check_registry_model("Phi-3-mini-4k-instruct", None, today=date(2025, 5, 1))
    with pytest.raises(UserError, match="retired"):
        models.check_registry_model("Phi-3-mini-4k-instruct", None, today=date(2025, 8, 30))


def test_registry_dry_run_refuses_a_retired_model_by_the_table(argv: list[str]) -> None:
    with pytest.raises(UserError, match="Phi-3.5-mini-instruct was retired for fine-tuning"):
        submit.main(argv + ["--recipe", "registry", "--model", "Phi-3.5-mini-instruct"])


def test_a_registry_only_model_is_refused_for_sft(argv: list[str]) -> None:
    with pytest.raises(UserError, match="--model Phi-4 is offered only to --recipe registry"):
        submit.main(argv + ["--model", "Phi-4"])
