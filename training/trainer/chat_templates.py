"""Training chat templates for assistant-only loss, and the refusal to train on masks that do nothing.

TRL's `assistant_only_loss` takes the loss only where the chat template wraps text in
`{% generation %}` markers. Neither Phi model's own template has them. TRL ships marked
variants of the Phi-3 and Phi-3.5 templates and picks one when the model's template is
byte-identical to its copy; it ships none for Phi-4-mini, whose format has no newlines
(`<|user|>...<|end|><|assistant|>...<|end|>`). This module supplies that variant and picks a
training template by the chat format the tokenizer's own template renders, not by its bytes.

A candidate is used only if it renders every probe conversation exactly as the model's own
template does (the model sees its own format) and its mask covers exactly each assistant reply
and the `<|end|>` after it. As in TRL's Phi-3.5 template, `<|endoftext|>` after a final assistant
turn is in the mask too, so the model learns to stop.

The template is swapped in only while TRL tokenizes the data: the saved model keeps its own.
After the trainer is built, `check_masks` looks at a collated batch, which is what the loss
sees, and refuses to go on when assistant-only loss was asked for but the labels are empty or
cover every token (TRL falls back to whole-sequence loss silently in some configurations, e.g.
with Liger kernels, huggingface/trl#3781).

Imports only transformers, trl and torch (this folder is uploaded to the cluster alone).
"""
from contextlib import contextmanager
from typing import Iterator

PHI3 = "phi-3"  # Phi-3 and Phi-3.5: `<|user|>\n...<|end|>\n<|assistant|>\n`
PHI4_MINI = "phi-4-mini"  # `<|user|>...<|end|><|assistant|>`

# microsoft/Phi-4-mini-instruct's template with {% generation %} around each assistant reply and
# its <|end|>, and around the <|endoftext|> that closes a conversation ending on the assistant.
# Everything else renders as in the original (including its system-message tools block).
PHI4_MINI_TRAINING_TEMPLATE = (
    "{#- Training variant of microsoft/Phi-4-mini-instruct's chat template: {% generation %} marks the "
    "assistant replies for assistant-only loss. -#}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and 'tools' in message and message['tools'] is not none %}"
    "{{- '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + message['tools'] + '<|/tool|>' + '<|end|>' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- '<|assistant|>' }}"
    "{%- generation %}{{- message['content'] + '<|end|>' }}{%- endgeneration %}"
    "{%- else %}"
    "{{- '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>' }}"
    "{%- elif messages[-1]['role'] == 'assistant' %}{%- generation %}{{- eos_token }}{%- endgeneration %}"
    "{%- else %}{{- eos_token }}"
    "{%- endif %}"
)

_SYSTEM = {"role": "system", "content": "Answer briefly."}
_Q1 = {"role": "user", "content": "Who founded Microsoft?"}
_A1 = {"role": "assistant", "content": "Bill Gates and Paul Allen."}
_Q2 = {"role": "user", "content": "When?"}
_A2 = {"role": "assistant", "content": "In 1975."}
PROBES = ([_SYSTEM, _Q1, _A1, _Q2, _A2], [_Q1, _A1], [_Q1, _A1, _Q2])
"""Conversations every candidate must render exactly as the model's own template does."""


class MaskError(Exception):
    """Assistant-only loss was asked for, but the loss would not be on the assistant replies."""


def _render(tokenizer, messages, template: str, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template,
                                         add_generation_prompt=generation_prompt)


def chat_format(tokenizer) -> str | None:
    """`phi-3`, `phi-4-mini` or None: how the tokenizer's own template renders a question."""
    template = tokenizer.chat_template
    if not isinstance(template, str):
        return None
    text = _render(tokenizer, [_Q1], template, generation_prompt=True)
    if f"<|user|>\n{_Q1['content']}<|end|>\n<|assistant|>\n" in text:
        return PHI3
    if f"<|user|>{_Q1['content']}<|end|><|assistant|>" in text:
        return PHI4_MINI
    return None


