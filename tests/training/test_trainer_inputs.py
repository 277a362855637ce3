"""What the trainer takes in: an MLflow model as the base, the bf16 base of a LoRA run, over-long conversations, eval packs.

The real trainer on the tiny Phi-3 and the bundled sample, on CPU.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BF16_LOSS_TOLERANCE = 0.01
"""A bf16 frozen base under fp32 LoRA adapters: each step's loss within 1% (relative) of the all-fp32 run. Measured
on the tiny model (lr 1e-2, 6 steps): at most 0.04%; bf16 keeps 8 significant bits, so the base's outputs
differ in the third digit and the adapters' updates follow."""


def args_for(fine_tune, model: Path, data: Path, tmp_path: Path, *extra: str):
    return fine_tune.parse_args(["--config", "test", "--model_name_or_path", str(model),
                                 "--train_file", str(data / "train.jsonl"), "--eval_file", str(data / "test.jsonl"),
                                 "--output_dir", str(tmp_path / "model"), *extra])


# ---------------------------------------------------------------- a registered MLflow model as the base

def hftransformers_tree(model_dir: Path, dest: Path) -> Path:
    """The azureml registry's `hftransformers` MLflow layout: MLmodel, data/model (config + weights), data/tokenizer."""
    for sub in ("model", "tokenizer"):
        (dest / "data" / sub).mkdir(parents=True)
    for item in model_dir.iterdir():
        target = "tokenizer" if item.name.startswith("tokenizer") or item.name == "chat_template.jinja" else "model"
        shutil.copy2(item, dest / "data" / target / item.name)
    (dest / "MLmodel").write_text("flavors:\n  hftransformersv2:\n    model_data: data\n    task_type: chat-completion\n")
    return dest


def test_the_projects_own_mlflow_model_is_a_base_the_trainer_takes(fine_tune, tiny_model_dir, sample_data_dir,
                                                                   tmp_path: Path) -> None:
    """The layout deploy registers (the trainer's MLflow output) and the registry's hftransformers layout, as mounted."""
    from training.trainer import model_source

    model = fine_tune.load_pretrained_model(args_for(fine_tune, tiny_model_dir, sample_data_dir, tmp_path), "sdpa")
    registered = fine_tune.save_mlflow_model(model, fine_tune.load_tokenizer(str(tiny_model_dir)), tmp_path / "registered")
    mounted = tmp_path / "mount"  # Azure ML may mount a model input as a folder that holds the model folder
    mounted.mkdir()
    registry = hftransformers_tree(tiny_model_dir, mounted / "trained_model")
    for base, layout in ((registered, "mlflow"), (mounted, "hftransformers")):
        assert model_source.resolve(str(base)).layout == layout
        args = args_for(fine_tune, base, sample_data_dir, tmp_path / layout, "--max_steps", "1")
        fine_tune.check_paths(args)  # the input check that stopped `--model azureml:NAME:VERSION` jobs
        trainer, plan = fine_tune.build_trainer(args, str(tmp_path / layout / "work"))
        assert plan.assistant_only_loss  # the tokenizer (and its marked chat template) came from the MLflow folder
        assert trainer.model.config.model_type == "phi3"
    assert registry.is_dir()


# ---------------------------------------------------------------- the bf16 base of a LoRA run

