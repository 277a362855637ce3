"""Supervised fine-tuning of a Phi-3 chat model with TRL's SFTTrainer, logged to MLflow.

This package is the only code uploaded to the Azure ML cluster (as `trainer/`, run as
`python -m trainer.fine_tune`): it imports nothing from the repository (torch, transformers,
trl, peft, datasets and mlflow only) and runs unchanged on a laptop CPU with the tiny offline
model (`python -m training.trainer.fine_tune`). Its settings are declared in `settings.py`,
their values in `presets/`.

What it gets right that the Phi-3 cookbook's fine_tune.py does not:
- current TRL API: everything in `SFTConfig`, the tokenizer as `processing_class`;
- numerics: fp32 master weights with bf16 autocast (full fine-tune), or fp32 LoRA adapters;
  bf16 only where the GPU has it, plain fp32 on CPU;
- packing without cross-contamination: padding-free packing with per-sequence position ids,
  only with an attention implementation that isolates the packed sequences;
- loss on assistant turns only when the chat template marks them (`{% generation %}`), or a marked
  training variant of it is known (TRL's, or ours for Phi-4-mini: chat_templates.py), with the
  masks checked before the first step;
- the device it was asked for: `--device cuda` refuses to crawl on a CPU;
- the model written once, to `--output_dir` (the job's named `model` output) as an MLflow
  transformers model (task llm/v1/chat) with `summary.json` beside `MLmodel`; the MLflow run
  (Azure ML's parameter limit respected) gets parameters, metrics and that summary, and a copy
  of the model only when asked (`--log_model_artifacts true`);
- under torchrun (RANK / WORLD_SIZE / LOCAL_RANK) only rank 0 logs and saves;
- preemption-safe: Trainer-format checkpoints in `--checkpoint_dir` every `--checkpoint_minutes`,
  complete only with a marker, resumed from by the same command, deleted once the model is saved;
  SIGTERM or Ctrl-C finishes the step, saves, and exits non-zero (checkpoints.py);
- a NaN or inf loss fails the run (exit 1) and keeps no checkpoint after it;
- conversations over `--max_length` counted in the log and summary.json, truncated or skipped
  (overlong.py); a base model given as an MLflow model folder (model_source.py).

Python API: `parse_args(argv)`, `build_trainer(args, ..., load_model=, sft_overrides=, callbacks=)`
(the benchmark's seams), `train(args)`, `main(argv)`.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import checkpoints, model_source, overlong, tracking
from .chat_templates import MaskError, check_masks, training_template
from .chat_templates import applied as training_template_applied
from .checkpoints import RunRecord, StopRequest, Stopped
from .settings import Settings, build_parser, parse_args  # noqa: F401 - the trainer's CLI and Python API
from .tracking import MAX_PARAM_CHARS, SUMMARY_FILE, bounded_params  # noqa: F401 - the trainer's Python API

KEEP_COLUMNS = ("messages",)  # ultrachat's `prompt` would send TRL down the prompt/completion path
ROLES = ("system", "user", "assistant")
MAX_LISTED_PROBLEMS = 5
ADAPTER_DIR = "adapter"  # LoRA runs: the PEFT adapter, beside the merged model (deploy releases it onto the base)

log = logging.getLogger("fine_tune")


class TrainerError(Exception):
    """An expected failure with a message that says what to do (printed without a traceback)."""


# ---------------------------------------------------------------- inputs

def check_paths(args: Settings, rows: bool = True) -> None:
    """Fail before any heavy work: inputs exist (and, with `rows`, hold valid chat rows), the output folder can take the model."""
    for flag in ("train_file", "eval_file"):
        path = Path(getattr(args, flag))
        if not path.is_file():
            raise TrainerError(f"--{flag} {path}: no such file. Prepare data with `python -m training.data`.")
        if path.stat().st_size == 0:
            raise TrainerError(f"--{flag} {path} is empty.")
        if rows:
            check_rows(flag, path)
    try:
        model_source.resolve(args.model_name_or_path)
    except model_source.NotAModelFolder as err:
        raise TrainerError(f"--model_name_or_path {err}") from None
    if args.resume_from and not Path(args.resume_from).is_dir():
        raise TrainerError(f"--resume_from {args.resume_from}: no such folder (a checkpoint, or a folder of them).")
    out = Path(args.output_dir)
    resuming = bool(args.checkpoint_dir) and checkpoints.newest(args.checkpoint_dir) is not None
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not resuming)):
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


def detect_runtime(device: str = "auto") -> Runtime:
    """Rank, world size and precision for `--device` (cuda: a GPU or a TrainerError, before any model loads)."""
    import torch

    visible = torch.cuda.is_available()
    if device == "cuda" and not visible:
        raise TrainerError(no_gpu_message())
    cuda = visible and device != "cpu"
    bf16 = cuda and torch.cuda.is_bf16_supported()
    return Runtime(
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        cuda=cuda, bf16=bf16, fp16=cuda and not bf16,
    )


def nvidia_driver(proc_file: Path = Path("/proc/driver/nvidia/version")) -> str | None:
    """The NVIDIA kernel driver's version, when this machine has one (no GPU library needed)."""
    try:
        first = proc_file.read_text(encoding="utf-8", errors="replace").splitlines()[0]
    except (OSError, IndexError):
        first = ""
    words = first.split()
    for i, word in enumerate(words):  # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  ..."
        if word == "Module" and i + 1 < len(words):
            return words[i + 1]
    smi = shutil.which("nvidia-smi")
    if smi:
        import subprocess

        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=20)
            version = out.stdout.strip().splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else ""
            return version or None
        except (OSError, subprocess.SubprocessError):
            return None
    return None


