"""training.bench runs and reports sane fields. No timing assertions: the numbers depend on the machine."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training import bench, bench_other

pytestmark = pytest.mark.slow


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "FINETUNE_PHI_RUNS": str(tmp_path / "runs"), "HF_HUB_OFFLINE": "1"}


def test_tiny_benchmark_two_configs_reports_expected_fields(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "training.bench", "--shape", "tiny", "--config", "tutorial", "default",
         "--steps", "2", "--warmup-steps", "1", "--max-length", "256", "--json", str(out)],
        env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    machine = report["machine"]
    assert machine["cpu_cores"] >= 1 and machine["torch_version"] and machine["trl_version"] and machine["date"]
    suite = report["training"]
    assert (suite["shape"], suite["steps"], suite["warmup_steps"], suite["max_length_override"]) == ("tiny", 2, 1, 256)
    rows = {r["config"]: r for r in suite["results"]}
    assert list(rows) == ["tutorial", "default"]
    for row in rows.values():
        assert row["status"] == "ok", row
        assert row["steps_measured"] == 2 and len(row["step_times_s"]) == 2
        assert row["tokens_per_s"] > 0 and row["mean_step_s"] > 0
        assert 0 < row["real_tokens"] <= row["total_tokens"]
        assert 0 < row["loss_tokens"] <= row["real_tokens"]
        assert 0 <= row["padding_fraction"] < 1
        assert math.isfinite(row["loss_first"]) and math.isfinite(row["loss_last"])
        assert len(row["losses"]) == 3  # warm-up step included
        assert row["peak_memory_bytes"] > 0 and row["peak_memory_kind"] in ("process_peak_rss", "cuda_max_allocated")
        if row["device"] == "cpu":
            assert row["peak_reserved_bytes"] is None  # CPU: only the process peak RSS
        else:
            assert row["peak_reserved_bytes"] >= row["peak_memory_bytes"]
        assert row["model_flops_per_token"] > 0
        if row["device"] == "cpu":
            assert row["mfu"] is None
    # the configurations really differ the way they claim to
    tutorial, default = rows["tutorial"]["plan"], rows["default"]["plan"]
    cpu = rows["tutorial"]["device"] == "cpu"
    assert (tutorial["attn_implementation"], tutorial["packing_strategy"], tutorial["method"], tutorial["model_dtype"]) == \
        ("eager", "wrapped", "full", "float32" if cpu else "bfloat16")  # like for like on a CPU: fp32 weights everywhere
    assert rows["tutorial"]["recipe"] == "tutorial" and rows["default"]["baseline"] == "tutorial-lora"
    assert tutorial["gradient_checkpointing"] and tutorial["per_device_train_batch_size"] == 4
    assert tutorial["max_length"] == default["max_length"] == 256
    assert default["attn_implementation"] in ("sdpa", "flash_attention_2") and default["packing_strategy"] == "bfd"
    assert rows["tutorial"]["trainable_params"] > rows["default"]["trainable_params"]  # full vs LoRA
    # wrapped packing fills every row but the dataset's last one: (almost) no padding
    assert rows["tutorial"]["padding_fraction"] < 0.05
    # Markdown: next to the JSON, and on stdout (progress stays on stderr)
    markdown = out.with_suffix(".md").read_text()
    assert "| tutorial |" in markdown and "| default |" in markdown and "1.00x vs tutorial" in markdown
    assert "| default | " in markdown and "x vs tutorial-lora" not in markdown  # no LoRA baseline ran: no LoRA ratio
    assert "| tutorial |" in done.stdout and "step 1/3" not in done.stdout and "step 1/3" in done.stderr


def test_phi35_on_cpu_refuses_before_allocating(tmp_path: Path) -> None:
    env = {**_env(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    run = bench_other.timed([sys.executable, "-m", "training.bench", "--shape", "phi-3.5-mini"], tmp_path, env)
    assert run["exit_code"] == 1
    assert "needs a CUDA GPU" in run["stderr_tail"] and "--shape tiny" in run["stderr_tail"]
    assert "Traceback" not in run["stderr_tail"] and run["stdout"] == ""
    # nothing allocated: the child's peak RSS stays far below even a bf16 copy of 3.8B parameters (7 GB)
    assert run["peak_rss_bytes"] < 2 * 2**30
    assert not (tmp_path / "runs" / "bench").exists()  # and no report written


def test_config_table_and_flag_checks() -> None:
    assert {"tutorial", "tutorial-lora", "default", "sdpa-nopack", "packing", "batch4", "checkpointing", "lora", "full",
            "liger"} <= set(bench.CONFIGS)
    spec = {"model_dir": "m", "train_file": "t", "eval_file": "e", "work_dir": "w", "warmup_steps": 1, "steps": 2}
    tutorial = bench.config_settings(bench.CONFIGS["tutorial"], spec, cuda=True)
    assert (tutorial.method, tutorial.model_dtype, tutorial.attn_implementation, tutorial.learning_rate,
            tutorial.max_length, tutorial.max_steps) == ("full", "bfloat16", "eager", 5e-6, 2048, 3)
    assert bench.config_settings(bench.CONFIGS["tutorial"], spec, cuda=False).model_dtype == "float32"  # CPU: fp32 rows
    assert bench.CONFIGS["tutorial"].sft_overrides["packing_strategy"] == "wrapped"
    assert bench.config_settings(bench.CONFIGS["tutorial-nopack"], spec, cuda=True).packing is False
    for name, config in bench.CONFIGS.items():  # every configuration is a valid trainer command line
        settings = bench.config_settings(config, spec, cuda=True)
        assert settings.method == config.method and bench.CONFIGS[config.baseline].method == config.method, name
    bf16_base = bench.config_settings(bench.CONFIGS["bf16-base"], spec, cuda=True)
    assert (bf16_base.method, bf16_base.model_dtype) == ("lora", "bfloat16")
    assert set(bench.DEFAULT_CONFIGS["phi-3.5-mini"]) <= set(bench.CONFIGS)
    assert {bench.CONFIGS[n].baseline for n in bench.DEFAULT_CONFIGS["tiny"]} <= set(bench.DEFAULT_CONFIGS["tiny"])
    assert bench.gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert bench.gpu_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert bench.gpu_peak_flops(None) is None
    with pytest.raises(bench.UserError, match="--steps must be at least 1"):
        bench.main(["--steps", "0"])


def test_other_suite_measures_the_real_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_PHI_RUNS", str(tmp_path / "runs"))
    suite = bench_other.run_other(tmp_path, data_rows=300, row_chars=200, scoring_requests=0)
    rows = {r["what"]: r for r in suite["results"]}
    help_row, dry_run = rows["training.submit --help"], rows["training.submit --dry-run"]
    assert help_row["status"] == dry_run["status"] == "ok", (help_row, dry_run)
    assert help_row["repeats"] == 3 and 0 < help_row["wall_s_min"] <= help_row["wall_s"]
    assert dry_run["stdout_bytes"] > 500  # the job YAML really came out
    data = rows["training.data, 300 rows"]
    assert data["status"] == "ok" and data["rows_per_s"] > 0 and data["input_bytes"] > 300 * 150
    assert data["peak_rss_bytes"] > 0 and data["peak_rss_floor_bytes"] > 0
    assert not (tmp_path / "synthetic.jsonl").exists()  # the big input is removed after use
    assert rows["make demo (total)"]["status"] == "not measured here"
    markdown = bench_other.other_markdown(suite)
    assert "| training.submit --dry-run |" in markdown and "rows/s" in markdown


def test_synthetic_chat_rows_are_valid_training_data(tmp_path: Path) -> None:
    from training.data import scan_jsonl

    path = tmp_path / "rows.jsonl"
    size = bench_other.synthetic_chat_rows(path, 50, 1000)
    scan = scan_jsonl(path)
    assert scan.bad_rows == 0 and len(scan.offsets) == 50
    assert 50 * 500 < size < 50 * 3000  # about row_chars of text per row


def test_phi35_inputs_have_the_published_shape_and_ultrachat_lengths(tmp_path: Path) -> None:
    # Everything the GPU run needs except the GPU: config (no weights) and synthetic data.
    import statistics

    from transformers import AutoConfig, AutoTokenizer

    model_dir, train, test, _ = bench.prepare_inputs("phi-3.5-mini", tmp_path, total_steps=10)
    config = AutoConfig.from_pretrained(str(model_dir))
    assert (config.vocab_size, config.hidden_size, config.intermediate_size, config.num_hidden_layers,
            config.num_attention_heads, config.num_key_value_heads) == (32064, 3072, 8192, 32, 32, 32)
    assert not list(model_dir.glob("*.safetensors"))  # no weights: the worker builds them on the GPU
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    lengths = [bench.chat_tokens(tokenizer, json.loads(line)["messages"]) for line in train.read_text().splitlines()]
    assert len(lengths) >= 10 * 4
    assert 0.85 * bench.ULTRACHAT_MEAN_TOKENS < statistics.mean(lengths) < 1.15 * bench.ULTRACHAT_MEAN_TOKENS
    assert test.read_text().count("\n") == 8


def test_config_only_model_path_trains_through_the_real_trainer(tmp_path: Path, tiny_model_dir: Path,
                                                                 sample_data_dir: Path) -> None:
    # The phi-3.5-mini worker path (random weights from config.json, no checkpoint), on CPU with the tiny shape.
    import shutil

    model_dir = tmp_path / "config-only"
    model_dir.mkdir()
    for item in tiny_model_dir.iterdir():
        if not item.name.endswith(".safetensors"):
            shutil.copy(item, model_dir / item.name)
    spec = {"config": "default", "shape": "phi-3.5-mini", "device": "cpu", "model_dir": str(model_dir),
            "train_file": str(sample_data_dir / "train.jsonl"), "eval_file": str(sample_data_dir / "test.jsonl"),
            "steps": 2, "warmup_steps": 0, "work_dir": str(tmp_path / "work"), "max_length": 128}
    row = bench.run_config(spec)
    assert row["status"] == "ok" and row["steps_measured"] == 2 and row["tokens_per_s"] > 0
    assert row["plan"]["method"] == "lora" and 0 < row["trainable_params"] < row["params_without_embedding"]
    assert not (tmp_path / "work" / "model").exists()  # the benchmark never saves a model


def test_mfu_counts_on_the_published_phi35_mini_shape() -> None:
    # N and N_trainable as the worker computes them, on the real architecture built on the meta device (no memory).
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, Phi3Config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(Phi3Config(**bench.PHI35_MINI_CONFIG), dtype=torch.float32)
    n_full, trainable_full = bench.param_counts(model)
    assert n_full == trainable_full == 3_821_079_552 - 32064 * 3072  # 3.72e9: all but the input embedding
    from training.trainer import fine_tune

    args = fine_tune.parse_args(["--train_file", "t", "--eval_file", "e", "--output_dir", "o"])  # the defaults: LoRA
    lora = get_peft_model(model, fine_tune.lora_config(args))
    n_lora, trainable_lora = bench.param_counts(lora)
    # r16 on qkv/o/gate_up/down of 32 layers: 16 x ((3072+9216) + (3072+3072) + (3072+16384) + (8192+3072)) x 32
    assert trainable_lora == 25_165_824 and n_lora == n_full + trainable_lora
    flops_per_token = 4 * n_lora + 2 * trainable_lora + 12 * 32 * 3072 * 2048  # one 2,048-token sequence
    assert 1.7e10 < flops_per_token < 1.8e10  # ~4.7N: LoRA is about 2/3 of a full fine-tune's 6N + attention


def test_liger_patch_is_applied_before_the_model_and_without_the_bypassed_fused_cross_entropy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # liger-kernel is not installed here: a stand-in records the call, and the trainer stops at build_trainer.
    import types

    calls: list[tuple[str, dict]] = []
    fake = types.ModuleType("liger_kernel.transformers")
    fake.apply_liger_kernel_to_phi3 = lambda **kwargs: calls.append(("liger", kwargs))
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", fake)
    from training.trainer import fine_tune

    class Built(Exception):
        pass

    def build_trainer(args, work_dir=None, **seams):
        calls.append(("build_trainer", seams))
        raise Built

    monkeypatch.setattr(fine_tune, "build_trainer", build_trainer)
    spec = {"config": "liger", "shape": "tiny", "model_dir": "m", "train_file": "t", "eval_file": "e",
            "steps": 1, "warmup_steps": 0, "work_dir": str(tmp_path)}
    with pytest.raises(Built):
        bench.run_config(spec)
    assert [name for name, _ in calls] == ["liger", "build_trainer"]
    # TRL's SFTTrainer replaces the model's forward with its own fused LM head: Liger's forward would never run
    assert calls[0][1].get("fused_linear_cross_entropy") is False
