"""`python -m training.bench`: training throughput of the project's trainer, per named configuration.

    python -m training.bench                                   # tiny shape (CPU), the standard configs
    python -m training.bench --shape phi-3.5-mini              # the real architecture, random weights; GPU only
    python -m training.bench --config tutorial default --steps 20 --warmup-steps 3
    python -m training.bench --suite other                     # submit --help/--dry-run, training.data, scoring
    python -m training.bench --suite other --data-fraction 1%  # training.data keeping 1% of 200k rows

Every configuration runs in its own process (clean peak-memory figures, no kernel patches or
CUDA state leaking between configurations, an out-of-memory configuration does not end the
run): the process parses the configuration's recipe and flags with the trainer's own parser,
builds the trainer with `training.trainer.fine_tune.build_trainer`, passing what the benchmark
varies through its seams (`load_model`, `sft_overrides`, `callbacks`), runs `--warmup-steps +
--steps` optimizer steps and reports, for the measured steps only:

- tokens/s of real tokens (attention-mask ones, or every token of a padding-free pack),
  counted in the data collator, with padding and loss-token counts beside them;
- mean step time (wall clock between step ends, data loading included; CUDA synchronised);
- peak memory: `torch.cuda.max_memory_allocated` on a GPU, the process's peak RSS on a CPU;
- model-FLOPs utilisation where the device's dense bf16 peak is known (4N + 2N_trainable
  FLOPs per token, N without the input embedding, plus 12 * layers * hidden * seq_len
  attention FLOPs per token; recomputation under checkpointing is not counted, as MFU goes);
- the training loss of the first and last step.

Like for like: on a CPU every row loads fp32 weights (no autocast there: bf16 weights would
make the CPU emulate bf16 matmuls), and each row's ratio is against the tutorial row with the
same method (`tutorial` for full fine-tunes, `tutorial-lora` for LoRA).

Results: JSON (with the machine: CPU, cores, load, GPU, library versions, date) and a
Markdown table, written under `--out` (default runs/bench) and printed on stdout. Progress
goes to stderr. Not a test: the numbers depend on the machine and on what else runs on it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from common.cli import ArgumentParser, UserError, run_cli, say, step
from common.files import write_atomic
from training.bench_data import synthetic_rows, synthetic_words, write_jsonl  # noqa: F401 (bench.synthetic_* stay reachable)

SHAPES = ("tiny", "phi-3.5-mini")
DEFAULT_CONFIGS = {
    "tiny": ("tutorial", "full", "packing", "sdpa-nopack", "tutorial-lora", "default", "batch4", "checkpointing"),
    "phi-3.5-mini": ("tutorial", "full", "sdpa-nopack", "packing", "tutorial-lora", "default", "batch4",
                     "checkpointing", "bf16-base", "fp32-base", "liger"),
}
DEFAULT_STEPS = {"tiny": (8, 2), "phi-3.5-mini": (20, 5)}  # (measured steps, warm-up steps)
# The tutorial's old TRL packing concatenated every conversation and cut full rows: TRL's `wrapped`
# strategy today (cross-conversation attention). The trainer does not offer it; the benchmark sets it.
WRAPPED_PACKING = {"packing_strategy": "wrapped", "padding_free": False}  # `wrapped` rows are full (batch, length)
CPU_DTYPE_FLAGS = ("--model_dtype", "float32")
"""On a CPU every row loads fp32 weights: without autocast, bf16 weights run every matmul in bf16, which a CPU
emulates in software (3-6x slower on the tiny Phi-3 on its own), so the tutorial row would measure the CPU."""


@dataclass(frozen=True)
class BenchConfig:
    name: str
    description: str
    recipe: str = "default"
    """The trainer recipe (training/trainer/recipes/) the configuration starts from."""
    flags: tuple[str, ...] = ()
    """Trainer flags on top of the recipe: what this configuration varies."""
    sft_overrides: Mapping[str, Any] = field(default_factory=dict)
    """Set on TRL's SFTConfig last (the trainer's `sft_overrides` seam)."""
    liger: bool = False

    @property
    def method(self) -> str:
        flags = dict(zip(self.flags[::2], self.flags[1::2]))
        return flags.get("--method") or recipe(self.recipe)["method"]

    @property
    def baseline(self) -> str:
        """The tutorial row with the same method: ratios compare LoRA with LoRA and full with full."""
        return "tutorial" if self.method == "full" else "tutorial-lora"


def recipe(name: str) -> dict[str, Any]:
    from training.trainer import settings

    return settings.recipe(name)


CONFIGS: dict[str, BenchConfig] = {c.name: c for c in (
    BenchConfig("tutorial", "the tutorial's settings on today's stack (an upper bound on the original's speed): "
                "recipe `tutorial`, eager, checkpointing, batch 4, full, wrapped packing (cross-conversation attention)",
                recipe="tutorial", sft_overrides=WRAPPED_PACKING),
    BenchConfig("tutorial-lora", "the tutorial's settings with LoRA (the baseline for the LoRA rows)",
                recipe="tutorial", flags=("--method", "lora"), sft_overrides=WRAPPED_PACKING),
    BenchConfig("tutorial-nopack", "the tutorial's settings without packing (padded batches)",
                recipe="tutorial", flags=("--packing", "false")),
    BenchConfig("default", "the trainer's defaults (recipe `default`: LoRA)"),
    BenchConfig("full", "the defaults with a full fine-tune (fp32 master weights, checkpointing)", flags=("--method", "full")),
    BenchConfig("sdpa-nopack", "full fine-tune, fp32 master weights, sdpa, no packing, checkpointing",
                flags=("--method", "full", "--attn_implementation", "sdpa", "--packing", "false")),
    BenchConfig("packing", "sdpa-nopack + padding-free packing",
                flags=("--method", "full", "--attn_implementation", "sdpa", "--packing", "true")),
    BenchConfig("batch4", "the defaults with the earlier batch 4 x 1 accumulation step (same tokens per optimizer "
                "step; one padding-free 8192-token row per forward instead of 2048)",
                flags=("--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1")),
    BenchConfig("checkpointing", "the defaults with gradient checkpointing on (LoRA's default is off)",
                flags=("--gradient_checkpointing", "true")),
    BenchConfig("bf16-base", "the defaults with the frozen base loaded in bf16 (LoRA adapters stay fp32): half the "
                "weight memory, no per-forward weight casts; what `auto` picks on a bf16 GPU", flags=("--model_dtype", "bfloat16")),
    BenchConfig("fp32-base", "the defaults with the frozen base in fp32 under bf16 autocast (the default before "
                "`model_dtype: auto`)", flags=("--model_dtype", "float32")),
    BenchConfig("lora", "defaults with LoRA", flags=("--method", "lora")),
    BenchConfig("liger", "defaults + Liger kernels (fused RMSNorm/SwiGLU/RoPE; TRL's own fused LM head already "
                "avoids the full logits)", liger=True),
)}

# Dense bf16 peak (TFLOP/s, no sparsity) by GPU name fragment; first match wins.
GPU_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0),
                   ("GH200", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
                   ("A10G", 70.0), ("A10", 125.0), ("L4", 121.0), ("V100", 125.0), ("T4", 65.0))

# microsoft/Phi-3.5-mini-instruct config.json, with the 4k rope (no longrope scaling): the
# benchmark trains 2048-token sequences, where longrope would use its short factors anyway.
PHI35_MINI_CONFIG = dict(
    vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, hidden_act="silu", max_position_embeddings=4096, original_max_position_embeddings=4096,
    rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=262144, tie_word_embeddings=False,
    attention_dropout=0.0, resid_pdrop=0.0, embd_pdrop=0.0, initializer_range=0.02,
)
ULTRACHAT_MEAN_TOKENS = 1375


# ---------------------------------------------------------------- helpers shared by both suites


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, load, GPU and library versions (imports torch: call after --help)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from common.machine import cpu_name

    cpu = cpu_name()
    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    for package in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "flash-attn", "liger-kernel"):
        try:
            info[f"{package}_version"] = version(package)
        except PackageNotFoundError:
            info[f"{package}_version"] = None
    import torch

    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    info["gpu_count"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return info


def gpu_peak_flops(gpu_name: str | None) -> float | None:
    """The dense bf16 peak of the named GPU in FLOP/s, or None (CPU, unknown GPU)."""
    if not gpu_name:
        return None
    for fragment, tflops in GPU_PEAK_TFLOPS:
        if fragment.lower() in gpu_name.lower():
            return tflops * 1e12
    return None


def _human_bytes(value: float | None) -> str:
    if value is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{value:.0f} B"
        value /= 1024
    return f"{value:.1f} GiB"


# ---------------------------------------------------------------- data and models


def tokens_per_word(tokenizer_dir: Path, mean_tokens: float) -> float:
    """How many tokens one synthetic word costs with this tokenizer (chat formatting included)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    rows = list(synthetic_rows(20, mean_tokens, seed=99))
    n_words = sum(len(m["content"].split()) for r in rows for m in r["messages"])
    return sum(chat_tokens(tokenizer, r["messages"]) for r in rows) / n_words


