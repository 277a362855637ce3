"""The trainer's hyperparameters, as `training.submit` exposes and forwards them.

Nothing here declares a setting: names, types, checks and help come from the trainer's own
`training/trainer/settings.py`, defaults from its recipe `training/trainer/recipes/default.yaml`
(standard library and PyYAML only, so `--help` and `--dry-run` stay instant). Submit shows
those defaults in `--help` and forwards to the job every resolved setting (`trainer_argv`), so
the job's command line, and the dry run that prints it, carries the values the trainer will use.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping

from training.trainer import settings

TRAINER_DIR = Path(settings.__file__).resolve().parent
"""The trainer package folder: the code a job uploads (as `trainer/`)."""
TRAINER_ENTRY = "fine_tune.py"
"""The entry module's file inside TRAINER_DIR (run as `python -m trainer.fine_tune` on the cluster)."""
TRAINER_MODULE = "training.trainer.fine_tune"
"""The entry module as this repository imports it (`python -m training.trainer.fine_tune` locally)."""
JOB_FLAGS = tuple(f.name for f in settings.all_settings() if f.metadata["job"])
"""Trainer settings the job itself sets (paths, model, revision, device), not hyperparameters."""

REGISTRY_INPUTS: Mapping[str, str] = {
    "epochs": "num_train_epochs", "max_steps": "max_steps", "learning_rate": "learning_rate",
    "lr_scheduler_type": "lr_scheduler_type", "weight_decay": "weight_decay",
    "per_device_train_batch_size": "per_device_train_batch_size",
    "per_device_eval_batch_size": "per_device_eval_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps", "max_length": "max_seq_length",
    "method": "apply_lora", "lora_r": "lora_r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
    "seed": "seed", "logging_steps": "logging_steps",
}
"""Trainer hyperparameter -> the registry's chat_completion_pipeline input that means the same (the others it lacks)."""


def names() -> tuple[str, ...]:
    """The hyperparameters, in the trainer's declaration order."""
    return tuple(f.name for f in settings.hyperparameters())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per hyperparameter (`--learning-rate`, also `--learning_rate`), default None (= the recipe's)."""
    group = parser.add_argument_group(
        "hyperparameters",
        "defaults: the trainer's recipe (training/trainer/recipes/default.yaml); the job carries every resolved value",
    )
    defaults = settings.recipe()
    for f in settings.hyperparameters():
        meta = f.metadata
        dashed = "--" + f.name.replace("_", "-")
        flags = [dashed] if dashed == "--" + f.name else [dashed, "--" + f.name]
        boolean = meta["parse"] is settings.boolean
        shown = "" if defaults.get(f.name) is None else f" (default: {settings.text(defaults[f.name])})"
        group.add_argument(
            *flags, dest=f.name, type=meta["parse"], choices=None if boolean else meta["choices"], default=None,
            metavar="{true,false}" if boolean else None if meta["choices"] else f.name.split("_")[-1].upper(),
            help=meta["help"].replace("%", "%%") + shown,
        )


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The hyperparameters the user set on the command line, in the trainer's order."""
    return {name: getattr(args, name) for name in names() if getattr(args, name, None) is not None}


def resolved(values: Mapping[str, Any]) -> dict[str, Any]:
    """Every hyperparameter as the trainer will use it: its default recipe, these values on top, `auto` rules applied."""
    parsed = _parse(values)
    return {name: getattr(parsed, name) for name in names() if getattr(parsed, name) is not None}


def trainer_argv(values: Mapping[str, Any]) -> list[str]:
    """`--name value` pairs for the job's trainer command: every resolved hyperparameter, not only the given ones."""
    return settings.as_argv(resolved(values))


class RefusedByTrainer(ValueError):
    """A value the trainer's own argument checks refuse (the message names the flag)."""


def check_with_trainer(values: Mapping[str, Any]) -> None:
    """Run the trainer's own parser on these values, so `--epochs -1` fails here, not on the cluster."""
    _parse(values)


def _parse(values: Mapping[str, Any]) -> settings.Settings:
    import contextlib
    import io

    job_flags = ["--train_file", "train.jsonl", "--eval_file", "test.jsonl", "--output_dir", "model"]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return settings.parse_args(job_flags + settings.as_argv(values))
    except SystemExit:
        lines = [line for line in stderr.getvalue().splitlines() if "error:" in line]
        reason = lines[-1].split("error:", 1)[1].strip().removesuffix("(see --help)").strip() if lines else \
            "the trainer refused these flags"
        for name in values:  # name the flag the way submit spells it
            reason = reason.replace(f"--{name}", "--" + name.replace("_", "-"))
        raise RefusedByTrainer(reason) from None


class NotOfferedByRegistry(ValueError):
    """Flags the registry's pipeline has no input for."""


def registry_params(values: Mapping[str, Any]) -> dict[str, Any]:
    """Translate the user's hyperparameters to chat_completion_pipeline inputs."""
    unknown = [name for name in values if name not in REGISTRY_INPUTS]
    if unknown:
        raise NotOfferedByRegistry(", ".join("--" + n.replace("_", "-") for n in unknown))
    params: dict[str, Any] = {}
    for name, value in values.items():
        target = REGISTRY_INPUTS[name]
        if name == "method":
            params[target] = "true" if value == "lora" else "false"
        elif name == "epochs":
            params[target] = int(value) if float(value).is_integer() else value
        else:
            params[target] = value
    return params
