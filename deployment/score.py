"""Azure ML scoring script: `init()` loads the chat model once, `run(raw_data)` answers one chat.

Uploaded as the deployment's code and run by the Azure ML inference server
(`azureml-inference-server-http`), in the cloud container and locally (`python -m deployment.serve`).
Self-contained on purpose: it imports only the standard library, torch, transformers and the
server's `AMLResponse`, never this repository. (No dataclasses: the server loads this file with
`spec_from_file_location` without registering it in sys.modules, which dataclasses need.)

Requests (ARCHITECTURE section 5), one conversation each:
  contract  {"messages": [...], "max_tokens": 128, "temperature": 0.7, "top_p": 0.9}
  registry  {"input_data": {"input_string": [...], "parameters": {"max_new_tokens": 128, ...}}}
  mlflow    {"input_data": ["text"] | [...messages], "params": {"max_new_tokens": 128, ...}}
Response: {"output": "...", "finish_reason": "stop" | "length",
           "usage": {"prompt_tokens": N, "completion_tokens": M}}.
A malformed or out-of-range request gets HTTP 400 {"error": "..."}; a failed generation 500
{"error": "..."} with a short message. Logs carry sizes and latency, never message content.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

DEFAULT_MAX_TOKENS = 256
MAX_TOKENS_CAP = 2048
DEFAULT_TEMPERATURE = 0.0  # greedy unless the caller asks for sampling: reproducible answers
DEFAULT_TOP_P = 1.0
# Below this, sampling is greedy in all but name, and the logits divided by it overflow to inf
# (NaN probabilities, a failed generation): such temperatures decode greedily.
MIN_SAMPLING_TEMPERATURE = 1e-6
MAX_BODY_CHARS = 1_000_000
ROLES = ("system", "user", "assistant")
END_OF_TURN = "<|end|>"
SMALL_MODEL_PARAMETERS = 100_000_000  # below this, CPU generation runs on one thread (see _cpu_threads)
SEARCH_DEPTH = 2  # $AZUREML_MODEL_DIR/<folder>/ on Azure; one more level for safety
# Accepted generation parameters. Tutorials' clients also send do_sample and return_full_text;
# do_sample=false forces greedy decoding, return_full_text is accepted and ignored (the reply
# never repeats the prompt).
PARAMETERS = ("max_tokens", "max_new_tokens", "temperature", "top_p", "do_sample", "return_full_text")

logger = logging.getLogger("azmlinfsrv.score")

_engine: "ChatEngine | None" = None


class RequestError(ValueError):
    """The request is malformed or out of range: answered with HTTP 400 and this message."""


class ModelLocation(NamedTuple):
    """Where the weights and the tokenizer are, and which layout held them."""

    weights_dir: Path
    tokenizer_dir: Path
    layout: str  # "mlflow" or "hf"


class ChatRequest(NamedTuple):
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    top_p: float
    shape: str


# -- finding the model ---------------------------------------------------------------------------


def _as_model(folder: Path) -> ModelLocation | None:
    """`folder` as an MLflow transformers model or a save_pretrained folder, else None."""
    mlflow = (folder / "MLmodel").is_file()
    weights = folder / "model" if mlflow else folder
    if (weights / "adapter_config.json").is_file() and not (weights / "config.json").is_file():
        raise FileNotFoundError(
            f"{weights} holds a LoRA adapter, not a model: deploy the merged model the trainer saves"
        )
    if mlflow and (weights / "config.json").is_file():
        tokenizer = folder / "components" / "tokenizer"
        if not (tokenizer / "tokenizer_config.json").is_file():
            tokenizer = weights  # older MLflow versions kept the tokenizer beside the weights
        return ModelLocation(weights, tokenizer, "mlflow")
    if (folder / "config.json").is_file():
        return ModelLocation(folder, folder, "hf")
    return None


def locate_model(root: Path | str) -> ModelLocation:
    """Search `root` shallowly (breadth first) for the one model folder in it.

    On Azure, AZUREML_MODEL_DIR is a folder that contains the registered model folder; locally it
    may be the model folder itself. Raises FileNotFoundError saying what was expected, also when
    the shallowest level holding a model holds several (which one to serve would be a guess).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"model directory {root} does not exist or is not a folder")
    level = [root]
    for _ in range(SEARCH_DEPTH + 1):
        found = [location for location in map(_as_model, level) if location]
        if len(found) > 1:
            names = ", ".join(str(f.weights_dir.parent if f.layout == "mlflow" else f.weights_dir) for f in found[:4])
            raise FileNotFoundError(f"several models under {root} ({names}): point at one of them")
        if found:
            return found[0]
        following: list[Path] = []
        for folder in level:
            try:
                following.extend(sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))
            except OSError:
                continue
        level = following
    raise FileNotFoundError(
        f"no model found in {root}: expected an MLflow transformers model (MLmodel, model/, "
        "components/tokenizer/) or a save_pretrained folder (config.json), at most "
        f"{SEARCH_DEPTH} folders deep"
    )


