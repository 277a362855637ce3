"""`python -m deployment.serve`, the real server on the tiny model: what is not the contract of every engine.

Loopback binding, the registry pipeline's hftransformers layout, the engine choice, and the command
line. The contract both engines keep is tests/serving/test_contract.py.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from serving.helpers import build_hftransformers_tree, free_port, post, start_server, stop

pytestmark = pytest.mark.slow

QUESTION = "Who founded Microsoft?"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": QUESTION},
]


def _non_loopback_ip() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))  # no packet is sent: this only picks a route
            ip = sock.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_binds_loopback_only(inference_server: str) -> None:
    ip = _non_loopback_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback address")
    port = int(inference_server.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        socket.create_connection((ip, port), timeout=2).close()


# -- the registry pipeline's hftransformers layout ----------------------------------------------------


def test_serves_the_registry_pipelines_hftransformers_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    """AZUREML_MODEL_DIR/<name>/<version>/ holding the pipeline's `trained_model` tree, served as is."""
    root = tmp_path / "azureml-models" / "phi3-registry" / "1"
    tree = build_hftransformers_tree(tiny_model_dir, root / "mlflow_model_folder")
    assert sorted(p.name for p in tree.iterdir()) == ["MLmodel", "code", "conda.yaml", "data"]
    process, base = start_server(root, tmp_path / "server.log")
    try:
        status, answer = post(base + "/score", {"input_data": {"input_string": MESSAGES, "parameters": {"max_new_tokens": 4}}})
        assert status == 200 and answer["usage"]["completion_tokens"] <= 4
        from openai import OpenAI

        reply = OpenAI(base_url=base + "/v1", api_key="x", max_retries=0).chat.completions.create(
            model="phi", messages=MESSAGES, max_tokens=4)
        assert reply.choices[0].finish_reason in ("stop", "length")
    finally:
        stop(process)
    log = (tmp_path / "server.log").read_text()
    assert "hftransformers model" in log and "mlflow_model_folder/data/model" in log
    assert "trust_remote_code" in log and "not needed" in log  # MLmodel asked; built-in Phi3 needs none


# -- the command line ------------------------------------------------------------------------------


def _serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deployment.serve", *args], capture_output=True, text=True, timeout=timeout)


def test_help_is_instant_and_imports_nothing_heavy() -> None:
    result = _serve("--help")
    assert result.returncode == 0 and "--model-dir" in result.stdout and "--host" in result.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, deployment.serve as s; s.build_parser();"
         "print(sorted(m for m in ('torch', 'transformers', 'fastapi', 'uvicorn') if m in sys.modules))"],
        capture_output=True, text=True, timeout=30,
    )
    assert probe.stdout.strip() == "[]"


def test_not_a_model_dir_is_a_clear_error(tmp_path: Path) -> None:
    result = _serve("--model-dir", str(tmp_path), "--port", str(free_port()))
    assert result.returncode == 1
    assert result.stderr.startswith("error: no model found in")
    assert "Traceback" not in result.stderr


def test_busy_port_is_a_clear_error(tiny_model_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = _serve("--model-dir", str(tiny_model_dir), "--port", str(port))
    assert result.returncode == 1
    assert "already in use" in result.stderr


def test_a_model_that_fails_to_load_exits_non_zero(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "phi3"}')  # a config, but no tokenizer or weights
    port = free_port()
    result = _serve("--model-dir", str(tmp_path), "--port", str(port), timeout=120)
    assert result.returncode == 1
    assert "the model failed to load" in result.stderr
    with pytest.raises(OSError):  # and nothing is left listening
        urllib.request.urlopen(f"http://127.0.0.1:{port}/live", timeout=2)


# -- the engine choice ---------------------------------------------------------------------------------


def test_engine_vllm_without_its_environment_names_the_command(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Locally: the command that builds vLLM's environment, in one line."""
    from common.cli import UserError
    from deployment.serve import run_in_vllm_venv

    with pytest.raises(UserError) as info:
        run_in_vllm_venv(["--engine", "vllm", "--model-dir", str(tiny_model_dir)], python=tmp_path / "no-python")
    assert "`make vllm`" in str(info.value) and "\n" not in str(info.value)
    # The package alone (the image's command) in a Python without vLLM: the same hint, exit 1, no traceback.
    result = subprocess.run([sys.executable, "-m", "deployment.serving", "--engine", "vllm", "--model-dir",
                             str(tiny_model_dir), "--port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: --engine vllm: vLLM is not installed") and "`make vllm`" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.vllm
def test_auto_picks_vllm_only_on_a_cuda_gpu() -> None:
    """In vLLM's environment on this CPU machine, `auto` is still the transformers engine (the CPU twin)."""
    from serving.conftest import require_vllm_venv
    from deployment.serve import REPO_ROOT, VLLM_PYTHON

    require_vllm_venv()
    probe = subprocess.run(
        [str(VLLM_PYTHON), "-c", "import torch; from deployment.serving.engines import choose, vllm_installed; "
         "print(vllm_installed(), torch.cuda.is_available(), choose('auto'), choose('vllm'))"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert probe.stdout.split() == ["True", "False", "transformers", "vllm"], probe.stderr[-2000:]
