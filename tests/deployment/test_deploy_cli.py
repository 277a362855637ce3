"""python -m deployment.deploy: --help, --dry-run YAML, the azure path end to end through main()."""
from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fakes.deploy_fixtures import OUTPUTS
from deployment.scoring import DEFAULT_LIMIT
from common.cli import run_cli
from deployment import deploy
from fakes.ml_client import SECRET_KEY


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(deploy.main, argv)
    return int(exit_info.value.code or 0)


def test_help_is_instant_and_imports_nothing_heavy(repo_root):
    code = (
        "import sys\nfrom deployment import deploy, evaluate, teardown\n"
        "for main in (deploy.main, teardown.main, evaluate.main):\n"
        "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
        "heavy = [m for m in ('azure.ai.ml', 'azure.identity', 'torch', 'transformers', 'promptflow') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout
    assert "--instance-type" in done.stdout and "--purge-workspace" in done.stdout
    assert "--expires-in" in done.stdout and "--expired" in done.stdout and "--eval-file" in done.stdout


def test_dry_run_prints_yaml_the_sdk_loads_without_network(outputs_file, runs, monkeypatch, capsys):
    from azure.ai.ml import load_online_deployment, load_online_endpoint

    def no_network(*args, **kwargs):
        raise AssertionError("dry run touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr("common.azure.make_ml_client", no_network)

    assert _run(["--outputs-file", str(outputs_file), "--dry-run", "--instance-type", "Standard_E16s_v3"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert len(docs) == 2
    endpoint = load_online_endpoint(source=io.StringIO(yaml.safe_dump(docs[0])))
    deployment = load_online_deployment(source=io.StringIO(yaml.safe_dump(docs[1])))
    assert endpoint.auth_mode == "key" and endpoint.identity.type == "user_assigned"
    assert [u.resource_id for u in endpoint.identity.user_assigned_identities] == [OUTPUTS["endpoint_uai_resource_id"]]
    assert deployment.endpoint_name == endpoint.name and deployment.name == "blue"
    assert deployment.instance_type == "Standard_E16s_v3"
    # the server's container: a staged build context and its routes; no scoring script
    assert (Path(deployment.environment.build.path) / "Dockerfile").is_file()
    assert docs[1]["environment"]["inference_config"]["readiness_route"] == {"port": 8000, "path": "/health"}
    assert deployment.code_configuration is None
    assert deployment.environment_variables["AZURE_CLIENT_ID"] == OUTPUTS["endpoint_uai_client_id"]


def test_dry_run_with_a_named_model(outputs_file, runs, capsys):
    assert _run(["--outputs-file", str(outputs_file), "--dry-run", "--model", "phi3-finetuned:7",
                 "--endpoint-name", "my-phi"]) == 0
    endpoint, deployment = yaml.safe_load_all(capsys.readouterr().out)
    assert endpoint["name"] == "my-phi" and deployment["model"] == "azureml:phi3-finetuned:7"
    assert deployment["environment"]["inference_config"]["scoring_route"] == {"port": 8000, "path": "/"}


def test_azure_path_through_main(outputs_file, runs, fake_client, scoring_server, monkeypatch, capsys):
    from promptflow.client import PFClient

    from deployment.connection import read_phi_connection

    monkeypatch.setattr("common.azure.make_ml_client", lambda outputs, credential=None: fake_client)
    fake_client.add_job("job-1")

    assert _run(["--outputs-file", str(outputs_file)]) == 0
    out, err = capsys.readouterr()
    assert "deployment: blue" in out and scoring_server.url in out and "teardown" in out
    assert "price:      about $3.67/h (Standard_NC24ads_A100_v4" in out and "expires:" not in out
    assert "evaluation: first deployment: correctness 100.0, instructions " in out and "(N=12) recorded as the baseline" in out
    # the flow calls our server through its OpenAI API: the endpoint's base URL and `api: openai`
    base = scoring_server.url.removesuffix("/score")
    assert read_phi_connection() == {"endpoint": base, "api": "openai", "deployment": "blue"}  # the real store
    assert PFClient().connections.get("phi_endpoint", with_secrets=True).secrets["key"] == SECRET_KEY
    assert {r["path"] for r in scoring_server.requests} == {"/v1/chat/completions"}
    assert SECRET_KEY not in out + err

    # a failing smoke test: non-zero exit, one error paragraph, the key nowhere
    fake_client.add_job("job-2", created="2026-12-01T00:00:00Z")
    scoring_server.mode = "error"
    assert _run(["--outputs-file", str(outputs_file)]) == 1
    out, err = capsys.readouterr()
    assert "error: the smoke test failed for deployment green" in err and SECRET_KEY not in out + err
    assert fake_client.endpoints[next(iter(fake_client.endpoints))].traffic == {"blue": 100}


def test_expires_in_is_printed_with_what_deletes_it_and_when(outputs_file, runs, fake_client, scoring_server, monkeypatch,
                                                         capsys):
    from deployment.expiry import DELETE_AFTER

    monkeypatch.setattr("common.azure.make_ml_client", lambda outputs, credential=None: fake_client)
    monkeypatch.setattr("deployment.connection.write_phi_connection", lambda **kw: None)
    fake_client.add_job("job-1")
    assert _run(["--outputs-file", str(outputs_file), "--expires-in", "2h", "--instance-type", "Standard_E4s_v3"]) == 0
    out = capsys.readouterr().out
    tag = next(iter(fake_client.endpoints.values())).tags[DELETE_AFTER]
    assert f"expires:    {tag}: within an hour after that, the hourly teardown-expired workflow deletes it once " in out
    assert "EXPIRED_TEARDOWN=true" in out and "`python -m deployment.teardown --expired --yes` after that time" in out
    assert "price:      about $0.25/h (Standard_E4s_v3" in out


def test_foundry_connection(outputs_file, runs, fake_client, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("common.azure.make_ml_client", lambda outputs, credential=None: fake_client)
    monkeypatch.setattr("deployment.connection.write_phi_connection", lambda **kw: None)
    fake_client.add_job("job-1")
    # no project in the stack: refused before anything is created
    assert _run(["--outputs-file", str(outputs_file), "--foundry-connection"]) == 1
    assert "Foundry project" in capsys.readouterr().err and not fake_client.calls

    with_project = tmp_path / "with-project.json"
    with_project.write_text(json.dumps({**OUTPUTS, "foundry_project_name": "proj-phi"}))
    assert _run(["--outputs-file", str(with_project), "--foundry-connection"]) == 0
    rest = fake_client.connection_store["phi_endpoint"]
    assert str(rest.properties.category).endswith("CUSTOM_KEYS") or rest.properties.category == "CustomKeys"
    assert rest.properties.credentials.keys_property == {"key": SECRET_KEY}
    assert rest.properties.metadata["deployment"] == "blue"
    assert SECRET_KEY not in "".join(capsys.readouterr())


def test_local_target_wiring(monkeypatch, capsys, tmp_path):
    from deployment import local

    calls = []

    def fake_deploy_local(model_dir=None, port=None, **gate):
        calls.append((model_dir, port, gate))
        return local.LocalEndpoint(url="http://127.0.0.1:5099/score", port=5099, pid=4242, model_dir=tmp_path)

    monkeypatch.setattr(local, "deploy_local", fake_deploy_local)
    assert _run(["--target", "local", "--model-dir", str(tmp_path), "--port", "5099"]) == 0
    assert calls == [(tmp_path, 5099, {"eval_file": None, "eval_limit": DEFAULT_LIMIT, "force": False, "margin": None})]
    assert _run(["--target", "local", "--model-dir", str(tmp_path), "--eval-file", "e.jsonl", "--eval-limit", "5",
                 "--eval-margin", "0.05", "--force"]) == 0
    assert calls[-1][2] == {"eval_file": Path("e.jsonl"), "eval_limit": 5, "force": True, "margin": 0.05}
    assert "http://127.0.0.1:5099/score" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--target", "local", "--job", "j"], "--target azure only"),
        (["--model-dir", "x"], "apply to --target local"),
        (["--dry-run", "--model", "nocolon"], "NAME:VERSION"),
        (["--dry-run", "--endpoint-name", "9bad"], "not valid"),
        (["--dry-run", "--expires-in", "soon"], "30m, 2h, 1d"),
        (["--target", "local", "--expires-in", "2h"], "--target azure only"),
    ],
)
def test_bad_arguments_are_one_clear_error(argv, message, outputs_file, runs, capsys):
    assert _run(["--outputs-file", str(outputs_file), *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
