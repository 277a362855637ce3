"""The entities and the serving environment: real azure-ai-ml objects, validated by the SDK loaders."""
from __future__ import annotations

import ast

import pytest

from common.cli import UserError
from deployment import definitions
from deployment.environment import CPU_BASE_IMAGE, GPU_BASE_IMAGE, serve_requirements, serving_environment

PROJECT_PACKAGES = {"infra", "training", "deployment", "flows", "common"}


def test_score_py_is_self_contained():
    """Only score.py is uploaded as the deployment's code: it must import no project module."""
    tree = ast.parse(definitions.SCORE_SCRIPT.read_text(encoding="utf-8"))
    imported = {
        (node.module or "").split(".")[0] if isinstance(node, ast.ImportFrom) else alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert not imported & PROJECT_PACKAGES
    assert {"init", "run"} <= {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


def test_environment_from_the_serve_pins_versioned_by_content(repo_root, tmp_path):
    pins = serve_requirements()
    assert any(p.startswith("azureml-inference-server-http==") for p in pins)
    assert any(p.startswith("torch==") for p in pins)
    gpu = serving_environment("Standard_NC24ads_A100_v4")
    assert gpu.image == GPU_BASE_IMAGE and serving_environment("Standard_E4s_v3").image == CPU_BASE_IMAGE
    assert gpu == serving_environment("Standard_NC40ads_H100_v5")  # same content, same version: reused
    assert gpu.conda["dependencies"][-1]["pip"] == pins

    changed = tmp_path / "pyproject.toml"
    text = (repo_root / "pyproject.toml").read_text(encoding="utf-8")
    server_pin = next(p for p in pins if p.startswith("azureml-inference-server-http=="))
    changed.write_text(text.replace(f'"{server_pin}"', f'"{server_pin}.post1"'))
    assert serving_environment("Standard_NC24ads_A100_v4", changed).version != gpu.version

    unpinned = tmp_path / "unpinned.toml"
    unpinned.write_text('[project.optional-dependencies]\nserve = ["torch", "mlflow==3.17.0"]\n')
    with pytest.raises(UserError, match="unpinned"):
        serve_requirements(unpinned)


def test_endpoint_serializes_twice_and_stays_usable(outputs):
    endpoint = definitions.build_endpoint("phi3-x", outputs)
    first, second = definitions.entity_dict(endpoint), definitions.entity_dict(endpoint)
    assert first == second
    loaded = definitions.load_back(first)
    assert loaded.identity.user_assigned_identities[0].resource_id == outputs.uai_resource_id
    assert loaded.tags == definitions.CREATED_BY


def test_stage_code_holds_score_py_only(tmp_path):
    folder = definitions.stage_code(tmp_path)
    assert [p.name for p in folder.iterdir()] == ["score.py"]
    assert definitions.stage_code(tmp_path) == folder  # content-addressed: same folder again
    assert (folder / "score.py").read_bytes() == definitions.SCORE_SCRIPT.read_bytes()


def test_instance_table_matches_the_docs(repo_root):
    docs = (repo_root / "docs" / "DEPLOY.md").read_text(encoding="utf-8")
    for info in definitions.INSTANCE_TYPES.values():
        assert info.sku in docs and f"{info.usd_per_hour:.3f}".rstrip("0") in docs
    assert definitions.instance_info(definitions.DEFAULT_INSTANCE_TYPE) is not None
    from deployment.deploy import DEFAULT_INSTANCE_TYPE

    assert DEFAULT_INSTANCE_TYPE == definitions.DEFAULT_INSTANCE_TYPE


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
    from deploy_fake_client import FakeMLClient

    real = getattr(getattr(make_ml_client(outputs, credential=DefaultAzureCredential()), op), method)
    inspect.signature(real).bind(*args, **kwargs)  # raises TypeError on a wrong name or arity
    inspect.signature(getattr(getattr(FakeMLClient(), op), method)).bind(*args, **kwargs)