# -- request parsing -------------------------------------------------------------------------------


def _text(value: str, where: str) -> str:
    try:  # JSON escapes can carry lone surrogates, which the tokenizer cannot encode
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(f"{where} is not valid Unicode (a lone surrogate escape such as \\ud800)") from None
    return value


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return _text(value, where)
    if isinstance(value, list):  # OpenAI-style content parts: only text parts are supported
        parts = []
        for i, part in enumerate(value):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise RequestError(f"{where}[{i}] must be a text part {{\"type\": \"text\", \"text\": \"...\"}}")
            parts.append(_text(part["text"], f"{where}[{i}].text"))
        return "".join(parts)
    raise RequestError(f"{where} must be a string, got {type(value).__name__}")


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise RequestError(f"{where} must be a list of messages, got {type(value).__name__}")
    if not value:
        raise RequestError(f"{where} is empty: send at least one message")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise RequestError(f"{where}[{i}] must be an object with role and content")
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(f"{where}[{i}].role must be one of {', '.join(ROLES)}")
        if "content" not in message:
            raise RequestError(f"{where}[{i}] has no content")
        messages.append({"role": role, "content": _content(message["content"], f"{where}[{i}].content")})
    if all(m["role"] == "system" for m in messages):
        raise RequestError(f"{where} has only system messages: add a user message")
    return messages


def _number(params: dict, name: str, default: float) -> float:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{name} must be a number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:  # a JSON integer beyond the float range
        raise RequestError(f"{name} is out of range") from None


