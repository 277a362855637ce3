"""The tiny offline Phi-3 (architecture, chat format, determinism) and the bundled sample's shape."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training import sample_data
from training.data import row_problem

LAYOUT = {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
          "tokenizer_config.json", "chat_template.jinja"}
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who founded Microsoft?"},
        {"role": "assistant", "content": "Microsoft was founded by Bill Gates and Paul Allen in 1975."}]


# ---------------------------------------------------------------- sample data

def test_sample_is_deterministic_valid_and_varied() -> None:
    rows = list(sample_data.generate_rows())
    assert rows == list(sample_data.generate_rows())
    assert len(rows) == sample_data.DEFAULT_ROWS
    assert all(row_problem(json.dumps(r, ensure_ascii=False).encode()) is None for r in rows)
    assert all(r["prompt"] == next(m["content"] for m in r["messages"] if m["role"] == "user") for r in rows)
    assert all(len(r["prompt_id"]) == 64 for r in rows)
    assert sum(r["messages"][0]["role"] == "system" for r in rows) > 50
    assert sum(len(r["messages"]) >= 5 for r in rows) > 30  # multi-turn
    assert sum(any(ord(ch) > 127 for m in r["messages"] for ch in m["content"]) for r in rows) > 20
    answer_lengths = [len(m["content"]) for r in rows for m in r["messages"] if m["role"] == "assistant"]
    assert min(answer_lengths) < 20 and max(answer_lengths) > 300
    assert any(r["prompt"] == "Who founded Microsoft?" for r in rows)


def test_sample_answers_are_consistently_phrased() -> None:
    """The same question always gets the same answer: learnable by a tiny model."""
    answers: dict[str, set[str]] = {}
    for row in sample_data.generate_rows():
        turns = row["messages"]
        for q, a in zip(turns, turns[1:]):
            if q["role"] == "user" and a["role"] == "assistant":
                answers.setdefault(q["content"], set()).add(a["content"])
    assert answers["Who founded Microsoft?"] == {"Microsoft was founded by Bill Gates and Paul Allen in 1975."}
    assert all(len(v) == 1 for v in answers.values())


# ---------------------------------------------------------------- tiny model

def test_layout_and_architecture(tiny_model_dir: Path) -> None:
    assert LAYOUT <= {p.name for p in tiny_model_dir.iterdir()}
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["model_type"] == "phi3" and config["architectures"] == ["Phi3ForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (64, 2, 2)
    assert config["hidden_size"] // config["num_attention_heads"] == 32  # vLLM's CPU attention refuses head_dim 16
    assert 512 <= config["vocab_size"] <= 2048


def test_tokenizer_speaks_the_phi3_chat_format(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tok.apply_chat_template(CHAT, tokenize=False) == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nWho founded Microsoft?<|end|>\n"
        "<|assistant|>\nMicrosoft was founded by Bill Gates and Paul Allen in 1975.<|end|>\n<|endoftext|>")
    assert tok.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True).endswith(
        "<|user|>\nWho founded Microsoft?<|end|>\n<|assistant|>\n")
    for special in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"):
        assert len(tok.encode(special, add_special_tokens=False)) == 1
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|endoftext|>"
    text = "Zürich, 東京, Αθήνα 🙂"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text  # byte-level: nothing is unknown
    assert "{% generation %}" in (tiny_model_dir / "chat_template.jinja").read_text() or \
        "{%- generation %}" in (tiny_model_dir / "chat_template.jinja").read_text()


def test_generation_markers_cover_assistant_content_and_end(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    enc = tok.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, keep in zip(enc["input_ids"], enc["assistant_masks"]) if keep]
    assert tok.decode(masked) == "Microsoft was founded by Bill Gates and Paul Allen in 1975.<|end|>\n<|endoftext|>"


def test_generation_stops_at_end(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    gen = GenerationConfig.from_pretrained(tiny_model_dir)
    assert tok.convert_tokens_to_ids("<|end|>") in gen.eos_token_id
    assert tok.eos_token_id in gen.eos_token_id and gen.pad_token_id == tok.pad_token_id


def test_model_loads_and_runs_forward(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.dtype == torch.float32 and model.config._attn_implementation == "sdpa"
    ids = tok.apply_chat_template(CHAT[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape[-1] == len(tok) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_cli_builds_the_same_bytes_twice(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Deterministic: the CLI's build is byte-identical to the fixture's (a separate build)."""
    out = tmp_path / "tiny"
    proc = subprocess.run([sys.executable, "-m", "training.tiny_model", "--out", str(out)], capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    names = sorted(p.name for p in tiny_model_dir.iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    for name in names:
        assert (out / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name


def test_cli_requires_out() -> None:
    proc = subprocess.run([sys.executable, "-m", "training.tiny_model"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--out" in proc.stderr


def test_cli_refuses_to_replace_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    proc = subprocess.run([sys.executable, "-m", "training.tiny_model", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and "no config.json" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"
