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
# Every numeric setting refuses NaN and +-inf and states its range, in its help and in its error.

class Range:
    """A closed or half-open interval of finite numbers, as a parser for argparse (`type=`).

    `whole`: an integer setting (`1e3` is refused there: a step count is written as digits).
    `also`: exceptional values outside the interval (`-1` for "run the epochs").
    """

    def __init__(self, low: float, high: float, *, whole: bool = False, low_open: bool = False,
                 high_open: bool = False, also: tuple[int, ...] = ()) -> None:
        self.low, self.high, self.whole, self.low_open, self.high_open, self.also = \
            low, high, whole, low_open, high_open, also
        self.__name__ = "int" if whole else "float"  # argparse names the type in "invalid int value" messages

    def describe(self) -> str:
        def shown(value: float) -> str:
            return f"{int(value):,}" if float(value).is_integer() and abs(value) >= 10_000 else f"{value:g}"

        interval = (("(" if self.low_open else "[") + f"{shown(self.low)}, {shown(self.high)}"
                    + (")" if self.high_open else "]"))
        kind = "a whole number" if self.whole else "a finite number"
        extra = "".join(f" or {value}" for value in self.also)
        return f"{kind} in {interval}{extra}"

    def __call__(self, text: str) -> int | float:
        import math

        try:
            value: int | float = int(text) if self.whole else float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}") from None
        if value in self.also:
            return value
        if not math.isfinite(value) or not self._inside(value):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text}")
        return value

    def _inside(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def module_list(text: str) -> str:
    """`all-linear`, or a comma-separated list of module names with at least one name and no empty item."""
    names = [name.strip() for name in text.split(",")]
    if not text.strip() or not all(names):
        raise argparse.ArgumentTypeError(f"expected all-linear or module names such as qkv_proj,o_proj, got {text!r}")
    return ",".join(names)


boolean.__name__ = "bool"
module_list.__name__ = "list"

STEPS = 10_000_000
"""The most optimizer steps (or steps between logs) a setting may name: weeks of A100 time at the fastest step."""
SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit


def text(value: Any) -> str:
    """A value as the command line spells it (booleans as true/false)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


# ---------------------------------------------------------------- the settings

def setting(help: str, parse: Callable[[str], Any] = str, *, choices: Sequence[str] | None = None,
            job: bool = False, required: bool = False, weights: bool = True) -> Any:
    """A field: `job` settings are set by whoever runs the job (paths, model, device), the others are hyperparameters.

    `weights=False`: the setting does not change what is trained (logging, checkpoint cadence), so it is
    left out of the run key (a run resumes after such a change).
    """
    if isinstance(parse, Range):
        help = f"{help}; {parse.describe()}"
    return field(default=MISSING if required else None,
                 metadata={"help": help, "parse": parse, "choices": tuple(choices) if choices else None,
                           "job": job, "required": required, "weights": weights})


@dataclass
class Settings:
    """The trainer's settings after recipe, flags and `auto` rules (learning rate, checkpointing) are applied."""

    # what the job sets
    train_file: str = setting("JSONL, ultrachat_200k format (`messages` list)", job=True, required=True)
    eval_file: str = setting("JSONL, same format", job=True, required=True)
    output_dir: str = setting("where the MLflow model and summary.json go (empty or missing folder)",
                              job=True, required=True)
    model_name_or_path: str = setting("hub id, local save_pretrained folder, or MLflow model folder (the trainer's "
                                      "own output or the azureml registry's hftransformers layout)", job=True)
    model_revision: str | None = setting("hub commit, tag or branch of the model (ignored for a local folder)", job=True)
    work_dir: str | None = setting("trainer scratch (logs); default: a temporary folder", job=True)
    device: str = setting("cuda: refuse to run without a GPU; cpu: train on the CPU even if a GPU is visible; "
                          "auto: the GPU when there is one", choices=("auto", "cuda", "cpu"), job=True)
    checkpoint_dir: str | None = setting("where checkpoints go (the job's `checkpoints` output); a run started again "
                                         "with the same folder resumes from its newest complete checkpoint; "
                                         "default: none are written", job=True)
    resume_from: str | None = setting("a checkpoint folder, or a folder of them (another job's `checkpoints`), to "
                                      "start from when --checkpoint_dir holds none", job=True)
    run_key: str | None = setting("the run's key (training.submit: model, data and settings hashed); written into "
                                  "each checkpoint and compared on resume", job=True)
    resume_force: bool = setting("resume even when the checkpoint's run key or world size differ", boolean,
                                 choices=("true", "false"), job=True)
    # hyperparameters
    epochs: float = setting("training epochs", Range(0, 1000, low_open=True))
    max_steps: int = setting("stop after N optimizer steps (-1: run the epochs)", Range(1, STEPS, whole=True, also=(-1,)))
    learning_rate: float | None = setting(
        f"peak learning rate; default: {DEFAULT_LEARNING_RATE['full']} for full, {DEFAULT_LEARNING_RATE['lora']} for lora",
        Range(0, 1, low_open=True))
    per_device_train_batch_size: int = setting("training batch size per GPU", Range(1, 4096, whole=True))
    per_device_eval_batch_size: int = setting("evaluation batch size per GPU (without packing; with packing each "
                                              "forward evaluates one pack)", Range(1, 4096, whole=True), weights=False)
    gradient_accumulation_steps: int = setting("micro-batches per optimizer step", Range(1, 65536, whole=True))
    max_length: int = setting("tokens per sequence (per pack with packing)", Range(1, 1_048_576, whole=True))
    overlong: str = setting("conversations longer than --max_length: truncate (cut at max_length) or skip (leave "
                            "out); either way the log and summary.json count them and the tokens dropped",
                            choices=("truncate", "skip"))
    packing: bool = setting("padding-free packing (only where the attention isolates packed sequences)", boolean,
                            choices=("true", "false"))
    method: str = setting("full fine-tune or LoRA adapters", choices=("full", "lora"))
    lora_r: int = setting("LoRA rank", Range(1, 4096, whole=True))
    lora_alpha: int = setting("LoRA alpha", Range(1, 65536, whole=True))
    lora_dropout: float = setting("LoRA dropout", Range(0, 1, high_open=True))
    lora_target_modules: str = setting("modules LoRA adapts: all-linear or a comma-separated list such as qkv_proj,o_proj",
                                       module_list)
    attn_implementation: str = setting("attention kernel; auto: flash_attention_2 when installed and on CUDA, else sdpa",
                                       choices=("auto", "sdpa", "eager", "flash_attention_2"))
    gradient_checkpointing: Any = setting(
        "recompute activations to save memory; auto: on for full fine-tuning (fp32 master weights + AdamW leave "
        "little room on 80 GB), off for LoRA (recomputation costs about a third of a step)", choices=AUTO_TRUE_FALSE)
    model_dtype: str = setting("weights as loaded; auto: a LoRA run's frozen base in bfloat16 on a GPU with bf16 "
                               "(half the memory, bf16 matmuls; adapters and optimizer state stay fp32), float32 "
                               "otherwise; with full, bfloat16 reproduces the tutorial (bf16 master weights lose "
                               "updates)", choices=("auto", "float32", "bfloat16"))
    seed: int = setting("random seed", Range(0, SEED_MAX, whole=True))
    assistant_only_loss: str = setting("train on assistant turns only; auto: when the chat template marks them "
                                       "(or TRL has a marked variant)", choices=AUTO_TRUE_FALSE)
    warmup_ratio: float = setting("fraction of steps spent warming up", Range(0, 1, high_open=True))
    lr_scheduler_type: str = setting("learning-rate schedule", choices=LR_SCHEDULERS)
    logging_steps: int = setting("log metrics every N steps", Range(1, STEPS, whole=True), weights=False)
    eval_steps: int = setting("also evaluate every N steps (0: before and after only)", Range(0, STEPS, whole=True),
                              weights=False)
    weight_decay: float = setting("AdamW weight decay", Range(0, 1))
    checkpoint_minutes: float = setting("save a checkpoint when the newest is this many minutes old (0: after every "
                                        "optimizer step); a preemption loses at most this much training",
                                        Range(0, 1440), weights=False)
    checkpoints_keep: int = setting("complete checkpoints kept (the newest complete one is never deleted; all are "
                                    "deleted once the model is saved)", Range(1, 100, whole=True), weights=False)
    log_model_artifacts: bool = setting("also copy the saved model into the MLflow run's artifacts (a second upload "
                                        "of the weights; the run references the model output either way)", boolean,
                                        choices=("true", "false"), weights=False)


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

class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: `prog: error: what is wrong (see --help)`, exit 2; usage only on request."""

    def error(self, message: str):  # type: ignore[override]

        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
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
    first = ArgumentParser(add_help=False)
    first.add_argument("--config", default=BASE_RECIPE)
    chosen, _ = first.parse_known_args(argv)
    try:
        base = as_argv(recipe(chosen.config))
    except RecipeError as err:
        parser.error(str(err))
    namespace = parser.parse_args(base + argv)
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
