"""A fake azure-ai-ml MLClient for training.submit tests: the network edge, nothing more.

Every operation records `(group.method, detail)` in one shared `calls` list so tests can assert
the order of operations. Lookups of missing assets raise the real ResourceNotFoundError, the
compute and quota answers are real SDK entities built the way azure-ai-ml 1.35 builds them from
REST payloads (camelCase quirks included), and submitted jobs are kept as the entities given.
"""
from __future__ import annotations

import copy
from types import SimpleNamespace
from dataclasses import dataclass, field
from typing import Any, Callable

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

LOCATION = "eastus"
A100 = "Standard_NC24ads_A100_v4"


def usage(family: str, localized: str, used: int, limit: int, *, workspace: str | None = None) -> Any:
    """A Usage entity as `compute.list_usage` returns it (via the SDK's own REST conversion)."""
    from azure.ai.ml._restclient.arm_ml_service.models import Usage as RestUsage
    from azure.ai.ml.entities import Usage

    scope = f"/workspaces/{workspace}" if workspace else ""
    kind = "workspaces/dedicatedCores" if workspace else "vmFamily"
    rest = RestUsage(
        {
            "id": f"/subscriptions/s/providers/Microsoft.MachineLearningServices/locations/{LOCATION}{scope}/usages/{family}",
            "amlWorkspaceLocation": LOCATION,
            "type": f"Microsoft.MachineLearningServices/{kind}/usages",
            "unit": "Count",
            "currentValue": used,
            "limit": limit,
            "name": {"value": family, "localizedValue": localized},
        }
    )
    return Usage._from_rest_object(rest)


def vm_size(name: str, family: str, vcpus: int, gpus: int) -> Any:
    """A VmSize entity as `compute.list_sizes` returns it."""
    from azure.ai.ml._restclient.arm_ml_service.models import VirtualMachineSize
    from azure.ai.ml.entities import VmSize

    rest = VirtualMachineSize(
        {"name": name, "family": family, "vCPUs": vcpus, "gpus": gpus, "memoryGB": 220.0, "supportedComputeTypes": ["AmlCompute"]}
    )
    return VmSize._from_rest_object(rest)


def default_sizes() -> list[Any]:
    return [
        vm_size("Standard_E4s_v3", "standardESv3Family", 4, 0),
        vm_size(A100, "standardNCADSA100v4Family", 24, 1),
        vm_size("Standard_NC96ads_A100_v4", "standardNCADSA100v4Family", 96, 4),
    ]


def a100_usages(used: int = 0, limit: int = 48) -> list[Any]:
    return [
        usage("standardESv3Family", "Standard ESv3 Family Cluster Dedicated vCPUs", 0, 100),
        usage("standardNCADSA100v4Family", "Standard NCADSA100v4 Family Cluster Dedicated vCPUs", used, limit, workspace="ws"),
        usage("standardNCADSA100v4Family", "Standard NCADSA100v4 Family Cluster Dedicated vCPUs", used, limit),
        usage("totalCores", "Total Cluster Dedicated Regional vCPUs", used, 200),
    ]


@dataclass
class Recorder:
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def __call__(self, what: str, detail: Any = None) -> None:
        self.calls.append((what, detail))

    def names(self) -> list[str]:
        return [what for what, _ in self.calls]


class _Assets:
    """environments / data: versioned assets, get-or-raise and create."""

    def __init__(self, group: str, record: Recorder) -> None:
        self.group, self.record, self.store = group, record, {}

    def get(self, name: str, version: str | None = None, label: str | None = None) -> Any:
        self.record(f"{self.group}.get", (name, version))
        try:
            return self.store[(name, version)]
        except KeyError:
            raise ResourceNotFoundError(f"{self.group} {name}:{version} not found") from None

    def create_or_update(self, asset: Any) -> Any:
        self.record(f"{self.group}.create_or_update", (asset.name, asset.version))
        self.store[(asset.name, asset.version)] = asset
        return asset


class _Compute:
    def __init__(self, client: "FakeMLClient") -> None:
        self.client = client

    def get(self, name: str) -> Any:
        self.client.record("compute.get", name)
        compute = self.client.computes.get(name)
        if compute is None:
            raise ResourceNotFoundError(f"Compute {name} not found in workspace")
        return compute

    def list_sizes(self, *, location: str | None = None, compute_type: str | None = None) -> list[Any]:
        self.client.record("compute.list_sizes", location)
        return list(self.client.sizes)

    def list_usage(self, *, location: str | None = None) -> list[Any]:
        self.client.record("compute.list_usage", location)
        return list(self.client.usages)


