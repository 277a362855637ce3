"""Blue/green orchestration against the MLClient fake and a real local HTTP scoring endpoint."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from common.cli import UserError
from deployment import definitions
from deployment.sizing import serving_size
from deployment.azure_deploy import DeployPlan, choose_slot, deploy_to_azure
from deployment.registration import ModelChoice
from fakes.deploy_fixtures import EVAL_LIMIT
from fakes.ml_client import CONTAINER_LOG, SECRET_KEY, SECOND_KEY, FakeMLClient

EP = "phi3-chat-test"


def _deploy(client: FakeMLClient, outputs, runs: Path, write_connection, **plan):
    return deploy_to_azure(
        client, outputs, DeployPlan(endpoint_name=EP, **{"eval_limit": EVAL_LIMIT, **plan}),
        write_connection=write_connection, poll_interval=0.01,
    )


def _seed_live_blue(client: FakeMLClient, outputs, runs: Path, write_connection) -> None:
    """A first successful deploy: endpoint + blue at 100%."""
    client.add_job("job-1", created="2026-11-01T10:00:00Z")
    _deploy(client, outputs, runs, write_connection)
    client.calls.clear()


def test_first_deploy_runs_in_blue_green_order(fake_client, outputs, runs, write_connection, connection_writes, scoring_server):
    fake_client.add_job("job-old", created="2026-10-01T10:00:00Z")
    fake_client.add_job("job-new", created="2026-11-01T10:00:00Z")
    fake_client.add_job("job-running", status="Running", created="2026-11-02T10:00:00Z")

    result = _deploy(fake_client, outputs, runs, write_connection)

    c = fake_client
    order = [
        c.index("models.create_or_update"),
        c.index("online_endpoints.begin_create_or_update", traffic={}),
        c.index("online_deployments.begin_create_or_update", name="blue"),
        c.index("online_endpoints.get_keys"),
        c.index("http.POST", deployment="blue"),
        c.index("online_endpoints.begin_create_or_update", traffic={"blue": 100}),
        c.index("connection.write", deployment="blue"),
    ]
    assert order == sorted(order), c.names()
    # the newest *completed* job was registered, from its named output, as an MLflow model
    reg = c.calls[c.index("models.create_or_update")].args
    assert reg["path"] == "azureml://jobs/job-new/outputs/model" and reg["tags"]["source-job"] == "job-new"
    assert c.model_store[0].type == "mlflow_model"
    # endpoint: key auth, the stack's UAI, tagged for teardown
    ep_doc = c.calls[c.index("online_endpoints.begin_create_or_update", traffic={})].args["doc"]
    assert ep_doc["auth_mode"] == "key" and ep_doc["tags"] == {"created-by": "finetune-phi"}
    assert ep_doc["identity"]["type"] == "user_assigned"
    assert [u["resource_id"] for u in ep_doc["identity"]["user_assigned_identities"]] == [outputs.endpoint_uai_resource_id]
    # deployment: the server's container environment, probes, request settings, the endpoint identity
    dep = c.calls[c.index("online_deployments.begin_create_or_update")].args["doc"]
    assert dep["instance_type"] == "Standard_NC24ads_A100_v4" and dep["model"] == "azureml:phi3-finetuned:1"
    assert dep["environment"].startswith("azureml:phi3-serve-vllm:")  # a GPU instance type: vLLM's image
    assert "code_configuration" not in dep
    assert dep["readiness_probe"]["initial_delay"] <= 30 and dep["liveness_probe"]["initial_delay"] >= 500
    size = serving_size("Standard_NC24ads_A100_v4", "phi-3.5-mini")  # sized per (instance type, base model)
    assert dep["request_settings"]["request_timeout_ms"] == size.request_timeout_ms <= 180000
    assert dep["request_settings"]["max_concurrent_requests_per_instance"] == size.max_sequences
    assert dep["environment_variables"]["AZURE_CLIENT_ID"] == outputs.endpoint_uai_client_id
    # smoke test went to the new deployment with the fetched key
    assert scoring_server.requests and all(r["authorized"] and r["deployment"] == "blue" for r in scoring_server.requests)
    # final state
    assert c.endpoints[EP].traffic == {"blue": 100}
    # the one connection model: this project's server by its base URL and OpenAI API, pinned to blue
    base = scoring_server.url.removesuffix("/score")
    assert connection_writes == [{"endpoint": base, "key": SECRET_KEY, "deployment": "blue",
                                  "configs": {"endpoint": base, "api": "openai", "deployment": "blue"}}]
    assert (result.deployment_name, result.endpoint_created, result.replaced) == ("blue", True, ())


@pytest.mark.slow
def test_existing_endpoint_is_updated_never_deleted(fake_client, outputs, runs, write_connection):
    _seed_live_blue(fake_client, outputs, runs, write_connection)
    fake_client.add_job("job-2", created="2026-11-05T10:00:00Z")

    result = _deploy(fake_client, outputs, runs, write_connection)

    c = fake_client
    assert result.deployment_name == "green" and result.replaced == ("blue",) and not result.endpoint_created
    assert c.count("online_endpoints.begin_delete") == 0
    # the endpoint was not re-created: its only update is the traffic switch
    assert [call.args["traffic"] for call in c.calls if call.name == "online_endpoints.begin_create_or_update"] == [{"green": 100}]
    assert c.index("online_deployments.begin_create_or_update", name="green") < c.index("http.POST", deployment="green") \
        < c.index("online_endpoints.begin_create_or_update") < c.index("online_deployments.begin_delete", name="blue")
    assert c.endpoints[EP].traffic == {"green": 100}
    assert sorted(name for _, name in c.deployments) == ["green"]
    # the environment was unchanged: found and reused, not registered again
    assert c.count("environments.create_or_update") == 0 and c.count("environments.get") == 1

    # and the next deploy swings back to blue
    c.add_job("job-3", created="2026-11-06T10:00:00Z")
    assert _deploy(c, outputs, runs, write_connection).deployment_name == "blue"
    assert c.endpoints[EP].traffic == {"blue": 100}


def test_registration_is_idempotent(fake_client, outputs, runs, write_connection):
    fake_client.add_job("job-1")
    first = _deploy(fake_client, outputs, runs, write_connection)
    second = _deploy(fake_client, outputs, runs, write_connection)
    assert fake_client.count("models.create_or_update") == 1
    assert (first.model.version, first.model.reused) == ("1", False)
    assert (second.model.version, second.model.reused) == ("1", True)
    # a different job gets the next version
    fake_client.add_job("job-2", created="2026-12-01T00:00:00Z")
    third = _deploy(fake_client, outputs, runs, write_connection, choice=ModelChoice(job="job-2"))
    assert third.model.version == "2" and fake_client.count("models.create_or_update") == 2


@pytest.mark.parametrize("failure", ["deployment", "smoke", "empty-answer", "traffic"])
def test_failure_keeps_traffic_and_deletes_the_new_deployment(
    failure, fake_client, outputs, runs, write_connection, connection_writes, scoring_server, capsys
):
    _seed_live_blue(fake_client, outputs, runs, write_connection)
    connection_writes.clear()
    fake_client.add_job("job-2", created="2026-11-05T10:00:00Z")
    fake_client.fail_deployment = failure == "deployment"
    fake_client.fail_traffic = failure == "traffic"
    scoring_server.mode = {"smoke": "error", "empty-answer": "empty"}.get(failure, "ok")

    with pytest.raises(UserError) as err:
        _deploy(fake_client, outputs, runs, write_connection)

    c = fake_client
    assert c.endpoints[EP].traffic == {"blue": 100}, "traffic must stay on the old deployment"
    assert sorted(name for _, name in c.deployments) == ["blue"], "the failed deployment must be deleted"
    assert c.index("online_deployments.get_logs", name="green") < c.index("online_deployments.begin_delete", name="green")
    assert c.count("online_deployments.begin_delete", name="blue") == 0
    assert c.count("online_endpoints.begin_delete") == 0
    assert connection_writes == []
    if failure != "traffic":
        assert c.count("online_endpoints.begin_create_or_update") == 0
    err_text = capsys.readouterr().err
    assert CONTAINER_LOG.splitlines()[-1] in err_text  # the container log tail is shown
    assert "green" in str(err.value) and "Traffic was not moved" in str(err.value) and "was deleted" in str(err.value)


def test_key_never_printed_or_logged(fake_client, outputs, runs, write_connection, scoring_server, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    fake_client.add_job("job-1")
    _deploy(fake_client, outputs, runs, write_connection)
    fake_client.add_job("job-2", created="2026-12-01T00:00:00Z")
    scoring_server.mode = "error"
    with pytest.raises(UserError) as err:
        _deploy(fake_client, outputs, runs, write_connection)
    captured = capsys.readouterr()
    texts = [captured.out, captured.err, caplog.text, str(err.value)] + [r.getMessage() for r in caplog.records]
    for secret in (SECRET_KEY, SECOND_KEY):
        assert not any(secret in t for t in texts)
    # nor written anywhere under the run folder
    assert not any(SECRET_KEY.encode() in p.read_bytes() for p in runs.rglob("*") if p.is_file())
    assert "smoke test" in str(err.value)


def test_existing_endpoint_with_another_identity_is_refused(fake_client, outputs, runs, write_connection):
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    fake_client.endpoints[EP] = ManagedOnlineEndpoint(name=EP, auth_mode="key")  # system identity
    fake_client.add_job("job-1")
    with pytest.raises(UserError, match="identity cannot be changed"):
        _deploy(fake_client, outputs, runs, write_connection)
    assert fake_client.count("online_deployments.begin_create_or_update") == 0
    assert fake_client.count("online_endpoints.begin_delete") == 0 and EP in fake_client.endpoints


def test_named_model_is_used_as_is(fake_client, outputs, runs, write_connection):
    fake_client.add_job("job-1")
    _deploy(fake_client, outputs, runs, write_connection)
    fake_client.calls.clear()
    result = _deploy(fake_client, outputs, runs, write_connection, choice=ModelChoice(model="phi3-finetuned:1"))
    assert result.model.version == "1" and fake_client.count("models.create_or_update") == 0
    assert fake_client.count("jobs.list") == 0


def test_unfinished_job_is_refused_before_anything_is_created(fake_client, outputs, runs, write_connection):
    fake_client.add_job("job-run", status="Running")
    with pytest.raises(UserError, match="Running, not Completed"):
        _deploy(fake_client, outputs, runs, write_connection, choice=ModelChoice(job="job-run"))
    with pytest.raises(UserError, match="no completed fine-tuning job"):
        _deploy(fake_client, outputs, runs, write_connection)
    assert not fake_client.endpoints and not fake_client.model_store


@pytest.mark.parametrize(
    ("choice", "needles"),
    [
        (ModelChoice(model="phi3-finetuned:9"), ["phi3-finetuned:9 is not registered", "az ml model list --name phi3-finetuned", "--job"]),
        (ModelChoice(job="no-such-job"), ["no job 'no-such-job'", "az ml job list", "leave --job out"]),
    ],
    ids=["model", "job"],
)
def test_missing_model_or_job_says_what_to_do(fake_client, outputs, runs, write_connection, choice, needles):
    with pytest.raises(UserError) as err:
        _deploy(fake_client, outputs, runs, write_connection, choice=choice)
    for needle in needles:
        assert needle in str(err.value)
    assert "pulumi stack output" not in str(err.value)  # not a stack problem
    assert not fake_client.endpoints and fake_client.count("online_deployments.begin_create_or_update") == 0


def test_choose_slot():
    assert choose_slot({}, []) == "blue"
    assert choose_slot({"blue": 100}, ["blue"]) == "green"
    assert choose_slot({"green": 100}, ["green", "blue"]) == "blue"
    assert choose_slot({"demo": 100}, ["demo"]) == "blue"
    with pytest.raises(UserError, match="both blue and green"):
        choose_slot({"blue": 50, "green": 50}, ["blue", "green"])


def test_endpoint_name_rules(outputs):
    name = definitions.default_endpoint_name(outputs)
    assert definitions.check_endpoint_name(name) == name and len(name) <= 32
    for bad in ("1abc", "ab", "a" * 33, "bad_name", "ends-"):
        with pytest.raises(UserError):
            definitions.check_endpoint_name(bad)


def test_connection_failure_after_a_good_deploy_says_it_is_live(fake_client, outputs, runs):
    def broken(connection) -> None:
        raise UserError(f"could not write the Prompt flow connection 'phi_endpoint': no keyring ({connection.key})")

    fake_client.add_job("job-1")
    with pytest.raises(UserError) as err:
        deploy_to_azure(fake_client, outputs, DeployPlan(endpoint_name=EP, eval_limit=EVAL_LIMIT),
                        write_connection=broken, poll_interval=0.01)
    assert "blue is live" in str(err.value) and "no keyring" in str(err.value)
    assert SECRET_KEY not in str(err.value)
    assert fake_client.endpoints[EP].traffic == {"blue": 100}


def test_unexpected_connection_writer_error_is_one_message_without_the_key(
    fake_client, outputs, runs, write_connection, connection_writes
):
    """The Foundry writer relies on private SDK hooks: any exception from it (not only a UserError)
    must end in one message saying the deployment is live, with the key redacted, not a traceback."""

    def foundry(connection) -> None:
        raise ValueError(f"invalid credentials {{'key': '{connection.key}'}}")

    fake_client.add_job("job-1")
    with pytest.raises(UserError) as err:
        deploy_to_azure(fake_client, outputs, DeployPlan(endpoint_name=EP, eval_limit=EVAL_LIMIT),
                        write_connection=write_connection, foundry_writer=foundry, poll_interval=0.01)
    message = str(err.value)
    assert "blue is live" in message and "Foundry project connection" in message and "ValueError" in message
    assert SECRET_KEY not in message and "<hidden>" in message
    assert len(connection_writes) == 1  # the local connection was written before
    assert fake_client.endpoints[EP].traffic == {"blue": 100}


def test_connection_failure_still_names_old_deployments_that_bill(
    fake_client, outputs, runs, write_connection, monkeypatch
):
    _seed_live_blue(fake_client, outputs, runs, write_connection)
    fake_client.add_job("job-2", created="2026-11-05T10:00:00Z")
    monkeypatch.setattr("deployment.azure_deploy._delete_deployment", lambda *_a, **_k: False)

    def broken(connection) -> None:
        raise UserError("could not write the Prompt flow connection 'phi_endpoint': no keyring")

    with pytest.raises(UserError) as err:
        deploy_to_azure(fake_client, outputs, DeployPlan(endpoint_name=EP, eval_limit=EVAL_LIMIT),
                        write_connection=broken, poll_interval=0.01)
    message = str(err.value)
    assert "green is live" in message and "no keyring" in message
    assert f"az ml online-deployment delete -e {EP} -n blue --yes" in message


def test_ctrl_c_during_the_smoke_test_says_how_to_delete_the_new_deployment(
    fake_client, outputs, runs, write_connection, capsys
):
    _seed_live_blue(fake_client, outputs, runs, write_connection)
    fake_client.add_job("job-2", created="2026-11-05T10:00:00Z")

    def interrupted(*_args):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        deploy_to_azure(fake_client, outputs, DeployPlan(endpoint_name=EP, eval_limit=EVAL_LIMIT),
                        smoke_client=interrupted, write_connection=write_connection, poll_interval=0.01)
    assert fake_client.endpoints[EP].traffic == {"blue": 100}
    assert f"az ml online-deployment delete -e {EP} -n green --yes" in capsys.readouterr().err


def test_unreadable_traffic_after_a_failed_switch_keeps_both_deployments(
    fake_client, outputs, runs, write_connection, scoring_server, monkeypatch
):
    _seed_live_blue(fake_client, outputs, runs, write_connection)
    fake_client.add_job("job-2", created="2026-11-05T10:00:00Z")
    fake_client.fail_traffic = True
    monkeypatch.setattr("deployment.azure_deploy._current_traffic", lambda *_: None)

    with pytest.raises(UserError, match="could not be read back, so both deployments were kept"):
        _deploy(fake_client, outputs, runs, write_connection)
    assert fake_client.count("online_deployments.begin_delete", name="green") == 0
    assert sorted(name for _, name in fake_client.deployments) == ["blue", "green"]


# -- the evaluation gate ---------------------------------------------------------------------------


def _eval_tags(client: FakeMLClient, name: str) -> dict[str, str]:
    return {k: v for k, v in (client.deployments[(EP, name)].tags or {}).items() if k.startswith("eval-")}


def test_first_deploy_records_its_scores_as_the_baseline(fake_client, outputs, runs, write_connection, scoring_server):
    from deployment.gate import TAG_FILE, TAG_MODEL, TAG_N, TAG_SCORES, TAG_VERSION
    from deployment.metrics import metric_version

    fake_client.add_job("job-1")
    result = _deploy(fake_client, outputs, runs, write_connection)

    c = fake_client
    assert result.verdict is not None and result.verdict.live is None
    # evaluated after the smoke test, before traffic moved; scored through the new deployment only
    assert c.index("online_endpoints.get_keys") < c.index("data.create_or_update") \
        < c.index("online_endpoints.begin_create_or_update", traffic={"blue": 100})
    eval_posts = [r for r in scoring_server.requests if r["body"]["messages"][-1]["content"].startswith("What is")]
    assert len(eval_posts) == 12 and {r["deployment"] for r in eval_posts} == {"blue"}
    assert all(r["body"]["temperature"] == 0.0 and r["body"]["max_tokens"] == 64 for r in eval_posts)
    tags = _eval_tags(c, "blue")
    assert tags["eval-correctness"] == "1.0000" and tags[TAG_N] == "12" and tags[TAG_MODEL] == "azureml:phi3-finetuned:1"
    assert tags[TAG_VERSION] == metric_version() and len(tags[TAG_FILE]) == 64
    # per-conversation scores: a data asset on Azure, JSON under runs/eval/ locally
    asset, content = c.data_store[tags[TAG_SCORES]]
    assert asset.type == "uri_file" and len(json.loads(content)["conversations"]) == 12
    assert list((runs / "eval").glob("*-new-blue.json"))


@pytest.mark.slow
def test_a_worse_new_deployment_is_deleted_and_traffic_untouched(
    fake_client, outputs, runs, write_connection, connection_writes, scoring_server, capsys
):
    _seed_live_blue(fake_client, outputs, runs, write_connection)
    connection_writes.clear()
    fake_client.add_job("job-2", created="2026-11-05T10:00:00Z")
    scoring_server.worse = {"green"}  # answers the smoke test, not the held-out questions

    with pytest.raises(UserError) as err:
        _deploy(fake_client, outputs, runs, write_connection)

    c = fake_client
    assert c.endpoints[EP].traffic == {"blue": 100}
    assert sorted(name for _, name in c.deployments) == ["blue"]
    assert c.count("online_endpoints.begin_create_or_update") == 0 and connection_writes == []
    assert c.index("online_deployments.begin_delete", name="green") > c.index("online_deployments.get", name="blue")
    message = str(err.value)
    assert "green" in message and "refused" in message and "--force" in message and "was deleted" in message
    table = capsys.readouterr().err
    assert "new - live" in table and "live blue" in table and "new green" in table and "95% CI" in table
    # the live deployment's scores were reused (same eval set, metric version, model): not asked again
    blue_asked = [r for r in scoring_server.requests if r["deployment"] == "blue" and "country" in str(r["body"])]
    assert len(blue_asked) == 12, "only the first deploy's baseline run asked blue"
    assert _eval_tags(c, "blue")["eval-correctness"] == "1.0000"
    # the refused deployment's scores are kept (data asset + JSON) though the deployment is gone
    assert any(key.startswith(f"phi3-eval-scores:{EP}-green-") for key in c.data_store)


@pytest.mark.slow
def test_force_moves_traffic_to_a_worse_deployment_and_says_so(
    fake_client, outputs, runs, write_connection, scoring_server, capsys
):
    _seed_live_blue(fake_client, outputs, runs, write_connection)
    fake_client.add_job("job-2", created="2026-11-05T10:00:00Z")
    scoring_server.worse = {"green"}

    result = _deploy(fake_client, outputs, runs, write_connection, force=True)

    assert result.deployment_name == "green" and result.verdict.worse and result.verdict.forced
    assert fake_client.endpoints[EP].traffic == {"green": 100}
    assert "--force: moving traffic anyway" in capsys.readouterr().err
    assert float(_eval_tags(fake_client, "green")["eval-correctness"]) < 0.2


@pytest.mark.slow
def test_live_is_rescored_when_its_tags_no_longer_match(fake_client, outputs, runs, write_connection, scoring_server):
    _seed_live_blue(fake_client, outputs, runs, write_connection)
    fake_client.deployments[(EP, "blue")].tags["eval-metric-version"] = "0/older"
    fake_client.add_job("job-2", created="2026-11-05T10:00:00Z")
    before = len(scoring_server.requests)

    result = _deploy(fake_client, outputs, runs, write_connection)

    asked = {r["deployment"] for r in scoring_server.requests[before:] if "country" in str(r["body"])}
    assert asked == {"blue", "green"} and result.deployment_name == "green"
    assert not result.verdict.worse and result.verdict.comparison.difference.mean == 0.0
    # the re-score was recorded on blue (a tags-only update) before traffic moved
    update = fake_client.index("online_deployments.begin_create_or_update", name="blue", update=True)
    assert update < fake_client.index("online_endpoints.begin_create_or_update", traffic={"green": 100})


@pytest.fixture
def fresh_runs(runs: Path, fake_client: FakeMLClient, monkeypatch: pytest.MonkeyPatch):
    """A deploy from another machine or CI runner: no runs/eval/ from the earlier deploy; the data asset
    is read through the MLClient (the fake's storage edge stands in for the blob download)."""
    import shutil

    from azure.ai.ml._artifacts import _artifact_utilities

    monkeypatch.setattr(_artifact_utilities, "download_artifact_from_aml_uri", fake_client.data.download_from_storage)
    return lambda: shutil.rmtree(runs / "eval")


def test_a_fresh_machine_reuses_the_live_scores_from_the_data_asset(
    fake_client, outputs, runs, write_connection, scoring_server, fresh_runs, capsys
):
    from deployment.gate import TAG_SCORES

    _seed_live_blue(fake_client, outputs, runs, write_connection)
    fresh_runs()
    ref = _eval_tags(fake_client, "blue")[TAG_SCORES]
    fake_client.add_job("job-2", created="2026-11-05T10:00:00Z")
    before = len(scoring_server.requests)

    result = _deploy(fake_client, outputs, runs, write_connection)

    asked = {r["deployment"] for r in scoring_server.requests[before:] if "country" in str(r["body"])}
    assert asked == {"green"}, "the live deployment was not asked again"
    assert result.verdict.live is not None and result.verdict.comparison.difference.mean == 0.0
    name, _, version = ref.partition(":")
    assert fake_client.index("data.get", name=name, version=version) < fake_client.index("data.download")
    err = capsys.readouterr().err
    assert f"live scores read from {ref} (content hash verified)" in err
    assert "evaluation gate: " in err and " on Standard_" in err  # the expected time and cost, before it runs
    assert fake_client.count("online_deployments.begin_create_or_update", name="blue", update=True) == 0


def test_live_scores_from_another_serving_image_are_measured_again(
    fake_client, outputs, runs, write_connection, scoring_server, fresh_runs
):
    """The cache key holds the live deployment's environment: a blue moved to another image is re-scored."""
    from deployment.gate import TAG_ENVIRONMENT

    _seed_live_blue(fake_client, outputs, runs, write_connection)
    assert _eval_tags(fake_client, "blue")[TAG_ENVIRONMENT]
    fresh_runs()
    blue = next(d for (_, name), d in fake_client.deployments.items() if name == "blue")
    blue.environment = str(blue.environment).replace("/versions/", "/versions/older-")
    fake_client.add_job("job-2", created="2026-11-05T10:00:00Z")
    before = len(scoring_server.requests)

    _deploy(fake_client, outputs, runs, write_connection)

    asked = {r["deployment"] for r in scoring_server.requests[before:] if "country" in str(r["body"])}
    assert asked == {"blue", "green"}, "scores from another serving image were reused"


def test_a_tampered_scores_asset_is_not_trusted_and_the_live_is_rescored(
    fake_client, outputs, runs, write_connection, scoring_server, fresh_runs, capsys
):
    from deployment.gate import TAG_SCORES

    _seed_live_blue(fake_client, outputs, runs, write_connection)
    fresh_runs()
    ref = _eval_tags(fake_client, "blue")[TAG_SCORES]
    asset, content = fake_client.data_store[ref]
    doc = json.loads(content)
    doc["conversations"][0]["scores"]["f1_cut"] = 0.0  # edited after the deploy recorded its hash
    fake_client.data_store[ref] = (asset, json.dumps(doc) + "\n")
    fake_client.add_job("job-2", created="2026-11-05T10:00:00Z")
    before = len(scoring_server.requests)

    result = _deploy(fake_client, outputs, runs, write_connection)

    asked = {r["deployment"] for r in scoring_server.requests[before:] if "country" in str(r["body"])}
    assert asked == {"blue", "green"} and result.deployment_name == "green"
    err = capsys.readouterr().err
    assert f"re-scoring the live deployment ({ref}: the stored scores do not match the content hash" in err
    # the fresh measurement was recorded on blue (a tags-only update) before traffic moved
    update = fake_client.index("online_deployments.begin_create_or_update", name="blue", update=True)
    assert update < fake_client.index("online_endpoints.begin_create_or_update", traffic={"green": 100})


def test_a_missing_eval_file_fails_before_anything_is_created(fake_client, outputs, runs, write_connection):
    fake_client.add_job("job-1")
    with pytest.raises(UserError, match="no evaluation file"):
        _deploy(fake_client, outputs, runs, write_connection, eval_file=runs / "missing.jsonl")
    assert not fake_client.calls


def test_expires_in_tags_endpoint_and_deployment(fake_client, outputs, runs, write_connection):
    from datetime import datetime, timezone

    from deployment.expiry import DELETE_AFTER

    when = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    fake_client.add_job("job-1")
    _deploy(fake_client, outputs, runs, write_connection, expires_at=when)
    assert fake_client.endpoints[EP].tags[DELETE_AFTER] == "2026-12-01T12:00:00Z"
    assert fake_client.deployments[(EP, "blue")].tags[DELETE_AFTER] == "2026-12-01T12:00:00Z"
    # without --expires-in nothing expires
    fake_client.add_job("job-2", created="2026-12-01T00:00:00Z")
    fake_client.endpoints[EP].tags.pop(DELETE_AFTER)
    _deploy(fake_client, outputs, runs, write_connection)
    assert DELETE_AFTER not in fake_client.endpoints[EP].tags
    assert DELETE_AFTER not in fake_client.deployments[(EP, "green")].tags
