"""Real TRL + MLflow on the tiny Phi-3 and the sample data, on CPU."""
from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHAT = [{"role": "user", "content": "Who founded Microsoft?"}]


def trainer_args(fine_tune, tiny_model_dir: Path, sample_data_dir: Path, output_dir: Path, flags: list[str], *extra: str):
    return fine_tune.parse_args([
        "--model_name_or_path", str(tiny_model_dir), "--train_file", str(sample_data_dir / "train.jsonl"),
        "--eval_file", str(sample_data_dir / "test.jsonl"), "--output_dir", str(output_dir), *flags, *extra])


# ---------------------------------------------------------------- the full fine-tune (session fixture)

def test_eval_loss_falls(trained_run: dict) -> None:
    assert trained_run["eval_loss_after"] < trained_run["eval_loss_before"]
    assert trained_run["global_steps"] == 8
    plan = trained_run["plan"]
    assert (plan["attn_implementation"], plan["packing"], plan["assistant_only_loss"], plan["precision"]) == \
        ("sdpa", True, True, "fp32")
    assert (plan["train_rows"], plan["eval_rows"]) == (320, 80)


def test_output_folder_is_a_complete_mlflow_transformers_model(trained_model_dir: Path) -> None:
    import yaml

    for name in ("MLmodel", "requirements.txt", "conda.yaml", "python_env.yaml", "model/config.json",
                 "model/model.safetensors", "model/generation_config.json", "components/tokenizer/tokenizer.json",
                 "components/tokenizer/tokenizer_config.json", "components/tokenizer/chat_template.jinja"):
        assert (trained_model_dir / name).is_file(), name
    mlmodel = yaml.safe_load((trained_model_dir / "MLmodel").read_text())
    assert mlmodel["metadata"]["task"] == "llm/v1/chat"
    assert mlmodel["flavors"]["transformers"]["inference_task"] == "llm/v1/chat"
    assert "torchvision" not in (trained_model_dir / "requirements.txt").read_text()


def test_hf_model_loads_from_the_output_and_is_trained(trained_model_dir: Path, tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(trained_model_dir / "model")
    tok = AutoTokenizer.from_pretrained(trained_model_dir / "components" / "tokenizer")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True).endswith("<|assistant|>\n")
    assert model.config.use_cache is True
    changed = [n for (n, p), (_, q) in zip(model.named_parameters(), base.named_parameters()) if not torch.equal(p, q)]
    assert len(changed) > 10
    assert tok.convert_tokens_to_ids("<|end|>") in model.generation_config.eos_token_id


