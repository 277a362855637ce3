"""The trainer's hyperparameter flags, as `training.submit` exposes and forwards them.

Submit never hard-codes the trainer's defaults: it reads them from the trainer's own argparse
calls in `training/trainer/fine_tune.py` by parsing that file's syntax tree (no torch import,
so `--help` stays instant), shows them in `--help`, and forwards to the trainer only the flags
the user set. The job therefore always trains with exactly the trainer's defaults plus the
user's overrides, on Azure and locally alike.
"""
from __future__ import annotations

import argparse
import ast
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

TRAINER_DIR = Path(__file__).resolve().parent / "trainer"
TRAINER_ENTRY = "fine_tune.py"


def _bool(text: str) -> str:
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


@dataclass(frozen=True)
class Hyperparameter:
    name: str
    """The trainer's flag without dashes (underscore style)."""
    type: Callable[[str], Any]
    help: str
    choices: tuple[str, ...] | None = None
    registry_name: str | None = None
    """The input of the registry's chat_completion_pipeline that means the same; None: not offered there."""


HYPERPARAMETERS: tuple[Hyperparameter, ...] = (
    Hyperparameter("epochs", float, "training epochs", registry_name="num_train_epochs"),
    Hyperparameter("max_steps", int, "stop after this many optimizer steps (overrides epochs when > 0)", registry_name="max_steps"),
    Hyperparameter("learning_rate", float, "peak learning rate", registry_name="learning_rate"),
    Hyperparameter("lr_scheduler_type", str, "learning-rate schedule (linear, cosine, ...)", registry_name="lr_scheduler_type"),
    Hyperparameter("warmup_ratio", float, "fraction of steps spent warming up"),
    Hyperparameter("weight_decay", float, "AdamW weight decay", registry_name="weight_decay"),
    Hyperparameter("per_device_train_batch_size", int, "training batch size per GPU", registry_name="per_device_train_batch_size"),
    Hyperparameter("per_device_eval_batch_size", int, "evaluation batch size per GPU", registry_name="per_device_eval_batch_size"),
    Hyperparameter("gradient_accumulation_steps", int, "micro-batches per optimizer step", registry_name="gradient_accumulation_steps"),
    Hyperparameter("max_length", int, "longest tokenized conversation kept (tokens)", registry_name="max_seq_length"),
    Hyperparameter("packing", _bool, "pack several conversations into one sequence", choices=("true", "false")),
    Hyperparameter("method", str, "full fine-tune or LoRA adapters", choices=("full", "lora"), registry_name="apply_lora"),
    Hyperparameter("lora_r", int, "LoRA rank", registry_name="lora_r"),
    Hyperparameter("lora_alpha", int, "LoRA alpha", registry_name="lora_alpha"),
    Hyperparameter("lora_dropout", float, "LoRA dropout", registry_name="lora_dropout"),
    Hyperparameter("lora_target_modules", str, "modules LoRA adapts: all-linear or a comma-separated list"),
    Hyperparameter("attn_implementation", str, "attention kernel", choices=("auto", "sdpa", "eager", "flash_attention_2")),
    Hyperparameter("gradient_checkpointing", str, "recompute activations to save memory; auto: on for full, off for lora",
                   choices=("auto", "true", "false")),
    Hyperparameter("model_dtype", str, "dtype the weights are loaded in", choices=("float32", "bfloat16")),
    Hyperparameter("assistant_only_loss", str, "train on assistant turns only", choices=("auto", "true", "false")),
    Hyperparameter("seed", int, "random seed", registry_name="seed"),
    Hyperparameter("logging_steps", int, "log metrics every N steps", registry_name="logging_steps"),
    Hyperparameter("eval_steps", int, "also evaluate every N steps (0: before and after only)"),
    Hyperparameter("log_model_artifacts", _bool, "also log the model folder to the MLflow run", choices=("true", "false")),
)
JOB_FLAGS = ("model_name_or_path", "train_file", "eval_file", "output_dir", "work_dir")
"""Trainer flags the job itself sets (not hyperparameters)."""
BY_NAME: Mapping[str, Hyperparameter] = {hp.name: hp for hp in HYPERPARAMETERS}


def _literal(node: ast.AST, names: Mapping[str, Any]) -> Any:
    """A literal, or an f-string over module-level literal constants (e.g. f"{RATES['lora']}")."""
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue):
                parts.append(str(_literal(value.value, names)))
            else:
                raise ValueError("unsupported f-string part")
        return "".join(parts)
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.Subscript):
        return _literal(node.value, names)[_literal(node.slice, names)]
    return ast.literal_eval(node)