def no_gpu_message() -> str:
    """Why `--device cuda` sees no GPU, with torch's CUDA build and the driver, and what to do."""
    import torch

    build = torch.version.cuda
    driver = nvidia_driver()
    facts = (f"torch {torch.__version__} ({'CUDA ' + build + ' build' if build else 'a CPU-only build'}), "
             f"NVIDIA driver {driver or 'not found'}")
    if not build:
        advice = "install a CUDA build of torch (the Azure ML environment pins torch==2.10.0, a CUDA 12.8 build)"
    elif driver is None:
        advice = "run on a GPU machine or cluster (no NVIDIA driver is loaded here)"
    else:
        major = build.split(".")[0]
        advice = (f"match torch and the driver: a CUDA {major} build needs a driver for CUDA {major} (CUDA 13: "
                  ">= 580; CUDA 12: >= 525). Azure ML's driver 535 runs CUDA 12 builds such as torch==2.10.0")
    return (f"--device cuda, but torch sees no GPU: {facts}. Nothing was loaded. To fix it, {advice}; "
            "or pass --device cpu (or auto) to train on the CPU, which is only sensible for the tiny test model.")


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
    supported = training_template(tokenizer) is not None  # own markers, TRL's or ours
    if requested == "auto":
        if not supported:
            log.warning("assistant-only loss off: the chat template has no {%% generation %%} markers "
                        "(and no marked variant of it is known); training on whole conversations.")
        return supported
    if requested == "true" and not supported:
        raise TrainerError("--assistant_only_loss true needs {% generation %} markers in the chat template; "
                           "use --assistant_only_loss auto or false.")
    return requested == "true"


def resolve_model_dtype(requested: str, method: str, runtime: Runtime) -> str:
    """`auto`: a LoRA run's frozen base in bf16 where the GPU computes in bf16 (it receives no updates, so bf16
    loses nothing there; adapters stay fp32); fp32 otherwise (CPUs emulate bf16 matmuls; full fine-tunes need
    fp32 master weights)."""
    if requested != "auto":
        return requested
    return "bfloat16" if method == "lora" and runtime.bf16 else "float32"


@dataclass
class Plan:
    """What this run actually does (after `auto` choices); logged and returned."""

    attn_implementation: str
    packing: bool
    assistant_only_loss: bool
    precision: str  # fp32 | bf16-autocast | fp16-autocast
    world_size: int
    device: str = "cpu"  # cuda | cpu
    model_dtype: str = "float32"  # the weights as loaded (after `auto`)
    eval_batch_size: int = 1  # per forward: one pack with packing, else --per_device_eval_batch_size rows
    train_rows: int = 0
    eval_rows: int = 0
    overlong: dict[str, Any] = field(default_factory=dict)  # per split: rows over max_length, tokens past it
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- building blocks

