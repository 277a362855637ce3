"""The entities and the serving environment: real azure-ai-ml objects, validated by the SDK loaders."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from common.cli import UserError
from common.pins import CLOUD_TORCH_PIN, cloud_pins
from deployment import definitions
from deployment.environment import PORT, SERVING_PACKAGE, base_image, base_pins, serving_environment
from deployment.serving.limits import DEFAULT_MAX_SEQUENCES, ENV_MAX_SEQUENCES
from serving.helpers import REPO_ROOT

def test_environment_is_the_server_container_built_from_the_cloud_pins(tmp_path):
    env = serving_environment("Standard_E16s_v3")
    assert env == serving_environment("Standard_E4s_v3")  # one image for the CPU instance types: reused
    assert env.name == "phi3-serve" and env.engine == "transformers"  # GPU types: tests/deployment/test_vllm_image.py
    requirements = env.files["requirements.txt"].decode().split()
    assert requirements == cloud_pins("serve") + base_pins()
    assert CLOUD_TORCH_PIN in requirements and "torch==2.13.0" not in requirements  # never the local CUDA 13 build
    assert not any(r.startswith("azureml-inference-server-http") for r in requirements)
    assert {"fastapi==0.141.1", "uvicorn==0.54.0"} <= set(requirements)
    docker = env.files["Dockerfile"].decode()
    base = base_image(env.files["Dockerfile"])
    assert re.search(r":\d{8}\.v\d+$", base), "the base image must be a dated tag, not :latest"
    cmd = json.loads(docker.strip().splitlines()[-1].removeprefix("CMD "))
    assert f"-m deployment.serving --model-dir \"$AZUREML_MODEL_DIR\" --host 0.0.0.0 --port {PORT}" in cmd[-1]
    assert f"EXPOSE {PORT}" in docker.splitlines()
    # the context is the server package as it is: every module in it, nothing from elsewhere, no caches
    modules = {p.relative_to(SERVING_PACKAGE).as_posix() for p in SERVING_PACKAGE.rglob("*.py")
               if "__pycache__" not in p.parts}
    assert set(env.files) == modules | {"Dockerfile", "requirements.txt", "constraints.txt"}  # the lock: tests/common/test_cloud_lock.py
    assert {"cli.py", "app.py", "routes/chat.py", "engines/transformers_engine.py"} <= modules

    # a changed pin is a new version
    changed = tmp_path / "pyproject.toml"
    text = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    changed.write_text(text.replace('"uvicorn==0.54.0"', '"uvicorn==0.54.1"'))
    assert serving_environment("x", changed).version != env.version
    unpinned = tmp_path / "unpinned.toml"
    unpinned.write_text('[project.optional-dependencies]\nserve = ["torch", "fastapi==0.141.1"]\n')
    with pytest.raises(UserError, match="unpinned"):
        serving_environment("x", unpinned)


@pytest.mark.parametrize("instance_type", ["Standard_E16s_v3", "Standard_NC24ads_A100_v4"])
def test_environment_entity_routes_and_staged_context(tmp_path, instance_type):
    env = serving_environment(instance_type)
    entity = env.to_entity(tmp_path)
    folder = Path(entity.build.path)
    assert folder == tmp_path / f"serve-image-{env.version}"
    assert {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} == set(env.files)
    assert env.to_entity(tmp_path).build.path == entity.build.path  # content-addressed: staged once
    routes = entity.inference_config
    assert routes["liveness_route"] == {"port": 8000, "path": "/live"}
    assert routes["readiness_route"] == {"port": 8000, "path": "/health"}
    assert routes["scoring_route"] == {"port": 8000, "path": "/"}  # the caller's path is appended: /score, /v1/...


@pytest.mark.slow
def test_the_staged_app_alone_serves_the_model(tmp_path, tiny_model_dir):
    """The container's code is complete: the staged package alone, without this repository, serves, laid
    out as the Dockerfile copies it (/app/deployment/serving, `deployment` a namespace package)."""
    from common.processes import free_port, start, stop_group, wait_healthy

    context = serving_environment("x").stage(tmp_path)
    app = tmp_path / "app"
    (app / "deployment").mkdir(parents=True)
    (app / "deployment" / "serving").symlink_to(context, target_is_directory=True)
    port = free_port()
    log = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    process, _ = start([sys.executable, "-I", "-c", "import sys, runpy; sys.path.insert(0, '.'); "
                        "runpy.run_module('deployment.serving', run_name='__main__')",
                        "--model-dir", str(tiny_model_dir), "--host", "127.0.0.1", "--port", str(port)],
                       log, cwd=app, env=env)
    try:
        wait_healthy(process, f"http://127.0.0.1:{port}/health", log, timeout=120.0)
    finally:
        stop_group(process)
    where = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; sys.path.insert(0, '.'); import deployment.serving.cli as c, "
         "deployment.serving.app as a, deployment.serving.engines.transformers_engine as e; "
         "print(c.__file__, a.__file__, e.__file__, *sorted(m for m in sys.modules if m.split('.')[0] == 'common'))"],
        cwd=app, capture_output=True, text=True, env=env, timeout=60,
    ).stdout.split()
    assert len(where) == 3 and all(Path(f).is_relative_to(app) for f in where)  # the staged copies; no `common`


def test_serving_torch_runs_on_azure_mls_driver():
    """The container's torch must not need a newer NVIDIA driver than Azure ML's 535 (CUDA 12 at most)."""
    requirements = serving_environment("x").files["requirements.txt"].decode().split()
    torch = next(r for r in requirements if r.startswith("torch=="))
    assert torch == CLOUD_TORCH_PIN == "torch==2.10.0"  # PyPI's newest CUDA 12 (12.8) build


def test_deployment_runs_the_container_with_probes_limits_and_the_endpoint_identity(outputs, tmp_path):
    """A CPU instance type: the transformers engine's bound; GPU types: tests/deployment/test_vllm_image.py."""
    env = serving_environment("Standard_E16s_v3").to_entity(tmp_path)
    deployment = definitions.build_deployment(name="blue", endpoint_name="phi3-x", model="azureml:phi3-finetuned:1",
                                              environment=env, instance_type="Standard_E16s_v3", outputs=outputs)
    doc = definitions.entity_dict(deployment)
    loaded = definitions.load_back(doc)
    assert "code_configuration" not in doc  # no scoring script: the container runs the server itself
    ready, live = loaded.readiness_probe, loaded.liveness_probe
    assert ready.initial_delay <= 30 and ready.period * ready.failure_threshold >= 15 * 60  # short delay, long patience
    assert live.initial_delay >= 500  # only liveness waits long before its first probe
    settings = loaded.request_settings
    assert settings.max_concurrent_requests_per_instance == DEFAULT_MAX_SEQUENCES > 2
    assert settings.request_timeout_ms == 180_000  # Azure's maximum: CPU replies are slow
    assert loaded.instance_count == 1
    variables = loaded.environment_variables
    assert variables["AZURE_CLIENT_ID"] == outputs.endpoint_uai_client_id != outputs.uai_client_id
    assert variables[ENV_MAX_SEQUENCES] == str(DEFAULT_MAX_SEQUENCES) and variables["PHI_SERVE_ENGINE"] == "transformers"
    assert doc["environment"]["inference_config"]["scoring_route"] == {"port": 8000, "path": "/"}
    printed = definitions.definitions_yaml([deployment])  # what the dry run prints: the image's recipe too
    base = base_image(serving_environment("x").files["Dockerfile"])
    assert f"# FROM {base}" in printed and f"# {CLOUD_TORCH_PIN}" in printed
    assert loaded.environment.build.path == env.build.path