def test_mlflow_pyfunc_answers_a_chat_request(trained_model_dir: Path) -> None:
    import mlflow

    model = mlflow.pyfunc.load_model(str(trained_model_dir))
    reply = model.predict({"messages": CHAT, "max_tokens": 12, "temperature": 0.5})
    choice = reply[0]["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    assert reply[0]["usage"]["completion_tokens"] >= 1


def test_mlflow_run_has_params_metrics_and_model(trained_run: dict) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("finetune-phi")
    runs = client.search_runs([experiment.experiment_id], filter_string="params.method = 'full'",
                              order_by=["attributes.start_time DESC"])
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["packing"] == "True" and run.data.params["max_steps"] == "8"
    assert len(run.data.params) <= 40
    metrics = run.data.metrics
    assert metrics["eval_loss_before"] == pytest.approx(trained_run["eval_loss_before"])
    assert metrics["eval_loss_after"] == pytest.approx(trained_run["eval_loss_after"])
    assert "loss" in metrics and "learning_rate" in metrics
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [2, 4, 6, 8]
    # the model is uploaded once (the job's output): the run references it and holds the summary, not a second copy
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "summary.json" in artifacts and "model" not in artifacts
    assert run.data.tags["model_output"] == str(trained_run["output_dir"].resolve())


def test_summary_json_sits_beside_mlmodel(trained_run: dict) -> None:
    import json

    summary = json.loads((trained_run["output_dir"] / "summary.json").read_text())
    assert (trained_run["output_dir"] / "MLmodel").is_file()
    assert summary["eval_loss_after"] == pytest.approx(trained_run["eval_loss_after"])
    assert summary["global_steps"] == 8 and summary["plan"]["device"] == "cpu"
    assert summary["settings"]["method"] == "full" and summary["settings"]["max_steps"] == 8  # the test recipe


# ---------------------------------------------------------------- MLflow copies are optional

def test_a_failing_optional_mlflow_copy_warns_and_the_job_succeeds(fine_tune, tiny_model_dir, sample_data_dir, tmp_path,
                                                                  tiny_training_flags, monkeypatch, caplog) -> None:
    import mlflow

    def broken(*args, **kwargs):
        raise OSError("artifact store unreachable")

    for name in ("log_artifacts", "log_dict", "set_tag", "log_metrics"):
        monkeypatch.setattr(mlflow, name, broken)
    args = trainer_args(fine_tune, tiny_model_dir, sample_data_dir, tmp_path / "model", tiny_training_flags,
                        "--max_steps", "1", "--log_model_artifacts", "true")
    with caplog.at_level("WARNING", logger="fine_tune"):
        summary = fine_tune.train(args)
    assert (tmp_path / "model" / "MLmodel").is_file() and (tmp_path / "model" / "summary.json").is_file()
    assert summary["global_steps"] == 1
    warned = caplog.text
    assert "copying the model into the MLflow run (--log_model_artifacts) failed" in warned
    assert "logging summary.json to MLflow failed" in warned and "artifact store unreachable" in warned
    run = mlflow.search_runs(search_all_experiments=True, order_by=["attributes.start_time DESC"], output_format="list")[0]
    assert run.info.status == "FINISHED"


def test_log_model_artifacts_copies_the_model_into_the_run(fine_tune, tiny_model_dir, sample_data_dir, tmp_path,
                                                           tiny_training_flags) -> None:
    import mlflow

    args = trainer_args(fine_tune, tiny_model_dir, sample_data_dir, tmp_path / "model", tiny_training_flags,
                        "--max_steps", "1", "--log_model_artifacts", "true")
    fine_tune.train(args)
    run = mlflow.search_runs(search_all_experiments=True, order_by=["attributes.start_time DESC"], output_format="list")[0]
    assert "model/MLmodel" in {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "model")}


# ---------------------------------------------------------------- --device

def test_device_cpu_trains_on_the_cpu(tmp_path, tiny_model_dir, sample_data_dir) -> None:
    import subprocess
    import sys

    out = tmp_path / "model"
    proc = subprocess.run([sys.executable, "-m", "training.trainer.fine_tune", "--config", "test", "--device", "cpu",
                           "--max_steps", "1", "--model_name_or_path", str(tiny_model_dir),
                           "--train_file", str(sample_data_dir / "train.jsonl"),
                           "--eval_file", str(sample_data_dir / "test.jsonl"), "--output_dir", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    assert json.loads((out / "summary.json").read_text())["plan"]["device"] == "cpu"


# ---------------------------------------------------------------- LoRA

def test_lora_trains_fp32_adapters_and_saves_a_merged_model(fine_tune, tiny_model_dir, sample_data_dir, tmp_path,
                                                            tiny_training_flags) -> None:
    import torch

    flags = [*tiny_training_flags, "--method", "lora", "--learning_rate", "1e-2", "--max_steps", "4"]
    args = trainer_args(fine_tune, tiny_model_dir, sample_data_dir, tmp_path / "model", flags,
                        "--lora_r", "8", "--lora_alpha", "16", "--model_dtype", "bfloat16", "--log_model_artifacts", "false")
    trainer, plan = fine_tune.build_trainer(args, str(tmp_path / "work"))
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)  # adapters fp32 over bf16 base weights
    assert sum(p.numel() for p in trainable) < sum(p.numel() for p in trainer.model.parameters()) / 5
    assert "bf16 frozen base, fp32 adapters" in plan.notes  # no lost-update warning: the base is frozen

    args.model_dtype = "float32"
    summary = fine_tune.train(args)
    assert summary["eval_loss_after"] < summary["eval_loss_before"]
    saved = {p.name for p in (tmp_path / "model" / "model").iterdir()}
    assert "model.safetensors" in saved and "adapter_config.json" not in saved  # merged: a plain model
    _adapter_beside_is_the_merged_model(tmp_path / "model", tiny_model_dir, summary)


def _adapter_beside_is_the_merged_model(out: Path, base_dir: Path, summary: dict) -> None:
    """The PEFT adapter in adapter/ records its base, and merged into that base it is the merged model saved."""
    import json

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["base_model_name_or_path"]) == ("LORA", 8, str(base_dir))
    assert "revision" in config and (out / "adapter" / "adapter_model.safetensors").is_file()
    assert summary["adapter"] == {"path": "adapter", "base_model": str(base_dir), "base_revision": None}
    assert json.loads((out / "summary.json").read_text())["adapter"]["path"] == "adapter"
    merged = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32)
    rebuilt = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                                        out / "adapter").merge_and_unload()
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, rebuilt(ids).logits, atol=1e-4)