class _Jobs:
    def __init__(self, client: "FakeMLClient") -> None:
        self.client = client
        self.submitted: list[Any] = []
        self.statuses: dict[str, str] = {}
        self.fail_submit: list[BaseException] = []
        """Raised (once each) by create_or_update before it succeeds: transient-error tests."""

    def create_or_update(self, job: Any, **kwargs: Any) -> Any:
        self.client.record("jobs.create_or_update", getattr(job, "name", None))
        if self.fail_submit:
            raise self.fail_submit.pop(0)
        created = copy.copy(job)
        self.submitted.append(job)
        self.statuses[job.name] = "Starting"
        return created

    def stream(self, name: str) -> None:
        self.client.record("jobs.stream", name)
        self.client.on_stream(self, name)

    def get(self, name: str) -> Any:
        self.client.record("jobs.get", name)
        if name not in self.statuses:
            raise ResourceNotFoundError(f"job {name} not found")
        job = next(j for j in self.submitted if j.name == name)
        return SimpleNamespace(name=name, status=self.statuses[name], tags=dict(job.tags or {}),
                               experiment_name=job.experiment_name)

    def list(self, **kwargs: Any) -> list[Any]:
        self.client.record("jobs.list", None)
        return list(self.client.listed_jobs)


def complete(jobs: _Jobs, name: str) -> None:
    jobs.statuses[name] = "Completed"


class FakeMLClient:
    """The workspace client. `on_stream(jobs, name)` decides how streaming ends (default: job completes)."""

    def __init__(self, *, computes: dict[str, Any] | None = None, sizes: list[Any] | None = None,
                 usages: list[Any] | None = None, recorder: Recorder | None = None) -> None:
        from azure.ai.ml.entities import AmlCompute

        self.record = recorder or Recorder()
        self.computes = computes if computes is not None else {
            "gpu-a100": AmlCompute(name="gpu-a100", size=A100, max_instances=2, min_instances=0)
        }
        self.sizes = sizes if sizes is not None else default_sizes()
        self.usages = usages if usages is not None else a100_usages()
        self.environments = _Assets("environments", self.record)
        self.models = _Assets("models", self.record)
        self.data = _Assets("data", self.record)
        self.compute = _Compute(self)
        self.jobs = _Jobs(self)
        self.listed_jobs: list[Any] = []
        self.on_stream: Callable[[_Jobs, str], None] = complete

    @property
    def calls(self) -> list[tuple[str, Any]]:
        return self.record.calls


class _RegistryComponents:
    def __init__(self, client: "FakeRegistryClient") -> None:
        self.client = client

    def get(self, name: str, version: str | None = None, label: str | None = None) -> Any:
        self.client.record("registry.components.get", (name, label))
        if name != "chat_completion_pipeline":
            raise ResourceNotFoundError(f"component {name} not found")
        return self.client.component


class _RegistryModels:
    def __init__(self, client: "FakeRegistryClient") -> None:
        self.client = client

    def get(self, name: str, version: str | None = None, label: str | None = None) -> Any:
        self.client.record("registry.models.get", (name, label))
        if name not in self.client.model_store:
            raise ResourceNotFoundError(f"model {name} not found in registry azureml")
        return self.client.model_store[name]


@dataclass
class FakeComponent:
    id: str
    version: str
    inputs: dict[str, Any]


COMPONENT_INPUTS = [
    "mlflow_model_path", "compute_model_import", "compute_preprocess", "compute_finetune", "compute_model_evaluation",
    "train_file_path", "validation_file_path", "test_file_path", "number_of_gpu_to_use_finetuning", "num_nodes_finetune",
    "num_train_epochs", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size", "learning_rate",
    "lr_scheduler_type", "weight_decay", "gradient_accumulation_steps", "seed", "logging_steps", "max_seq_length",
    "apply_lora", "lora_r", "lora_alpha", "lora_dropout", "apply_deepspeed", "deepspeed_stage", "precision",
]


def registry_model(name: str, version: str, tags: dict[str, Any]) -> Any:
    """A registry Model entity as `MLClient(registry_name="azureml").models.get` returns it: tag values are strings."""
    from azure.ai.ml.entities import Model

    model = Model(name=name, version=version, type="mlflow_model", tags={k: str(v) for k, v in tags.items()})
    model._id = f"azureml://registries/azureml/models/{name}/versions/{version}"
    return model


A100_ALLOW = ["Standard_NC24ads_A100_v4", "Standard_NC48ads_A100_v4", "Standard_NC96ads_A100_v4",
              "Standard_ND96asr_v4", "Standard_ND96amsr_A100_v4"]
