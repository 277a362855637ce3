"""The trainer's hyperparameters, as `training.submit` exposes them as flags and maps them to the registry.

Nothing here declares a setting: names, types, checks and help come from the trainer's own
`training/trainer/settings.py`, defaults from its preset `training/trainer/presets/default.yaml`
(standard library and PyYAML only, so `--help` and `--dry-run` stay instant). Submit loads the
preset with these flags on top (`settings.load`) and stages the result as the job's settings file.
"""
from __future__ import annotations

import argparse
from typing import Any, Mapping

from training.trainer import settings

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
    """Add one flag per hyperparameter (`--learning-rate`, also `--learning_rate`), default None (= the preset's)."""
    group = parser.add_argument_group(
        "hyperparameters",
        "defaults: the --config preset (training/trainer/presets/); they override it, and the job's settings file "
        "holds every resolved value",
    )
    defaults = settings.preset()
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


def resolved(trainer_settings: settings.Settings) -> dict[str, Any]:
    """Every hyperparameter as the trainer will use it (what the settings file holds and the run key hashes)."""
    return settings.hyperparameter_values(trainer_settings)


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