def test_lora_target_modules_matching_nothing_is_one_clear_error(fine_tune, tiny_model_dir, sample_data_dir, tmp_path,
                                                                  tiny_training_flags) -> None:
    flags = [*tiny_training_flags, "--method", "lora"]
    args = trainer_args(fine_tune, tiny_model_dir, sample_data_dir, tmp_path / "model", flags,
                        "--lora_target_modules", "qkv_projj")
    with pytest.raises(fine_tune.TrainerError, match="--lora_target_modules qkv_projj matches no module"):
        fine_tune.build_trainer(args, str(tmp_path / "work"))


# ---------------------------------------------------------------- what the batches contain

def test_assistant_only_loss_masks_everything_but_assistant_turns(fine_tune, tiny_model_dir, sample_data_dir,
                                                                  tmp_path, tiny_training_flags) -> None:
    args = trainer_args(fine_tune, tiny_model_dir, sample_data_dir, tmp_path / "model", tiny_training_flags,
                        "--packing", "false")
    trainer, plan = fine_tune.build_trainer(args, str(tmp_path / "work"))
    assert plan.assistant_only_loss and not plan.packing
    tok = trainer.processing_class
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" in batch
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        trained = tok.decode(ids[labels != -100])
        ignored = tok.decode(ids[(labels == -100) & (mask == 1)])
        assert trained and "<|user|>" not in trained and "<|system|>" not in trained and "<|assistant|>" not in trained
        assert "<|end|>" in trained  # the model learns to stop
        assert "<|user|>" in ignored
    # every user message's text is masked in the first conversation
    first = trainer.train_dataset[0]
    full = tok.decode(first["input_ids"])
    user_text = full.split("<|user|>\n")[1].split("<|end|>")[0]
    labelled = tok.decode([t for t, l in zip(first["input_ids"], first["labels"]) if l != -100])
    assert user_text not in labelled


def test_packed_batches_carry_per_sequence_positions(fine_tune, tiny_model_dir, sample_data_dir, tmp_path,
                                                     tiny_training_flags) -> None:
    import torch

    args = trainer_args(fine_tune, tiny_model_dir, sample_data_dir, tmp_path / "model", tiny_training_flags)
    trainer, plan = fine_tune.build_trainer(args, str(tmp_path / "work"))
    assert plan.packing
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch  # padding-free: boundaries come from the positions
    positions = batch["position_ids"][0]
    assert batch["input_ids"].shape[0] == 1 and positions.shape == batch["input_ids"][0].shape
    starts = (positions == 0).nonzero().flatten()
    assert len(starts) > 4  # several conversations in one row
    for begin, end in zip(starts.tolist(), starts.tolist()[1:] + [len(positions)]):
        assert torch.equal(positions[begin:end], torch.arange(end - begin))
    assert (batch["labels"][0][starts] == -100).all()  # nothing predicts across a boundary
    assert batch["input_ids"].shape[1] <= 4 * 256