def _load_failure(what: str, path: str, err: Exception) -> TrainerError:
    """One line for a model or tokenizer that will not load (bad folder, unknown id, no network)."""
    detail = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    return TrainerError(
        f"cannot load the {what} from --model_name_or_path {path}: {detail.rstrip('.: ')}. "
        "Pass a Hugging Face model id or a save_pretrained folder (config.json, weights and tokenizer files)."
    )


def load_tokenizer(path: str, revision: str | None = None):
    """The tokenizer of a hub id or any local model layout (model_source)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_source.resolve(path).tokenizer, revision=revision)
    except (OSError, ValueError) as err:
        raise _load_failure("tokenizer", path, err) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_pretrained_model(args: Settings, attn_implementation: str):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if args.model_dtype == "bfloat16" else torch.float32  # `auto` is resolved by build_trainer
    if args.model_dtype == "bfloat16" and args.method == "full":
        log.warning("--model_dtype bfloat16 keeps bf16 master weights: AdamW updates smaller than bf16 can "
                    "represent round to nothing (the tutorial's setting; use it only to compare).")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_source.resolve(args.model_name_or_path).weights, revision=args.model_revision, dtype=dtype,
            attn_implementation=attn_implementation)
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


def lora_config(args: Settings):
    from peft import LoraConfig

    targets = args.lora_target_modules
    return LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, bias="none",
        task_type="CAUSAL_LM",
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()],
    )


def sft_config(args: Settings, runtime: Runtime, plan: Plan, work_dir: str,
               overrides: Mapping[str, Any] | None = None):
    """TRL's SFTConfig from the settings and the plan; `overrides` (the benchmark's seam) win over both."""
    from trl import SFTConfig

    eval_steps = args.eval_steps or None
    values = dict(
        output_dir=args.checkpoint_dir or work_dir,  # checkpoint-<step> folders (saved by the checkpoints callback)
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=plan.eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        warmup_steps=args.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        lr_scheduler_type=args.lr_scheduler_type,
        weight_decay=args.weight_decay,
        logging_steps=args.logging_steps,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        # checkpoints: when the checkpoints callback says (every checkpoint_minutes, on a stop); the full Trainer
        # state, never save_only_model; rotated by the callback after its completion marker
        save_strategy="no",
        save_only_model=False,
        save_total_limit=None,
        logging_nan_inf_filter=False,  # a NaN or inf loss shows in the log (and fails the run), not averaged away
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
        use_cpu=not runtime.cuda,  # --device cpu: stay on the CPU even where a GPU is visible
    )
    values.update(overrides or {})
    return SFTConfig(**values)


def make_plan(args: Settings, runtime: Runtime, tokenizer) -> Plan:
    """The `auto` decisions that need the machine and the tokenizer."""
    attn = resolve_attention(args.attn_implementation, runtime.cuda)
    precision = "bf16-autocast" if runtime.bf16 else "fp16-autocast" if runtime.fp16 else "fp32"
    plan = Plan(attn_implementation=attn, packing=args.packing, world_size=runtime.world_size, precision=precision,
                assistant_only_loss=resolve_assistant_only_loss(args.assistant_only_loss, tokenizer),
                device="cuda" if runtime.cuda else "cpu",
                model_dtype=resolve_model_dtype(args.model_dtype, args.method, runtime))
    if args.packing and not packing_isolates_sequences(attn):
        plan.packing = False
        plan.notes.append(f"packing off: {attn} attention in this transformers version would let packed "
                          "sequences attend to each other; padding instead")
    # padding-free packing flattens a batch into one row: eval one pack (<= max_length tokens) per forward,
    # not a 4 x max_length row whose block-diagonal mask SDPA would build densely
    plan.eval_batch_size = 1 if plan.packing else args.per_device_eval_batch_size
    if plan.model_dtype == "bfloat16":
        # a frozen base receives no updates, so bf16 loses nothing there; full fine-tunes lose small updates
        plan.notes.append("bf16 frozen base, fp32 adapters" if args.method == "lora"
                          else "bf16 master weights (tutorial setting): small updates are lost")
    return plan


def load_data(args: Settings, tokenizer, plan: Plan):
    """train/eval datasets with only `messages`, over-long conversations counted (and left out with skip)."""
    train_dataset, eval_dataset = load_jsonl_datasets(args.train_file, args.eval_file)
    train_dataset, train_over = overlong.apply(train_dataset, tokenizer, args.max_length, args.overlong)
    eval_dataset, eval_over = overlong.apply(eval_dataset, tokenizer, args.max_length, args.overlong)
    plan.train_rows, plan.eval_rows = len(train_dataset), len(eval_dataset)
    plan.overlong = {"train": train_over.as_dict(), "eval": eval_over.as_dict()}
    for split, report in (("train", train_over), ("eval", eval_over)):
        (log.warning if report.over_max_length else log.info)(report.describe(split, args.max_length))
    if not plan.train_rows or not plan.eval_rows:
        raise TrainerError(f"--overlong skip left no {'training' if not plan.train_rows else 'eval'} conversation of "
                           f"at most {args.max_length} tokens; raise --max_length or use --overlong truncate.")
    return train_dataset, eval_dataset


def build_trainer(args: Settings, work_dir: str | None = None, runtime: Runtime | None = None,
                  rows_checked: bool = False, *,
                  load_model: Callable[[Settings, str], Any] | None = None,
                  sft_overrides: Mapping[str, Any] | None = None,
                  callbacks: Sequence[Any] = ()):
    """Load tokenizer, model and data, decide the `auto` settings, and return (SFTTrainer, Plan).

    The seams the benchmark varies: `load_model(settings, attn_implementation)` replaces the
    checkpoint loader (it gets the settings with `model_dtype` resolved), `sft_overrides` are set
    on TRL's SFTConfig last, `callbacks` are added.
    """
    import torch
    from trl import SFTTrainer

    check_paths(args, rows=not rows_checked)
    runtime = runtime or detect_runtime(args.device)
    tokenizer = load_tokenizer(args.model_name_or_path, args.model_revision)
    plan = make_plan(args, runtime, tokenizer)
    torch.manual_seed(args.seed)
    model = (load_model or load_pretrained_model)(replace(args, model_dtype=plan.model_dtype), plan.attn_implementation)
    train_dataset, eval_dataset = load_data(args, tokenizer, plan)
    if work_dir is None:
        work_dir = args.work_dir or tempfile.mkdtemp(prefix="fine-tune-")
    try:
        with training_template_applied(tokenizer, plan.assistant_only_loss):  # the marked template while TRL tokenizes
            trainer = SFTTrainer(
                model=model,
                args=sft_config(args, runtime, plan, work_dir, sft_overrides),
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=tokenizer,
                peft_config=lora_config(args) if args.method == "lora" else None,
                callbacks=list(callbacks) or None,
            )
        if plan.assistant_only_loss:
            check_masks(trainer)  # before any step: masks that are empty or dropped are refused
    except MaskError as err:
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

def _oom_message(args: Settings) -> str:
    advice = [f"a smaller --per_device_train_batch_size (now {args.per_device_train_batch_size}) with a larger "
              "--gradient_accumulation_steps", f"a shorter --max_length (now {args.max_length})"]
    if args.method == "full":
        advice.append("--method lora")
    if not args.gradient_checkpointing:
        advice.append("--gradient_checkpointing true")
    return "out of GPU memory. Try " + ", ".join(advice) + ", or a GPU with more memory."


def train(args: Settings) -> dict[str, Any]:
    """Check, pick the checkpoint to resume from, build, evaluate, train, evaluate, save (rank 0), record, and
    delete the checkpoints. Returns the summary written to summary.json; raises Stopped on SIGTERM or Ctrl-C."""
    check_paths(args)  # before importing torch: a typo or a bad row costs a second, not a model load
    runtime = detect_runtime(args.device)  # --device cuda without a GPU stops here, before the model loads
    logging.basicConfig(level=logging.INFO if runtime.is_main else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    log.info("%s on %s: loading the tokenizer, the model and the data", args.model_name_or_path,
             f"{runtime.world_size} GPU process(es)" if runtime.cuda else "the CPU")
    resume = choose_resume(args, runtime)  # a refused resume costs no model load
    stop = StopRequest()
    if threading.current_thread() is threading.main_thread():
        stop.install()
    own_work_dir = args.work_dir is None
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="fine-tune-")
    run, status, saved = None, "FAILED", False
    record = RunRecord(args.run_key, runtime.world_size,
                       eval_loss_before=resume.checkpoint.info.get("eval_loss_before") if resume else None,
                       resumed_from=f"{resume.checkpoint.path} (step {resume.checkpoint.step})" if resume else None)
    saver = checkpoints.checkpoint_callback(args.checkpoint_dir, args.checkpoint_minutes, args.checkpoints_keep, record,
                                            stop, resumed_step=resume.checkpoint.step if resume else 0)
    try:
        trainer, plan = _out_of_memory_is_advice(args, build_trainer, args, work_dir, runtime, rows_checked=True,
                                                 callbacks=[saver])
        log.info("plan: %s", json.dumps(asdict(plan)))
        for note in plan.notes:
            log.warning(note)
        remove_incomplete_checkpoints(trainer, args, runtime)
        if runtime.is_main:
            run = start_tracking(trainer, args, plan, resume)
            record.mlflow_run_id = run.info.run_id
        summary = _out_of_memory_is_advice(args, evaluate_train_evaluate, trainer, args, plan,
                                           resume=resume, stop=stop, saver=saver, record=record)
        if runtime.is_main:
            save(trainer, runtime, args, summary)
            status, saved = "FINISHED", True
            tracking.record(args, summary)
            report(args, summary)
            remove_checkpoints(args)
        return summary
    except Stopped:
        status = "KILLED"
        raise
    finally:
        stop.uninstall()
        if run is not None:
            tracking.optional("ending the MLflow run", tracking.end_run, status) if saved else tracking.end_run(status)
        if own_work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)


def choose_resume(args: Settings, runtime: Runtime) -> checkpoints.Resume | None:
    """This run's newest complete checkpoint, else --resume_from's; said in one line."""
    try:
        resume = checkpoints.choose(args.checkpoint_dir, args.resume_from, args.run_key, runtime.world_size,
                                    force=args.resume_force)
    except checkpoints.ResumeRefused as err:
        raise TrainerError(str(err)) from None
    if resume and runtime.is_main:
        log.info("resuming from step %d (%s)", resume.checkpoint.step, resume.checkpoint.path)
    return resume


def remove_incomplete_checkpoints(trainer, args: Settings, runtime: Runtime) -> None:
    """Folders cut short by a crash (no marker) go before training, so a new save never mixes with their files;
    so does a model save that a preemption cut short (a requeued job finds its `model` output as it was left)."""
    if args.checkpoint_dir and runtime.is_main:
        for folder in checkpoints.incomplete(args.checkpoint_dir):
            log.warning("removing %s: it has no completion marker (cut short by a crash)", folder)
            shutil.rmtree(folder, ignore_errors=True)
        if Path(args.output_dir).is_dir() and any(Path(args.output_dir).iterdir()):
            log.warning("emptying --output_dir %s: the run resumes, so what is there is a save cut short", args.output_dir)
            _empty_folder(Path(args.output_dir))
    trainer.accelerator.wait_for_everyone()


def remove_checkpoints(args: Settings) -> None:
    """After the model is saved, the run's checkpoints are only storage: delete them."""
    if args.checkpoint_dir:
        removed = checkpoints.remove_all(args.checkpoint_dir)
        Path(args.checkpoint_dir, "README.md").unlink(missing_ok=True)  # TRL's model card, written beside them
        if removed:
            log.info("removed %d checkpoint(s) from %s: the model is saved", removed, args.checkpoint_dir)


