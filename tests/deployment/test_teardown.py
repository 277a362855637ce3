"""python -m deployment.teardown against the MLClient fake: ours only, --all, purge, confirmation, twice."""
from __future__ import annotations

import io

import pytest
from azure.ai.ml.entities import ManagedOnlineEndpoint

from common.cli import run_cli
from deployment import teardown
from deployment.definitions import build_endpoint
from fakes.ml_client import FakeMLClient


@pytest.fixture
def client(outputs, monkeypatch) -> FakeMLClient:
    fake = FakeMLClient(workspace_name=outputs.workspace_name)
    for name in ("phi3-a", "phi3-b"):
        fake.online_endpoints.begin_create_or_update(build_endpoint(name, outputs))
    fake.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name="someone-else", auth_mode="key"))
    fake.calls.clear()
    monkeypatch.setattr("common.azure.make_ml_client", lambda outputs, credential=None: fake)
    return fake


@pytest.fixture
def cleaned(monkeypatch) -> list[list[str]]:
    seen: list[list[str]] = []
    monkeypatch.setattr(teardown, "_default_connection_cleanup", lambda deleted: seen.append(list(deleted)) or True)
    return seen


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(teardown.main, argv)
    return int(exit_info.value.code or 0)


def test_deletes_only_ours_and_is_safe_twice(client, cleaned, outputs_file, capsys):
    assert _run(["--outputs-file", str(outputs_file), "--yes"]) == 0
    out = capsys.readouterr().out
    assert sorted(client.endpoints) == ["someone-else"]
    assert "deleted endpoints: phi3-a, phi3-b" in out and "someone-else" in out and "pulumi destroy" in out
    assert cleaned == [["phi3-a", "phi3-b"]]
    assert client.count("workspaces.begin_delete") == 0

    client.calls.clear()
    assert _run(["--outputs-file", str(outputs_file), "--yes"]) == 0
    assert "nothing to delete" in capsys.readouterr().out
    assert client.count("online_endpoints.begin_delete") == 0 and cleaned == [["phi3-a", "phi3-b"]]


def test_our_deployment_inside_someone_elses_endpoint_is_reported_not_deleted(client, cleaned, outputs_file, capsys):
    from azure.ai.ml.entities import ManagedOnlineDeployment

    # `deploy --endpoint-name someone-else` adds a tagged deployment to an endpoint this tool did not create
    client.deployments[("someone-else", "green")] = ManagedOnlineDeployment(
        name="green", endpoint_name="someone-else", tags={"created-by": "finetune-phi"})
    client.deployments[("someone-else", "theirs")] = ManagedOnlineDeployment(name="theirs", endpoint_name="someone-else")
    assert _run(["--outputs-file", str(outputs_file), "--yes"]) == 0
    out = capsys.readouterr().out
    assert ("someone-else", "green") in client.deployments and "someone-else" in client.endpoints  # not ours to delete
    assert "warning: endpoint someone-else was not created by this tool but holds deployment(s) green" in out
    assert "`az ml online-deployment delete -e someone-else -n green --yes`" in out and "theirs" not in out


def test_all_and_purge_then_twice(client, cleaned, outputs, outputs_file, capsys):
    assert _run(["--outputs-file", str(outputs_file), "--all", "--purge-workspace", "--yes"]) == 0
    assert client.endpoints == {}
    purge = client.index("workspaces.begin_delete", name=outputs.workspace_name,
                         permanently_delete=True, delete_dependent_resources=False)
    assert all(client.index("online_endpoints.begin_delete", name=n) < purge for n in ("phi3-a", "phi3-b", "someone-else"))
    assert "permanently deleted" in capsys.readouterr().out

    assert _run(["--outputs-file", str(outputs_file), "--all", "--purge-workspace", "--yes"]) == 0
    assert "already gone" in capsys.readouterr().out
    assert client.count("workspaces.begin_delete") == 1


def test_purge_takes_the_foundry_project_and_hub_first(client, cleaned, outputs, tmp_path, capsys):
    import json

    from fakes.deploy_fixtures import OUTPUTS

    path = tmp_path / "with-foundry.json"
    path.write_text(json.dumps({**OUTPUTS, "foundry_project_name": "proj-phi", "foundry_hub_name": "hub-phi"}))
    assert _run(["--outputs-file", str(path), "--purge-workspace", "--yes"]) == 0
    purged = [c.args["name"] for c in client.calls if c.name == "workspaces.begin_delete"]
    assert purged == ["proj-phi", "hub-phi", outputs.workspace_name]
    assert all(c.args["permanently_delete"] for c in client.calls if c.name == "workspaces.begin_delete")
    assert "proj-phi permanently deleted" in capsys.readouterr().out


def test_a_failing_connection_cleanup_does_not_stop_the_purge_or_hide_the_report(client, outputs, outputs_file, monkeypatch, capsys):
    from common.cli import UserError

    def broken(deleted):
        raise UserError("could not read the Prompt flow connection 'phi_endpoint': no keyring backend")

    monkeypatch.setattr(teardown, "_default_connection_cleanup", broken)
    assert _run(["--outputs-file", str(outputs_file), "--purge-workspace", "--yes"]) == 0
    out, err = capsys.readouterr()
    assert "deleted endpoints: phi3-a, phi3-b" in out and "permanently deleted" in out
    assert "no keyring backend" in err and "phi_endpoint" in err
    assert client.count("workspaces.begin_delete", name=outputs.workspace_name) == 1


