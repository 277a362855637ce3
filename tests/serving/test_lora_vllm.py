"""LoRA adapters served per request on vLLM's CPU build (the must-show of the adapters issue): two adapters
of the tiny base, served together by one server, each picked by the request's `model`.

The reference is the same adapter merged into the base (PEFT's merge_and_unload) and decoded greedily by
transformers in fp32 from the same prompt ids (deployment/serving/prompt.py): vLLM's per-request LoRA must
pick the same 16 tokens. The adapters are random (serving/lora.py), so the two answer differently."""
from __future__ import annotations

from pathlib import Path

import pytest
import requests

from serving.helpers import post

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

QUESTION = [{"role": "user", "content": "Who founded Microsoft?"}]
TOKENS = 16
BASE = "finetune-phi"  # the mount's registered-model folder name (AZUREML_MODEL_DIR/<name>/<version>)


def _chat(base: str, **extra) -> tuple[int, dict]:
    return post(base + "/v1/chat/completions", {"messages": QUESTION, "max_tokens": TOKENS, "temperature": 0, **extra},
                timeout=300)


@pytest.fixture(scope="module")
def merged_replies(tiny_model_dir: Path, tiny_lora_adapters: dict[str, Path]) -> dict[str, str]:
    """NAME -> the greedy reply of the adapter merged into the base, by transformers in fp32 (16 tokens at most,
    stopping where the server stops: the model's own stop tokens)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from deployment.serving.prompt import encode_chat

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = torch.tensor([encode_chat(tokenizer, QUESTION)])
    stop = GenerationConfig.from_pretrained(tiny_model_dir).eos_token_id
    replies = {}
    for name, folder in tiny_lora_adapters.items():
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, folder).merge_and_unload().eval()
        out = model.generate(ids, max_new_tokens=TOKENS, do_sample=False, eos_token_id=stop, pad_token_id=stop if
                             isinstance(stop, int) else stop[0])
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        replies[name] = text.rstrip("\ufffd").strip()  # vLLM holds back a trailing incomplete UTF-8 sequence
    return replies


def test_each_adapter_answers_as_itself_merged(vllm_lora_server: str, merged_replies: dict[str, str]) -> None:
    got = {}
    for name in ("support", "legal"):
        status, body = _chat(vllm_lora_server, model=name)
        assert status == 200 and body["model"] == name
        got[name] = body["choices"][0]["message"]["content"]
    assert got == merged_replies and all(got.values())
    assert got["support"] != got["legal"]  # two fine-tunes, one server, picked by `model`


def test_the_base_answers_by_its_own_name_and_differs(vllm_lora_server: str, merged_replies: dict[str, str]) -> None:
    status, body = _chat(vllm_lora_server, model=BASE)
    assert status == 200 and body["model"] == BASE
    assert body["choices"][0]["message"]["content"] not in merged_replies.values()


def test_no_model_and_score_get_the_default_adapter(vllm_lora_server: str, merged_replies: dict[str, str]) -> None:
    """The default is the newest: the last --adapter (legal)."""
    status, body = _chat(vllm_lora_server)
    assert status == 200 and body["model"] == "legal"
    assert body["choices"][0]["message"]["content"] == merged_replies["legal"]
    status, scored = post(vllm_lora_server + "/score", {"messages": QUESTION, "max_tokens": TOKENS, "temperature": 0},
                          timeout=300)
    assert status == 200 and scored["output"] == merged_replies["legal"]


def test_an_unknown_name_is_404_naming_the_served_ones(vllm_lora_server: str) -> None:
    status, body = _chat(vllm_lora_server, model="gpt-4o")
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert f"'{BASE}', 'support', 'legal'" in body["error"]["message"]


def test_models_lists_the_base_and_each_adapter(vllm_lora_server: str) -> None:
    listed = requests.get(vllm_lora_server + "/v1/models", timeout=30).json()["data"]
    assert [(m["id"], m["parent"]) for m in listed] == [(BASE, None), ("support", BASE), ("legal", BASE)]