def _out_of_memory_is_advice(args: Settings, step: Callable[..., Any], *a: Any, **kw: Any) -> Any:
    import torch

    try:
        return step(*a, **kw)
    except torch.OutOfMemoryError as err:  # moving the model to the GPU, or a step
        raise TrainerError(_oom_message(args)) from err


def start_tracking(trainer, args: Settings, plan: Plan, resume: checkpoints.Resume | None = None):
    """The MLflow run (rank 0): bounded parameters now, metrics as they are logged. A run resumed from its own
    checkpoint continues the MLflow run that checkpoint recorded (on Azure ML the job's own run)."""
    import mlflow

    reopen = resume.checkpoint.info.get("mlflow_run_id") if resume and resume.own else None
    run = tracking.start_run(reopen)
    tracking.log_params_once(tracking.bounded_params(args, plan))
    if resume:
        mlflow.set_tag("resumed_from", f"{resume.checkpoint.path} (step {resume.checkpoint.step})")
    trainer.add_callback(tracking.metrics_callback())
    return run


def _finite(what: str, value: float) -> float:
    if not math.isfinite(value):
        raise TrainerError(f"the {what} is {value}: the model produces non-finite values. Nothing was saved.")
    return value


def evaluate_train_evaluate(trainer, args: Settings, plan: Plan, *, resume: checkpoints.Resume | None = None,
                            stop: StopRequest | None = None, saver: Any = None,
                            record: RunRecord | None = None) -> dict[str, Any]:
    """Eval loss before (a resumed run keeps its first segment's), train (from the checkpoint), eval loss after.

    The eval before training runs inside `train()` (`eval_on_start`), after the model is wrapped for
    distributed training: `trainer.evaluate()` before `train()` leaves the model marked as prepared, so
    accelerate skips the DistributedDataParallel wrap and each rank trains on its own gradients.
    """
    started = time.perf_counter()
    if stop is not None and stop.requested:
        raise Stopped(stop.signum, resume.checkpoint.step if resume else 0, resume.checkpoint if resume else None)
    trainer.args.eval_on_start = resume is None
    result = trainer.train(resume_from_checkpoint=str(resume.checkpoint.path) if resume else None)
    before = (resume.checkpoint.info.get("eval_loss_before") if resume
              else next(h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h))
    _finite("eval loss before training", before if before is not None else math.nan)
    diverged = saver.diverged if saver is not None else None
    if diverged or not math.isfinite(result.training_loss):
        step, loss = diverged or (result.global_step, result.training_loss)
        raise TrainerError(
            f"training diverged: the loss became {loss} at step {step}. No checkpoint after it was kept and no model "
            f"was saved. Lower --learning_rate (now {args.learning_rate}) or raise --warmup_ratio; that starts a new run.")
    if saver is not None and saver.stop_step is not None and result.global_step < trainer.state.max_steps:
        newest = checkpoints.newest(args.checkpoint_dir) if args.checkpoint_dir else None
        raise Stopped(stop.signum if stop and stop.signum else signal.SIGTERM, result.global_step, newest)
    after = _finite("eval loss after training", trainer.evaluate()["eval_loss"])
    return {"eval_loss_before": before, "eval_loss_after": after, "train_loss": result.training_loss,
            "train_seconds": time.perf_counter() - started, "global_steps": result.global_step,
            "resumed_from_step": resume.checkpoint.step if resume else None,
            "overlong": plan.overlong, "plan": asdict(plan), "settings": asdict(args)}


