"""The trainer's settings are declared once (settings.py) with their values in presets, and everything follows them."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fakes.inputs import write_data
from training.trainer import settings

REPO_ROOT = Path(__file__).resolve().parents[2]
JOB_FLAGS = ["--train_file", "t", "--eval_file", "e", "--output_dir", "o"]


def test_the_default_preset_sets_every_setting_the_job_does_not_require() -> None:
    defaults = settings.read_preset("default")
    optional = {f.name for f in settings.all_settings() if not f.metadata["required"]}
    assert set(defaults) == optional


@pytest.mark.parametrize("name", settings.PRESETS)
def test_every_named_preset_parses_and_changes_only_known_settings(name: str) -> None:
    own = settings.read_preset(name)
    parsed = settings.parse_args(["--config", name, *JOB_FLAGS])
    for key, value in own.items():
        if value is not None and key != "gradient_checkpointing":  # auto/true/false becomes a bool
            assert getattr(parsed, key) == type(getattr(parsed, key))(value), (name, key)


def test_load_checks_every_value_with_the_flags_parser_and_raises_a_typed_error(tmp_path: Path) -> None:
    assert settings.load("demo", {"epochs": 3}).epochs == 3.0
    assert settings.load("demo").epochs == 20.0
    typo = tmp_path / "typo.yaml"
    typo.write_text("lora_rank: 8\n")
    bad_value = tmp_path / "bad.yaml"
    bad_value.write_text("lora_dropout: 1.5\n")
    not_a_number = tmp_path / "string.yaml"
    not_a_number.write_text("lora_r: sixteen\n")
    for config, expected in ((str(typo), "unknown setting(s) lora_rank"), ("nope", "no such preset"),
                             (str(bad_value), "lora_dropout must be a finite number in [0, 1), got 1.5"),
                             (str(not_a_number), "lora_r must be a whole number in [1, 4096], got 'sixteen'")):
        with pytest.raises(settings.SettingsError) as err:
            settings.load(config)
        assert expected in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(settings.SettingsError, match="method must be one of full, lora, got 'qlora'"):
        settings.load("default", {"method": "qlora"})


def test_the_trainer_command_line_refuses_a_bad_settings_file_in_one_line(tmp_path: Path, capsys) -> None:
    bad_value = tmp_path / "bad.yaml"
    bad_value.write_text("lora_r: sixteen\n")
    with pytest.raises(SystemExit) as exit_:
        settings.parse_args(["--config", str(bad_value), *JOB_FLAGS])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "lora_r must be a whole number" in err


def test_dump_writes_every_hyperparameter_and_loads_back_the_same(tmp_path: Path) -> None:
    chosen = settings.load("tutorial", {"lora_r": 8, "seed": 3})
    written = tmp_path / "settings.yaml"
    written.write_text(settings.dump(chosen))
    assert set(yaml.safe_load(written.read_text())) == {f.name for f in settings.hyperparameters()}
    again = settings.parse_args(["--config", str(written), *JOB_FLAGS])
    assert settings.hyperparameter_values(again) == settings.hyperparameter_values(chosen)


def _settings_file(dry_run_stdout: str) -> str:
    """The settings file a dry run staged (and printed in its header)."""
    code = Path(yaml.safe_load(dry_run_stdout)["code"])
    text = (code / "trainer" / "settings.yaml").read_text()
    assert all(f"# {line}".rstrip() in dry_run_stdout for line in text.splitlines())  # printed as it is
    return text


def test_changing_a_value_in_the_preset_changes_the_settings_file_the_job_reads(tmp_path: Path) -> None:
    """The one place: edit presets/default.yaml in a copy of the repository; submit's dry run shows the new value."""
    copy = tmp_path / "repo"
    for package in ("common", "infra", "training", "deployment"):
        shutil.copytree(REPO_ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    for pins in ("pyproject.toml", "requirements-cloud.lock"):  # the environment's pins and the cloud lock
        shutil.copy(REPO_ROOT / pins, copy / pins)
    data = write_data(tmp_path / "data")
    env = {**os.environ, "PYTHONPATH": str(copy), "FINETUNE_PHI_RUNS": str(tmp_path / "runs"),
           "STACK_OUTPUTS_FILE": str(REPO_ROOT / "docs" / "examples" / "stack-outputs.json")}

    def dry_run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "training.submit", "--dry-run", "--data", str(data), *extra],
                              cwd=copy, env=env, capture_output=True, text=True, timeout=120)

    done = dry_run("--config", "default")
    assert done.returncode == 0, done.stderr[-2000:]
    before = _settings_file(done.stdout)
    assert "--config trainer/settings.yaml " in yaml.safe_load(done.stdout)["command"]
    assert "\nlora_r: 16\n" in before and "\nlora_alpha: 32\n" in before
    preset = copy / "training" / "trainer" / "presets" / "default.yaml"
    text = preset.read_text()
    assert text.count("\nlora_r: 16\n") == 1
    preset.write_text(text.replace("\nlora_r: 16\n", "\nlora_r: 8\n"))
    after = _settings_file(dry_run("--config", "default").stdout)
    assert after.replace("\nlora_r: 8\n", "\nlora_r: 16\n") == before  # that value, and nothing else, changed

    preset.write_text(text.replace("\nlora_r: 16\n", "\nlora_r: sixteen\n"))
    refused = dry_run("--config", "default")
    assert refused.returncode != 0 and refused.stdout == ""
    assert refused.stderr.strip().count("\n") == 0 and "Traceback" not in refused.stderr, refused.stderr
    assert "lora_r must be a whole number in [1, 4096], got 'sixteen'" in refused.stderr
