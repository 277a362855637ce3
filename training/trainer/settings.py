"""Every setting of the trainer, declared once: its name, type, check and help here, its value in a recipe.

A recipe is a YAML file in `recipes/` (`default`, `tutorial`, `demo`, `test`) or any path:
`default.yaml` holds every default, the others only what they change on top of it. The command
line (`--config NAME`, then `--flag value` pairs) overrides the recipe. Recipe values go through
the same argparse checks as flags, so a bad value in a recipe fails like a bad flag.

This is the TRL pattern (dataclasses + a YAML `--config`) without TRL's parser: importing
`trl.SFTConfig` takes seconds (it imports torch), and `training.submit --help` / `--dry-run`
ask this module for the defaults and checks, which must stay instant. Standard library and
PyYAML only (transformers depends on PyYAML, so the cluster has it). The trainer turns these
settings into TRL's `SFTConfig` and PEFT's `LoraConfig` in `fine_tune.py`.
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
RECIPES = ("default", "tutorial", "demo", "test")
BASE_RECIPE = "default"
DEFAULT_LEARNING_RATE = {"full": 5e-6, "lora": 1e-4}
"""`learning_rate: null` means this rate for the method (full fine-tunes need a far smaller step)."""
# transformers schedulers that need no `lr_scheduler_kwargs` and no metric (the others fail after the model loads)
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt")
AUTO_TRUE_FALSE = ("auto", "true", "false")


# ---------------------------------------------------------------- value parsers (argparse `type=`)

def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


for _parse, _name in ((positive_int, "int"), (positive_float, "float"), (non_negative, "float"), (fraction, "float"),
                      (boolean, "bool")):
    _parse.__name__ = _name  # argparse names the type in "invalid int value" messages


def text(value: Any) -> str:
    """A value as the command line spells it (booleans as true/false)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


# ---------------------------------------------------------------- the settings

def setting(help: str, parse: Callable[[str], Any] = str, *, choices: Sequence[str] | None = None,
            job: bool = False, required: bool = False) -> Any:
    """A field: `job` settings are set by whoever runs the job (paths, model, device), the others are hyperparameters."""
    return field(default=MISSING if required else None,
                 metadata={"help": help, "parse": parse, "choices": tuple(choices) if choices else None,
                           "job": job, "required": required})


@dataclass
class Settings:
    """The trainer's settings after recipe, flags and `auto` rules (learning rate, checkpointing) are applied."""

    # what the job sets
    train_file: str = setting("JSONL, ultrachat_200k format (`messages` list)", job=True, required=True)
    eval_file: str = setting("JSONL, same format", job=True, required=True)
    output_dir: str = setting("where the MLflow model and summary.json go (empty or missing folder)",
                              job=True, required=True)
    model_name_or_path: str = setting("hub id or local folder (save_pretrained layout)", job=True)
    model_revision: str | None = setting("hub commit, tag or branch of the model (ignored for a local folder)", job=True)
    work_dir: str | None = setting("trainer scratch (logs); default: a temporary folder", job=True)
    device: str = setting("cuda: refuse to run without a GPU; cpu: train on the CPU even if a GPU is visible; "
                          "auto: the GPU when there is one", choices=("auto", "cuda", "cpu"), job=True)
    # hyperparameters
    epochs: float = setting("training epochs", positive_float)
    max_steps: int = setting("stop after N optimizer steps (-1: run the epochs)", int)
    learning_rate: float | None = setting(
        f"peak learning rate; default: {DEFAULT_LEARNING_RATE['full']} for full, {DEFAULT_LEARNING_RATE['lora']} for lora",
        positive_float)
    per_device_train_batch_size: int = setting("training batch size per GPU", positive_int)
    per_device_eval_batch_size: int = setting("evaluation batch size per GPU", positive_int)
    gradient_accumulation_steps: int = setting("micro-batches per optimizer step", positive_int)
    max_length: int = setting("tokens per sequence (per pack with packing)", positive_int)
    packing: bool = setting("padding-free packing (only where the attention isolates packed sequences)", boolean,
                            choices=("true", "false"))
    method: str = setting("full fine-tune or LoRA adapters", choices=("full", "lora"))
    lora_r: int = setting("LoRA rank", positive_int)
    lora_alpha: int = setting("LoRA alpha", positive_int)
    lora_dropout: float = setting("LoRA dropout", fraction)
    lora_target_modules: str = setting("modules LoRA adapts: all-linear or a comma-separated list such as qkv_proj,o_proj")
    attn_implementation: str = setting("attention kernel; auto: flash_attention_2 when installed and on CUDA, else sdpa",
                                       choices=("auto", "sdpa", "eager", "flash_attention_2"))
    gradient_checkpointing: Any = setting(
        "recompute activations to save memory; auto: on for full fine-tuning (fp32 master weights + AdamW leave "
        "little room on 80 GB), off for LoRA (recomputation costs about a third of a step)", choices=AUTO_TRUE_FALSE)
    model_dtype: str = setting("weights as loaded; with full, bfloat16 reproduces the tutorial (bf16 master weights "
                               "lose updates); with lora it halves the frozen base's memory (adapters stay fp32)",
                               choices=("float32", "bfloat16"))
    seed: int = setting("random seed", int)
    assistant_only_loss: str = setting("train on assistant turns only; auto: when the chat template marks them "
                                       "(or TRL has a marked variant)", choices=AUTO_TRUE_FALSE)
    warmup_ratio: float = setting("fraction of steps spent warming up", fraction)
    lr_scheduler_type: str = setting("learning-rate schedule", choices=LR_SCHEDULERS)
    logging_steps: int = setting("log metrics every N steps", positive_int)
    eval_steps: int = setting("also evaluate every N steps (0: before and after only)", int)
    weight_decay: float = setting("AdamW weight decay", non_negative)
    log_model_artifacts: bool = setting("also copy the saved model into the MLflow run's artifacts (a second upload "
                                        "of the weights; the run references the model output either way)", boolean,
                                        choices=("true", "false"))