def chat_tokens(tokenizer, messages: list[dict[str, str]]) -> int:
    """Tokens of one chat-formatted conversation, as the trainer sees it."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def prepare_inputs(shape: str, scratch: Path, total_steps: int) -> tuple[Path, Path, Path, str]:
    """(model folder, train file, eval file, data description) for a shape, built under `scratch`."""
    from training.tiny_model import build_tiny_model

    with step("building the tiny Phi-3 model and tokenizer"):
        tiny = build_tiny_model(scratch / "tiny-model")
    if shape == "tiny":
        from training.data import prepare

        with step("preparing the bundled sample data"):
            data = prepare("sample", scratch / "data").out
        return tiny, data / "train.jsonl", data / "test.jsonl", "bundled sample (training.data --source sample)"

    # phi-3.5-mini: the real architecture; the tiny model's tokenizer only supplies ids (< 1024).
    from transformers import AutoTokenizer, Phi3Config

    model_dir = scratch / "phi-3.5-mini"
    model_dir.mkdir()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny))
    tokenizer.save_pretrained(model_dir)
    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    Phi3Config(**PHI35_MINI_CONFIG, bos_token_id=tokenizer.bos_token_id, eos_token_id=[end_id, tokenizer.eos_token_id],
               pad_token_id=tokenizer.pad_token_id).save_pretrained(model_dir)
    ratio = tokens_per_word(tiny, ULTRACHAT_MEAN_TOKENS)
    rows = max(64, total_steps * 4 * 3)  # enough for every step of the unpacked configs, with room
    with step(f"writing {rows} synthetic ultrachat-length conversations (~{ULTRACHAT_MEAN_TOKENS} tokens each)"):
        data = scratch / "data"
        data.mkdir()
        train = write_jsonl(data / "train.jsonl", synthetic_rows(rows, ULTRACHAT_MEAN_TOKENS / ratio, seed=1))
        test = write_jsonl(data / "test.jsonl", synthetic_rows(8, ULTRACHAT_MEAN_TOKENS / ratio, seed=2))
    return model_dir, train, test, f"synthetic ultrachat-length chats (gamma lengths, mean ~{ULTRACHAT_MEAN_TOKENS} tokens)"


# ---------------------------------------------------------------- one configuration (worker process)


class TokenMeter:
    """Wraps the data collator: per micro-batch real / padded / loss tokens and attention FLOPs."""

    def __init__(self, collator, layers: int, hidden: int) -> None:
        self.collator = collator
        self.attn_coef = 12 * layers * hidden  # fwd+bwd attention FLOPs = coef * seq_len^2 per sequence
        self.batches: list[dict[str, float]] = []

    def __getattr__(self, name: str):  # anything else the trainer asks of the collator
        return getattr(self.collator, name)

    def __call__(self, examples):
        batch = self.collator(examples)
        self.batches.append(self.measure(batch))
        return batch

    def measure(self, batch) -> dict[str, float]:
        input_ids = batch["input_ids"]
        total = input_ids.numel()
        if "attention_mask" in batch:
            lengths = batch["attention_mask"].sum(dim=-1).tolist()
        elif "cu_seq_lens_q" in batch:  # padding-free pack: one row, sequences delimited by cu_seq_lens
            lengths = batch["cu_seq_lens_q"].diff().tolist()
        else:
            lengths = [input_ids.shape[-1]] * (input_ids.numel() // input_ids.shape[-1])
        real = sum(lengths)
        loss_tokens = int((batch["labels"] != -100).sum()) if "labels" in batch else real
        return {"real": real, "total": total, "loss": loss_tokens, "sequences": len(lengths),
                "attn_flops": float(self.attn_coef * sum(n * n for n in lengths))}


def _config_only_loader(device: str):
    """Replacement for the trainer's `load_model`: the architecture from config.json, random weights, on `device`.

    No 15 GB checkpoint is written or read; the trainer builds everything else as usual.
    """

    def load_model(args, attn_implementation):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(args.model_name_or_path)
        dtype = torch.float32 if args.model_dtype == "float32" else torch.bfloat16
        torch.manual_seed(args.seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
        model.config.use_cache = False
        return model

    return load_model


def param_counts(model) -> tuple[int, int]:
    """(N, N_trainable) for MFU: every parameter but the input embedding (a lookup, not a matmul), LoRA adapters included."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    embed = base.get_input_embeddings().weight
    n_params = sum(p.numel() for p in base.parameters() if p is not embed)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad and p is not embed)
    return n_params, n_trainable


