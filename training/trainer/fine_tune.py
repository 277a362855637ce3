"""Supervised fine-tuning of a Phi-3 chat model with TRL's SFTTrainer, logged to MLflow.

This package is the only code uploaded to the Azure ML cluster (as `trainer/`, run as
`python -m trainer.fine_tune`): it imports nothing from the repository (torch, transformers,
trl, peft, datasets and mlflow only) and runs unchanged on a laptop CPU with the tiny offline
model (`python -m training.trainer.fine_tune`). Its settings are declared in `settings.py`,
their values in `recipes/`.

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
- under torchrun (RANK / WORLD_SIZE / LOCAL_RANK) only rank 0 logs and saves.

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
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .chat_templates import MaskError, check_masks, training_template
from .chat_templates import applied as training_template_applied
from .settings import Settings, build_parser, parse_args  # noqa: F401 - the trainer's CLI and Python API

KEEP_COLUMNS = ("messages",)  # ultrachat's `prompt` would send TRL down the prompt/completion path
MAX_PARAM_CHARS = 250  # Azure ML / MLflow parameter values are bounded; keep ours short
ROLES = ("system", "user", "assistant")
MAX_LISTED_PROBLEMS = 5
SUMMARY_FILE = "summary.json"

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


@dataclass
class Plan:
    """What this run actually does (after `auto` choices); logged and returned."""

    attn_implementation: str
    packing: bool
    assistant_only_loss: bool
    precision: str  # fp32 | bf16-autocast | fp16-autocast
    world_size: int
    device: str = "cpu"  # cuda | cpu
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


def load_tokenizer(path: str, revision: str | None = None):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as err:
        raise _load_failure("tokenizer", path, err) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_pretrained_model(args: Settings, attn_implementation: str):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.float32 if args.model_dtype == "float32" else torch.bfloat16
    if args.model_dtype == "bfloat16" and args.method == "full":
        log.warning("--model_dtype bfloat16 keeps bf16 master weights: AdamW updates smaller than bf16 can "
                    "represent round to nothing (the tutorial's setting; use it only to compare).")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            args.model_name_or_path, revision=args.model_revision, dtype=dtype, attn_implementation=attn_implementation)
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
        use_cpu=not runtime.cuda,  # --device cpu: stay on the CPU even where a GPU is visible
    )
    values.update(overrides or {})
    return SFTConfig(**values)


def build_trainer(args: Settings, work_dir: str | None = None, runtime: Runtime | None = None,
                  rows_checked: bool = False, *,
                  load_model: Callable[[Settings, str], Any] | None = None,
                  sft_overrides: Mapping[str, Any] | None = None,
                  callbacks: Sequence[Any] = ()):
    """Load tokenizer, model and data, decide the `auto` settings, and return (SFTTrainer, Plan).

    The seams the benchmark varies: `load_model(settings, attn_implementation)` replaces the
    checkpoint loader, `sft_overrides` are set on TRL's SFTConfig last, `callbacks` are added.
    """
    import torch
    from trl import SFTTrainer

    check_paths(args, rows=not rows_checked)
    runtime = runtime or detect_runtime(args.device)
    attn = resolve_attention(args.attn_implementation, runtime.cuda)
    tokenizer = load_tokenizer(args.model_name_or_path, args.model_revision)
    precision = "bf16-autocast" if runtime.bf16 else "fp16-autocast" if runtime.fp16 else "fp32"
    plan = Plan(attn_implementation=attn, packing=args.packing, world_size=runtime.world_size, precision=precision,
                assistant_only_loss=resolve_assistant_only_loss(args.assistant_only_loss, tokenizer),
                device="cuda" if runtime.cuda else "cpu")
    if args.packing and not packing_isolates_sequences(attn):
        plan.packing = False
        plan.notes.append(f"packing off: {attn} attention in this transformers version would let packed "
                          "sequences attend to each other; padding instead")
    if args.model_dtype == "bfloat16":
        # a frozen base receives no updates, so bf16 loses nothing there; full fine-tunes lose small updates
        plan.notes.append("bf16 frozen base, fp32 adapters" if args.method == "lora"
                          else "bf16 master weights (tutorial setting): small updates are lost")

    torch.manual_seed(args.seed)
    model = (load_model or load_pretrained_model)(args, attn)
    train_dataset, eval_dataset = load_jsonl_datasets(args.train_file, args.eval_file)
    plan.train_rows, plan.eval_rows = len(train_dataset), len(eval_dataset)
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


# ---------------------------------------------------------------- MLflow

def bounded_params(args: Settings, plan: Plan) -> dict[str, str]:
    """A fixed, small parameter set (Azure ML caps the count and the length of MLflow params)."""
    import torch
    import transformers
    import trl

    keys = ["model_name_or_path", "model_revision", "method", "epochs", "max_steps", "learning_rate", "per_device_train_batch_size",
            "per_device_eval_batch_size", "gradient_accumulation_steps", "max_length", "gradient_checkpointing",
            "model_dtype", "seed", "warmup_ratio", "lr_scheduler_type", "weight_decay"]
    if args.method == "lora":
        keys += ["lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"]
    params: dict[str, Any] = {k: getattr(args, k) for k in keys}
    params.update(device=plan.device, attn_implementation=plan.attn_implementation, packing=plan.packing,
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
        failed = False

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or self.failed:
                return
            values = {k: float(v) for k, v in logs.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
            if values:
                try:
                    mlflow.log_metrics(values, step=state.global_step)
                except Exception as err:  # noqa: BLE001 - metrics are a record, not the job
                    self.failed = True
                    log.warning("logging metrics to MLflow failed; training goes on without them: %s", err)

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

def _oom_message(args: Settings) -> str:
    advice = [f"a smaller --per_device_train_batch_size (now {args.per_device_train_batch_size}) with a larger "
              "--gradient_accumulation_steps", f"a shorter --max_length (now {args.max_length})"]
    if args.method == "full":
        advice.append("--method lora")
    if not args.gradient_checkpointing:
        advice.append("--gradient_checkpointing true")
    return "out of GPU memory. Try " + ", ".join(advice) + ", or a GPU with more memory."


def train(args: Settings) -> dict[str, Any]:
    """Check, build, evaluate, train, evaluate, save (rank 0), record. Returns the summary written to summary.json."""
    check_paths(args)  # before importing torch: a typo or a bad row costs a second, not a model load
    runtime = detect_runtime(args.device)  # --device cuda without a GPU stops here, before the model loads
    logging.basicConfig(level=logging.INFO if runtime.is_main else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    own_work_dir = args.work_dir is None
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="fine-tune-")
    run, saved = None, False
    try:
        trainer, plan = _out_of_memory_is_advice(args, build_trainer, args, work_dir, runtime, rows_checked=True)
        log.info("plan: %s", json.dumps(asdict(plan)))
        for note in plan.notes:
            log.warning(note)
        if runtime.is_main:
            run = start_tracking(trainer, args, plan)
        summary = _out_of_memory_is_advice(args, evaluate_train_evaluate, trainer, args, plan)
        if runtime.is_main:
            save(trainer, runtime, args, summary)
            saved = True
            record(args, summary)
            report(args, summary)
        return summary
    finally:
        if run is not None:
            finished = sys.exc_info()[0] is None
            _optional("ending the MLflow run", end_run, finished) if saved else end_run(finished)
        if own_work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)


def _out_of_memory_is_advice(args: Settings, step: Callable[..., Any], *a: Any, **kw: Any) -> Any:
    import torch

    try:
        return step(*a, **kw)
    except torch.OutOfMemoryError as err:  # moving the model to the GPU, or a step
        raise TrainerError(_oom_message(args)) from err


def start_tracking(trainer, args: Settings, plan: Plan):
    """The MLflow run (rank 0): bounded parameters now, metrics as they are logged."""
    import mlflow

    run = _start_run()
    mlflow.log_params(bounded_params(args, plan))
    trainer.add_callback(metrics_callback())
    return run


def evaluate_train_evaluate(trainer, args: Settings, plan: Plan) -> dict[str, Any]:
    started = time.perf_counter()
    before = trainer.evaluate()["eval_loss"]
    result = trainer.train()
    after = trainer.evaluate()["eval_loss"]
    return {"eval_loss_before": before, "eval_loss_after": after, "train_loss": result.training_loss,
            "train_seconds": time.perf_counter() - started, "global_steps": result.global_step,
            "plan": asdict(plan), "settings": asdict(args)}


def save(trainer, runtime: Runtime, args: Settings, summary: Mapping[str, Any]) -> Path:
    """The one copy of the model: MLflow model + summary.json in --output_dir (the job's `model` output)."""
    out = save_mlflow_model(final_model(trainer, runtime), trainer.processing_class, args.output_dir)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return out


def model_location(output_dir: str | Path) -> str:
    """Where the saved model lives: the Azure ML job's named output, or the local folder."""
    job = os.environ.get("AZUREML_RUN_ID")
    return f"azureml://jobs/{job}/outputs/model" if job else str(Path(output_dir).resolve())


def record(args: Settings, summary: Mapping[str, Any]) -> None:
    """The MLflow run references the saved model; every step is optional: a failure warns, the job stays a success."""
    import mlflow

    _optional("logging the eval losses to MLflow", mlflow.log_metrics,
              {"eval_loss_before": summary["eval_loss_before"], "eval_loss_after": summary["eval_loss_after"]})
    _optional("tagging the MLflow run with the model's location", mlflow.set_tag, "model_output",
              model_location(args.output_dir))
    _optional("logging summary.json to MLflow", mlflow.log_dict, dict(summary), SUMMARY_FILE)
    if args.log_model_artifacts:  # opt-in: a second upload of every weight
        _optional("copying the model into the MLflow run (--log_model_artifacts)", mlflow.log_artifacts,
                  str(args.output_dir), artifact_path="model")


def _optional(what: str, call: Callable[..., Any], *a: Any, **kw: Any) -> None:
    try:
        call(*a, **kw)
    except Exception as err:  # noqa: BLE001 - the model is saved: a bookkeeping failure must not fail the job
        log.warning("%s failed (the model is saved; the job goes on): %s: %s", what, type(err).__name__,
                    str(err).splitlines()[0] if str(err) else "")


def end_run(finished: bool) -> None:
    import mlflow

    mlflow.end_run("FINISHED" if finished else "FAILED")


def report(args: Settings, summary: Mapping[str, Any]) -> None:
    before, after = summary["eval_loss_before"], summary["eval_loss_after"]
    change = 100 * (after - before) / before if before else float("nan")
    print(f"eval loss: {before:.4f} before -> {after:.4f} after ({change:+.1f}%) in {summary['train_seconds']:.0f}s; "
          f"model saved to {args.output_dir}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the recipe and flags, and train; raises TrainerError for expected failures (the CLI prints them)."""
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
