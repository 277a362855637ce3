"""Build, offline, a tiny model with the Phi-3 architecture that speaks the Phi-3 chat format.

It stands in for `microsoft/Phi-3.5-mini-instruct` in every offline test and in the demo:
`Phi3ForCausalLM` (hidden 64, 2 layers, 4 heads), a byte-level BPE (vocab ~1k) trained on the
spot on the bundled sample conversations, the Phi-3 special tokens, and a Phi-3 chat template
with `{% generation %}` markers around assistant content (so TRL's assistant-only loss works)
and `add_generation_prompt`. Generation stops at `<|end|>` (and `<|endoftext|>`).

Deterministic: the same bytes on every build (seeded init, deterministic BPE training).
`python -m training.tiny_model --out DIR` writes the `save_pretrained` layout in a few seconds.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

SPECIAL_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
VOCAB_SIZE = 1024
SEED = 0

# Phi-3's template (TRL's phi3_training.jinja shape): assistant content and its <|end|> inside
# {% generation %} so the model is trained to stop; eos after a finished conversation.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{{- '<|system|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- elif message['role'] == 'user' %}"
    "{{- '<|user|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- '<|assistant|>\\n' }}"
    "{%- generation %}{{- message['content'] + '<|end|>\\n' }}{%- endgeneration %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}"
    "{%- elif messages[-1]['role'] == 'assistant' %}{%- generation %}{{- eos_token }}{%- endgeneration %}"
    "{%- else %}{{- eos_token }}{%- endif %}"
)

MODEL_SHAPE = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=2048,
    original_max_position_embeddings=2048,
)


def _train_tokenizer():
    """A byte-level BPE trained on the sample conversations, wrapped as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from training.sample_data import corpus_text

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Chat-format scaffolding is in the corpus too, so "\n" after a role token is a common merge.
    bpe.train_from_iterator(sorted(set(corpus_text())), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",  # as in Phi-3; padded label positions are -100 anyway
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_SHAPE["max_position_embeddings"],
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def _build_model(tokenizer):
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    eos_id = tokenizer.eos_token_id
    config = Phi3Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_id,
        tie_word_embeddings=False,
        **MODEL_SHAPE,
    )
    torch.manual_seed(SEED)
    model = Phi3ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[end_id, eos_id],
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def _check_replaceable(out_dir: Path) -> None:
    """`out_dir` is replaced as a whole: only a new or empty folder, or an earlier model folder, may be."""
    from common.cli import UserError

    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a folder; choose a folder path.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "config.json").is_file():
        raise UserError(f"--out {out_dir} holds files but no model (no config.json); it would be replaced as a "
                        "whole, so choose an empty or new folder.")


def build_tiny_model(out_dir: Path) -> Path:
    """Build the tiny model into `out_dir` (save_pretrained layout; replaced atomically) and return it."""
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    tokenizer = _train_tokenizer()
    model = _build_model(tokenizer)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.tiny_model",
        description="Build offline a tiny Phi-3-architecture model and Phi-3-chat tokenizer (save_pretrained layout).",
    )
    parser.add_argument("--out", type=Path, required=True,
                        help="folder to write (new, empty, or an earlier model folder, which is replaced)")
    args = parser.parse_args(argv)
    from common.cli import step

    with step(f"building the tiny Phi-3 model in {args.out}"):
        build_tiny_model(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    from common.cli import run_cli

    run_cli(main)