def run_config(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in-process: settings, kernels, trainer with a meter and a clock, `warmup + steps` steps, numbers."""
    import torch

    from training.trainer import fine_tune

    config = CONFIGS[spec["config"]]
    cuda = torch.cuda.is_available()
    settings = config_settings(config, spec, cuda)
    apply_kernels(config)
    clock = StepClock(spec["config"], spec["warmup_steps"] + spec["steps"], cuda)
    loader = _config_only_loader(spec.get("device", "cuda")) if spec["shape"] == "phi-3.5-mini" else None
    trainer, plan = fine_tune.build_trainer(settings, settings.work_dir, load_model=loader,
                                            sft_overrides=config.sft_overrides, callbacks=[clock.callback()])
    meter = attach_meter(trainer, clock)
    trainer.train()
    return measurements(config, settings, plan, trainer, meter, clock, spec["warmup_steps"], cuda)


def config_settings(config: BenchConfig, spec: Mapping[str, Any], cuda: bool):
    """The trainer's settings for a configuration: its recipe, its flags, the run's paths and step count."""
    from training.trainer import fine_tune

    work = Path(spec["work_dir"])
    argv = ["--config", config.recipe, "--model_name_or_path", spec["model_dir"], "--train_file", spec["train_file"],
            "--eval_file", spec["eval_file"], "--output_dir", str(work / "model"), "--work_dir", str(work / "trainer"),
            "--max_steps", str(spec["warmup_steps"] + spec["steps"]), "--logging_steps", "1", *config.flags]
    if not cuda:
        argv += CPU_DTYPE_FLAGS
    if spec.get("max_length"):
        argv += ["--max_length", str(spec["max_length"])]
    return fine_tune.parse_args(argv)


def apply_kernels(config: BenchConfig) -> None:
    if not config.liger:
        return
    from liger_kernel.transformers import apply_liger_kernel_to_phi3

    # Before the model is built (class-level patches). Not Liger's fused linear cross-entropy: it
    # replaces Phi3ForCausalLM.forward, which SFTTrainer bypasses with its own fused LM head (it
    # patches the instance's forward), so it would never run; TRL itself turns it off the same way.
    apply_liger_kernel_to_phi3(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                               fused_linear_cross_entropy=False)


@dataclass
class StepClock:
    """The time of every step end with the micro-batches consumed by then, and each step's loss."""

    name: str
    total_steps: int
    cuda: bool
    consumed: int = 0  # micro-batches handed to training_step (the collator may run one ahead)
    marks: list[tuple[float, int]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def callback(self):
        """A TrainerCallback that feeds this clock (the trainer's `callbacks` seam)."""
        import torch
        from transformers import TrainerCallback

        clock = self

        class Clock(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                if clock.cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                clock.marks.append((time.perf_counter(), 0))

            def on_step_end(self, args, state, control, **kwargs):
                if clock.cuda:
                    torch.cuda.synchronize()
                clock.marks.append((time.perf_counter(), clock.consumed))
                say(f"    [{clock.name}] step {state.global_step}/{clock.total_steps}")

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    clock.losses.append(float(logs["loss"]))

        return Clock()


def attach_meter(trainer, clock: StepClock) -> TokenMeter:
    """Count the tokens of every micro-batch the collator makes, and which of them training consumed."""
    model = trainer.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    meter = TokenMeter(trainer.data_collator, base.config.num_hidden_layers, base.config.hidden_size)
    trainer.data_collator = meter
    original_step = trainer.training_step

    def counting_step(model_, inputs, *rest, **kwargs):
        clock.consumed += 1
        return original_step(model_, inputs, *rest, **kwargs)

    trainer.training_step = counting_step
    return meter


def measurements(config: BenchConfig, settings, plan, trainer, meter: TokenMeter, clock: StepClock, warmup: int,
                 cuda: bool) -> dict[str, Any]:
    """Tokens/s, step times, FLOPs, memory and losses of the measured steps (warm-up excluded)."""
    import resource

    import torch

    n_params, n_trainable = param_counts(trainer.model)
    marks = clock.marks
    first, last = marks[warmup], marks[-1]
    measured = meter.batches[first[1]:last[1]]
    seconds = last[0] - first[0]
    real = sum(b["real"] for b in measured)
    total = sum(b["total"] for b in measured)
    attn = sum(b["attn_flops"] for b in measured)
    model_flops = (4 * n_params + 2 * n_trainable) * real + attn
    step_times = [b[0] - a[0] for a, b in zip(marks[warmup:-1], marks[warmup + 1:])]
    gpu = torch.cuda.get_device_name(0) if cuda else None
    peak = gpu_peak_flops(gpu)
    losses = clock.losses
    return {
        "config": config.name, "status": "ok", "description": config.description, "recipe": config.recipe,
        "flags": list(config.flags), "baseline": config.baseline,
        "plan": {"attn_implementation": plan.attn_implementation, "packing": plan.packing,
                 "packing_strategy": config.sft_overrides.get("packing_strategy") or ("bfd" if plan.packing else None),
                 "assistant_only_loss": plan.assistant_only_loss, "precision": plan.precision,
                 "method": settings.method, "model_dtype": settings.model_dtype,
                 "gradient_checkpointing": settings.gradient_checkpointing,
                 "per_device_train_batch_size": settings.per_device_train_batch_size,
                 "max_length": settings.max_length, "learning_rate": settings.learning_rate, "notes": plan.notes},
        "device": gpu or "cpu",
        "params_without_embedding": n_params, "trainable_params": n_trainable,
        "warmup_steps": warmup, "steps_measured": len(step_times),
        "seconds_measured": seconds, "mean_step_s": seconds / max(1, len(step_times)),
        "median_step_s": statistics.median(step_times) if step_times else None, "step_times_s": step_times,
        "real_tokens": real, "total_tokens": total, "loss_tokens": sum(b["loss"] for b in measured),
        "sequences": sum(b["sequences"] for b in measured),
        "padding_fraction": 1 - real / total if total else None,
        "tokens_per_s": real / seconds if seconds > 0 else None,
        "model_flops_per_token": model_flops / real if real else None,
        "achieved_tflops": model_flops / seconds / 1e12 if seconds > 0 else None,
        "mfu": model_flops / seconds / peak if peak and seconds > 0 else None,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_memory_kind": "cuda_max_allocated" if cuda else "process_peak_rss",
        # what the caching allocator held (fragmentation, workspaces): the figure that decides "fits in 80 GB"
        "peak_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None,
        "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None, "losses": losses,
    }


def worker_main(spec_path: Path) -> int:
    """Entry of a configuration's own process: run it, write its result (or its failure) as JSON."""
    import logging

    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import torch

        try:
            result = run_config(spec)
        except torch.OutOfMemoryError:
            result = {"config": spec["config"], "status": "failed", "error": "out of GPU memory"}
    except Exception as err:  # noqa: BLE001 - one configuration's failure is a row, not the end of the run
        name = type(err).__name__
        result = {"config": spec["config"], "status": "failed", "error": f"{name}: {err}"[:500]}
    write_atomic(Path(spec["result_file"]), json.dumps(result))
    return 0


# ---------------------------------------------------------------- the training suite (parent process)


def _skip_reason(config: BenchConfig, cuda: bool) -> str | None:
    if config.liger:
        import importlib.util

        if importlib.util.find_spec("liger_kernel") is None:
            return "skipped: liger-kernel is not installed (pip install liger-kernel)"
        if not cuda:
            return "skipped: Liger kernels are Triton kernels and need a CUDA GPU"
    return None


def _worker_env() -> dict[str, str]:
    """Quieter workers: no progress bars or deprecation chatter between our own progress lines."""
    return {**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
            "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS") or "ignore::FutureWarning,ignore::UserWarning"}


def run_training_suite(shape: str, names: Sequence[str], steps: int, warmup: int, scratch: Path,
                       max_length: int | None = None) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    model_dir, train, test, data_note = prepare_inputs(shape, scratch, steps + warmup)
    results = []
    for name in names:
        config = CONFIGS[name]
        reason = _skip_reason(config, cuda)
        if reason:
            say(f"==> {name}: {reason}")
            results.append({"config": name, "status": "skipped", "description": config.description, "error": reason})
            continue
        work = scratch / f"run-{name}"
        work.mkdir()
        spec = {"config": name, "shape": shape, "model_dir": str(model_dir), "train_file": str(train),
                "eval_file": str(test), "steps": steps, "warmup_steps": warmup, "work_dir": str(work),
                "result_file": str(work / "result.json"),
                "max_length": max_length}
        spec_file = work / "spec.json"
        spec_file.write_text(json.dumps(spec), encoding="utf-8")
        started = time.perf_counter()
        with step(f"{name}: {config.description} ({warmup} warm-up + {steps} measured steps)"):
            # the trainer prints its log lines on stdout: keep ours for the report (worker stdout -> stderr)
            code = subprocess.call([sys.executable, "-m", "training.bench", "--worker", str(spec_file)],
                                   stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(), env=_worker_env())
        result_file = work / "result.json"
        if result_file.is_file():
            result = json.loads(result_file.read_text(encoding="utf-8"))
        else:
            result = {"config": name, "status": "failed",
                      "error": f"the benchmark process exited with code {code} before reporting (killed for memory?)"}
        result["process_wall_s"] = time.perf_counter() - started
        result.setdefault("description", config.description)
        if result["status"] == "ok":
            say(f"    {name}: {result['tokens_per_s']:.0f} tokens/s, {result['mean_step_s']:.3f} s/step, "
                f"peak {_human_bytes(result['peak_memory_bytes'])}, loss {result['loss_first']:.3f} -> {result['loss_last']:.3f}")
        else:
            say(f"    {name}: {result['status']}: {result.get('error')}")
        results.append(result)
    return {"shape": shape, "steps": steps, "warmup_steps": warmup, "max_length_override": max_length,
            "data": data_note, "results": results}


def training_markdown(suite: dict[str, Any]) -> str:
    rows = suite["results"]
    ok = {r["config"]: r for r in rows if r["status"] == "ok"}
    lines = [
        f"Shape `{suite['shape']}`, {suite['warmup_steps']} warm-up + {suite['steps']} measured steps; data: {suite['data']}"
        + (f"; max length overridden to {suite['max_length_override']}." if suite.get("max_length_override") else "."),
        "",
        "| config | tokens/s | vs tutorial (same method) | s/step (median) | peak memory | MFU | loss first -> last | padding | attention / packing / precision / method |",
        "|---|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['config']} | - | - | - | - | - | - | - | {r['status']}: {r.get('error', '')} |")
            continue
        p = r["plan"]
        base = ok.get(r.get("baseline", "tutorial"))
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x vs {base['config']}" if base else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
        packing = p["packing_strategy"] if p["packing"] else "no packing"
        what = (f"{p['attn_implementation']} / {packing} / {p['precision']}, {p['model_dtype']} weights / {p['method']}"
                f"{'' if p['gradient_checkpointing'] else ', no checkpointing'}")
        lines.append(
            f"| {r['config']} | {r['tokens_per_s']:,.0f} | {ratio} | {r['mean_step_s']:.3f} ({r['median_step_s']:.3f}) | {_human_bytes(r['peak_memory_bytes'])} "
            f"| {mfu} | {r['loss_first']:.3f} -> {r['loss_last']:.3f} | {100 * r['padding_fraction']:.0f}% | {what} |")
    kinds = {r.get("peak_memory_kind") for r in rows if r["status"] == "ok"}
    if "process_peak_rss" in kinds:
        lines += ["", "Peak memory is the benchmark process's peak RSS (CPU), libraries included. On a CPU every "
                  "row loads fp32 weights (like for like: no autocast there)."]
    return "\n".join(lines) + "\n"


def machine_markdown(machine: dict[str, Any]) -> str:
    gpu = f"{machine['gpu']} x{machine['gpu_count']}" if machine.get("gpu") else "none"
    return (f"Run {machine['date']} on {machine['cpu']} ({machine['cpu_cores']} cores, {machine.get('memory_gib', '?')} GiB), "
            f"GPU: {gpu}; load average (1 min) {machine['load_average_1m']:.1f} at start, "
            f"{machine['load_average_1m_end']:.1f} at end; torch {machine['torch_version']}, "
            f"transformers {machine['transformers_version']}, trl {machine['trl_version']}, peft {machine['peft_version']}.\n")


# ---------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m training.bench",
        description="Training throughput of the project's trainer per configuration (tokens/s, step time, peak memory, "
                    "MFU, loss), and with --suite other the other speeds users feel. See docs/BENCHMARKS.md.",
    )
    parser.add_argument("--suite", choices=("training", "other", "all"), default="training",
                        help="training: the trainer configurations; other: submit --help/--dry-run, training.data on "
                             "200k rows, local scoring; all: both (default: training)")
    parser.add_argument("--shape", choices=SHAPES, default="tiny",
                        help="tiny: the offline tiny Phi-3 (CPU is fine); phi-3.5-mini: the real architecture, random "
                             "weights, needs a CUDA GPU (default: tiny)")
    parser.add_argument("--config", nargs="+", choices=sorted(CONFIGS), default=None, metavar="NAME",
                        help=f"configurations to run, in order: {', '.join(CONFIGS)} (default: "
                             f"{' '.join(DEFAULT_CONFIGS['tiny'])}; phi-3.5-mini: "
                             f"{' '.join(DEFAULT_CONFIGS['phi-3.5-mini'])})")
    parser.add_argument("--steps", type=int, default=None, help="measured optimizer steps (default: 8 tiny, 20 phi-3.5-mini)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="steps run before measuring (default: 2 tiny, 5 phi-3.5-mini)")
    parser.add_argument("--max-length", type=int, default=None,
                        help="override every configuration's --max_length (quick checks; the tables use 2048)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON and Markdown reports (default: runs/bench)")
    parser.add_argument("--json", type=Path, default=None, help="JSON report path (default: OUT/bench-<suite>[-<shape>].json)")
    parser.add_argument("--markdown", type=Path, default=None, help="Markdown report path (default: next to the JSON, .md)")
    other = parser.add_argument_group("--suite other")
    other.add_argument("--data-rows", type=int, default=200_000, help="rows of the synthetic training.data input (default: 200000)")
    other.add_argument("--data-row-chars", type=int, default=5_500,
                       help="characters of message text per synthetic row (default: 5500, about ultrachat's 1,375 tokens)")
    other.add_argument("--data-fraction", default="100%",
                       help="training.data --fraction for the data-prep measurement (default: 100%%)")
    other.add_argument("--scoring-requests", type=int, default=10,
                       help="requests per request shape for the local scoring measurement; 0 skips it (default: 10)")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return parser


def _check(args: argparse.Namespace) -> None:
    for flag in ("steps", "warmup_steps"):
        value = getattr(args, flag)
        if value is not None and value < (1 if flag == "steps" else 0):
            raise UserError(f"--{flag.replace('_', '-')} must be {'at least 1' if flag == 'steps' else '0 or more'}, got {value}")
    if args.max_length is not None and args.max_length < 16:
        raise UserError(f"--max-length must be at least 16, got {args.max_length}")
    if args.data_rows < 1 or args.data_row_chars < 10 or args.scoring_requests < 0:
        raise UserError("--data-rows must be >= 1, --data-row-chars >= 10 and --scoring-requests >= 0")


def require_gpu(shape: str) -> None:
    """phi-3.5-mini only on a CUDA GPU: refuse before any model or data is made."""
    if shape != "phi-3.5-mini":
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            "--shape phi-3.5-mini needs a CUDA GPU: it trains the real 3.8B-parameter architecture (15 GB of fp32 "
            "weights, about 61 GB with AdamW before activations for a full fine-tune), which a CPU cannot run in any "
            "useful time. Nothing was allocated. Run it on a GPU machine (an A100/H100 80 GB: see docs/BENCHMARKS.md), "
            "or use --shape tiny here.")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker is not None:
        return worker_main(args.worker)
    _check(args)
    training = args.suite in ("training", "all")
    if training:
        require_gpu(args.shape)
    from common import runs

    out_dir = args.out or runs.bench_dir()
    stem = f"bench-{args.suite}" + (f"-{args.shape}" if training else "")
    json_path = args.json or out_dir / f"{stem}.json"
    md_path = args.markdown or json_path.with_suffix(".md")
    steps_default, warmup_default = DEFAULT_STEPS[args.shape]
    steps = args.steps or steps_default
    warmup = warmup_default if args.warmup_steps is None else args.warmup_steps
    names = args.config or list(DEFAULT_CONFIGS[args.shape])

    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    report: dict[str, Any] = {"command": "python -m training.bench " + " ".join(argv or sys.argv[1:])}
    sections: list[str] = []
    with tempfile.TemporaryDirectory(prefix="finetune-phi-bench-") as scratch_name:
        scratch = Path(scratch_name)
        if args.suite in ("other", "all"):  # first, while this process is small (children inherit its peak RSS)
            from training import bench_other

            (scratch / "other").mkdir()
            report["other"] = bench_other.run_other(scratch / "other", data_rows=args.data_rows,
                                                    row_chars=args.data_row_chars, scoring_requests=args.scoring_requests,
                                                    fraction=args.data_fraction)
            sections += ["\n## Other speeds users feel\n\n", bench_other.other_markdown(report["other"])]
        if training:
            (scratch / "training").mkdir()
            report["training"] = run_training_suite(args.shape, names, steps, warmup, scratch / "training",
                                                    args.max_length)
            sections = ["\n## Training throughput\n\n", training_markdown(report["training"])] + sections
    machine = machine_info()
    machine["load_average_1m"], machine["load_average_1m_end"] = load_start, machine["load_average_1m"]
    report = {"machine": machine, **report}
    markdown = [f"# training.bench ({args.suite})\n", machine_markdown(machine), *sections]
    text = "".join(markdown)
    write_atomic(json_path, json.dumps(report, indent=2) + "\n")
    write_atomic(md_path, text)
    print(text)
    say(f"reports: {json_path} and {md_path}")
    failed = [r["config"] for r in report.get("training", {}).get("results", []) if r["status"] == "failed"]
    failed += [r["what"] for r in report.get("other", {}).get("results", []) if r.get("status") == "failed"]
    if failed:
        raise UserError(f"these measurements failed: {', '.join(failed)} (see the report's error column and the log above)")
    return 0


if __name__ == "__main__":
    run_cli(main)
