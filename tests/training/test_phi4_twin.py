"""The Phi-4-mini twin beside the Phi-3.5-mini one: its traits, its chat format, and training on it.

Facts encoded here come from microsoft/Phi-4-mini-instruct's published config.json,
generation_config.json and tokenizer_config.json (24 query / 8 KV heads, partial_rotary_factor
0.75, longrope, tie_word_embeddings true, eos 200020 <|end|>, generation eos [200020, 199999],
the no-newline chat template) and from TRL's shipped Phi-3.5 training template (what the mask
covers: each reply, its <|end|>, and <|endoftext|> after a final assistant turn).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training import sample_data
from training.tiny_model import LIKES, PHI4_MINI_CHAT_TEMPLATE
from training.trainer import chat_templates
from training.trainer import fine_tune as ft

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who founded Microsoft?"},
        {"role": "assistant", "content": "Microsoft was founded by Bill Gates and Paul Allen in 1975."}]


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _expected_mask_text(messages: list[dict]) -> str:
    """What the loss must cover: each assistant reply and its <|end|>, then <|endoftext|> if the chat ends on one."""
    replies = "".join(m["content"] + "<|end|>" for m in messages if m["role"] == "assistant")
    return replies + ("<|endoftext|>" if messages[-1]["role"] == "assistant" else "")


# ---------------------------------------------------------------- the twin's files

def test_config_has_phi4_mini_traits(tiny_phi4_model_dir: Path) -> None:
    config = json.loads((tiny_phi4_model_dir / "config.json").read_text())
    assert config["model_type"] == "phi3" and config["architectures"] == ["Phi3ForCausalLM"]
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # grouped-query attention
    assert config["num_attention_heads"] // config["num_key_value_heads"] == 24 // 8
    assert config["partial_rotary_factor"] == 0.75 < 1
    assert config["tie_word_embeddings"] is True
    rope = config["rope_parameters"]
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    assert head_dim == 32  # vLLM's CPU attention refuses 16
    assert rope["rope_type"] == "longrope" and config["max_position_embeddings"] > config["original_max_position_embeddings"]
    assert len(rope["long_factor"]) == len(rope["short_factor"]) == int(head_dim * 0.75) // 2  # one per rotated pair

    tok = _tokenizer(tiny_phi4_model_dir)
    end, eot = tok.convert_tokens_to_ids("<|end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    assert config["eos_token_id"] == end and config["bos_token_id"] == config["pad_token_id"] == eot
    generation = json.loads((tiny_phi4_model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [end, eot]  # Phi-4-mini's [200020, 199999], in the twin's own ids
    assert config["vocab_size"] == len(tok) < 2048


def test_tied_embeddings_are_stored_once(tiny_phi4_model_dir: Path, tiny_model_dir: Path) -> None:
    from safetensors import safe_open

    with safe_open(tiny_phi4_model_dir / "model.safetensors", "pt") as weights:
        assert "lm_head.weight" not in set(weights.keys())
    with safe_open(tiny_model_dir / "model.safetensors", "pt") as weights:
        assert "lm_head.weight" in set(weights.keys())  # the Phi-3.5 twin: untied, as Phi-3.5-mini


def test_gqa_and_partial_rotary_reach_the_model(tiny_phi4_model_dir: Path) -> None:
    """The KV cache holds 1 head, not 3 (a third of the memory per token), and only 24 of 32 dims rotate."""
    import torch
    from transformers import AutoModelForCausalLM

    tok = _tokenizer(tiny_phi4_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_phi4_model_dir)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = tok.apply_chat_template(CHAT[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model(**ids, use_cache=True)
    keys = out.past_key_values.layers[0].keys
    assert keys.shape == (1, 1, ids["input_ids"].shape[1], 32)
    assert model.model.rotary_emb.inv_freq.numel() * 2 == 24
    assert torch.isfinite(out.logits).all() and out.logits.shape[-1] == len(tok)


def test_chat_template_is_phi4_minis_and_renders_without_newlines(tiny_phi4_model_dir: Path) -> None:
    tok = _tokenizer(tiny_phi4_model_dir)
    assert (tiny_phi4_model_dir / "chat_template.jinja").read_text() == PHI4_MINI_CHAT_TEMPLATE
    assert tok.apply_chat_template(CHAT, tokenize=False) == (
        "<|system|>Be brief.<|end|><|user|>Who founded Microsoft?<|end|>"
        "<|assistant|>Microsoft was founded by Bill Gates and Paul Allen in 1975.<|end|><|endoftext|>")
    assert tok.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True) == (
        "<|system|>Be brief.<|end|><|user|>Who founded Microsoft?<|end|><|assistant|>")
    tools = [{"role": "system", "content": "Use tools.", "tools": '[{"name": "now"}]'}, CHAT[1]]
    assert tok.apply_chat_template(tools, tokenize=False, add_generation_prompt=True).startswith(
        '<|system|>Use tools.<|tool|>[{"name": "now"}]<|/tool|><|end|><|user|>')
    for special in LIKES["phi-4-mini"].special_tokens:
        assert len(tok.encode(special, add_special_tokens=False)) == 1, special
    assert tok.bos_token == tok.eos_token == tok.pad_token == "<|endoftext|>"
    from trl.chat_template_utils import has_generation_markers

    assert not has_generation_markers(tok.chat_template)  # as published: the trainer brings the marked variant


@pytest.mark.slow
def test_cli_like_phi4_mini_builds_the_same_bytes(tiny_phi4_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "twin"
    proc = subprocess.run([sys.executable, "-m", "training.tiny_model", "--out", str(out), "--like", "phi-4-mini"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    names = sorted(p.name for p in tiny_phi4_model_dir.iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    for name in names:
        assert (out / name).read_bytes() == (tiny_phi4_model_dir / name).read_bytes(), name


def test_cli_refuses_an_unknown_like(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "training.tiny_model", "--out", str(tmp_path / "m"), "--like", "phi-5"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "phi-4-mini" in proc.stderr and not (tmp_path / "m").exists()


# ---------------------------------------------------------------- training templates (tokenizer only)

def test_chat_format_is_read_from_the_rendering(tiny_model_dir: Path, tiny_phi4_model_dir: Path) -> None:
    assert chat_templates.chat_format(_tokenizer(tiny_model_dir)) == chat_templates.PHI3
    assert chat_templates.chat_format(_tokenizer(tiny_phi4_model_dir)) == chat_templates.PHI4_MINI


def test_phi4_training_template_renders_every_sample_chat_as_the_original(tiny_phi4_model_dir: Path) -> None:
    tok = _tokenizer(tiny_phi4_model_dir)
    template = chat_templates.training_template(tok)
    assert template == chat_templates.PHI4_MINI_TRAINING_TEMPLATE
    for row in sample_data.generate_rows():
        messages = row["messages"]
        assert tok.apply_chat_template(messages, tokenize=False, chat_template=template) == \
            tok.apply_chat_template(messages, tokenize=False)


def test_phi4_masks_cover_exactly_the_replies_and_their_end(tiny_phi4_model_dir: Path) -> None:
    """Every sample conversation: the masked tokens decode to the assistant replies, each with its <|end|>."""
    tok = _tokenizer(tiny_phi4_model_dir)
    template = chat_templates.training_template(tok)
    rows = list(sample_data.generate_rows())
    assert any(sum(m["role"] == "assistant" for m in r["messages"]) > 1 for r in rows)  # multi-turn covered
    for row in rows:
        assert chat_templates.masked_text(tok, row["messages"], template) == _expected_mask_text(row["messages"])


def test_phi35_format_gets_trls_template_even_when_its_bytes_differ(tiny_model_dir: Path) -> None:
    """A Phi-3.5 tokenizer with the published template (no markers), or a byte-different copy of it, trains."""
    from trl.chat_template_utils import phi3_5_chat_template, phi3_5_training_chat_template

    tok = _tokenizer(tiny_model_dir)
    tok.chat_template = phi3_5_chat_template
    assert chat_templates.training_template(tok) == phi3_5_training_chat_template
    tok.chat_template = phi3_5_chat_template.replace("{% endfor %}", "{% endfor -%}\n")  # same output, other bytes
    assert chat_templates.training_template(tok) == phi3_5_training_chat_template
    masked = chat_templates.masked_text(tok, CHAT, phi3_5_training_chat_template)
    assert masked == "Microsoft was founded by Bill Gates and Paul Allen in 1975.<|end|>\n<|endoftext|>"


@pytest.mark.parametrize("broken, problem", [
    # the <|end|> outside the mask: the model would never learn to stop
    (chat_templates.PHI4_MINI_TRAINING_TEMPLATE.replace(
        "{%- generation %}{{- message['content'] + '<|end|>' }}{%- endgeneration %}",
        "{%- generation %}{{- message['content'] }}{%- endgeneration %}{{- '<|end|>' }}"), "misses"),
    # a newline the model never saw (Phi-3.5's format)
    (chat_templates.PHI4_MINI_TRAINING_TEMPLATE.replace("{{- '<|assistant|>' }}{%- generation", "{{- '<|assistant|>\\n' }}"
                                                        "{%- generation"), "renders"),
    # the user's text in the loss
    (chat_templates.PHI4_MINI_TRAINING_TEMPLATE.replace(
        "{%- else %}{{- '<|' + message['role']", "{%- else %}{%- generation %}{{- '<|' + message['role']").replace(
        "message['content'] + '<|end|>' }}{%- endif %}", "message['content'] + '<|end|>' }}{%- endgeneration %}{%- endif %}"),
     "not the assistant's"),
])
def test_an_unfaithful_template_is_never_picked(tiny_phi4_model_dir: Path, broken: str, problem: str) -> None:
    tok = _tokenizer(tiny_phi4_model_dir)
    assert broken != chat_templates.PHI4_MINI_TRAINING_TEMPLATE
    assert problem in chat_templates.template_problem(tok, broken)
    if problem != "renders":  # a bad mask is refused even in the model's own (marked) template
        tok.chat_template = broken
        assert chat_templates.training_template(tok) is None


def test_an_unknown_format_turns_assistant_only_loss_off_or_refuses(tiny_phi4_model_dir: Path) -> None:
    tok = _tokenizer(tiny_phi4_model_dir)
    tok.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
                         "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    assert chat_templates.chat_format(tok) is None and chat_templates.training_template(tok) is None
    assert ft.resolve_assistant_only_loss("auto", tok) is False
    with pytest.raises(ft.TrainerError, match="generation"):
        ft.resolve_assistant_only_loss("true", tok)
    assert ft.resolve_assistant_only_loss("auto", _tokenizer(tiny_phi4_model_dir)) is True


# ---------------------------------------------------------------- the trainer on the twin

def _args(model_dir: Path, data_dir: Path, output_dir: Path, *extra: str):
    return ft.parse_args([
        "--model_name_or_path", str(model_dir), "--train_file", str(data_dir / "train.jsonl"),
        "--eval_file", str(data_dir / "test.jsonl"), "--output_dir", str(output_dir),
        "--max_steps", "2", "--max_length", "128", "--per_device_train_batch_size", "2",
        "--per_device_eval_batch_size", "16", "--gradient_accumulation_steps", "1", "--logging_steps", "1",
        "--warmup_ratio", "0", "--log_model_artifacts", "false", *extra])


@pytest.mark.slow
def test_trainer_masks_on_the_phi4_twin_are_exactly_the_replies(tiny_phi4_model_dir, sample_data_dir, tmp_path) -> None:
    """Through TRL's own tokenization: labels decode to each reply + <|end|> (+ <|endoftext|>), nothing else."""
    args = _args(tiny_phi4_model_dir, sample_data_dir, tmp_path / "model", "--packing", "false",
                 "--max_length", "2048")
    trainer, plan = ft.build_trainer(args, str(tmp_path / "work"))
    assert plan.assistant_only_loss
    tok = trainer.processing_class
    assert tok.chat_template == PHI4_MINI_CHAT_TEMPLATE  # the marked variant was only lent to TRL
    dataset = trainer.train_dataset
    assert len(dataset) == plan.train_rows
    for row in dataset:
        assert len(row["input_ids"]) < 2048  # nothing truncated, so the comparison is whole
        labelled = [token for token, label in zip(row["input_ids"], row["labels"]) if label != -100]
        assert tok.decode(labelled) == _expected_mask_text(row["messages"])


