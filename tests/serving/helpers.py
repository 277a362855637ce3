"""Helpers shared by the serving tests, and by the deployment tests that start the server (`serving.helpers`)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(url: str, body: bytes | str | dict, timeout: float = 60.0) -> tuple[int, dict]:
    """POST JSON (a dict) or raw bytes/str; returns (status, decoded JSON body)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"server did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    """Stop a server started with start_new_session=True, workers included."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass


def start_server(model_dir: Path, log: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`python -m deployment.serve` on a free port in its own session; returns it and its base URL once healthy."""
    port = free_port()
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "deployment.serve", "--model-dir", str(model_dir), "--port", str(port), *args],
            stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, cwd=log.parent,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base + "/health", process, log)
    except BaseException:
        stop(process)
        raise
    return process, base


def build_hftransformers_tree(model_dir: Path, dest: Path) -> Path:
    """The azureml registry pipeline's `trained_model` output, exactly as that pipeline lays it out
    (an `hftransformers` MLflow folder), built from a save_pretrained model: MLmodel with the
    `*_hf_load_kwargs` (trust_remote_code true), data/model/ (weights + config), data/tokenizer/,
    data/config/, code/ and conda.yaml."""
    import shutil

    data = dest / "data"
    for sub in ("model", "tokenizer", "config"):
        (data / sub).mkdir(parents=True)
    for item in model_dir.iterdir():
        if item.name in ("config.json", "generation_config.json") or item.suffix == ".safetensors":
            shutil.copy2(item, data / "model" / item.name)
        if item.name.startswith("tokenizer") or item.name in ("chat_template.jinja", "special_tokens_map.json"):
            shutil.copy2(item, data / "tokenizer" / item.name)
    # Hub Phi-3 folders name their own modeling code in config.json (auto_map) and ship it; here that
    # code raises, so a server that ran it (trust_remote_code) could not load this tree.
    config = json.loads((data / "model" / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_phi3.Phi3Config",
                          "AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM"}
    for folder in (data / "model", data / "config"):
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("configuration_phi3.py", "modeling_phi3.py"):
        (data / "model" / name).write_text('raise RuntimeError("the model folder\'s own code ran")\n')
    (dest / "code" / "azureml" / "evaluate" / "mlflow").mkdir(parents=True)
    (dest / "code" / "azureml" / "evaluate" / "mlflow" / "__init__.py").write_text("")
    (dest / "conda.yaml").write_text(
        "channels:\n- conda-forge\ndependencies:\n- python=3.9.19\n- pip<=23.2.1\n- pip:\n"
        "  - mlflow==2.12.1\n  - transformers==4.40.0\n  - torch==2.2.0\nname: mlflow-env\n"
    )
    (dest / "MLmodel").write_text(
        "flavors:\n"
        "  hftransformersv2:\n"
        "    code: code\n"
        "    config_hf_load_kwargs:\n      trust_remote_code: true\n"
        "    hf_config_class: AutoConfig\n"
        "    hf_predict_module: predict\n"
        "    hf_pretrained_class: AutoModelForCausalLM\n"
        "    hf_tokenizer_class: AutoTokenizer\n"
        "    huggingface_id: microsoft/Phi-3-mini-4k-instruct\n"
        "    model_data: data\n"
        "    model_hf_load_kwargs:\n      device_map: auto\n      torch_dtype: torch.bfloat16\n"
        "      trust_remote_code: true\n"
        "    task_type: chat-completion\n"
        "    tokenizer_hf_load_kwargs:\n      model_input_names:\n      - input_ids\n      - attention_mask\n"
        "      padding_side: right\n      trust_remote_code: true\n"
        "  python_function:\n"
        "    code: code\n    data: data\n    env:\n      conda: conda.yaml\n"
        "    loader_module: azureml.evaluate.mlflow.hftransformers\n    python_version: 3.9.19\n"
        "mlflow_version: 2.12.1\n"
        "model_uuid: 5f0e4c1a2b3d4e5f8a9b0c1d2e3f4a5b\n"
    )
    return dest