def test_a_bf16_base_keeps_adapters_and_optimizer_fp32_and_tracks_the_fp32_loss(fine_tune, tiny_model_dir,
                                                                                 sample_data_dir, tmp_path: Path) -> None:
    """`--model_dtype bfloat16` forced on CPU (auto picks it only on a bf16 GPU)."""
    import torch

    losses = {}
    for dtype in ("float32", "bfloat16"):
        args = args_for(fine_tune, tiny_model_dir, sample_data_dir, tmp_path / dtype, "--method", "lora",
                        "--learning_rate", "1e-2", "--max_steps", "4", "--logging_steps", "1", "--lora_dropout", "0",
                        "--model_dtype", dtype)
        trainer, plan = fine_tune.build_trainer(args, str(tmp_path / dtype / "work"))
        trainer.train()
        assert plan.model_dtype == dtype
        frozen = {p.dtype for p in trainer.model.parameters() if not p.requires_grad}
        trainable = {p.dtype for p in trainer.model.parameters() if p.requires_grad}
        moments = {s[k].dtype for s in trainer.optimizer.state.values() for k in ("exp_avg", "exp_avg_sq")}
        assert frozen == {getattr(torch, dtype)} and trainable == {torch.float32} and moments == {torch.float32}
        losses[dtype] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses["bfloat16"]) == 4
    for fp32, bf16 in zip(losses["float32"], losses["bfloat16"], strict=True):
        assert abs(bf16 - fp32) <= BF16_LOSS_TOLERANCE * fp32


def test_model_dtype_auto_is_bf16_for_lora_on_a_bf16_gpu_only(fine_tune) -> None:
    gpu, older, cpu = (fine_tune.Runtime(cuda=True, bf16=True), fine_tune.Runtime(cuda=True, fp16=True),
                       fine_tune.Runtime())
    assert fine_tune.resolve_model_dtype("auto", "lora", gpu) == "bfloat16"
    assert [fine_tune.resolve_model_dtype("auto", m, r) for m, r in (("full", gpu), ("lora", older), ("lora", cpu))] \
        == ["float32"] * 3
    assert fine_tune.resolve_model_dtype("float32", "lora", gpu) == "float32"


# ---------------------------------------------------------------- what is cut, and eval without a giant row

def test_over_long_conversations_are_counted_then_truncated_or_skipped(fine_tune, tiny_model_dir, sample_data_dir,
                                                                        tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [json.loads(line)["messages"] for line in (sample_data_dir / "train.jsonl").read_text().splitlines()]
    lengths = [len(tokenizer.apply_chat_template(r, tokenize=True, return_dict=True)["input_ids"]) for r in rows]
    limit = sorted(lengths)[len(lengths) * 3 // 4]  # a quarter of the conversations are longer
    over = [n - limit for n in lengths if n > limit]
    assert over
    for policy in ("truncate", "skip"):
        args = args_for(fine_tune, tiny_model_dir, sample_data_dir, tmp_path / policy, "--max_length", str(limit),
                        "--overlong", policy, "--packing", "false")
        trainer, plan = fine_tune.build_trainer(args, str(tmp_path / policy / "work"))
        assert plan.overlong["train"] == {"rows": len(rows), "over_max_length": len(over), "tokens_over": sum(over),
                                          "policy": policy}
        kept = len(rows) - (len(over) if policy == "skip" else 0)
        assert plan.train_rows == kept == len(trainer.train_dataset)
        assert max(len(ids) for ids in trainer.train_dataset["input_ids"]) <= limit


def test_summary_json_counts_what_was_cut(trained_run: dict) -> None:
    summary = json.loads((trained_run["output_dir"] / "summary.json").read_text())
    for split, rows in (("train", 320), ("eval", 80)):
        assert summary["overlong"][split] == {"rows": rows, "over_max_length": 0, "tokens_over": 0, "policy": "truncate"}


def test_eval_with_packing_runs_one_pack_per_forward(fine_tune, tiny_model_dir, sample_data_dir, tmp_path: Path) -> None:
    """No eval row longer than max_length: padding-free packing would flatten a batch of 8 packs into one row."""
    args = args_for(fine_tune, tiny_model_dir, sample_data_dir, tmp_path, "--per_device_eval_batch_size", "8")
    trainer, plan = fine_tune.build_trainer(args, str(tmp_path / "work"))
    assert plan.packing and plan.eval_batch_size == 1
    widths = [batch["input_ids"].shape for batch in trainer.get_eval_dataloader()]
    assert all(shape[0] == 1 and shape[1] <= args.max_length for shape in widths)
    assert max(shape[1] for shape in widths) > args.max_length // 2  # packs, not single conversations
