"""The trainer's flags, its `auto` decisions and its clear failures (no training here)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

TRAINER_DIR = Path(__file__).resolve().parents[2] / "training" / "trainer"


def base(tmp_path: Path, *extra: str) -> list[str]:
    train = tmp_path / "train.jsonl"
    if not train.exists():
        row = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
        train.write_text(row + "\n")
        (tmp_path / "eval.jsonl").write_text(row + "\n")
    return ["--train_file", str(train), "--eval_file", str(tmp_path / "eval.jsonl"),
            "--output_dir", str(tmp_path / "model"), *extra]


def test_every_contract_flag_parses(fine_tune, tmp_path: Path) -> None:
    args = fine_tune.parse_args(base(
        tmp_path, "--model_name_or_path", "m", "--epochs", "2", "--learning_rate", "2e-5",
        "--per_device_train_batch_size", "3", "--per_device_eval_batch_size", "5", "--gradient_accumulation_steps", "4",
        "--max_length", "512", "--packing", "false", "--method", "full", "--lora_r", "8", "--lora_alpha", "16",
        "--lora_dropout", "0.1", "--attn_implementation", "eager", "--gradient_checkpointing", "false",
        "--model_dtype", "bfloat16", "--seed", "42", "--assistant_only_loss", "false", "--max_steps", "7",
        "--warmup_ratio", "0.1", "--lr_scheduler_type", "linear", "--logging_steps", "3", "--weight_decay", "0.01"))
    assert (args.epochs, args.learning_rate, args.per_device_train_batch_size, args.per_device_eval_batch_size) == (2, 2e-5, 3, 5)
    assert (args.gradient_accumulation_steps, args.max_length, args.packing, args.method) == (4, 512, False, "full")
    assert (args.lora_r, args.lora_alpha, args.lora_dropout, args.attn_implementation) == (8, 16, 0.1, "eager")
    assert (args.gradient_checkpointing, args.model_dtype, args.seed, args.assistant_only_loss) == (False, "bfloat16", 42, "false")
    assert (args.max_steps, args.warmup_ratio, args.lr_scheduler_type, args.logging_steps, args.weight_decay) == \
        (7, 0.1, "linear", 3, 0.01)


def test_defaults(fine_tune, tmp_path: Path) -> None:
    args = fine_tune.parse_args(base(tmp_path))
    assert args.model_name_or_path == "microsoft/Phi-3.5-mini-instruct"
    assert (args.method, args.learning_rate, args.packing, args.attn_implementation) == ("lora", 1e-4, True, "auto")
    assert (args.gradient_checkpointing, args.model_dtype, args.assistant_only_loss) == (False, "auto", "auto")
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (1, 4)
    full = fine_tune.parse_args(base(tmp_path, "--method", "full"))
    assert (full.learning_rate, full.gradient_checkpointing) == (5e-6, True)
    assert fine_tune.parse_args(base(tmp_path, "--method", "full", "--gradient_checkpointing", "false")).gradient_checkpointing is False
    assert fine_tune.parse_args(base(tmp_path, "--gradient_checkpointing", "true")).gradient_checkpointing is True


@pytest.mark.parametrize("extra", [
    ["--packing", "maybe"], ["--method", "qlora"], ["--attn_implementation", "flash"], ["--max_steps", "0"],
    ["--lora_dropout", "1.5"], ["--epochs", "0"], ["--per_device_train_batch_size", "-1"],
    ["--model_dtype", "float16"], ["--assistant_only_loss", "yes please"],
    ["--lr_scheduler_type", "bogus"], ["--lr_scheduler_type", "cosine_with_min_lr"], ["--weight_decay", "-0.1"],
])
def test_bad_arguments_are_argparse_errors(fine_tune, tmp_path: Path, extra, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        fine_tune.parse_args(base(tmp_path, *extra))
    assert exit_info.value.code == 2
    assert extra[0] in capsys.readouterr().err


def test_missing_inputs_and_busy_output_fail_before_any_work(fine_tune, tmp_path: Path) -> None:
    args = fine_tune.parse_args(base(tmp_path))
    args.train_file = str(tmp_path / "nope.jsonl")
    with pytest.raises(fine_tune.TrainerError, match="--train_file .*nope.jsonl: no such file"):
        fine_tune.check_paths(args)
    args = fine_tune.parse_args(base(tmp_path))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "old").write_text("x")
    with pytest.raises(fine_tune.TrainerError, match="--output_dir .* not empty"):
        fine_tune.check_paths(args)
    args = fine_tune.parse_args(base(tmp_path, "--model_name_or_path", str(tmp_path)))
    args.output_dir = str(tmp_path / "fresh")
    with pytest.raises(fine_tune.TrainerError, match="is no model folder: expected a save_pretrained folder"):
        fine_tune.check_paths(args)


CHAT_ROW = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


@pytest.mark.parametrize("line, expected", [
    (b"\xff{}", "not valid UTF-8"),
    (b'{"messages": [', "not valid JSON"),
    (b"[1]", "expected a JSON object"),
    (b'{"prompt": "q"}', "no `messages` field"),
    (b'{"messages": []}', "`messages` must be a non-empty list"),
    (b'{"messages": "hello"}', "`messages` must be a non-empty list"),
    (b'{"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}', "messages[0]: role 'tool' is not one of system, user, assistant"),
    (b'{"messages": [{"role": "user", "content": null}, {"role": "assistant", "content": "y"}]}',
     "messages[0]: content must be a string"),
    (b'{"messages": [{"role": "user", "content": "x"}]}', "no assistant turn"),
])
def test_bad_rows_fail_before_any_work_with_file_and_line(fine_tune, tmp_path: Path, line: bytes, expected: str) -> None:
    args = fine_tune.parse_args(base(tmp_path))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(json.dumps(CHAT_ROW).encode() + b"\n\n" + line + b"\n")
    args.eval_file = str(bad)
    with pytest.raises(fine_tune.TrainerError) as err:
        fine_tune.check_paths(args)
    assert f"--eval_file {bad}: 1 of 2 rows" in str(err.value) and f"{bad}:3: {expected}" in str(err.value)
    assert "python -m training.data" in str(err.value)


def test_cli_bad_data_line_is_one_error_not_a_traceback(tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps(CHAT_ROW) + "\nnot json\n")
    proc = subprocess.run([sys.executable, "-m", "training.trainer.fine_tune", "--train_file", str(train), "--eval_file", str(train),
                           "--output_dir", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: --train_file {train}: 1 of 2 rows") and f"{train}:2: not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_out_of_memory_anywhere_is_advice_and_a_failed_run(fine_tune, tmp_path: Path, monkeypatch) -> None:
    import mlflow
    import torch

    def oom_while_building(*args, **kwargs):  # e.g. moving the model to a small GPU
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    args = fine_tune.parse_args(base(tmp_path))
    monkeypatch.setattr(fine_tune, "build_trainer", oom_while_building)
    with pytest.raises(fine_tune.TrainerError, match="out of GPU memory. Try a smaller --per_device_train_batch_size"):
        fine_tune.train(args)

    class OomTrainer:
        args = SimpleNamespace(eval_on_start=False)
        accelerator = SimpleNamespace(wait_for_everyone=lambda: None)

        def add_callback(self, callback):
            pass

        def train(self, resume_from_checkpoint=None):  # the eval before training, or a step
            raise torch.OutOfMemoryError("CUDA out of memory.")

    plan = fine_tune.Plan(attn_implementation="sdpa", packing=True, assistant_only_loss=True, precision="fp32",
                          world_size=1)
    monkeypatch.setattr(fine_tune, "build_trainer", lambda *a, **k: (OomTrainer(), plan))
    with pytest.raises(fine_tune.TrainerError, match="out of GPU memory"):
        fine_tune.train(args)
    run = mlflow.search_runs(search_all_experiments=True, order_by=["attributes.start_time DESC"], output_format="list")[0]
    assert run.info.status == "FAILED"
    assert not (tmp_path / "model").exists()


def test_cli_prints_one_error_and_exits_nonzero(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "training.trainer.fine_tune", "--train_file", str(tmp_path / "missing.jsonl"),
                           "--eval_file", str(tmp_path / "missing.jsonl"), "--output_dir", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: --train_file") and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_help_and_parsing_import_nothing_heavy(tmp_path: Path) -> None:
    code = ("import sys; from training.trainer import fine_tune as m; "
            f"m.parse_args({base(tmp_path)!r}); "
            "print([x for x in ('torch', 'transformers', 'trl', 'peft', 'datasets', 'mlflow') if x in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr


def test_the_trainer_imports_nothing_from_the_repo() -> None:
    """The package is uploaded alone as `trainer/`: siblings relatively, nothing else from the repository."""
    import ast

    allowed = {"torch", "transformers", "trl", "peft", "datasets", "mlflow", "accelerate", "yaml"}
    for path in TRAINER_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                siblings = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
                for sibling in siblings:
                    assert node.level == 1 and (TRAINER_DIR / f"{sibling}.py").is_file(), \
                        f"{path.name}: from {'.' * node.level}{node.module or ''} import {sibling} is not a sibling"
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or top in sys.stdlib_module_names, f"{path.name} imports {name}"


def test_the_package_runs_as_the_cluster_runs_it(tmp_path: Path) -> None:
    """A copy of the folder named `trainer/`, alone on the path: `python -m trainer.fine_tune` starts and checks its inputs."""
    import shutil

    shutil.copytree(TRAINER_DIR, tmp_path / "trainer", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-E", "-m", "trainer.fine_tune", "--config", "test",
                           "--train_file", "missing.jsonl", "--eval_file", "missing.jsonl", "--output_dir", "o"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().startswith("error: --train_file missing.jsonl: no such file"), proc.stderr


# ---------------------------------------------------------------- auto decisions

def test_attention_auto_prefers_flash_on_cuda_else_sdpa(fine_tune, monkeypatch) -> None:
    assert fine_tune.resolve_attention("auto", cuda=False) == "sdpa"
    assert fine_tune.resolve_attention("eager", cuda=False) == "eager"
    with pytest.raises(fine_tune.TrainerError, match="flash-attn"):
        fine_tune.resolve_attention("flash_attention_2", cuda=False)
    real_find_spec = fine_tune.importlib.util.find_spec
    monkeypatch.setattr(fine_tune.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "flash_attn" else real_find_spec(name, *a))
    assert fine_tune.resolve_attention("auto", cuda=True) == "flash_attention_2"
    assert fine_tune.resolve_attention("auto", cuda=False) == "sdpa"


def test_packing_is_only_trusted_where_sequences_are_isolated(fine_tune, monkeypatch) -> None:
    from transformers import masking_utils

    assert fine_tune.packing_isolates_sequences("flash_attention_2")
    assert fine_tune.packing_isolates_sequences("sdpa")  # transformers 5 builds a block-diagonal mask
    monkeypatch.delattr(masking_utils, "find_packed_sequence_indices")
    assert not fine_tune.packing_isolates_sequences("sdpa")  # an older transformers: fall back to padding
    assert fine_tune.packing_isolates_sequences("flash_attention_2")


def test_assistant_only_loss_auto(fine_tune, tiny_model_dir: Path, caplog) -> None:
    from transformers import AutoTokenizer
    from trl.chat_template_utils import phi3_chat_template

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert fine_tune.resolve_assistant_only_loss("auto", tok) is True  # generation markers
    assert fine_tune.resolve_assistant_only_loss("false", tok) is False
    tok.chat_template = phi3_chat_template  # Phi-3's own template: no markers, but TRL ships a marked variant
    assert fine_tune.resolve_assistant_only_loss("auto", tok) is True
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with caplog.at_level("WARNING", logger="fine_tune"):
        assert fine_tune.resolve_assistant_only_loss("auto", tok) is False
    assert "assistant-only loss off" in caplog.text
    with pytest.raises(fine_tune.TrainerError, match="generation"):
        fine_tune.resolve_assistant_only_loss("true", tok)


def test_mlflow_params_are_bounded_and_requirements_installable(fine_tune, tmp_path: Path) -> None:
    args = fine_tune.parse_args(base(tmp_path, "--model_name_or_path", "x" * 1000))
    plan = fine_tune.Plan(attn_implementation="sdpa", packing=True, assistant_only_loss=True, precision="fp32",
                          world_size=1)
    params = fine_tune.bounded_params(args, plan)
    assert len(params) <= 40 and all(len(v) <= fine_tune.MAX_PARAM_CHARS for v in params.values())
    assert {"method", "learning_rate", "packing", "lora_r", "attn_implementation"} <= params.keys()
    reqs = fine_tune.serving_requirements()
    assert any(r.startswith("torch==") for r in reqs) and any(r.startswith("transformers==") for r in reqs)
    assert not any("+" in r or r.startswith("torchvision") for r in reqs)


def test_oom_advice(fine_tune, tmp_path: Path) -> None:
    args = fine_tune.parse_args(base(tmp_path, "--method", "full", "--gradient_checkpointing", "false"))
    message = fine_tune._oom_message(args)
    assert "--per_device_train_batch_size" in message and "--method lora" in message
    assert "--gradient_checkpointing true" in message


# ---------------------------------------------------------------- --device

@pytest.mark.slow
def test_device_cuda_without_a_gpu_refuses_before_loading_the_model(tmp_path: Path) -> None:
    import torch

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    # an id that cannot load offline: a refusal after the model load would name the model instead
    proc = subprocess.run([sys.executable, "-m", "training.trainer.fine_tune", "--device", "cuda",
                           "--model_name_or_path", "microsoft/no-such-model", *base(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1, proc.stderr
    message = proc.stderr.strip()
    assert message.startswith("error: --device cuda, but torch sees no GPU") and "Traceback" not in message
    assert f"torch {torch.__version__}" in message and "NVIDIA driver" in message and "--device cpu" in message
    assert ("CPU-only build" in message) == (torch.version.cuda is None)
    assert "no-such-model" not in message and not (tmp_path / "model").exists()


def test_no_gpu_message_names_the_cuda_build_and_the_driver(fine_tune, tmp_path: Path, monkeypatch) -> None:
    import torch

    proc_file = tmp_path / "version"
    proc_file.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 19:39:15 UTC 2024\n")
    assert fine_tune.nvidia_driver(proc_file) == "535.183.01"
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(fine_tune, "nvidia_driver", lambda: "535.183.01")
    message = fine_tune.no_gpu_message()
    assert "CUDA 13.0 build" in message and "NVIDIA driver 535.183.01" in message and "CUDA 13: >= 580" in message
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "a CPU-only build" in fine_tune.no_gpu_message() and "torch==2.10.0" in fine_tune.no_gpu_message()


def test_device_and_revision_reach_the_runtime_and_the_loader(fine_tune, tmp_path: Path, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert fine_tune.detect_runtime("cpu").cuda is False and fine_tune.detect_runtime("cpu").bf16 is False
    assert fine_tune.detect_runtime("auto").cuda is True and fine_tune.detect_runtime("cuda").bf16 is True
    args = fine_tune.parse_args(base(tmp_path, "--model_revision", "0a1b2c3"))
    assert args.model_revision == "0a1b2c3" and args.device == "auto"
    seen = {}

    def from_pretrained(path, **kwargs):
        seen.update(kwargs)
        raise OSError("stop here")

    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    with pytest.raises(fine_tune.TrainerError, match="stop here"):
        fine_tune.load_pretrained_model(args, "sdpa")
    assert seen["revision"] == "0a1b2c3"


def test_model_folders_in_every_layout_resolve_to_weights_and_tokenizer(tmp_path: Path) -> None:
    """save_pretrained, the trainer's MLflow output (what deploy registers), the registry's hftransformers folder,
    and a mount that holds one of them; anything else is one error naming the layouts."""
    from training.trainer import model_source

    def touch(*paths: Path) -> None:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")

    hf, ours, registry, mount = tmp_path / "hf", tmp_path / "ours", tmp_path / "registry", tmp_path / "mount"
    touch(hf / "config.json", hf / "tokenizer_config.json")
    touch(ours / "MLmodel", ours / "model" / "config.json", ours / "components" / "tokenizer" / "tokenizer_config.json")
    touch(registry / "MLmodel", registry / "data" / "model" / "config.json",
          registry / "data" / "tokenizer" / "tokenizer_config.json", registry / "data" / "config" / "config.json")
    touch(mount / "trained_model" / "MLmodel", mount / "trained_model" / "model" / "config.json")
    resolved = {name: model_source.resolve(str(path)) for name, path in
                (("hf", hf), ("ours", ours), ("registry", registry), ("mount", mount))}
    assert resolved["hf"] == model_source.ModelSource(str(hf), str(hf), "hf")
    assert resolved["ours"] == model_source.ModelSource(str(ours / "model"), str(ours / "components" / "tokenizer"), "mlflow")
    assert resolved["registry"] == model_source.ModelSource(str(registry / "data" / "model"),
                                                            str(registry / "data" / "tokenizer"), "hftransformers")
    weights = mount / "trained_model" / "model"
    assert resolved["mount"] == model_source.ModelSource(str(weights), str(weights), "mlflow")  # tokenizer beside weights
    assert model_source.resolve("microsoft/Phi-3.5-mini-instruct").layout == "hub"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(model_source.NotAModelFolder, match="is no model folder: expected a save_pretrained folder"):
        model_source.resolve(str(empty))


def test_a_resumed_run_accepts_the_output_a_preemption_left_half_written(fine_tune, tmp_path: Path) -> None:
    """A requeued Azure ML job finds its `model` output as the preemption left it: with a complete checkpoint to
    resume from, that is a save cut short (emptied before training), not someone else's model."""
    from training.trainer import checkpoints

    args = fine_tune.parse_args(base(tmp_path, "--checkpoint_dir", str(tmp_path / "ckpt")))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("half")
    with pytest.raises(fine_tune.TrainerError, match="not empty"):
        fine_tune.check_paths(args)
    (tmp_path / "ckpt" / "checkpoint-3").mkdir(parents=True)
    checkpoints.write_marker(tmp_path / "ckpt" / "checkpoint-3", {"step": 3})
    fine_tune.check_paths(args)
