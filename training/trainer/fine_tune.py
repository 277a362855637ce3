"""Supervised fine-tuning of a Phi-3 chat model with TRL's SFTTrainer, logged to MLflow.

This folder is the only code uploaded to the Azure ML cluster: it imports nothing from the
repository (torch, transformers, trl, peft, datasets and mlflow only) and runs unchanged on a
laptop CPU with the tiny offline model.

What it gets right that the Phi-3 cookbook's fine_tune.py does not:
- current TRL API: everything in `SFTConfig`, the tokenizer as `processing_class`;
- numerics: fp32 master weights with bf16 autocast (full fine-tune), or fp32 LoRA adapters;
  bf16 only where the GPU has it, plain fp32 on CPU;
- packing without cross-contamination: padding-free packing with per-sequence position ids,
  only with an attention implementation that isolates the packed sequences;
- loss on assistant turns only when the chat template marks them (`{% generation %}`), or TRL
  has a marked training variant of it;
- MLflow on (Azure ML's parameter limit respected): a bounded parameter set, train/eval
  metrics, eval loss before and after training, and the model as an MLflow transformers model
  (task llm/v1/chat) written to `--output_dir` (the job's named `model` output);
- under torchrun (RANK / WORLD_SIZE / LOCAL_RANK) only rank 0 logs and saves.

Python API (the benchmark imports this file by path): `parse_args(argv)`, `build_trainer(args)`,
`train(args)`, `main(argv)`.
"""
# No `from __future__ import annotations`: the file must also load by path (importlib) without being
# registered in sys.modules, which dataclasses with string annotations would need.

import argparse
import functools
import importlib
import importlib.util
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

DEFAULT_MODEL = "microsoft/Phi-3.5-mini-instruct"
DEFAULT_LEARNING_RATE = {"full": 5e-6, "lora": 1e-4}
KEEP_COLUMNS = ("messages",)  # ultrachat's `prompt` would send TRL down the prompt/completion path
MAX_PARAM_CHARS = 250  # Azure ML / MLflow parameter values are bounded; keep ours short
ROLES = ("system", "user", "assistant")
MAX_LISTED_PROBLEMS = 5
# transformers schedulers that need no `lr_scheduler_kwargs` and no metric (the others fail after the model loads)
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt")

log = logging.getLogger("fine_tune")


class TrainerError(Exception):
    """An expected failure with a message that says what to do (printed without a traceback)."""


# ---------------------------------------------------------------- arguments