def save(trainer, runtime: Runtime, args: Settings, summary: dict[str, Any]) -> Path:
    """The model output (--output_dir, the job's `model` output): the merged MLflow model and summary.json, and
    for LoRA runs the adapter in adapter/, staged before the merge folds it into the weights (`summary` then
    records it)."""
    staged = stage_adapter(trainer, args) if args.method == "lora" else None
    try:
        out = save_mlflow_model(final_model(trainer, runtime), trainer.processing_class, args.output_dir)
        if staged is not None:
            shutil.move(str(staged), str(out / ADAPTER_DIR))
            summary["adapter"] = {"path": ADAPTER_DIR, "base_model": args.model_name_or_path,
                                  "base_revision": args.model_revision}
    finally:
        if staged is not None:
            shutil.rmtree(staged.parent, ignore_errors=True)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return out


def stage_adapter(trainer, args: Settings) -> Path:
    """The LoRA adapter in PEFT format, in a temporary folder, recording the base it was trained on (the id and
    revision in adapter_config.json: deploy serves it on that base only)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    for config in model.peft_config.values():
        config.base_model_name_or_path = args.model_name_or_path
        config.revision = args.model_revision
    folder = Path(tempfile.mkdtemp(prefix="lora-adapter-")) / ADAPTER_DIR
    model.save_pretrained(folder)
    return folder


def report(args: Settings, summary: Mapping[str, Any]) -> None:
    before, after = summary["eval_loss_before"], summary["eval_loss_after"]
    change = 100 * (after - before) / before if before else float("nan")
    print(f"eval loss: {before:.4f} before -> {after:.4f} after ({change:+.1f}%) in {summary['train_seconds']:.0f}s; "
          f"model saved to {args.output_dir}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the preset (or settings file) and flags, and train; raises TrainerError for expected failures (the CLI prints them)."""
    train(parse_args(argv))
    return 0


def _cli() -> int:
    try:
        return main()
    except TrainerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Stopped as stopped:
        print(stopped, file=sys.stderr)
        return stopped.exit_code


if __name__ == "__main__":
    sys.exit(_cli())
