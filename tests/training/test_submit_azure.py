"""training.submit against a fake MLClient at the network edge: order, reuse, failures, job contents."""
from __future__ import annotations

from pathlib import Path

import pytest
from azure.ai.ml.exceptions import ErrorCategory, ErrorTarget, JobException
from azure.core.exceptions import ClientAuthenticationError

from common.cli import UserError
from fakes.inputs import write_data, write_stack_outputs
from fakes.ml_client import FakeMLClient, http_error
from fakes.quota import A100, a100_usages, default_sizes, usage
from fakes.registry import FakeRegistryClient
from training import submit


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_PHI_RUNS", str(tmp_path / "runs"))


@pytest.fixture
def argv(tmp_path: Path) -> list[str]:
    outputs = write_stack_outputs(tmp_path / "outputs.json")
    data = write_data(tmp_path / "data")
    return ["--outputs-file", str(outputs), "--data", str(data)]


def _job_exception(message: str) -> JobException:
    return JobException(message=message, no_personal_data_message="x", target=ErrorTarget.JOB,
                        error_category=ErrorCategory.SYSTEM_ERROR)


def test_sft_order_of_operations(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeMLClient()
    assert submit.main(argv, ml_client=fake) == 0
    assert fake.names() == [
        "compute.get",
        "compute.list_sizes",
        "compute.list_usage",
        "jobs.list",  # an unfinished job of the same run to resume from
        "environments.get",
        "environments.create_or_update",
        "data.get",
        "data.create_or_update",
        "data.get",
        "data.create_or_update",
        "jobs.create_or_update",
        "jobs.stream",
        "jobs.get",
    ]
    (job,) = fake.jobs.submitted
    out, err = capsys.readouterr()
    assert out.strip() == job.name  # stdout: the job name only
    assert job.name.startswith("finetune-phi-sft-")
    assert "https://ml.azure.com/runs/" + job.name in err and "ws-phi" in err
    assert "completed" in err


def test_another_experiment_is_not_promised_to_deployment(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """deployment.deploy's latest-job search looks only in experiment finetune-phi: say --job NAME instead."""
    fake = FakeMLClient()
    assert submit.main(argv + ["--experiment", "phi-trials"], ml_client=fake) == 0
    (job,) = fake.jobs.submitted
    assert job.experiment_name == "phi-trials"
    err = capsys.readouterr().err
    assert f"python -m deployment.deploy --job {job.name}" in err and "(it finds this job)" not in err


def test_second_submit_reuses_environment_and_data(argv: list[str]) -> None:
    fake = FakeMLClient()
    assert submit.main(argv, ml_client=fake) == 0
    first = len(fake.calls)
    assert submit.main(argv, ml_client=fake) == 0
    second = fake.names()[first:]
    assert "environments.create_or_update" not in second
    assert "data.create_or_update" not in second
    assert second.count("jobs.create_or_update") == 1
    one, two = fake.jobs.submitted
    assert one.name != two.name
    assert one.environment == two.environment
    assert one.inputs["train_file"].path == two.inputs["train_file"].path


def test_changed_data_uploads_only_the_changed_split(tmp_path: Path, argv: list[str]) -> None:
    fake = FakeMLClient()
    assert submit.main(argv, ml_client=fake) == 0
    write_data(tmp_path / "data", rows=5)  # train changes; test.jsonl is rewritten with the same bytes
    first = len(fake.calls)
    assert submit.main(argv, ml_client=fake) == 0
    created = [(c.args["name"], c.args["version"]) for c in fake.calls[first:]
               if c.name.endswith("create_or_update") and c.name != "jobs.create_or_update"]
    assert [name for name, _ in created] == ["finetune-phi-train"]
    one, two = fake.jobs.submitted
    assert one.inputs["train_file"].path != two.inputs["train_file"].path
    assert one.inputs["eval_file"].path == two.inputs["eval_file"].path
    assert one.tags["data_hash"] != two.tags["data_hash"]


def test_job_comes_from_stack_outputs_and_flags(argv: list[str], tmp_path: Path) -> None:
    fake = FakeMLClient()
    assert submit.main(argv + ["--learning-rate", "2e-5", "--packing", "false", "--no-stream"], ml_client=fake) == 0
    (job,) = fake.jobs.submitted
    env_name, env_version = next((c.args["name"], c.args["version"]) for c in fake.calls
                                 if c.name == "environments.create_or_update")
    assert job.compute == "gpu-a100"
    assert job.environment.removeprefix("azureml:") == f"{env_name}:{env_version}"
    assert job.experiment_name == "finetune-phi"
    assert job.tags["finetune-phi"] == "sft" and job.tags["git_commit"] and job.tags["data_hash"]
    assert '"learning_rate":2e-05' in job.tags["config"]
    assert job.inputs["train_file"].path.removeprefix("azureml:").startswith("finetune-phi-train:")
    assert job.inputs["eval_file"].path.removeprefix("azureml:").startswith("finetune-phi-eval:")
    assert job.outputs["model"].type == "uri_folder"
    staged = Path(job.code)  # a copy of training/trainer/ named trainer/, run as a package
    assert (staged / "trainer" / "fine_tune.py").read_bytes() == (Path(submit.__file__).parent / "trainer" / "fine_tune.py").read_bytes()
    assert not list(staged.rglob("__pycache__"))
    assert job.command.startswith("python -m trainer.fine_tune ")
    assert "--device cuda" in job.command  # a GPU cluster: the trainer must not fall back to CPU
    assert "--model_revision 2fe192450127e6a83f7441aef6e3ca586c338b77" in job.command
    assert "--learning_rate 2e-05" in job.command and "--packing false" in job.command
    assert "--epochs 1.0 " in job.command  # not given: the recipe default, resolved and visible in the job
    assert "--model_name_or_path microsoft/Phi-3.5-mini-instruct" in job.command
    assert "--output_dir ${{outputs.model}}" in job.command
    assert job.resources.shm_size == "16g" and job.resources.instance_count == 1
    assert "jobs.stream" not in fake.names()


def test_distribution_only_when_nodes_times_gpus_exceeds_one(argv: list[str]) -> None:
    from azure.ai.ml.entities import AmlCompute

    fake = FakeMLClient()
    assert submit.main(argv + ["--no-stream"], ml_client=fake) == 0
    assert fake.jobs.submitted[-1].distribution is None

    # the first job of this run is still starting: a second beside it must say so (--resume never)
    assert submit.main(argv + ["--no-stream", "--instance-count", "2", "--resume", "never"], ml_client=fake) == 0
    two_nodes = fake.jobs.submitted[-1]
    assert two_nodes.resources.instance_count == 2
    assert type(two_nodes.distribution).__name__ == "PyTorchDistribution"
    assert two_nodes.distribution.process_count_per_instance == 1

    four_gpus = FakeMLClient(
        computes={"gpu-a100": AmlCompute(name="gpu-a100", size="Standard_NC96ads_A100_v4", max_instances=1)},
        usages=[usage("standardNCADSA100v4Family", "Standard NCADSA100v4 Family Cluster Dedicated vCPUs", 0, 96)],
    )
    assert submit.main(argv + ["--no-stream"], ml_client=four_gpus) == 0
    (job,) = four_gpus.jobs.submitted
    assert job.distribution.process_count_per_instance == 4 and job.resources.instance_count == 1


def test_no_quota_stops_before_anything_is_created(argv: list[str]) -> None:
    fake = FakeMLClient(usages=a100_usages(used=0, limit=0))
    with pytest.raises(UserError) as err:
        submit.main(argv, ml_client=fake)
    message = str(err.value)
    assert "Standard NCADSA100v4 Family Cluster Dedicated vCPUs" in message
    assert "allows 0 vCPUs" in message and "needs 24" in message and "Request" in message
    assert fake.names() == ["compute.get", "compute.list_sizes", "compute.list_usage"]
    assert fake.jobs.submitted == []


def test_quota_counts_every_node(argv: list[str]) -> None:
    fake = FakeMLClient(usages=a100_usages(used=0, limit=24))
    with pytest.raises(UserError, match="needs 48"):
        submit.main(argv + ["--instance-count", "2"], ml_client=fake)
    assert "jobs.create_or_update" not in fake.names()


def _low_priority_client(lp_limit: int) -> FakeMLClient:
    from azure.ai.ml.entities import AmlCompute

    return FakeMLClient(
        computes={"gpu-a100": AmlCompute(name="gpu-a100", size=A100, tier="low_priority", max_instances=2)},
        # no dedicated A100 quota at all: a low-priority cluster does not draw on it
        usages=a100_usages(used=0, limit=0)
        + [usage("TotalLowPriorityCores", "Total Cluster LowPriority Regional vCPUs", 0, lp_limit)],
    )


def test_low_priority_cluster_is_checked_against_the_low_priority_quota(argv: list[str]) -> None:
    fake = _low_priority_client(lp_limit=100)
    assert submit.main(argv + ["--no-stream"], ml_client=fake) == 0
    assert len(fake.jobs.submitted) == 1

    fake = _low_priority_client(lp_limit=0)
    with pytest.raises(UserError) as err:
        submit.main(argv, ml_client=fake)
    assert "Total Cluster LowPriority Regional vCPUs" in str(err.value) and "needs 24" in str(err.value)
    assert fake.names() == ["compute.get", "compute.list_sizes", "compute.list_usage"]


def test_low_priority_from_the_stack_outputs_when_the_cluster_does_not_say(tmp_path: Path) -> None:
    outputs = write_stack_outputs(tmp_path / "lp.json", compute_priority="LowPriority")
    argv = ["--outputs-file", str(outputs), "--data", str(write_data(tmp_path / "data")), "--no-stream"]
    fake = FakeMLClient(usages=a100_usages(used=0, limit=0)
                        + [usage("TotalLowPriorityCores", "Total Cluster LowPriority Regional vCPUs", 0, 48)])
    assert submit.main(argv, ml_client=fake) == 0


def test_missing_cluster_stops_before_submission(argv: list[str]) -> None:
    fake = FakeMLClient(computes={})
    with pytest.raises(UserError) as err:
        submit.main(argv, ml_client=fake)
    assert "gpu-a100" in str(err.value) and "pulumi up" in str(err.value)
    assert fake.names() == ["compute.get"]


def test_too_many_nodes_is_refused(argv: list[str]) -> None:
    fake = FakeMLClient()
    with pytest.raises(UserError, match="more than cluster gpu-a100 can scale to"):
        submit.main(argv + ["--instance-count", "3"], ml_client=fake)
    assert "jobs.create_or_update" not in fake.names()


def test_not_logged_in_says_az_login(argv: list[str]) -> None:
    fake = FakeMLClient()

    def refuse(name: str) -> None:
        raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")

    fake.compute.get = refuse  # type: ignore[method-assign]
    with pytest.raises(UserError, match="az login"):
        submit.main(argv, ml_client=fake)


def test_service_errors_are_one_message_without_our_own_retries(argv: list[str]) -> None:
    """azure-core's retry policy already retries 408/429/5xx inside the SDK call: submit adds no loop of its own."""
    fake = FakeMLClient()
    fake.jobs.fail_submit = [http_error(503, "Service Unavailable")]
    with pytest.raises(UserError, match="submitting the job: Azure answered 503"):
        submit.main(argv + ["--no-stream"], ml_client=fake)
    assert fake.names().count("jobs.create_or_update") == 1


def test_job_failure_gives_last_lines_and_studio_link(argv: list[str]) -> None:
    fake = FakeMLClient()

    def fail(jobs, name):  # noqa: ANN001
        jobs.set_status(name, "Failed")
        raise _job_exception('Exception : \n {"code": "UserError", "message": "CUDA out of memory"} ')

    fake.on_stream = fail
    with pytest.raises(UserError) as err:
        submit.main(argv, ml_client=fake)
    (job,) = fake.jobs.submitted
    assert f"job {job.name} failed" in str(err.value)
    assert "CUDA out of memory" in str(err.value)
    assert f"https://ml.azure.com/runs/{job.name}" in str(err.value)


def test_environment_build_failure_links_the_build_log(argv: list[str]) -> None:
    fake = FakeMLClient()

    def fail(jobs, name):  # noqa: ANN001
        raise _job_exception("Exception : \n Image build failed for environment; see the build log")

    fake.on_stream = fail
    with pytest.raises(UserError) as err:
        submit.main(argv, ml_client=fake)
    env_name, env_version = next((c.args["name"], c.args["version"]) for c in fake.calls
                                 if c.name == "environments.create_or_update")
    assert f"environments/{env_name}/version/{env_version}" in str(err.value)


def test_ctrl_c_stops_following_not_the_job(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeMLClient()

    def interrupt(jobs, name):  # noqa: ANN001
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as ki:  # the SDK wraps Ctrl-C this way
            raise _job_exception("The output streaming for the run interrupted.") from ki

    fake.on_stream = interrupt
    assert submit.main(argv, ml_client=fake) == 130
    (job,) = fake.jobs.submitted
    err = capsys.readouterr().err
    assert f"az ml job stream -n {job.name} -g rg-phi -w ws-phi" in err
    assert f"az ml job cancel -n {job.name}" in err
    assert fake.names()[-1] == "jobs.stream"  # nothing cancelled


def test_job_that_ends_unsuccessfully_exits_non_zero(argv: list[str]) -> None:
    fake = FakeMLClient()
    fake.on_stream = lambda jobs, name: jobs.set_status(name, "Canceled")
    with pytest.raises(UserError, match="ended with status Canceled"):
        submit.main(argv, ml_client=fake)


# ---------------------------------------------------------------- registry recipe


def test_registry_recipe_order_and_pipeline(argv: list[str]) -> None:
    fake = FakeMLClient()
    registry = FakeRegistryClient(fake.calls, defaults={"apply_deepspeed": "false", "learning_rate": 1e-5, "precision": "16"})
    assert submit.main(argv + ["--recipe", "registry", "--epochs", "1"], ml_client=fake, registry_client=registry) == 0
    assert fake.names() == [
        "compute.get",
        "compute.list_sizes",
        "compute.list_usage",
        "registry.models.get",
        "registry.components.get",
        "data.get",
        "data.create_or_update",
        "data.get",
        "data.create_or_update",
        "jobs.create_or_update",
        "jobs.stream",
        "jobs.get",
    ]
    assert fake.count("registry.models.get", name="Phi-4", label="latest")
    (job,) = fake.jobs.submitted
    assert type(job).__name__ == "PipelineJob"
    assert job.settings.force_rerun is True and job.settings.continue_on_step_failure is False
    assert job.tags["finetune-phi"] == "registry" and job.experiment_name == "finetune-phi"
    node = job.jobs["chat_completion"]
    assert node.component == "azureml://registries/azureml/components/chat_completion_pipeline/versions/0.0.82"
    inputs = {name: value._data for name, value in node.inputs.items()}
    assert inputs["mlflow_model_path"].path == "azureml://registries/azureml/models/Phi-4/versions/8"
    assert inputs["compute_finetune"] == "gpu-a100"
    assert inputs["number_of_gpu_to_use_finetuning"] == 1
    assert inputs["train_file_path"].path.removeprefix("azureml:").startswith("finetune-phi-train:")
    # tutorial < model_specific_defaults < flags
    assert inputs["lr_scheduler_type"] == "cosine" and inputs["apply_lora"] == "true" and inputs["deepspeed_stage"] == "2"
    assert inputs["apply_deepspeed"] == "false" and inputs["learning_rate"] == 1e-5 and inputs["precision"] == "16"
    assert inputs["num_train_epochs"] == 1
    assert node.outputs["mlflow_model_folder"]._data == "${{parent.outputs.trained_model}}"
    assert "trained_model" in job.outputs
    assert not any(name.startswith("environments.") for name in fake.names())


@pytest.mark.parametrize("model", ["Phi-3-mini-4k-instruct", "Phi-3.5-mini-instruct", "microsoft/Phi-3.5-mini-instruct"])
def test_registry_refuses_a_retired_model_from_its_lifecycle_tags(argv: list[str], model: str) -> None:
    """The registry model's FinetuneRetirementDate tag (as the SDK's Model entity carries it) is past: one message
    naming the current choices, and nothing uploaded or submitted."""
    fake = FakeMLClient()
    registry = FakeRegistryClient(fake.calls)
    with pytest.raises(UserError) as err:
        submit.main(argv + ["--recipe", "registry", "--model", model], ml_client=fake, registry_client=registry)
    message = str(err.value)
    assert "retired for fine-tuning" in message and "2025-08-30" in message
    assert "--model Phi-4" in message and "--recipe sft --model microsoft/Phi-4-mini-instruct" in message
    assert not any(name.startswith(("data.", "jobs.", "registry.components")) for name in fake.names())


def test_registry_archived_model_gets_the_retirement_message(argv: list[str]) -> None:
    """Newer azureml-assets specs archive retired Phi-3 assets; a lookup that finds nothing still says why."""
    fake = FakeMLClient()
    registry = FakeRegistryClient(fake.calls)
    del registry.model_store["Phi-3-mini-4k-instruct"]
    with pytest.raises(UserError, match="retired for fine-tuning in registry azureml on 2025-08-30"):
        submit.main(argv + ["--recipe", "registry", "--model", "Phi-3-mini-4k-instruct"], ml_client=fake,
                    registry_client=registry)
    with pytest.raises(UserError, match="model No-Such-Phi is not in registry azureml.*--list-models"):
        submit.main(argv + ["--recipe", "registry", "--model", "No-Such-Phi"], ml_client=fake, registry_client=registry)


def test_registry_lifecycle_is_read_from_the_tags_not_only_the_table(argv: list[str]) -> None:
    """A model the table does not know is refused by its own tags (ISO timestamps, lower-case keys as in newer
    azureml-assets specs); a deprecated one still runs, with a warning."""
    from datetime import date, timedelta

    from fakes.registry import PHI4_TAGS, registry_model

    fake = FakeMLClient()
    registry = FakeRegistryClient(fake.calls)
    registry.model_store["Some-Phi"] = registry_model("Some-Phi", "1", {
        **PHI4_TAGS, "finetuneDeprecationDate": "2025-01-01T00:00:00.000000Z",
        "finetuneRetirementDate": "2025-02-01T00:00:00.000000Z"})
    with pytest.raises(UserError, match="Some-Phi was retired for fine-tuning in registry azureml on 2025-02-01"):
        submit.main(argv + ["--recipe", "registry", "--model", "Some-Phi"], ml_client=fake, registry_client=registry)
    later = (date.today() + timedelta(days=30)).isoformat()
    registry.model_store["Some-Phi"] = registry_model("Some-Phi", "1", {
        **PHI4_TAGS, "FinetuneDeprecationDate": "2025-01-01", "FinetuneRetirementDate": later})
    assert submit.main(argv + ["--recipe", "registry", "--model", "Some-Phi", "--no-stream"],
                       ml_client=fake, registry_client=registry) == 0


def test_registry_fractional_epochs_refused_before_any_call(argv: list[str]) -> None:
    fake = FakeMLClient()
    with pytest.raises(UserError, match="--epochs 1.5: the registry pipeline's num_train_epochs is a whole number"):
        submit.main(argv + ["--recipe", "registry", "--epochs", "1.5"], ml_client=fake,
                    registry_client=FakeRegistryClient(fake.calls))
    assert fake.calls == []
    assert submit.main(argv + ["--epochs", "1.5", "--no-stream"], ml_client=FakeMLClient()) == 0  # sft takes fractions


def test_registry_refuses_cluster_outside_allow_list(argv: list[str]) -> None:
    fake = FakeMLClient()
    registry = FakeRegistryClient(fake.calls, allow=["Standard_NC48ads_A100_v4", "Standard_ND96asr_v4"])
    with pytest.raises(UserError) as err:
        submit.main(argv + ["--recipe", "registry"], ml_client=fake, registry_client=registry)
    assert A100 in str(err.value) and "Standard_NC48ads_A100_v4" in str(err.value)
    assert "jobs.create_or_update" not in fake.names()


def test_registry_refuses_trainer_only_flags_before_azure(argv: list[str]) -> None:
    fake = FakeMLClient()
    with pytest.raises(UserError, match="--packing"):
        submit.main(argv + ["--recipe", "registry", "--packing", "false"], ml_client=fake,
                    registry_client=FakeRegistryClient(fake.calls))
    assert fake.calls == []


def test_size_table_fallback_matches_service_sizes() -> None:
    """The offline table (used by dry runs) agrees with what the service reports for the default size."""
    from training.quota import known_vm, vm_info

    service = vm_info(A100, default_sizes())
    assert (service.vcpus, service.gpus, service.family) == (24, 1, "standardNCADSA100v4Family")
    assert known_vm(A100) == service


def test_sdk_validation_errors_become_one_message(argv: list[str]) -> None:
    from azure.ai.ml.exceptions import ValidationException

    fake = FakeMLClient()
    fake.jobs.fail_submit = [ValidationException(message="There is no file on target path: /x", no_personal_data_message="x",
                                                 target=ErrorTarget.JOB, error_category=ErrorCategory.USER_ERROR)]
    with pytest.raises(UserError, match="Azure ML refused the request: There is no file on target path"):
        submit.main(argv, ml_client=fake)


# ---------------------------------------------------------------- device, permissions, registered models


def _cpu_client() -> FakeMLClient:
    from azure.ai.ml.entities import AmlCompute

    return FakeMLClient(computes={"cpu": AmlCompute(name="cpu", size="Standard_E4s_v3", max_instances=2)},
                        usages=a100_usages())


def test_cpu_cluster_trains_on_cpu_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The cheap smoke path: a CPU cluster is allowed, the trainer is told `--device cpu`, nobody is surprised."""
    outputs = write_stack_outputs(tmp_path / "cpu.json", compute_name="cpu", compute_vm_size="Standard_E4s_v3")
    argv = ["--outputs-file", str(outputs), "--data", str(write_data(tmp_path / "data")), "--no-stream"]
    model = tmp_path / "small-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    fake = _cpu_client()
    assert submit.main(argv + ["--model", str(model), "--instance-count", "2"], ml_client=fake) == 0
    (job,) = fake.jobs.submitted
    assert "--device cpu" in job.command and "--device cuda" not in job.command
    assert job.distribution.process_count_per_instance == 1  # one process per node on CPU
    assert "has no GPU; the job trains on CPU" in capsys.readouterr().err
    with pytest.raises(UserError, match="registry's chat_completion_pipeline needs a GPU size"):
        submit.main(argv + ["--recipe", "registry"], ml_client=_cpu_client(),
                    registry_client=FakeRegistryClient(fake.calls))


def test_resource_group_scoped_teammate_gets_a_warning_not_a_refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """list_sizes / list_usage are subscription-level reads: 403 for a teammate whose roles stop at the resource group."""
    fake = FakeMLClient()

    def forbidden(**kwargs):  # noqa: ANN003
        raise http_error(403, "AuthorizationFailed: does not have authorization to perform action "
                              "'Microsoft.MachineLearningServices/locations/usages/read' over scope '/subscriptions/s'")

    fake.compute.list_sizes = forbidden  # type: ignore[method-assign]
    fake.compute.list_usage = forbidden  # type: ignore[method-assign]
    assert submit.main(argv + ["--no-stream"], ml_client=fake) == 0
    err = capsys.readouterr().err
    assert "listing VM sizes: permission denied (403)" in err and "offline VM-size table" in err
    assert "quota check is skipped" in err
    (job,) = fake.jobs.submitted
    assert "--device cuda" in job.command  # the table knows the A100 size has a GPU


def test_other_errors_of_those_reads_still_stop(argv: list[str]) -> None:
    fake = FakeMLClient()

    def unavailable(**kwargs):  # noqa: ANN003
        raise http_error(500, "InternalServerError")

    fake.compute.list_usage = unavailable  # type: ignore[method-assign]
    with pytest.raises(UserError, match="reading quota in eastus: Azure answered 500"):
        submit.main(argv, ml_client=fake)
    assert fake.jobs.submitted == []


@pytest.mark.parametrize("kind", ["custom_model", "mlflow_model"])
def test_registered_model_is_a_model_input_of_its_own_type(argv: list[str], kind: str) -> None:
    from azure.ai.ml.entities import Model

    fake = FakeMLClient()
    fake.model_store.append(Model(name="phi-ft", version="3", type=kind, path="azureml://x"))
    assert submit.main(argv + ["--model", "azureml:phi-ft:3", "--no-stream"], ml_client=fake) == 0
    (job,) = fake.jobs.submitted
    assert job.inputs["model"].type == kind and job.inputs["model"].path.removeprefix("azureml:") == "phi-ft:3"
    assert "--model_name_or_path ${{inputs.model}}" in job.command and "--model_revision" not in job.command
    assert fake.count("models.get", name="phi-ft", version="3")


def test_a_missing_registered_model_stops_before_upload(argv: list[str]) -> None:
    fake = FakeMLClient()
    with pytest.raises(UserError, match="reading registered model phi-ft:9: not found"):
        submit.main(argv + ["--model", "azureml:phi-ft:9"], ml_client=fake)
    assert "data.create_or_update" not in fake.names() and fake.jobs.submitted == []