def all_settings() -> tuple[Field, ...]:
    return fields(Settings)


def hyperparameters() -> tuple[Field, ...]:
    """The settings a user tunes (everything but what the job sets itself)."""
    return tuple(f for f in fields(Settings) if not f.metadata["job"])


# ---------------------------------------------------------------- recipes

class RecipeError(ValueError):
    """A recipe that does not exist or names an unknown setting."""


def recipe_path(name_or_path: str) -> Path:
    path = RECIPES_DIR / f"{name_or_path}.yaml" if name_or_path in RECIPES else Path(name_or_path)
    if not path.is_file():
        raise RecipeError(f"--config {name_or_path}: no such recipe; use one of {', '.join(RECIPES)} or a YAML file.")
    return path


def read_recipe(name_or_path: str) -> dict[str, Any]:
    """One recipe file's own values (not merged with the default)."""
    import yaml

    path = recipe_path(name_or_path)
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise RecipeError(f"recipe {path} must be a mapping of setting: value.")
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RecipeError(f"recipe {path}: unknown setting(s) {', '.join(unknown)}.")
    return values


def recipe(name_or_path: str = BASE_RECIPE) -> dict[str, Any]:
    """The default recipe with `name_or_path`'s values on top (what `--config NAME` starts from)."""
    values = read_recipe(BASE_RECIPE)
    if name_or_path != BASE_RECIPE:
        values.update(read_recipe(name_or_path))
    return values


def as_argv(values: Mapping[str, Any], dashed: bool = False) -> list[str]:
    """`--name value` pairs (None values left out); `dashed`: `--lora-r` spelling (training.submit's)."""
    argv: list[str] = []
    for name, value in values.items():
        if value is not None:
            argv += ["--" + (name.replace("_", "-") if dashed else name), text(value)]
    return argv


# ---------------------------------------------------------------- parsing

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.trainer.fine_tune",
        description="Fine-tune a Phi-3 chat model with TRL SFT; save an MLflow transformers model and summary.json "
                    "to --output_dir. Defaults: the recipe (--config), then the flags.",
    )
    p.add_argument("--config", default=BASE_RECIPE, metavar="RECIPE",
                   help=f"a recipe ({', '.join(RECIPES)}; training/trainer/recipes/) or a YAML file; "
                        "flags override it (default: %(default)s)")
    defaults = recipe(BASE_RECIPE)
    for f in fields(Settings):
        meta = f.metadata
        shown = "" if meta["required"] or defaults.get(f.name) is None else f" (default: {text(defaults[f.name])})"
        boolean_flag = meta["parse"] is boolean  # checked by its parser: argparse compares choices after conversion
        p.add_argument(f"--{f.name}", type=meta["parse"], choices=None if boolean_flag else meta["choices"],
                       required=meta["required"], metavar="{true,false}" if boolean_flag else None,
                       help=meta["help"] + shown)
    return p


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Recipe, then flags, checked by argparse (exit 2 with a usage line on a bad value), then the `auto` rules."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--config", default=BASE_RECIPE)
    chosen, _ = first.parse_known_args(argv)
    try:
        base = as_argv(recipe(chosen.config))
    except RecipeError as err:
        parser.error(str(err))
    namespace = parser.parse_args(base + argv)
    if namespace.max_steps == 0 or namespace.max_steps < -1:
        parser.error("--max_steps must be a positive step count or -1")
    if namespace.eval_steps < 0:
        parser.error("--eval_steps must be >= 0")
    values = vars(namespace)
    values.pop("config")
    return resolve(Settings(**values))


def resolve(settings: Settings) -> Settings:
    """Apply the `auto` rules that need nothing but the settings (the others need the model or the machine)."""
    if settings.learning_rate is None:
        settings.learning_rate = DEFAULT_LEARNING_RATE[settings.method]
    if not isinstance(settings.gradient_checkpointing, bool):
        settings.gradient_checkpointing = (settings.method == "full" if settings.gradient_checkpointing == "auto"
                                           else settings.gradient_checkpointing == "true")
    return settings
