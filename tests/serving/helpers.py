"""Helpers shared by the serving tests, and by the deployment tests that start the server (`serving.helpers`).

Starting, waiting for and stopping servers is common/processes.py's, as for the project's own code."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from common.processes import free_port, start, wait_healthy
from common.processes import stop_group as stop

__all__ = ["free_port", "post", "start_server", "stop", "wait_healthy", "build_hftransformers_tree"]

REPO_ROOT = Path(__file__).resolve().parents[2]


def post(url: str, body: bytes | str | dict, timeout: float = 60.0) -> tuple[int, dict]:
    """POST JSON (a dict) or raw bytes/str; returns (status, decoded JSON body)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def start_server(model_dir: Path, log: Path, *args: str, env: dict | None = None, python: str = sys.executable,
                 timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """`python -m deployment.serve` on a free port in its own session; returns it and its base URL once healthy."""
    port = free_port()
    process, _ = start([python, "-m", "deployment.serve", "--model-dir", str(model_dir), "--port", str(port), *args],
                       log, cwd=log.parent, env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    wait_healthy(process, base + "/health", log, timeout=timeout)  # stops the server when it fails
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