@lru_cache(maxsize=None)
def trainer_flags(trainer_file: Path | None = None) -> dict[str, tuple[Any, str | None]]:
    """The trainer's flags as {name: (default, help)}, read from its source without importing it (or torch).

    Looks for `add_argument("--flag", ..., default=<literal>, help=...)` calls anywhere in the file;
    flags whose default is not a literal (or a file that does not exist yet) are simply absent.
    """
    path = trainer_file or TRAINER_DIR / TRAINER_ENTRY
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError):
        return {}
    names: dict[str, Any] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            try:
                names[stmt.targets[0].id] = ast.literal_eval(stmt.value)
            except ValueError:
                pass
    flags: dict[str, tuple[Any, str | None]] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"):
            continue
        long_flags = [a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")]
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if not long_flags or "default" not in keywords:
            continue
        try:
            default = _literal(keywords["default"], names)
        except (ValueError, KeyError, TypeError, IndexError):
            continue
        try:
            text = _literal(keywords["help"], names) if "help" in keywords else None
        except (ValueError, KeyError, TypeError, IndexError):
            text = None
        flags[long_flags[0][2:].replace("-", "_")] = (default, text if isinstance(text, str) else None)
    return flags


def trainer_defaults(trainer_file: Path | None = None) -> dict[str, Any]:
    """The trainer's argparse defaults (see `trainer_flags`)."""
    return {name: default for name, (default, _) in trainer_flags(trainer_file).items()}


def _shown_default(name: str) -> str:
    if name not in trainer_flags():
        return "default: the trainer's"
    default, text = trainer_flags()[name]
    if default is None:
        return text if text and text.startswith("default") else "default: chosen by the trainer"
    if isinstance(default, bool):
        default = str(default).lower()
    return f"default: {default}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per hyperparameter (`--learning-rate`, also `--learning_rate`), default None."""
    group = parser.add_argument_group(
        "hyperparameters",
        "forwarded to the trainer only when given; the defaults shown are the trainer's own "
        "(training/trainer/fine_tune.py)",
    )
    for hp in HYPERPARAMETERS:
        dashed = "--" + hp.name.replace("_", "-")
        names = [dashed] if dashed == "--" + hp.name else [dashed, "--" + hp.name]
        group.add_argument(
            *names,
            dest=hp.name,
            type=hp.type,
            choices=hp.choices,
            default=None,
            metavar=None if hp.choices else hp.name.split("_")[-1].upper(),
            help=f"{hp.help} ({_shown_default(hp.name)})",
        )


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The hyperparameters the user set on the command line, in table order."""
    return {hp.name: getattr(args, hp.name) for hp in HYPERPARAMETERS if getattr(args, hp.name, None) is not None}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def trainer_argv(values: Mapping[str, Any]) -> list[str]:
    """`--name value` pairs for the trainer's command line."""
    argv: list[str] = []
    for name, value in values.items():
        argv += [f"--{name}", _text(value)]
    return argv


class RefusedByTrainer(ValueError):
    """A value the trainer's own argument checks refuse (the message names the flag)."""


def check_with_trainer(values: Mapping[str, Any]) -> None:
    """Run the trainer's own `parse_args` on these values, so `--epochs -1` fails here, not on the cluster.

    The trainer imports only the standard library at module level, so this stays instant.
    """
    import contextlib
    import io

    from training.trainer import fine_tune

    job_flags = ["--train_file", "train.jsonl", "--eval_file", "test.jsonl", "--output_dir", "model"]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            fine_tune.parse_args(job_flags + trainer_argv(values))
    except SystemExit:
        lines = [line for line in stderr.getvalue().splitlines() if "error:" in line]
        reason = lines[-1].split("error:", 1)[1].strip() if lines else "the trainer refused these flags"
        for name in values:  # name the flag the way submit spells it
            reason = reason.replace(f"--{name}", "--" + name.replace("_", "-"))
        raise RefusedByTrainer(reason) from None


class NotOfferedByRegistry(ValueError):
    """Flags the registry's pipeline has no input for."""


def registry_params(values: Mapping[str, Any]) -> dict[str, Any]:
    """Translate the user's hyperparameters to chat_completion_pipeline inputs."""
    unknown = [name for name in values if BY_NAME[name].registry_name is None]
    if unknown:
        raise NotOfferedByRegistry(", ".join("--" + n.replace("_", "-") for n in unknown))
    params: dict[str, Any] = {}
    for name, value in values.items():
        target = BY_NAME[name].registry_name
        assert target is not None
        if name == "method":
            params[target] = "true" if value == "lora" else "false"
        elif name == "epochs":
            params[target] = int(value) if float(value).is_integer() else value
        else:
            params[target] = value
    return params
