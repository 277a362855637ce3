"""Build, offline, a tiny model with a Phi model's architecture traits that speaks its chat format.

Two twins, one per supported model (`--like`):

- `phi-3.5-mini` (default) stands in for `microsoft/Phi-3.5-mini-instruct`: `Phi3ForCausalLM`
  (hidden 64, 2 layers, 2 heads, no GQA, full rotary, untied embeddings) and the Phi-3 chat
  format (`<|user|>\\n...<|end|>\\n<|assistant|>\\n`), its template already carrying
  `{% generation %}` markers (TRL's phi3 training template shape).
- `phi-4-mini` stands in for `microsoft/Phi-4-mini-instruct`, whose published config.json and
  tokenizer files differ where code tuned to Phi-3.5 breaks: grouped-query attention (24 query /
  8 KV heads there, 3 / 1 here), `partial_rotary_factor` 0.75 with longrope scaling (to 131,072
  there, 8,192 here), input/output embeddings tied, Phi-4-mini's own chat template verbatim (no
  newlines, no `{% generation %}` markers: the trainer supplies its training variant), its
  special-token strings (the tool tokens too) and `<|endoftext|>` as bos/eos/pad.

Both twins have head_dim 32, which vLLM's CPU attention accepts (16 is refused; 32 and 64 work),
so the vLLM engine's tests serve them too.

Both: a byte-level BPE (vocab ~1k) trained on the spot on the bundled sample conversations, and a
generation config that stops at `<|end|>` and `<|endoftext|>`. The ids come from the twin's own
small vocabulary (Phi-4-mini's real `<|end|>` is 200020, which cannot fit).

Deterministic: the same bytes on every build (seeded init, deterministic BPE training).
`python -m training.tiny_model --out DIR [--like phi-4-mini]` writes the `save_pretrained` layout
in a few seconds.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

VOCAB_SIZE = 1024
SEED = 0

# Phi-3's template (TRL's phi3_training.jinja shape): assistant content and its <|end|> inside
# {% generation %} so the model is trained to stop; eos after a finished conversation.
PHI3_CHAT_TEMPLATE = (
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

# microsoft/Phi-4-mini-instruct's tokenizer_config.json `chat_template`, verbatim.
PHI4_MINI_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and "
    "message['tools'] is not none %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + "
    "message['tools'] + '<|/tool|>' + '<|end|>' }}{% else %}{{ '<|' + message['role'] + '|>' + "
    "message['content'] + '<|end|>' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)


@dataclass(frozen=True)
class Like:
    """What a twin copies from the model it stands in for."""

    name: str
    model_id: str
    special_tokens: tuple[str, ...]
    chat_template: str
    config: dict[str, Any] = field(default_factory=dict)
    config_eos: str = "<|endoftext|>"  # config.json's eos_token_id (generation stops at <|end|> too, either way)


MODEL_SHAPE = dict(  # the Phi-3.5-mini twin's shape
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,  # head_dim 32: vLLM's CPU attention refuses 16
    num_key_value_heads=2,
    max_position_embeddings=2048,
    original_max_position_embeddings=2048,
)

# Phi-4-mini: 24 query heads share 8 KV heads (3:1), a quarter of each head's dimensions carry no
# rotary position (0.75), longrope stretches 4,096 trained positions to 131,072 (x32; here x4).
_PHI4_HEAD_DIM, _PHI4_ROTARY = 32, 0.75  # head_dim 32: vLLM's CPU attention refuses 16
_PHI4_ROTARY_PAIRS = int(_PHI4_HEAD_DIM * _PHI4_ROTARY) // 2  # longrope takes one factor per rotated pair
PHI4_MINI_SHAPE = dict(
    hidden_size=96,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=3,
    num_key_value_heads=1,
    max_position_embeddings=8192,
    # as the real model: no smaller than the server's default context cap (4,096), so chats under the cap
    # never switch the batch to the long factors (deployment/serving/limits.py, context_cap)
    original_max_position_embeddings=4096,
    partial_rotary_factor=_PHI4_ROTARY,
    rope_scaling={"type": "longrope", "short_factor": [1.0] * _PHI4_ROTARY_PAIRS,
                  "long_factor": [1.0 + 0.5 * i for i in range(_PHI4_ROTARY_PAIRS)]},
    tie_word_embeddings=True,
    # With head_dim 32 and the default 0.02, the untrained twin's residual stream is its input embedding, and
    # with tied embeddings greedy decoding repeats the prompt's last token whatever the prompt: wider
    # initial weights give replies that depend on the prompt and its positions (the serving tests need that).
    initializer_range=0.1,
)

LIKES = {
    "phi-3.5-mini": Like(
        name="phi-3.5-mini", model_id="microsoft/Phi-3.5-mini-instruct",
        special_tokens=("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
        chat_template=PHI3_CHAT_TEMPLATE,
        config=dict(MODEL_SHAPE, tie_word_embeddings=False),
    ),
    "phi-4-mini": Like(
        name="phi-4-mini", model_id="microsoft/Phi-4-mini-instruct",
        # in the real vocabulary's order: <|endoftext|> 199999, <|assistant|> 200019, <|end|> 200020,
        # <|user|> 200021, <|system|> 200022, then the tool-calling tokens
        special_tokens=("<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>", "<|system|>", "<|tool|>",
                        "<|/tool|>", "<|tool_call|>", "<|/tool_call|>", "<|tool_response|>", "<|tag|>"),
        chat_template=PHI4_MINI_CHAT_TEMPLATE,
        config=PHI4_MINI_SHAPE,
        config_eos="<|end|>",  # its config.json: eos 200020 (<|end|>), bos and pad 199999 (<|endoftext|>)
    ),
}
DEFAULT_LIKE = "phi-3.5-mini"


def _train_tokenizer(like: Like):
    """A byte-level BPE trained on the sample conversations, wrapped as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from training.sample_data import corpus_text

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(like.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(sorted(set(corpus_text())), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",  # as in both models; padded label positions are -100 anyway
        chat_template=like.chat_template,
        model_max_length=like.config["max_position_embeddings"],
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def _build_model(tokenizer, like: Like):
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    eos_id = tokenizer.eos_token_id
    config = Phi3Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(like.config_eos),
        **like.config,
    )
    torch.manual_seed(SEED)
    model = Phi3ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(  # both models stop at <|end|> and at <|endoftext|>
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


def build_tiny_model(out_dir: Path, like: str = DEFAULT_LIKE) -> Path:
    """Build the twin of `like` into `out_dir` (save_pretrained layout; replaced atomically) and return it."""
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    twin = LIKES[like]
    tokenizer = _train_tokenizer(twin)
    model = _build_model(tokenizer, twin)
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
    from common.cli import ArgumentParser

    parser = ArgumentParser(
        prog="python -m training.tiny_model",
        description="Build offline a tiny Phi-architecture model and chat tokenizer (save_pretrained layout).",
    )
    parser.add_argument("--out", type=Path, required=True,
                        help="folder to write (new, empty, or an earlier model folder, which is replaced)")
    parser.add_argument("--like", choices=sorted(LIKES), default=DEFAULT_LIKE,
                        help="the model whose architecture traits and chat format the twin copies "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    from common.cli import step

    with step(f"building the tiny {args.like} twin in {args.out}"):
        build_tiny_model(args.out, args.like)
    print(args.out)
    return 0


if __name__ == "__main__":
    from common.cli import run_cli

    run_cli(main)