def _candidates(tokenizer) -> list[str]:
    """Marked templates to try, best first: the model's own, TRL's exact match, ours for its format."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    own = tokenizer.chat_template
    if has_generation_markers(own):
        return [own]
    found = []
    try:
        trl_template = get_training_chat_template(tokenizer)
    except ValueError:  # TRL knows no marked variant of this template
        trl_template = None
    if trl_template:
        found.append(trl_template)
    fmt = chat_format(tokenizer)
    if fmt == PHI4_MINI:
        found.append(PHI4_MINI_TRAINING_TEMPLATE)
    elif fmt == PHI3:  # a Phi-3.5 template that differs from TRL's copy only in its bytes
        from trl.chat_template_utils import phi3_5_training_chat_template, phi3_training_chat_template

        found += [phi3_5_training_chat_template, phi3_training_chat_template]
    return found


def masked_text(tokenizer, messages, template: str) -> str:
    """The text a template's {% generation %} markers put in the loss, decoded."""
    enc = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    return tokenizer.decode([t for t, keep in zip(enc["input_ids"], enc["assistant_masks"]) if keep])


def template_problem(tokenizer, template: str) -> str | None:
    """Why `template` is not a faithful training variant of the tokenizer's own template, or None."""
    own = tokenizer.chat_template
    for messages in PROBES:
        for prompt in (False, True) if messages[-1]["role"] == "user" else (False,):
            if _render(tokenizer, messages, template, prompt) != _render(tokenizer, messages, own, prompt):
                return "it renders conversations differently from the model's own template"
        masked = masked_text(tokenizer, messages, template)
        replies = [m["content"] + "<|end|>" for m in messages if m["role"] == "assistant"]
        if any(reply not in masked for reply in replies):
            return "its mask misses an assistant reply or the <|end|> after it"
        if any(m["content"] in masked for m in messages if m["role"] != "assistant"):
            return "its mask covers text that is not the assistant's"
    return None


def training_template(tokenizer) -> str | None:
    """A {% generation %}-marked template faithful to the tokenizer's own, or None if there is none."""
    if not isinstance(tokenizer.chat_template, str):
        return None
    return next((t for t in _candidates(tokenizer) if template_problem(tokenizer, t) is None), None)


@contextmanager
def applied(tokenizer, assistant_only_loss: bool) -> Iterator[None]:
    """While TRL tokenizes the data (building SFTTrainer), the marked template; then the model's own again."""
    own = tokenizer.chat_template
    if assistant_only_loss:
        template = training_template(tokenizer)
        if template is None:
            raise MaskError("assistant-only loss needs a chat template that marks the assistant replies "
                            f"({{% generation %}}), and none fits this model's (format: {chat_format(tokenizer)}). "
                            "Use --assistant_only_loss false to train on whole conversations.")
        tokenizer.chat_template = template
    try:
        yield
    finally:
        tokenizer.chat_template = own


def check_masks(trainer, rows: int = 16) -> None:
    """Refuse (MaskError) when a collated training batch's labels are empty or cover every token.

    Counted over real tokens that are not the first of a sequence (padding and, with padding-free
    packing, each sequence's first position carry no label whatever the masks say).
    """
    import torch

    dataset = trainer.train_dataset
    batch = trainer.data_collator([dataset[i] for i in range(min(rows, len(dataset)))])
    labels = batch["labels"]
    counted = torch.ones_like(labels, dtype=torch.bool)
    if "attention_mask" in batch:
        counted &= batch["attention_mask"].bool()
    if "position_ids" in batch:
        counted &= batch["position_ids"] != 0
    else:
        counted[:, 0] = False
    trained = int(((labels != -100) & counted).sum())
    if trained == 0:
        raise MaskError("assistant-only loss was asked for, but no token of the first training batch is in the "
                        "loss (empty assistant masks). Check the chat template's {% generation %} markers, or use "
                        "--assistant_only_loss false.")
    if trained == int(counted.sum()):
        raise MaskError("assistant-only loss was asked for, but the first training batch trains on every token: "
                        "the assistant masks were dropped (as TRL does with Liger kernels, huggingface/trl#3781). "
                        "Refusing to train on whole conversations silently; use --assistant_only_loss false to "
                        "do that on purpose.")