def test_sdpa_keeps_packed_sequences_apart(tiny_model_dir: Path) -> None:
    """Packed logits equal separate logits, and would not without per-sequence positions."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    model.config.use_cache = False  # as the trainer sets it: with a KV cache, transformers skips packed masking
    a = tok.encode("<|user|>\nWho founded Microsoft?<|end|>\n<|assistant|>\n")
    b = tok.encode("<|user|>\nWhat is the capital of France?<|end|>\n<|assistant|>\n")
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([b])).logits[0]
        packed = model(input_ids=torch.tensor([a + b]),
                       position_ids=torch.tensor([list(range(len(a))) + list(range(len(b)))])).logits[0, len(a):]
        leaky = model(input_ids=torch.tensor([a + b])).logits[0, len(a):]
    assert torch.allclose(packed, alone, atol=1e-5)
    assert not torch.allclose(leaky, alone, atol=1e-3)


# ---------------------------------------------------------------- distributed: rank 0 alone logs and saves

def test_only_rank_zero_saves_and_logs(fine_tune, tiny_model_dir, sample_data_dir, tmp_path, tiny_training_flags,
                                       monkeypatch, capsys) -> None:
    import mlflow

    monkeypatch.setattr(fine_tune, "detect_runtime", lambda device="auto": fine_tune.Runtime(rank=1, world_size=2, local_rank=1))
    flags = [*tiny_training_flags, "--max_steps", "1"]
    args = trainer_args(fine_tune, tiny_model_dir, sample_data_dir, tmp_path / "model", flags, "--seed", "31337")
    runs_before = len(mlflow.search_runs(search_all_experiments=True))
    summary = fine_tune.train(args)
    assert summary["global_steps"] == 1
    assert not (tmp_path / "model").exists()
    assert len(mlflow.search_runs(search_all_experiments=True)) == runs_before
    assert "eval loss:" not in capsys.readouterr().out


def test_torchrun_two_cpu_processes_train_and_only_rank_zero_logs_and_saves(tiny_model_dir, sample_data_dir,
                                                                            tmp_path) -> None:
    """The distributed path for real: torchrun, two processes, gloo on CPU, the trainer's own entry point.

    `--standalone`: a free rendezvous port, so parallel test runs on one machine do not collide on 29500.
    """
    import json
    import os
    import subprocess
    import sys

    import mlflow

    torchrun = Path(sys.executable).with_name("torchrun")
    db = tmp_path / "mlflow.db"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{db}", HF_DATASETS_CACHE=str(tmp_path / "cache"), TOKENIZERS_PARALLELISM="false")
    out = tmp_path / "model"
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "training.trainer.fine_tune", "--config", "test",
         "--device", "cpu", "--max_steps", "3", "--model_name_or_path", str(tiny_model_dir),
         "--train_file", str(sample_data_dir / "train.jsonl"), "--eval_file", str(sample_data_dir / "test.jsonl"),
         "--output_dir", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    rank0 = "\n".join(line for line in proc.stderr.splitlines() if "[rank0]" in line)
    assert proc.returncode == 0, (rank0 or proc.stderr)[-4000:]
    assert proc.stdout.count("eval loss:") == 1  # rank 0 alone reports
    summary = json.loads((out / "summary.json").read_text())
    assert summary["plan"]["world_size"] == 2 and summary["plan"]["device"] == "cpu" and summary["global_steps"] == 3
    assert (out / "MLmodel").is_file()
    runs = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # rank 1 never opened a run
    assert runs[0].data.params["world_size"] == "2"
