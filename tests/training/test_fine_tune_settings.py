"""The trainer's settings are declared once (settings.py) with their values in recipes, and everything follows them."""
from __future__ import annotations

import os
import re
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


def test_the_default_recipe_sets_every_setting_the_job_does_not_require() -> None:
    defaults = settings.read_recipe("default")
    optional = {f.name for f in settings.all_settings() if not f.metadata["required"]}
    assert set(defaults) == optional


@pytest.mark.parametrize("name", settings.RECIPES)
def test_every_named_recipe_parses_and_changes_only_known_settings(name: str) -> None:
    own = settings.read_recipe(name)
    parsed = settings.parse_args(["--config", name, *JOB_FLAGS])
    for key, value in own.items():
        if value is not None and key != "gradient_checkpointing":  # auto/true/false becomes a bool
            assert getattr(parsed, key) == type(getattr(parsed, key))(value), (name, key)


def test_flags_override_the_recipe_and_bad_recipes_are_one_error(tmp_path: Path, capsys) -> None:
    assert settings.parse_args(["--config", "demo", "--epochs", "3", *JOB_FLAGS]).epochs == 3.0
    assert settings.parse_args(["--config", "demo", *JOB_FLAGS]).epochs == 20.0
    typo = tmp_path / "typo.yaml"
    typo.write_text("lora_rank: 8\n")
    bad_value = tmp_path / "bad.yaml"
    bad_value.write_text("lora_dropout: 1.5\n")
    for config, expected in ((str(typo), "unknown setting(s) lora_rank"), ("nope", "no such recipe"),
                             (str(bad_value), "argument --lora_dropout: must be a finite number in [0, 1), got 1.5")):
        with pytest.raises(SystemExit) as exit_:
            settings.parse_args(["--config", config, *JOB_FLAGS])
        assert exit_.value.code == 2 and expected in capsys.readouterr().err


def test_changing_a_default_in_the_recipe_changes_the_dry_run(tmp_path: Path) -> None:
    """The one place: edit recipes/default.yaml in a copy of the repository; submit's dry run shows the new value."""
    copy = tmp_path / "repo"
    for package in ("common", "infra", "training", "deployment"):
        shutil.copytree(REPO_ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    for pins in ("pyproject.toml", "requirements-cloud.lock"):  # the environment's pins and the cloud lock
        shutil.copy(REPO_ROOT / pins, copy / pins)
    data = write_data(tmp_path / "data")
    env = {**os.environ, "PYTHONPATH": str(copy), "FINETUNE_PHI_RUNS": str(tmp_path / "runs"),
           "STACK_OUTPUTS_FILE": str(REPO_ROOT / "docs" / "examples" / "stack-outputs.json")}

    def dry_run_command() -> str:
        done = subprocess.run([sys.executable, "-m", "training.submit", "--dry-run", "--data", str(data)],
                              cwd=copy, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return re.sub(r"--run_key \S+ ", "", yaml.safe_load(done.stdout)["command"])  # the key follows the settings

    before = dry_run_command()
    assert "--lora_r 16 " in before and "--lora_alpha 32 " in before
    recipe = copy / "training" / "trainer" / "recipes" / "default.yaml"
    text = recipe.read_text()
    assert text.count("\nlora_r: 16\n") == 1
    recipe.write_text(text.replace("\nlora_r: 16\n", "\nlora_r: 8\n"))
    after = dry_run_command()
    assert "--lora_r 8 " in after and "--lora_r 16 " not in after
    assert after.replace("--lora_r 8 ", "--lora_r 16 ") == before  # nothing else changed