def _parameters(params: Any, where: str, cap: int) -> tuple[int, float, float]:
    """Validated (max_tokens, temperature, top_p); temperature 0 means greedy decoding."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RequestError(f"{where} must be an object, got {type(params).__name__}")
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise RequestError(f"unknown parameter(s) {', '.join(unknown)[:200]}; accepted: {', '.join(PARAMETERS)}")
    given = [params[k] for k in ("max_tokens", "max_new_tokens") if params.get(k) is not None]
    if len(given) == 2 and given[0] != given[1]:
        raise RequestError("max_tokens and max_new_tokens disagree: send one of them")
    max_tokens = given[0] if given else DEFAULT_MAX_TOKENS
    if isinstance(max_tokens, float) and max_tokens.is_integer():
        max_tokens = int(max_tokens)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise RequestError(f"max_tokens must be an integer, got {type(max_tokens).__name__}")
    if not 1 <= max_tokens <= cap:
        raise RequestError(f"max_tokens must be between 1 and {cap}, got {max_tokens}")
    temperature = _number(params, "temperature", DEFAULT_TEMPERATURE)
    if not 0.0 <= temperature <= 2.0:
        raise RequestError(f"temperature must be between 0 and 2, got {temperature:g}")
    top_p = _number(params, "top_p", DEFAULT_TOP_P)
    if not 0.0 < top_p <= 1.0:
        raise RequestError(f"top_p must be greater than 0 and at most 1, got {top_p:g}")
    for flag in ("do_sample", "return_full_text"):
        if params.get(flag) is not None and not isinstance(params[flag], bool):
            raise RequestError(f"{flag} must be true or false")
    if params.get("do_sample") is False:
        temperature = 0.0
    return max_tokens, temperature, top_p


def parse_request(raw_data: Any, cap: int = MAX_TOKENS_CAP) -> ChatRequest:
    """Turn a request body (JSON text or an already decoded object) into a validated ChatRequest."""
    if isinstance(raw_data, (bytes, bytearray)):
        try:
            raw_data = raw_data.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("request body is not UTF-8 text") from None
    if isinstance(raw_data, str):
        if not raw_data.strip():
            raise RequestError("request body is empty: send a JSON object with Content-Type: application/json")
        if len(raw_data) > MAX_BODY_CHARS:
            raise RequestError(f"request body is larger than {MAX_BODY_CHARS} characters")
        try:
            body = json.loads(raw_data)
        except ValueError as err:
            raise RequestError(f"request body is not valid JSON ({err.__class__.__name__} at position "
                               f"{getattr(err, 'pos', '?')})") from None
        except RecursionError:
            raise RequestError("request body is nested too deeply") from None
    else:
        body = raw_data
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object with `messages` or `input_data`")

    if "messages" in body:
        params = {k: v for k, v in body.items() if k not in ("messages", "stream")}
        if body.get("stream"):
            raise RequestError("stream is not supported: send stream=false or leave it out")
        return ChatRequest(_messages(body["messages"], "messages"), *_parameters(params, "request", cap), "contract")

    if "input_data" not in body:
        raise RequestError(
            "request body needs `messages` (a list of {role, content}) or `input_data` "
            "(Azure ML registry or MLflow chat format)"
        )
    data = body["input_data"]
    if isinstance(data, dict):
        if "input_string" not in data:
            raise RequestError("input_data must hold input_string (a list of messages)")
        extra = sorted(set(data) - {"input_string", "parameters"})
        if extra:
            raise RequestError(f"input_data has unknown field(s) {', '.join(extra)[:200]}")
        messages = _messages(data["input_string"], "input_data.input_string")
        return ChatRequest(messages, *_parameters(data.get("parameters"), "input_data.parameters", cap), "registry")
    if isinstance(data, list):
        if not data:
            raise RequestError("input_data is empty: send one text or one conversation")
        if all(isinstance(item, str) for item in data):
            if len(data) != 1:
                raise RequestError("input_data holds several texts: send one per request")
            messages = [{"role": "user", "content": _content(data[0], "input_data[0]")}]
        elif len(data) == 1 and isinstance(data[0], list):
            messages = _messages(data[0], "input_data[0]")
        else:
            messages = _messages(data, "input_data")
        return ChatRequest(messages, *_parameters(body.get("params"), "params", cap), "mlflow")
    raise RequestError(f"input_data must be an object or a list, got {type(data).__name__}")


# -- the model -------------------------------------------------------------------------------------


class ChatEngine:
    """One loaded model and tokenizer; `generate` is serialized by a lock (workers may use threads)."""

    def __init__(self, location: ModelLocation) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if torch.cuda.is_available():
            self.device = torch.device("cuda")
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            self.device = torch.device("cpu")
            self.dtype = torch.float32
        self.location = location
        self.tokenizer = AutoTokenizer.from_pretrained(location.tokenizer_dir)
        if not getattr(self.tokenizer, "chat_template", None):
            raise RuntimeError(f"the tokenizer in {location.tokenizer_dir} has no chat template")
        self.model = AutoModelForCausalLM.from_pretrained(location.weights_dir, dtype=self.dtype)
        self.model.to(self.device).eval()
        self.threads = self._cpu_threads(torch)
        config = self.model.config
        self.context = int(getattr(config, "max_position_embeddings", 0) or 4096)
        self.cap = max(1, min(MAX_TOKENS_CAP, self.context - 1))
        self.stop_ids = self._stop_ids()
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.stop_ids[0] if self.stop_ids else 0
        self._lock = threading.Lock()

    def _cpu_threads(self, torch) -> int | None:
        """On CPU, one intra-op thread for small models (unless OMP_NUM_THREADS says otherwise).

        A small model's matrices are too small to split: extra threads only add synchronization,
        and on a busy machine they make every token several times slower (measured: the tiny
        model generates 2.8 ms/token on one thread, 13.8 ms/token on two, on a loaded 2-core VM).
        """
        if self.device.type != "cpu":
            return None
        if not os.environ.get("OMP_NUM_THREADS") and self.model.num_parameters() < SMALL_MODEL_PARAMETERS:
            torch.set_num_threads(1)
        return torch.get_num_threads()

    def _stop_ids(self) -> list[int]:
        ids: list[int] = []
        vocab = self.tokenizer.get_vocab()
        if END_OF_TURN in vocab:
            ids.append(vocab[END_OF_TURN])
        configured = self.model.generation_config.eos_token_id
        for value in configured if isinstance(configured, list) else [configured]:
            if value is not None:
                ids.append(int(value))
        if self.tokenizer.eos_token_id is not None:
            ids.append(int(self.tokenizer.eos_token_id))
        return list(dict.fromkeys(ids))

    def describe(self) -> str:
        return (
            f"{self.location.layout} model from {self.location.weights_dir} on {self.device} "
            f"({str(self.dtype).replace('torch.', '')}"
            f"{f', {self.threads} CPU threads' if self.threads else ''}), context {self.context} tokens, "
            f"max_tokens cap {self.cap}"
        )

    def generate(self, request: ChatRequest) -> dict[str, Any]:
        """Answer one chat. Raises RequestError when the prompt does not fit the context."""
        import torch
        from transformers import GenerationConfig

        with self._lock:
            encoded = self.tokenizer.apply_chat_template(
                request.messages,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                # Control tokens typed by a caller (e.g. "<|end|><|assistant|>") stay plain text.
                sanitize_control_tokens=True,
            )
            input_ids = encoded["input_ids"].to(self.device)
            prompt_tokens = int(input_ids.shape[1])
            if prompt_tokens >= self.context:
                raise RequestError(
                    f"the prompt is {prompt_tokens} tokens, the model's context is {self.context}: "
                    "send a shorter conversation"
                )
            # A long prompt leaves less room: generation stops at the context ("length").
            max_new = min(request.max_tokens, self.context - prompt_tokens)
            sampling = request.temperature >= MIN_SAMPLING_TEMPERATURE
            config = GenerationConfig(
                max_new_tokens=max_new,
                do_sample=sampling,
                temperature=request.temperature if sampling else None,
                top_p=request.top_p if sampling else None,
                top_k=0 if sampling else None,
                eos_token_id=self.stop_ids,
                pad_token_id=self.pad_id,
            )
            with torch.inference_mode():
                output = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=encoded["attention_mask"].to(self.device),
                    generation_config=config,
                )
            new_tokens = output[0, prompt_tokens:].tolist()
            finish_reason = "stop" if new_tokens and new_tokens[-1] in self.stop_ids else "length"
            text = self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
        return {
            "output": text,
            "finish_reason": finish_reason,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(new_tokens)},
        }


# -- the inference server's entry points ------------------------------------------------------------


def _error(status: int, message: str):
    from azureml_inference_server_http.api.aml_response import AMLResponse

    return AMLResponse({"error": message}, status, json_str=True)


def init() -> None:
    """Load the model once per worker from AZUREML_MODEL_DIR (a failure stops the worker)."""
    global _engine
    root = os.environ.get("AZUREML_MODEL_DIR")
    if not root:
        raise RuntimeError("AZUREML_MODEL_DIR is not set: point it at the model folder")
    started = time.perf_counter()
    location = locate_model(root)
    _engine = ChatEngine(location)
    logger.info("loaded %s in %.1fs", _engine.describe(), time.perf_counter() - started)


def run(raw_data: str):
    """Answer one request: a dict (HTTP 200) or an AMLResponse carrying 400/500 and {"error"}."""
    started = time.perf_counter()
    size = len(raw_data) if isinstance(raw_data, (str, bytes, bytearray)) else 0
    engine = _engine
    if engine is None:
        logger.error("score: request before init() completed")
        return _error(503, "the model is not loaded yet; retry in a moment")
    shape = "?"
    try:
        request = parse_request(raw_data, cap=engine.cap)
        shape = request.shape
        result = engine.generate(request)
    except RequestError as err:
        logger.info("score: 400 shape=%s body_chars=%d %.0fms: %s", shape, size,
                    (time.perf_counter() - started) * 1e3, err)
        return _error(400, str(err))
    except Exception as err:  # noqa: BLE001 - a generation failure is a 500, without a traceback
        logger.error("score: 500 shape=%s body_chars=%d %.0fms: generation failed: %s: %.200s",
                     shape, size, (time.perf_counter() - started) * 1e3, type(err).__name__, err)
        return _error(500, f"generation failed ({type(err).__name__}); see the deployment log")
    elapsed = time.perf_counter() - started
    usage = result["usage"]
    logger.info(
        "score: 200 shape=%s messages=%d prompt_tokens=%d completion_tokens=%d finish=%s %.0fms (%.1f tok/s)",
        shape, len(request.messages), usage["prompt_tokens"], usage["completion_tokens"],
        result["finish_reason"], elapsed * 1e3, usage["completion_tokens"] / max(elapsed, 1e-9),
    )
    return result
