"""Deploy against the recording fake MLClient, with a local HTTP stand-in at the fake's scoring URI.

What the first real deploy relies on is checked, not assumed:
- where the endpoint forwards `/v1/...` (the stand-in's `routes`: after the host, only after `/score`,
  or neither): the connection holds the URL under which `/v1/chat/completions` answers, or falls back to
  the `/score` dialect and says so, and the flow answers through what was written;
- a registry or storage role that has not applied yet (a `BadArgument`, not a 403) gets the
  propagation hint with the roles' age;
- the Foundry project's connections (`phi_endpoint` and the agents' `phi-gateway`) are written after
  traffic moved, and a 403 there is a warning with the command to retry, not a failed deploy.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError

from common.cli import UserError
from deployment.azure_deploy import DeployPlan, deploy_to_azure
from deployment.connection import PhiConnection
from deployment.flow_check import parse_flow_answer
from deployment.foundry import foundry_writer
from fakes.deploy_fixtures import EVAL_LIMIT, SMOKE_REPLY
from fakes.ml_client import SECRET_KEY, FakeMLClient

EP = "phi3-chat-test"
PULL = ("(BadArgument) The user-assigned identity id-ftphi-endpoint-1a2b3c4d does not have pull permission on the "
        "container registry crfinetunephi1a2b3c4d.")
STORAGE = ("storage-initializer: AuthorizationPermissionMismatch: This request is not authorized to perform this "
           "operation using this permission.")


def deploy(client: FakeMLClient, outputs, **kwargs):
    return deploy_to_azure(client, outputs, DeployPlan(endpoint_name=EP, eval_limit=EVAL_LIMIT), poll_interval=0.01, **kwargs)


def recorder(into: list[PhiConnection]):
    return into.append


# ---------------------------------------------------------------- the /v1 probe, end to end


def test_a_score_v1_only_endpoint_gets_a_connection_under_score(fake_client, outputs, runs, scoring_server, capsys):
    scoring_server.routes = "score"
    fake_client.add_job("job-1")
    written: list[PhiConnection] = []
    deploy(fake_client, outputs, write_connection=recorder(written))
    (connection,) = written
    assert (connection.endpoint, connection.api, connection.deployment) == (scoring_server.url, "openai", "blue")
    assert scoring_server.probes == ["/v1/models", "/score/v1/models"]  # the host first, then the scoring route
    assert {r["path"] for r in scoring_server.requests} == {"/score/v1/chat/completions"}  # smoke test and gate
    assert f"the OpenAI API answers under {scoring_server.url}" in capsys.readouterr().err


def test_neither_form_falls_back_to_the_score_dialect_and_says_so(fake_client, outputs, runs, scoring_server, capsys):
    scoring_server.routes = "none"
    fake_client.add_job("job-1")
    written: list[PhiConnection] = []
    deploy(fake_client, outputs, write_connection=recorder(written))
    (connection,) = written
    assert (connection.endpoint, connection.api) == (scoring_server.url, None)
    assert connection.configs()["request_format"] == "contract"
    assert {r["path"] for r in scoring_server.requests} == {"/score"}
    lines = [line for line in capsys.readouterr().err.splitlines() if "falling back to the /score dialect" in line]
    assert len(lines) == 1 and f"{scoring_server.host}/v1/models: HTTP 404" in lines[0]


@pytest.mark.slow
def test_the_written_connection_works_and_pf_flow_test_answers_through_it(
        fake_client, outputs, runs, scoring_server, repo_root: Path, tmp_path: Path) -> None:
    """The real Prompt flow store and the README's `pf flow test`, against a stand-in that forwards only /score/v1/."""
    from common import pf_settings
    from deployment.connection import read_phi_connection

    pf_settings.apply()
    scoring_server.routes = "score"
    fake_client.add_job("job-1")
    deploy(fake_client, outputs)  # the default writer: the local Prompt flow store
    assert read_phi_connection() == {"endpoint": scoring_server.url, "api": "openai", "deployment": "blue"}
    flow = tmp_path / "chat"
    shutil.copytree(repo_root / "flows" / "chat", flow, ignore=shutil.ignore_patterns(".promptflow", "__pycache__"))
    scoring_server.requests.clear()
    done = subprocess.run([str(Path(sys.executable).with_name("pf")), "flow", "test", "--flow", str(flow),
                           "--inputs", "question=Who founded Microsoft?"],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert parse_flow_answer(done.stdout) == SMOKE_REPLY
    assert [(r["path"], r["deployment"]) for r in scoring_server.requests] == [("/score/v1/chat/completions", "blue")]
    assert SECRET_KEY not in done.stdout + done.stderr


# ---------------------------------------------------------------- roles that have not applied yet


@pytest.mark.parametrize(("failure", "role"), [(PULL, "AcrPull on the container registry"),
                                               (STORAGE, "Storage Blob Data Reader on the storage account")])
def test_a_registry_or_storage_role_not_applied_yet_gets_the_propagation_hint(
        fake_client, outputs, runs, scoring_server, failure: str, role: str) -> None:
    young = dataclasses.replace(outputs, role_assignments_created_on=dt.datetime.now(dt.timezone.utc)
                                - dt.timedelta(minutes=4))
    fake_client.add_job("job-1")
    fake_client.fail_deployment = failure
    with pytest.raises(UserError) as caught:
        deploy(fake_client, young, write_connection=lambda connection: None)
    message = str(caught.value)
    assert f"The endpoint identity lacks {role}, which `pulumi up` granted:" in message
    assert "created 4 min ago: roles are still propagating; retry in 6 minutes." in message
    assert not fake_client.deployments  # the failed deployment was deleted


def test_the_same_failure_on_an_old_stack_is_not_called_propagation(fake_client, outputs, runs, scoring_server) -> None:
    old = dataclasses.replace(outputs, role_assignments_created_on=dt.datetime.now(dt.timezone.utc)
                              - dt.timedelta(hours=3))
    fake_client.add_job("job-1")
    fake_client.fail_deployment = PULL
    with pytest.raises(UserError) as caught:
        deploy(fake_client, old, write_connection=lambda connection: None)
    assert "propagating" not in str(caught.value) and "container log" in str(caught.value)


# ---------------------------------------------------------------- the Foundry project's connections


@pytest.fixture
def with_project(outputs):
    return dataclasses.replace(outputs, foundry_project_name="proj-phi")


def test_foundry_gets_the_flow_connection_and_the_agents_gateway(fake_client, with_project, runs, scoring_server) -> None:
    project = FakeMLClient(workspace_name="proj-phi")
    project.calls = fake_client.calls  # one ordered log for the workspace and the project
    writer = foundry_writer(with_project, lambda o: project, "python -m deployment.foundry --stack dev")
    fake_client.add_job("job-1")
    deploy(fake_client, with_project, write_connection=lambda connection: None, foundry_writer=writer)
    flow, gateway = project.connection_store["phi_endpoint"], project.connection_store["phi-gateway"]
    assert flow.properties.metadata["endpoint"] == scoring_server.host and flow.properties.metadata["api"] == "openai"
    assert str(gateway.properties.category).endswith("MODEL_GATEWAY")
    assert gateway.properties.target == scoring_server.host + "/v1"
    assert gateway.properties.metadata["deploymentInPath"] == "false"
    assert json.loads(gateway.properties.metadata["models"])[0]["name"] == "phi3-finetuned"
    written = [c.args["name"] for c in project.calls if c.name == "connections.create_or_update"]
    assert written == ["phi_endpoint", "phi-gateway"]
    traffic = max(i for i, c in enumerate(fake_client.calls) if c.name == "online_endpoints.begin_create_or_update")
    assert traffic < fake_client.index("connections.create_or_update")  # written after traffic moved
    assert fake_client.endpoints[EP].traffic == {"blue": 100}


def test_a_403_in_the_project_after_promotion_is_a_warning_with_the_retry_command(
        fake_client, with_project, runs, scoring_server, capsys) -> None:
    class Forbidden:
        def create_or_update(self, connection):
            error = HttpResponseError(message="(AuthorizationFailed) does not have authorization to perform action "
                                              "'Microsoft.MachineLearningServices/workspaces/connections/write'")
            error.status_code = 403
            raise error

    project = FakeMLClient(workspace_name="proj-phi")
    project.connections = Forbidden()
    writer = foundry_writer(with_project, lambda o: project, "python -m deployment.foundry --stack dev")
    fake_client.add_job("job-1")
    result = deploy(fake_client, with_project, write_connection=lambda connection: None, foundry_writer=writer)
    assert result.deployment_name == "blue" and fake_client.endpoints[EP].traffic == {"blue": 100}
    err = capsys.readouterr().err
    assert "warning: the deployment is live and the local connection is written, but the Foundry project's" in err
    assert "permission denied (403)" in err and "`python -m deployment.foundry --stack dev`" in err
    assert "Azure AI Developer on the project" in err and SECRET_KEY not in err


def test_the_retry_command_writes_both_connections_for_the_live_deployment(
        fake_client, outputs, runs, scoring_server, tmp_path: Path, monkeypatch, capsys) -> None:
    """`python -m deployment.foundry`: what the warning names, for the live deployment, probed again."""
    from common.cli import run_cli
    from deployment import foundry
    from fakes.deploy_fixtures import OUTPUTS

    scoring_server.routes = "score"
    fake_client.add_job("job-1")
    deploy(fake_client, outputs, write_connection=lambda connection: None)
    project = FakeMLClient(workspace_name="proj-phi")
    monkeypatch.setattr("common.azure.make_ml_client",
                        lambda o, credential=None: project if o.workspace_name == "proj-phi" else fake_client)
    path = tmp_path / "with-project.json"
    path.write_text(json.dumps({**OUTPUTS, "foundry_project_name": "proj-phi"}), encoding="utf-8")
    with pytest.raises(SystemExit) as done:
        run_cli(foundry.main, ["--outputs-file", str(path), "--endpoint-name", EP])
    assert done.value.code == 0
    gateway = project.connection_store["phi-gateway"]
    assert gateway.properties.target == scoring_server.url + "/v1"  # the probed base, /score here
    assert project.connection_store["phi_endpoint"].properties.metadata["deployment"] == "blue"
    assert SECRET_KEY not in "".join(capsys.readouterr())
