"""The `azureml` model registry client (`MLClient(credential, registry_name="azureml")`), sharing the
workspace fake's call log; its models carry the tags the real registry's spec.yaml files give them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from fakes.ml_client import Call


class _RegistryComponents:
    def __init__(self, client: FakeRegistryClient) -> None:
        self.client = client

    def get(self, name: str, version: str | None = None, label: str | None = None) -> Any:
        self.client.calls.append(Call("registry.components", "get", {"name": name, "label": label}))
        if name != "chat_completion_pipeline":
            raise ResourceNotFoundError(f"component {name} not found")
        return self.client.component


class _RegistryModels:
    def __init__(self, client: FakeRegistryClient) -> None:
        self.client = client

    def get(self, name: str, version: str | None = None, label: str | None = None) -> Any:
        self.client.calls.append(Call("registry.models", "get", {"name": name, "label": label}))
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

    def __init__(self, calls: list[Call], *, allow: list[str] | None = None, defaults: dict[str, Any] | None = None) -> None:
        """`allow` / `defaults` replace Phi-4's finetune_compute_allow_list / model_specific_defaults tags."""
        self.calls = calls
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
