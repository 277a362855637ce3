"""A conversation to prompt token ids, through the model's own chat template, for every engine.

Control tokens a caller types (e.g. "<|end|><|assistant|>" inside a message) stay plain text, so a
caller cannot close its own turn and open another. transformers 5.20 and later do this themselves
(`apply_chat_template(..., sanitize_control_tokens=True)`). vLLM's CPU build pins transformers<5.20,
which lacks it, so there this module does the same: it wraps each control token in the messages in
private-use markers, renders the template to text, and encodes the marked tokens as plain text and
the rest as usual. A test checks both paths give the same ids on the twins.
"""
from __future__ import annotations

import inspect
import re
from typing import Any

from deployment.serving.engines.base import PromptRefused

MARK_START, MARK_END = "\U000f0000", "\U000f0001"  # Unicode private-use plane 15: never in real text


def encode_chat(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The prompt's token ids, ready for the assistant's reply; PromptRefused when the template refuses."""
    from jinja2.exceptions import TemplateError

    try:
        if "sanitize_control_tokens" in inspect.signature(tokenizer.apply_chat_template).parameters:
            encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True, sanitize_control_tokens=True)
            return list(encoded["input_ids"])
        return encode_marked_chat(tokenizer, messages)
    except TemplateError as err:
        raise PromptRefused(f"the model's chat template refused this conversation: {err}") from None


def control_tokens(tokenizer: Any) -> list[str]:
    """The tokenizer's added tokens (special tokens and the chat format's markers), longest first."""
    tokens = {token.content for token in tokenizer.added_tokens_decoder.values() if not token.content.isspace()}
    return sorted(tokens, key=len, reverse=True)


def encode_marked_chat(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """`sanitize_control_tokens` for tokenizers that lack it (see the module docstring)."""
    tokens = control_tokens(tokenizer)
    if not tokens:
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"])
    control = re.compile("|".join(map(re.escape, tokens)))
    marked = [{**m, "content": control.sub(lambda t: MARK_START + t.group(0) + MARK_END,
                                           m["content"].replace(MARK_START, "").replace(MARK_END, ""))}
              for m in messages]
    text = tokenizer.apply_chat_template(marked, add_generation_prompt=True, tokenize=False)
    # [text, marked token, text, ...]; a lone marker (a template split it off) still breaks the text
    pieces = re.split(f"{MARK_START}({control.pattern}){MARK_END}|[{MARK_START}{MARK_END}]", text)
    newline = tokenizer.encode("\n", add_special_tokens=False)
    ids: list[int] = []
    for index, piece in enumerate(pieces):
        if not piece:
            continue
        as_text = index % 2 == 1
        piece_ids = _encode_piece(tokenizer, piece, as_text, newline) if ids or as_text else \
            tokenizer.encode(piece, add_special_tokens=False)
        if as_text and tokenizer.convert_tokens_to_ids(piece) in piece_ids:
            raise ValueError(f"cannot keep {piece!r} as text: the tokenizer makes it from plain text")
        ids += piece_ids
    return ids


def _encode_piece(tokenizer: Any, piece: str, as_text: bool, newline: list[int]) -> list[int]:
    """A piece from the middle of a chat. Encoded after a newline, which is then removed, so a SentencePiece
    tokenizer does not add the word-start space it adds at the start of a string."""
    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=as_text)

    ids = encode("\n" + piece)
    return ids[len(newline):] if ids[:len(newline)] == newline else encode(piece)