def test_endpoint_serializes_twice_and_uses_the_endpoint_identity(outputs):
    endpoint = definitions.build_endpoint("phi3-x", outputs)
    first, second = definitions.entity_dict(endpoint), definitions.entity_dict(endpoint)
    assert first == second
    loaded = definitions.load_back(first)
    ids = [u.resource_id for u in loaded.identity.user_assigned_identities]
    assert ids == [outputs.endpoint_uai_resource_id] and outputs.uai_resource_id not in ids
    assert loaded.tags == definitions.CREATED_BY


def test_instance_table_matches_the_docs(repo_root):
    docs = (repo_root / "docs" / "DEPLOY.md").read_text(encoding="utf-8")
    for info in definitions.INSTANCE_TYPES.values():
        assert info.sku in docs and f"{info.usd_per_hour:.3f}".rstrip("0") in docs
    assert definitions.instance_info(definitions.DEFAULT_INSTANCE_TYPE) is not None
    from deployment.deploy import build_parser

    assert build_parser().get_default("instance_type") == definitions.DEFAULT_INSTANCE_TYPE  # the CLI's default


# Every SDK call deploy/teardown make, as they make it: the fake must not drift from the real MLClient.
SDK_CALLS = [
    ("online_endpoints", "get", (), {"name": "e"}),
    ("online_endpoints", "list", (), {}),
    ("online_endpoints", "begin_create_or_update", (object(),), {}),
    ("online_endpoints", "get_keys", (), {"name": "e"}),
    ("online_endpoints", "begin_delete", (), {"name": "e"}),
    ("online_deployments", "list", (), {"endpoint_name": "e"}),
    ("online_deployments", "begin_create_or_update", (object(),), {}),
    ("online_deployments", "get_logs", (), {"name": "d", "endpoint_name": "e", "lines": 50}),
    ("online_deployments", "get_logs", (), {"name": "d", "endpoint_name": "e", "lines": 50, "container_type": "storage-initializer"}),
    ("online_deployments", "begin_delete", (), {"name": "d", "endpoint_name": "e"}),
    ("models", "list", (), {"name": "m"}),
    ("models", "get", (), {"name": "m", "version": "1"}),
    ("models", "create_or_update", (object(),), {}),
    ("environments", "get", (), {"name": "n", "version": "v"}),
    ("environments", "create_or_update", (object(),), {}),
    ("jobs", "get", ("j",), {}),
    ("jobs", "list", (), {}),
    ("workspaces", "begin_delete", ("w",), {"permanently_delete": True, "delete_dependent_resources": False}),
    ("connections", "create_or_update", (object(),), {}),
]


@pytest.mark.parametrize("op, method, args, kwargs", SDK_CALLS, ids=lambda v: v if isinstance(v, str) else "")
def test_calls_match_the_real_ml_client(op, method, args, kwargs, outputs):
    import inspect

    from azure.identity import DefaultAzureCredential

    from common.azure import make_ml_client
    from fakes.ml_client import FakeMLClient

    real = getattr(getattr(make_ml_client(outputs, credential=DefaultAzureCredential()), op), method)
    inspect.signature(real).bind(*args, **kwargs)  # raises TypeError on a wrong name or arity
    inspect.signature(getattr(getattr(FakeMLClient(), op), method)).bind(*args, **kwargs)