def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _positive(kind: type):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fine_tune.py",
        description="Fine-tune a Phi-3 chat model with TRL SFT; save an MLflow transformers model to --output_dir.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model_name_or_path", default=DEFAULT_MODEL, help="hub id or local folder (save_pretrained layout)")
    p.add_argument("--train_file", required=True, help="JSONL, ultrachat_200k format (`messages` list)")
    p.add_argument("--eval_file", required=True, help="JSONL, same format")
    p.add_argument("--output_dir", required=True, help="where the MLflow model goes (empty or missing folder)")
    p.add_argument("--work_dir", default=None, help="trainer scratch (logs); default: a temporary folder")
    p.add_argument("--epochs", type=_positive(float), default=1.0)
    p.add_argument("--max_steps", type=int, default=-1, help="stop after N optimizer steps (-1: run the epochs)")
    p.add_argument("--learning_rate", type=_positive(float), default=None,
                   help=f"default: {DEFAULT_LEARNING_RATE['full']} for full, {DEFAULT_LEARNING_RATE['lora']} for lora")
    # Batch 1 x 4 accumulation (the tutorial's 4 sequences per step): with padding-free packing a
    # batch of 4 is one 8,192-token row whose attention SDPA computes densely (docs/BENCHMARKS.md).
    p.add_argument("--per_device_train_batch_size", type=_positive(int), default=1)
    p.add_argument("--per_device_eval_batch_size", type=_positive(int), default=4)
    p.add_argument("--gradient_accumulation_steps", type=_positive(int), default=4)
    p.add_argument("--max_length", type=_positive(int), default=2048, help="tokens per sequence (per pack with packing)")
    p.add_argument("--packing", type=_bool, default=True, metavar="{true,false}",
                   help="padding-free packing (only where the attention isolates packed sequences)")
    p.add_argument("--method", choices=("full", "lora"), default="lora")
    p.add_argument("--lora_r", type=_positive(int), default=16)
    p.add_argument("--lora_alpha", type=_positive(int), default=32)
    p.add_argument("--lora_dropout", type=_fraction, default=0.05)
    p.add_argument("--lora_target_modules", default="all-linear",
                   help="`all-linear` or a comma-separated list such as qkv_proj,o_proj")
    p.add_argument("--attn_implementation", choices=("auto", "sdpa", "eager", "flash_attention_2"), default="auto",
                   help="auto: flash_attention_2 when installed and on CUDA, else sdpa")
    p.add_argument("--gradient_checkpointing", choices=("auto", "true", "false"), default="auto",
                   help="auto: on for full fine-tuning (fp32 master weights + AdamW leave little room on 80 GB), "
                        "off for LoRA (recomputation costs about a third of a step)")
    p.add_argument("--model_dtype", choices=("float32", "bfloat16"), default="float32",
                   help="weights as loaded; with --method full, bfloat16 reproduces the tutorial (bf16 master "
                        "weights lose updates); with lora it halves the frozen base's memory (adapters stay fp32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--assistant_only_loss", choices=("auto", "true", "false"), default="auto",
                   help="auto: on when the chat template marks assistant turns (or TRL has a marked variant)")
    p.add_argument("--warmup_ratio", type=_fraction, default=0.03)
    p.add_argument("--lr_scheduler_type", choices=LR_SCHEDULERS, default="cosine")
    p.add_argument("--logging_steps", type=_positive(int), default=10)
    p.add_argument("--eval_steps", type=int, default=0, help="also evaluate every N steps (0: before and after only)")
    p.add_argument("--weight_decay", type=_non_negative, default=0.0)
    p.add_argument("--log_model_artifacts", type=_bool, default=True, metavar="{true,false}",
                   help="also log the saved model folder to the MLflow run (a second copy)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the flags (argparse exits 2 with a usage line on bad ones)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_steps == 0 or args.max_steps < -1:
        parser.error("--max_steps must be a positive step count or -1")
    if args.eval_steps < 0:
        parser.error("--eval_steps must be >= 0")
    if args.learning_rate is None:
        args.learning_rate = DEFAULT_LEARNING_RATE[args.method]
    args.gradient_checkpointing = (
        args.method == "full" if args.gradient_checkpointing == "auto" else args.gradient_checkpointing == "true"
    )
    return args


def check_paths(args: argparse.Namespace, rows: bool = True) -> None:
    """Fail before any heavy work: inputs exist (and, with `rows`, hold valid chat rows), the output folder can take the model."""
    for flag in ("train_file", "eval_file"):
        path = Path(getattr(args, flag))
        if not path.is_file():
            raise TrainerError(f"--{flag} {path}: no such file. Prepare data with `python -m training.data`.")
        if path.stat().st_size == 0:
            raise TrainerError(f"--{flag} {path} is empty.")
        if rows:
            check_rows(flag, path)
    local_model = Path(args.model_name_or_path)
    if local_model.exists() and not (local_model / "config.json").is_file():
        raise TrainerError(f"--model_name_or_path {local_model} has no config.json: not a save_pretrained folder.")
    out = Path(args.output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TrainerError(f"--output_dir {out} exists and is not empty; the model needs an empty or new folder.")


def row_problem(line: bytes) -> str | None:
    """What is wrong with one JSONL line (bytes, no line ending), or None if it is a valid chat row.

    The one definition of a valid row: `python -m training.data` imports it from here, since this
    file is uploaded to the cluster alone and cannot import the rest of the repository.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not valid UTF-8 (byte {err.start})"
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        return f"not valid JSON ({err.msg} at column {err.colno})"
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    if "messages" not in row:
        return "no `messages` field"
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        return "`messages` must be a non-empty list"
    has_assistant = False
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{i}] must be an object with `role` and `content`"
        role = message.get("role")
        if role not in ROLES:
            return f"messages[{i}]: role {role!r} is not one of {', '.join(ROLES)}"
        content = message.get("content")
        if not isinstance(content, str):
            return f"messages[{i}]: content must be a string, got {type(content).__name__ if content is not None else 'null'}"
        has_assistant = has_assistant or role == "assistant"
    if not has_assistant:
        return "no assistant turn"
    return None


def check_rows(flag: str, path: Path) -> int:
    """Validate every row of a data file (one streaming pass); bad rows are a TrainerError naming file:line."""
    problems, bad, rows = [], 0, 0
    with open(path, "rb") as src:
        for line_no, raw in enumerate(src, start=1):
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            rows += 1
            problem = row_problem(line)
            if problem is not None:
                bad += 1
                if len(problems) < MAX_LISTED_PROBLEMS:
                    problems.append(f"{path}:{line_no}: {problem}")
    if rows == 0:
        raise TrainerError(f"--{flag} {path} has no rows.")
    if bad:
        listed = "\n  ".join(problems)
        raise TrainerError(f"--{flag} {path}: {bad} of {rows} rows are not valid chat rows:\n  {listed}\n"
                           "Prepare the data with `python -m training.data` (it validates every row).")
    return rows


# ---------------------------------------------------------------- runtime decisions

@dataclass
class Runtime:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    cuda: bool = False
    bf16: bool = False  # bf16 autocast (GPU with bf16 support)
    fp16: bool = False  # fp16 autocast + loss scaling (older GPUs)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_runtime() -> Runtime:
    import torch

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    return Runtime(
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        cuda=cuda, bf16=bf16, fp16=cuda and not bf16,
    )


def resolve_attention(requested: str, cuda: bool) -> str:
    flash_installed = importlib.util.find_spec("flash_attn") is not None
    if requested == "auto":
        return "flash_attention_2" if cuda and flash_installed else "sdpa"
    if requested == "flash_attention_2" and not (cuda and flash_installed):
        raise TrainerError("--attn_implementation flash_attention_2 needs a CUDA GPU and the flash-attn package; "
                           "use --attn_implementation auto (falls back to sdpa).")
    return requested


def packing_isolates_sequences(attn_implementation: str) -> bool:
    """Whether padding-free packing keeps packed sequences from attending to each other.

    FlashAttention takes the sequence boundaries (cu_seq_lens) from TRL's collator. For sdpa and
    eager, transformers >= 4.54 turns per-sequence position ids (with no attention mask) into a
    block-diagonal causal mask (`masking_utils.find_packed_sequence_indices`); older versions
    would let sequences attend across the pack.
    """
    if attn_implementation.startswith("flash_attention") or attn_implementation == "flex_attention":
        return True
    try:
        from transformers import masking_utils
    except ImportError:
        return False
    return hasattr(masking_utils, "find_packed_sequence_indices")


def resolve_assistant_only_loss(requested: str, tokenizer) -> bool:
    """`auto`: on when the template has {% generation %} markers or a marked variant of it is known (TRL's, ours)."""
    template = tokenizer.chat_template
    if not template:
        raise TrainerError("the tokenizer has no chat template; use a chat model such as microsoft/Phi-3.5-mini-instruct.")
    supported = _chat_templates().training_template(tokenizer) is not None  # own markers, TRL's or ours
    if requested == "auto":
        if not supported:
            log.warning("assistant-only loss off: the chat template has no {%% generation %%} markers "
                        "(and no marked variant of it is known); training on whole conversations.")
        return supported
    if requested == "true" and not supported:
        raise TrainerError("--assistant_only_loss true needs {% generation %} markers in the chat template; "
                           "use --assistant_only_loss auto or false.")
    return requested == "true"


@functools.lru_cache(maxsize=None)
def _chat_templates():
    """The sibling chat_templates module, whether this file runs in its package or is loaded by path."""
    if __package__:
        return importlib.import_module(".chat_templates", __package__)
    spec = importlib.util.spec_from_file_location("chat_templates", Path(__file__).with_name("chat_templates.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Plan:
    """What this run actually does (after `auto` choices); logged and returned."""

    attn_implementation: str
    packing: bool
    assistant_only_loss: bool
    precision: str  # fp32 | bf16-autocast | fp16-autocast
    world_size: int
    train_rows: int = 0
    eval_rows: int = 0
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- building blocks

def _load_failure(what: str, path: str, err: Exception) -> TrainerError:
    """One line for a model or tokenizer that will not load (bad folder, unknown id, no network)."""
    detail = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    return TrainerError(
        f"cannot load the {what} from --model_name_or_path {path}: {detail.rstrip('.: ')}. "
        "Pass a Hugging Face model id or a save_pretrained folder (config.json, weights and tokenizer files)."
    )


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise _load_failure("tokenizer", path, err) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(args: argparse.Namespace, attn_implementation: str):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.float32 if args.model_dtype == "float32" else torch.bfloat16
    if args.model_dtype == "bfloat16" and args.method == "full":
        log.warning("--model_dtype bfloat16 keeps bf16 master weights: AdamW updates smaller than bf16 can "
                    "represent round to nothing (the tutorial's setting; use it only to compare).")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            args.model_name_or_path, dtype=dtype, attn_implementation=attn_implementation)
    except (OSError, ValueError) as err:
        raise _load_failure("model", args.model_name_or_path, err) from err
    model.config.use_cache = False  # no KV cache while training (and needed with checkpointing)
    return model


def load_jsonl_datasets(train_file: str, eval_file: str):
    """train/eval `datasets.Dataset`s with only the `messages` column."""
    from datasets import load_dataset

    data = load_dataset("json", data_files={"train": str(train_file), "eval": str(eval_file)})
    out = []
    for split in ("train", "eval"):
        dataset = data[split]
        if "messages" not in dataset.column_names:
            raise TrainerError(f"{split} file has no `messages` column; expected ultrachat_200k-format rows.")
        drop = [c for c in dataset.column_names if c not in KEEP_COLUMNS]
        out.append(dataset.remove_columns(drop) if drop else dataset)
    return out[0], out[1]


def lora_config(args: argparse.Namespace):
    from peft import LoraConfig

    targets = args.lora_target_modules
    return LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, bias="none",
        task_type="CAUSAL_LM",
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()],
    )


def sft_config(args: argparse.Namespace, runtime: Runtime, plan: Plan, work_dir: str):
    from trl import SFTConfig

    eval_steps = args.eval_steps or None
    return SFTConfig(
        output_dir=work_dir,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        warmup_steps=args.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        lr_scheduler_type=args.lr_scheduler_type,
        weight_decay=args.weight_decay,
        logging_steps=args.logging_steps,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        save_strategy="no",  # the final model is saved once, as MLflow, by rank 0
        seed=args.seed,
        data_seed=args.seed,
        # precision: set both explicitly (SFTConfig defaults bf16=True, wrong on CPU)
        bf16=runtime.bf16,
        fp16=runtime.fp16,
        # transformers 5 name for gradient checkpointing (SFTConfig's old-name default is True)
        activation_checkpointing=args.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if args.gradient_checkpointing else None,
        # data
        max_length=args.max_length,
        packing=plan.packing,
        packing_strategy="bfd",  # padding-free, per-sequence position ids
        assistant_only_loss=plan.assistant_only_loss,
        completion_only_loss=None,
        # MLflow is logged by this script (HF's callback trips over Azure ML's parameter limit)
        report_to="none",
        prediction_loss_only=True,  # eval needs the loss only, not (tokens x vocab) logits
        disable_tqdm=not sys.stderr.isatty(),
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False if runtime.world_size > 1 else None,
    )


def build_trainer(args: argparse.Namespace, work_dir: str | None = None, runtime: Runtime | None = None,
                  rows_checked: bool = False):
    """Load tokenizer, model and data, decide the `auto` settings, and return (SFTTrainer, Plan)."""
    import torch
    from trl import SFTTrainer

    check_paths(args, rows=not rows_checked)
    runtime = runtime or detect_runtime()
    attn = resolve_attention(args.attn_implementation, runtime.cuda)
    tokenizer = load_tokenizer(args.model_name_or_path)
    precision = "bf16-autocast" if runtime.bf16 else "fp16-autocast" if runtime.fp16 else "fp32"
    plan = Plan(attn_implementation=attn, packing=args.packing, world_size=runtime.world_size, precision=precision,
                assistant_only_loss=resolve_assistant_only_loss(args.assistant_only_loss, tokenizer))
    if args.packing and not packing_isolates_sequences(attn):
        plan.packing = False
        plan.notes.append(f"packing off: {attn} attention in this transformers version would let packed "
                          "sequences attend to each other; padding instead")
    if args.model_dtype == "bfloat16":
        # a frozen base receives no updates, so bf16 loses nothing there; full fine-tunes lose small updates
        plan.notes.append("bf16 frozen base, fp32 adapters" if args.method == "lora"
                          else "bf16 master weights (tutorial setting): small updates are lost")

    torch.manual_seed(args.seed)
    model = load_model(args, attn)
    train_dataset, eval_dataset = load_jsonl_datasets(args.train_file, args.eval_file)
    plan.train_rows, plan.eval_rows = len(train_dataset), len(eval_dataset)
    if work_dir is None:
        work_dir = args.work_dir or tempfile.mkdtemp(prefix="fine-tune-")
    templates = _chat_templates()
    try:
        with templates.applied(tokenizer, plan.assistant_only_loss):  # the marked template while TRL tokenizes
            trainer = SFTTrainer(
                model=model,
                args=sft_config(args, runtime, plan, work_dir),
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=tokenizer,
                peft_config=lora_config(args) if args.method == "lora" else None,
            )
        if plan.assistant_only_loss:
            templates.check_masks(trainer)  # before any step: masks that are empty or dropped are refused
    except templates.MaskError as err:
        raise TrainerError(str(err)) from err
    except ValueError as err:
        if args.method == "lora" and "target modules" in str(err).lower():  # peft's NoMatchingPeftModuleError
            raise TrainerError(f"--lora_target_modules {args.lora_target_modules} matches no module of the model: "
                               f"{str(err).splitlines()[0]} Use all-linear or names such as qkv_proj,o_proj.") from err
        raise
    if args.method == "lora":  # adapters stay fp32 whatever the base weights are
        for param in trainer.model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()
    return trainer, plan


# ---------------------------------------------------------------- MLflow

def bounded_params(args: argparse.Namespace, plan: Plan) -> dict[str, str]:
    """A fixed, small parameter set (Azure ML caps the count and the length of MLflow params)."""
    import torch
    import transformers
    import trl

    keys = ["model_name_or_path", "method", "epochs", "max_steps", "learning_rate", "per_device_train_batch_size",
            "per_device_eval_batch_size", "gradient_accumulation_steps", "max_length", "gradient_checkpointing",
            "model_dtype", "seed", "warmup_ratio", "lr_scheduler_type", "weight_decay"]
    if args.method == "lora":
        keys += ["lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"]
    params: dict[str, Any] = {k: getattr(args, k) for k in keys}
    params.update(attn_implementation=plan.attn_implementation, packing=plan.packing,
                  assistant_only_loss=plan.assistant_only_loss, precision=plan.precision,
                  world_size=plan.world_size, train_rows=plan.train_rows, eval_rows=plan.eval_rows,
                  torch_version=torch.__version__, transformers_version=transformers.__version__,
                  trl_version=trl.__version__)
    return {k: str(v)[:MAX_PARAM_CHARS] for k, v in params.items()}


def metrics_callback():
    """A TrainerCallback that logs every numeric train/eval log entry to the active MLflow run (rank 0)."""
    import mlflow
    from transformers import TrainerCallback

    class MlflowMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            values = {k: float(v) for k, v in logs.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
            if values:
                mlflow.log_metrics(values, step=state.global_step)

    return MlflowMetrics()


def _start_run():
    """The run Azure ML made for this job (MLFLOW_RUN_ID), or a new one in the `finetune-phi` experiment.

    The tracking URI comes from MLFLOW_TRACKING_URI (Azure ML sets it). A local file store is
    honoured (MLflow 3 refuses it unless MLFLOW_ALLOW_FILE_STORE is set; asking for one is
    consent enough); with a local sqlite store, a new experiment keeps its artifacts beside the
    database instead of in ./mlruns of whatever the working directory is.
    """
    from urllib.parse import urlparse

    import mlflow

    uri = mlflow.get_tracking_uri()
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not (run_id or os.environ.get("MLFLOW_EXPERIMENT_NAME") or os.environ.get("MLFLOW_EXPERIMENT_ID")):
        name = "finetune-phi"
        if parsed.scheme == "sqlite" and parsed.path not in ("", "/:memory:") and mlflow.get_experiment_by_name(name) is None:
            db = Path(uri[len("sqlite:///"):]).resolve()
            mlflow.create_experiment(name, artifact_location=(db.parent / "mlartifacts").as_uri())
        mlflow.set_experiment(name)
    return mlflow.start_run(run_id=run_id)


def final_model(trainer, runtime: Runtime):
    """The trained model as a plain transformers model (LoRA merged), in the dtype it will serve in."""
    import torch

    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):  # PEFT
        model = model.merge_and_unload()
    model.config.use_cache = True
    if runtime.bf16:
        model = model.to(torch.bfloat16)  # halves the artifact; inference runs in bf16 anyway
    return model


def save_mlflow_model(model, tokenizer, output_dir: str | Path) -> Path:
    """Write the MLflow transformers model (chat task): MLmodel, model/, components/tokenizer/."""
    import mlflow

    out = Path(output_dir)
    try:
        mlflow.transformers.save_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            path=str(out),
            task="llm/v1/chat",
            pip_requirements=serving_requirements(),
        )
    except BaseException:
        _empty_folder(out)  # it was empty before; leave no half-written model for deployment to find
        raise
    return out


def serving_requirements() -> list[str]:
    """Pinned requirements for the model's environment.

    MLflow's default list adds torchvision (and fails when it is not installed); the model
    needs only these. Local version labels (`+cpu`, `+cu121`) are dropped: pip resolves those
    only from PyTorch's own index.
    """
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("mlflow", "torch", "transformers", "tokenizers", "accelerate", "safetensors"):
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return pins


def _empty_folder(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


# ---------------------------------------------------------------- run

def _oom_message(args: argparse.Namespace) -> str:
    advice = [f"a smaller --per_device_train_batch_size (now {args.per_device_train_batch_size}) with a larger "
              "--gradient_accumulation_steps", f"a shorter --max_length (now {args.max_length})"]
    if args.method == "full":
        advice.append("--method lora")
    if not args.gradient_checkpointing:
        advice.append("--gradient_checkpointing true")
    return "out of GPU memory. Try " + ", ".join(advice) + ", or a GPU with more memory."


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate, train, evaluate, save (rank 0). Returns eval losses, plan and timings."""
    check_paths(args)  # before importing torch: a typo or a bad row costs a second, not a model load
    import torch

    runtime = detect_runtime()
    logging.basicConfig(level=logging.INFO if runtime.is_main else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    own_work_dir = args.work_dir is None
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="fine-tune-")
    run = None
    try:
        try:
            trainer, plan = build_trainer(args, work_dir, runtime, rows_checked=True)
        except torch.OutOfMemoryError as err:  # moving the model to the GPU
            raise TrainerError(_oom_message(args)) from err
        log.info("plan: %s", json.dumps(asdict(plan)))
        for note in plan.notes:
            log.warning(note)
        if runtime.is_main:
            import mlflow

            run = _start_run()
            mlflow.log_params(bounded_params(args, plan))
            trainer.add_callback(metrics_callback())
        started = time.perf_counter()
        try:
            before = trainer.evaluate()["eval_loss"]
            result = trainer.train()
            after = trainer.evaluate()["eval_loss"]
        except torch.OutOfMemoryError as err:
            raise TrainerError(_oom_message(args)) from err
        train_s = time.perf_counter() - started
        summary = {"eval_loss_before": before, "eval_loss_after": after, "train_loss": result.training_loss,
                   "train_seconds": train_s, "global_steps": result.global_step, "plan": asdict(plan)}
        if runtime.is_main:
            import mlflow

            mlflow.log_metrics({"eval_loss_before": before, "eval_loss_after": after})
            model = final_model(trainer, runtime)
            save_mlflow_model(model, trainer.processing_class, args.output_dir)
            if args.log_model_artifacts:
                mlflow.log_artifacts(str(args.output_dir), artifact_path="model")
            change = 100 * (after - before) / before if before else float("nan")
            print(f"eval loss: {before:.4f} before -> {after:.4f} after ({change:+.1f}%) in {train_s:.0f}s; "
                  f"model saved to {args.output_dir}", flush=True)
        return summary
    finally:
        if run is not None:
            import mlflow

            mlflow.end_run("FINISHED" if sys.exc_info()[0] is None else "FAILED")
        if own_work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags and train; raises TrainerError for expected failures (the CLI prints them)."""
    train(parse_args(argv))
    return 0


def _cli() -> int:
    try:
        return main()
    except TrainerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(_cli())