PHI3_MINI_4K_TAGS: dict[str, Any] = {
    # Azure/azureml-assets assets/models/system/phi-3-mini-4k-instruct/spec.yaml, version 15 (excerpt)
    "InferenceLegacyDate": "2025-06-09",
    "InferenceDeprecationDate": "2025-06-30",
    "InferenceRetirementDate": "2025-08-30",
    "FinetuneDeprecationDate": "2025-06-30",
    "FinetuneRetirementDate": "2025-08-30",
    "task": "chat-completion",
    "textContextWindow": "4096",
    "finetune_compute_allow_list": repr(A100_ALLOW),
    "model_specific_defaults": repr({"apply_deepspeed": "true", "deepspeed_stage": 2, "apply_lora": "true",
                                     "apply_ort": "false", "precision": 16, "num_train_epochs": 1,
                                     "learning_rate": 5e-6, "lr_scheduler_type": "cosine", "logging_steps": 10}),
}
PHI35_MINI_TAGS: dict[str, Any] = {**PHI3_MINI_4K_TAGS, "textContextWindow": "131072"}
PHI4_TAGS: dict[str, Any] = {
    # Azure/azureml-assets assets/models/system/Phi-4/spec.yaml, version 8 (excerpt): no lifecycle dates
    "task": "chat-completion",
    "textContextWindow": "16384",
    "finetune_compute_allow_list": repr(A100_ALLOW + ["Standard_NC40ads_H100_v5", "Standard_NC80adis_H100_v5",
                                                      "Standard_ND96isr_H100_v5"]),
    "model_specific_defaults": repr({"apply_deepspeed": "true", "deepspeed_stage": 3, "apply_lora": "true",
                                     "apply_ort": "false", "precision": 16, "num_train_epochs": 1,
                                     "learning_rate": 5e-6, "lr_scheduler_type": "cosine", "logging_steps": 10}),
}


class FakeRegistryClient:
    """MLClient(credential, registry_name="azureml") stand-in, sharing the workspace fake's call log."""

    def __init__(self, recorder: Recorder, *, allow: list[str] | None = None, defaults: dict[str, Any] | None = None) -> None:
        """`allow` / `defaults` replace Phi-4's finetune_compute_allow_list / model_specific_defaults tags."""
        self.record = recorder
        self.component = FakeComponent(
            id="azureml://registries/azureml/components/chat_completion_pipeline/versions/0.0.82",
            version="0.0.82",
            inputs={name: object() for name in COMPONENT_INPUTS},
        )
        phi4 = dict(PHI4_TAGS)
        if allow is not None:
            phi4["finetune_compute_allow_list"] = repr(allow)
        if defaults is not None:
            phi4["model_specific_defaults"] = repr(defaults)
        self.model_store = {
            "Phi-4": registry_model("Phi-4", "8", phi4),
            "Phi-3-mini-4k-instruct": registry_model("Phi-3-mini-4k-instruct", "15", PHI3_MINI_4K_TAGS),
            "Phi-3.5-mini-instruct": registry_model("Phi-3.5-mini-instruct", "6", PHI35_MINI_TAGS),
        }
        self.components = _RegistryComponents(self)
        self.models = _RegistryModels(self)

    @property
    def calls(self) -> list[tuple[str, Any]]:
        return self.record.calls


def http_error(status: int, message: str = "service error") -> HttpResponseError:
    err = HttpResponseError(message=message)
    err.status_code = status
    return err


# ---------------------------------------------------------------- inputs the CLI reads

STACK_OUTPUTS = {
    "subscription_id": "00000000-0000-0000-0000-000000000001",
    "tenant_id": "00000000-0000-0000-0000-000000000002",
    "resource_group_name": "rg-phi",
    "location": LOCATION,
    "workspace_name": "ws-phi",
    "storage_account_name": "stphi",
    "container_registry_name": "crphi",
    "key_vault_name": "kvphi",
    "compute_name": "gpu-a100",
    "compute_vm_size": A100,
    "compute_max_nodes": 2,
    "uai_name": "uai-phi",
    "uai_resource_id": "/subscriptions/s/resourceGroups/rg-phi/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-phi",
    "uai_client_id": "11111111-0000-0000-0000-000000000000",
    "uai_principal_id": "22222222-0000-0000-0000-000000000000",
    "endpoint_uai_name": "uai-phi-endpoint",
    "endpoint_uai_resource_id": "/subscriptions/s/resourceGroups/rg-phi/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-phi-endpoint",
    "endpoint_uai_client_id": "33333333-0000-0000-0000-000000000000",
    "endpoint_uai_principal_id": "44444444-0000-0000-0000-000000000000",
}


def write_stack_outputs(path: Any, **overrides: Any) -> Any:
    import json

    path.write_text(json.dumps({**STACK_OUTPUTS, **overrides}), encoding="utf-8")
    return path


def write_data(folder: Any, rows: int = 3, salt: str = "") -> Any:
    """A tiny train/test pair in the ultrachat `messages` format."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train.jsonl", rows), ("test.jsonl", 1)):
        lines = [
            json.dumps({"messages": [{"role": "user", "content": f"q{i}{salt}"}, {"role": "assistant", "content": f"a{i}"}]})
            for i in range(count)
        ]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