def test_refuses_without_a_terminal_and_without_yes(client, cleaned, outputs_file, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert _run(["--outputs-file", str(outputs_file)]) == 1
    assert "--yes" in capsys.readouterr().err
    assert len(client.endpoints) == 3 and client.count("online_endpoints.begin_delete") == 0


def test_asks_and_respects_no(client, cleaned, outputs_file, monkeypatch, capsys):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Tty("n\n"))
    assert _run(["--outputs-file", str(outputs_file)]) == 1
    err = capsys.readouterr().err
    assert "phi3-a" in err and "cancelled" in err and len(client.endpoints) == 3

    monkeypatch.setattr("sys.stdin", Tty("yes\n"))
    assert _run(["--outputs-file", str(outputs_file)]) == 0
    assert sorted(client.endpoints) == ["someone-else"]


def test_connection_is_deleted_only_when_it_points_at_a_deleted_endpoint(monkeypatch):
    from deployment import connection

    state = {"configs": {"endpoint": "https://phi3-a.eastus.inference.ml.azure.com/score"}, "deleted": 0}
    monkeypatch.setattr(connection, "read_phi_connection", lambda: state["configs"])
    monkeypatch.setattr(connection, "delete_phi_connection", lambda: state.__setitem__("deleted", state["deleted"] + 1) or True)
    assert teardown._default_connection_cleanup(["phi3-b"]) is False and state["deleted"] == 0
    assert teardown._default_connection_cleanup(["phi3-a"]) is True and state["deleted"] == 1
    state["configs"] = {"endpoint": "http://127.0.0.1:5000/score"}
    assert teardown._default_connection_cleanup(["phi3-a"]) is False
    state["configs"] = None
    assert teardown._default_connection_cleanup(["phi3-a"]) is False


def test_local_target(monkeypatch, capsys):
    from deployment import connection, local

    stops = iter([True, False])
    monkeypatch.setattr(local, "teardown_local", lambda: next(stops))
    monkeypatch.setattr(connection, "read_phi_connection", lambda: None)
    assert _run(["--target", "local"]) == 0
    assert "stopped the local endpoint" in capsys.readouterr().out
    assert _run(["--target", "local"]) == 0
    assert "nothing to stop" in capsys.readouterr().out
    assert _run(["--target", "local", "--purge-workspace"]) == 1


def test_expired_deletes_only_our_endpoints_past_their_expiry(outputs, outputs_file, cleaned, monkeypatch, capsys):
    from datetime import datetime, timedelta, timezone

    from azure.ai.ml.entities import ManagedOnlineDeployment

    from deployment.expiry import DELETE_AFTER, stamp

    now = datetime.now(timezone.utc)
    fake = FakeMLClient(workspace_name=outputs.workspace_name)
    endpoints = {
        "phi3-old": {DELETE_AFTER: stamp(now - timedelta(hours=1))},     # ours, expired
        "phi3-soon": {DELETE_AFTER: stamp(now + timedelta(hours=1))},    # ours, not yet
        "phi3-prod": {},                                                  # ours, never expires
        "phi3-bad": {DELETE_AFTER: "next tuesday"},                      # ours, unreadable: never expired
    }
    for name, tags in endpoints.items():
        endpoint = build_endpoint(name, outputs)
        endpoint.tags.update(tags)
        fake.online_endpoints.begin_create_or_update(endpoint)
    theirs = ManagedOnlineEndpoint(name="theirs", auth_mode="key", tags={DELETE_AFTER: stamp(now - timedelta(days=1))})
    fake.online_endpoints.begin_create_or_update(theirs)  # expired, but not created by this tool
    for endpoint, sku in (("phi3-old", "Standard_NC24ads_A100_v4"), ("phi3-soon", "Standard_E4s_v3")):
        fake.deployments[(endpoint, "blue")] = ManagedOnlineDeployment(
            name="blue", endpoint_name=endpoint, instance_type=sku, instance_count=1)
    fake.calls.clear()
    monkeypatch.setattr("common.azure.make_ml_client", lambda outputs, credential=None: fake)

    assert _run(["--outputs-file", str(outputs_file), "--expired", "--yes"]) == 0

    assert sorted(fake.endpoints) == ["phi3-bad", "phi3-prod", "phi3-soon", "theirs"]
    assert [c.args["name"] for c in fake.calls if c.name == "online_endpoints.begin_delete"] == ["phi3-old"]
    out = capsys.readouterr().out
    assert "deleted endpoints: phi3-old" in out and "saved: about $3.67/h" in out
    assert "not expired (left running): phi3-soon, phi3-prod, phi3-bad" in out

    fake.calls.clear()  # safe to run again: nothing expired is left
    assert _run(["--outputs-file", str(outputs_file), "--expired", "--yes"]) == 0
    assert "no endpoint created by finetune-phi is past its expiry" in capsys.readouterr().out
    assert fake.count("online_endpoints.begin_delete") == 0


def test_expired_does_not_combine_with_all_or_purge(outputs_file, capsys):
    assert _run(["--outputs-file", str(outputs_file), "--expired", "--all", "--yes"]) == 1
    assert "does not combine" in capsys.readouterr().err
    assert _run(["--target", "local", "--expired"]) == 1
