"""Both twins, trained and merged by the real trainer, served by `python -m deployment.serve` and asked
through the OpenAI route `/v1/chat/completions`; the server stops at the models' <|end|>."""
from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from common import processes
from training.trainer import fine_tune as ft

pytestmark = pytest.mark.slow

QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who founded Microsoft?"}]


def _request(url: str, body: dict | None = None, timeout: float = 120) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _tokenizer(model_folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_folder / "components" / "tokenizer")


@pytest.fixture(scope="module", params=["phi-3.5-mini", "phi-4-mini"])
def served_twin(request, tiny_model_dir: Path, tiny_phi4_model_dir: Path, sample_data_dir: Path,
                tmp_path_factory: pytest.TempPathFactory):
    """(twin, trained MLflow model folder, base URL of the server on it)."""
    twin = request.param
    base_dir = tiny_phi4_model_dir if twin == "phi-4-mini" else tiny_model_dir
    out = tmp_path_factory.mktemp(f"served-{twin}") / "model"
    ft.train(ft.parse_args([
        "--model_name_or_path", str(base_dir), "--train_file", str(sample_data_dir / "train.jsonl"),
        "--eval_file", str(sample_data_dir / "test.jsonl"), "--output_dir", str(out), "--method", "lora",
        "--learning_rate", "1e-2", "--max_steps", "2", "--max_length", "128", "--per_device_train_batch_size", "2",
        "--per_device_eval_batch_size", "16", "--gradient_accumulation_steps", "1", "--warmup_ratio", "0",
        "--log_model_artifacts", "false"]))
    port = processes.free_port()
    log = out.parent / "server.log"
    server, _ = processes.start([sys.executable, "-m", "deployment.serve", "--model-dir", str(out), "--port", str(port)],
                                log)
    base = f"http://127.0.0.1:{port}"
    try:
        processes.wait_healthy(server, base + "/health", log, timeout=300.0)
        yield twin, out, base
    finally:
        processes.stop_group(server)


def test_the_trained_twin_answers_through_the_openai_route(served_twin) -> None:
    twin, out, base = served_twin
    status, models = _request(base + "/v1/models")
    assert status == 200 and len(models["data"]) == 1
    status, reply = _request(base + "/v1/chat/completions",
                             {"model": models["data"][0]["id"], "messages": QUESTION, "max_tokens": 8, "temperature": 0})
    assert status == 200, reply
    choice = reply["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    assert "<|end|>" not in choice["message"]["content"] and "<|assistant|>" not in choice["message"]["content"]
    usage = reply["usage"]
    prompt = _tokenizer(out).apply_chat_template(QUESTION, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert usage["prompt_tokens"] == len(prompt)  # the server rendered the model's own format
    assert 1 <= usage["completion_tokens"] <= 8
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == 8


def test_the_server_stops_at_the_twins_end_token(served_twin) -> None:
    """The server's stop set is the trained model's generation_config: <|end|> and <|endoftext|>, both twins."""
    from transformers import AutoModelForCausalLM

    from deployment.serving.engines.loading import stop_token_ids

    twin, out, _ = served_twin
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = _tokenizer(out)
    assert set(tok.convert_ids_to_tokens(stop_token_ids(model, tok))) == {"<|end|>", "<|endoftext|>"}