@pytest.mark.slow
def test_dropped_masks_are_refused_before_training(tiny_phi4_model_dir, sample_data_dir, tmp_path, monkeypatch) -> None:
    """TRL losing the assistant masks in dataset preparation (#3781's mechanism) stops the run before a step."""
    from trl.trainer import sft_trainer

    prepare = sft_trainer.SFTTrainer._prepare_dataset

    def drop_masks(self, dataset, *args, **kwargs):
        prepared = prepare(self, dataset, *args, **kwargs)
        return prepared.map(lambda row: {"labels": list(row["input_ids"])})  # loss on every token

    monkeypatch.setattr(sft_trainer.SFTTrainer, "_prepare_dataset", drop_masks)
    args = _args(tiny_phi4_model_dir, sample_data_dir, tmp_path / "model")
    with pytest.raises(ft.TrainerError, match="trains on every token.*trl#3781"):
        ft.train(args)
    assert not (tmp_path / "model").exists() or not any((tmp_path / "model").iterdir())

    args.assistant_only_loss = "false"  # asked for on purpose: whole conversations are fine
    trainer, plan = ft.build_trainer(args, str(tmp_path / "work"))
    assert plan.assistant_only_loss is False


@pytest.mark.slow
def test_empty_masks_are_refused(tiny_phi4_model_dir, sample_data_dir, tmp_path) -> None:
    args = _args(tiny_phi4_model_dir, sample_data_dir, tmp_path / "model")
    trainer, _ = ft.build_trainer(args, str(tmp_path / "work"))  # packed, masks fine: no refusal
    trainer.train_dataset = trainer.train_dataset.map(lambda row: {"labels": [-100] * len(row["input_ids"])})
    with pytest.raises(chat_templates.MaskError, match="no token"):
        chat_templates.check_masks(trainer)


