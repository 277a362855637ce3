"""LoRA releases on Azure (deployment/adapter_release.py, deployment/base_model.py) against the recording
MLClient fake and a real local HTTP endpoint: the base is fetched and registered once per workspace, each
release registers only its adapter, and the adapter list is the live one's + new - retired."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.cli import UserError
from deployment.adapter_release import AdapterFlags, adapter_list, parse_flags, served_model
from deployment.azure_deploy import DeployPlan, deploy_to_azure
from deployment.base_model import base_for
from fakes.ml_client import FakeMLClient

EP = "phi3-chat-test"
BASE = "base-microsoft-phi-3.5-mini-instruct"
STORE = "https://stmlwtest.blob.core.windows.net/azureml-blobstore-00000000"


def _release(client: FakeMLClient, outputs, write_connection, adapters=(), default=None, retire=()):
    return deploy_to_azure(client, outputs, DeployPlan(endpoint_name=EP, adapters=parse_flags(adapters, default, retire)),
                           write_connection=write_connection, poll_interval=0.01)


def _registered(client: FakeMLClient) -> list[tuple[str, str]]:
    return [(c.args["name"], c.args["path"]) for c in client.calls if c.name == "models.create_or_update"]


def _deployment_doc(client: FakeMLClient, name: str) -> dict:
    return client.calls[client.index("online_deployments.begin_create_or_update", name=name)].args["doc"]


@pytest.mark.slow
def test_a_second_release_uploads_only_the_adapter(fake_client, outputs, runs, write_connection) -> None:
    c = fake_client
    for job in ("sft-lora-1", "sft-lora-2"):
        c.add_job(job)

    first = _release(c, outputs, write_connection, ["support=sft-lora-1"])
    fetch = c.jobs.submitted[0]
    assert len(c.jobs.submitted) == 1 and fetch.tags["hf-id"] == "microsoft/Phi-3.5-mini-instruct"
    assert fetch.tags["hf-revision"] == base_for("phi-3.5-mini").revision and "snapshot_download" in fetch.command
    assert _registered(c) == [(BASE, f"azureml://jobs/{fetch.name}/outputs/base"),
                              ("phi3-adapter-support", "azureml://jobs/sft-lora-1/outputs/model/paths/adapter")]
    blue = _deployment_doc(c, "blue")
    assert blue["model"] == f"azureml:{BASE}:1"  # the base is what Azure ML mounts
    env = blue["environment_variables"]
    assert json.loads(env["PHI_SERVE_ADAPTERS"]) == {"support": f"{STORE}/azureml/sft-lora-1/model/adapter"}
    assert env["PHI_SERVE_DEFAULT_ADAPTER"] == "support" and env["PHI_SERVE_MODEL_NAME"] == BASE
    assert first.release is not None and first.release.default == "support"

    c.calls.clear()
    second = _release(c, outputs, write_connection, ["legal=sft-lora-2"])
    assert _registered(c) == [("phi3-adapter-legal", "azureml://jobs/sft-lora-2/outputs/model/paths/adapter")]
    assert c.count("jobs.create_or_update") == 0 and len(c.jobs.submitted) == 1  # the base is not fetched again
    green = _deployment_doc(c, "green")
    assert green["model"] == f"azureml:{BASE}:1"
    assert json.loads(green["environment_variables"]["PHI_SERVE_ADAPTERS"]) == {
        "support": f"{STORE}/azureml/sft-lora-1/model/adapter", "legal": f"{STORE}/azureml/sft-lora-2/model/adapter"}
    assert green["environment_variables"]["PHI_SERVE_DEFAULT_ADAPTER"] == "legal"  # the newest release
    assert c.endpoints[EP].traffic == {"green": 100} and second.replaced == ("blue",)


@pytest.mark.slow
def test_a_default_switch_and_a_retirement_register_nothing(fake_client, outputs, runs, write_connection) -> None:
    c = fake_client
    for job in ("sft-lora-1", "sft-lora-2"):
        c.add_job(job)
    _release(c, outputs, write_connection, ["support=sft-lora-1", "legal=sft-lora-2"])
    c.calls.clear()

    switched = _release(c, outputs, write_connection, default="support")
    assert _registered(c) == [] and switched.release.default == "support"
    assert list(switched.release.adapters) == ["support", "legal"]
    c.calls.clear()

    retired = _release(c, outputs, write_connection, retire=["support"], default="legal")
    assert _registered(c) == []
    env = _deployment_doc(c, retired.deployment_name)["environment_variables"]
    assert list(json.loads(env["PHI_SERVE_ADAPTERS"])) == ["legal"] and env["PHI_SERVE_DEFAULT_ADAPTER"] == "legal"
    assert retired.release.tags()["lora-default"] == "legal"


def test_a_release_that_cannot_serve_fails_before_anything_is_created(fake_client, outputs, runs, write_connection) -> None:
    c = fake_client
    with pytest.raises(UserError, match="--retire-adapter support: not served by the live deployment"):
        _release(c, outputs, write_connection, retire=["support"])
    assert c.count("online_deployments.begin_create_or_update") == 0


# -- the list, pure ------------------------------------------------------------------------------------


def test_the_list_is_live_plus_new_minus_retired_with_the_newest_default() -> None:
    live = {"a": "azureml:phi3-adapter-a:1", "b": "azureml:phi3-adapter-b:1"}
    flags = AdapterFlags(add={"c": "job-c"}, retire=("a",))
    assert adapter_list(live, "a", flags, {"c": "azureml:phi3-adapter-c:1"}) == (
        {"b": "azureml:phi3-adapter-b:1", "c": "azureml:phi3-adapter-c:1"}, "c")
    again = adapter_list(live, "a", AdapterFlags(add={"a": "job-a2"}), {"a": "azureml:phi3-adapter-a:2"})
    assert again == ({"b": "azureml:phi3-adapter-b:1", "a": "azureml:phi3-adapter-a:2"}, "a")  # a new version of a


@pytest.mark.parametrize("live, live_default, flags, message", [
    ({"a": "r"}, "a", AdapterFlags(retire=("a",)), "this release would serve no adapter"),
    ({"a": "r", "b": "r"}, "a", AdapterFlags(retire=("a",)), "the default adapter 'a' would not be served"),
    ({"a": "r"}, "a", AdapterFlags(default="z"), "the default adapter 'z' would not be served"),
])
def test_a_list_without_its_default_is_refused(live, live_default, flags, message) -> None:
    with pytest.raises(UserError, match=message):
        adapter_list(live, live_default, flags, {})


@pytest.mark.parametrize("adapters, retire, message", [
    (["support"], [], "is not NAME=JOB"),
    (["a b=job"], [], "is not valid"),
    (["a=job", "a=job2"], [], "given twice"),
    (["a=job"], ["a"], "both added and retired"),
])
def test_malformed_flags_are_one_line(adapters, retire, message) -> None:
    with pytest.raises(UserError, match=message):
        parse_flags(adapters, None, retire)


def test_the_gate_compares_defaults(fake_client) -> None:
    from types import SimpleNamespace

    lora = SimpleNamespace(model=f"azureml:{BASE}:1", tags={"lora-adapters": json.dumps({"a": "azureml:phi3-adapter-a:3"}),
                                                           "lora-default": "a"})
    merged = SimpleNamespace(model="azureml:phi3-finetuned:4", tags={})
    assert served_model(lora) == "azureml:phi3-adapter-a:3" and served_model(merged) == "azureml:phi3-finetuned:4"


# -- the command line ----------------------------------------------------------------------------------


def _deploy_cli(outputs_file: Path, *args: str) -> int:
    from deployment.deploy import main

    return main(["--outputs-file", str(outputs_file), *args])


def test_cpu_instance_types_release_merged(outputs_file: Path) -> None:
    with pytest.raises(UserError, match="Standard_E4s_v3 is a CPU instance type, which serves merged models only"):
        _deploy_cli(outputs_file, "--dry-run", "--instance-type", "Standard_E4s_v3", "--adapter", "a=job-1")
    with pytest.raises(UserError, match="--job/--model release a merged model"):
        _deploy_cli(outputs_file, "--dry-run", "--job", "job-1", "--adapter", "a=job-1")


def test_the_dry_run_shows_the_base_mounted_the_adapters_and_the_default(outputs_file: Path, runs, capsys) -> None:
    import yaml

    assert _deploy_cli(outputs_file, "--dry-run", "--adapter", "support=sft-lora-1",
                       "--adapter", "legal=azureml:phi3-adapter-legal:2", "--default-adapter", "support") == 0
    out = capsys.readouterr()
    deployment = [doc for doc in yaml.safe_load_all(out.out) if doc and "endpoint_name" in doc][0]
    assert deployment["model"] == f"azureml:{BASE}@latest"
    env = deployment["environment_variables"]
    assert json.loads(env["PHI_SERVE_ADAPTERS"]) == {
        "support": "azureml://jobs/sft-lora-1/outputs/model/paths/adapter", "legal": "azureml:phi3-adapter-legal:2"}
    assert env["PHI_SERVE_DEFAULT_ADAPTER"] == "support" and deployment["tags"]["lora-default"] == "support"
    assert "registered once per workspace" in out.err