def _generate(model, tok, messages, **kwargs):
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, do_sample=False, **kwargs)
    return out[0][ids["input_ids"].shape[1]:].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("twin", ["phi-3.5-mini", "phi-4-mini"])
def test_lora_trains_merges_saves_reloads_and_generates(twin, tiny_model_dir, tiny_phi4_model_dir, sample_data_dir,
                                                        tmp_path) -> None:
    """LoRA all-linear, merged: a plain model whose embeddings stay tied where the base's are."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = tiny_phi4_model_dir if twin == "phi-4-mini" else tiny_model_dir
    out = tmp_path / "model"
    summary = ft.train(_args(base_dir, sample_data_dir, out, "--method", "lora", "--learning_rate", "1e-2"))
    assert summary["global_steps"] == 2 and summary["plan"]["assistant_only_loss"] is True

    saved = {p.name for p in (out / "model").iterdir()}
    assert "model.safetensors" in saved and "adapter_config.json" not in saved
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    tok = AutoTokenizer.from_pretrained(out / "components" / "tokenizer")
    tied = twin == "phi-4-mini"
    assert model.config.tie_word_embeddings is tied
    assert (model.lm_head.weight is model.model.embed_tokens.weight) is tied
    assert torch.equal(model.model.embed_tokens.weight, base.model.embed_tokens.weight)  # all-linear leaves it
    assert not torch.equal(model.model.layers[0].self_attn.qkv_proj.weight, base.model.layers[0].self_attn.qkv_proj.weight)
    assert tok.chat_template == _tokenizer(base_dir).chat_template  # the model's own template, not the marked one
    # transformers' Trainer aligns config.eos_token_id with the tokenizer's eos (<|endoftext|>; Phi-4-mini's config
    # says <|end|>) and puts it first in generation_config; the stop set itself is kept, so read that one.
    stops = {tok.convert_tokens_to_ids("<|end|>"), tok.convert_tokens_to_ids("<|endoftext|>")}
    assert set(model.generation_config.eos_token_id) == set(base.generation_config.eos_token_id) == stops
    reply = _generate(model, tok, CHAT[:2], max_new_tokens=5)
    assert 1 <= len(reply) <= 5


@pytest.mark.slow  # generates with both twins (about 2 s each)
@pytest.mark.parametrize("twin", ["phi-3.5-mini", "phi-4-mini"])
@pytest.mark.parametrize("stop", ["<|end|>", "<|endoftext|>"])
def test_replies_stop_at_the_generation_configs_stop_tokens(twin, stop, tiny_model_dir, tiny_phi4_model_dir) -> None:
    """Steer decoding through a reply and then `stop`: generation ends there, from generation_config alone."""
    from transformers import AutoModelForCausalLM

    base_dir = tiny_phi4_model_dir if twin == "phi-4-mini" else tiny_model_dir
    tok = _tokenizer(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    reply = tok.encode("In 1975.", add_special_tokens=False)
    stop_id = tok.convert_tokens_to_ids(stop)
    filler = tok.encode(" and then", add_special_tokens=False)
    steered = reply + [stop_id] + filler * 20
    prompt_len = len(tok.apply_chat_template(CHAT[:2], add_generation_prompt=True, return_dict=True)["input_ids"])

    def allowed(batch_id, ids):
        return [steered[len(ids) - prompt_len]]

    out = _generate(model, tok, CHAT[:2], max_new_tokens=30, prefix_allowed_tokens_fn=allowed)
    assert out == reply + [stop_id]
    # without the stop ids the same steering runs to the token limit: the stop came from generation_config
    out = _generate(model, tok, CHAT[:2], max_new_tokens=30, prefix_allowed_tokens_fn=allowed, eos_token_id=None)
    assert len(out) == 30
