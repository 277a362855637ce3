"""The managed online endpoint and deployment definitions (real azure-ai-ml entities).

One place decides names, identity, probes, request limits and the instance type, for both the
real deploy and `--dry-run`. The SDK is imported inside the builders, never at import time.
"""
from __future__ import annotations

import copy
import hashlib
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from common.cli import UserError
from common.vm_sizes import KNOWN_SIZES, VmSize
from deployment.serve import ENV_MODEL_NAME
from deployment.sizing import serving_size

if TYPE_CHECKING:  # pragma: no cover
    from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint

    from infra.outputs import StackOutputs

MODEL_NAME = "phi3-finetuned"
CREATED_BY = {"created-by": "finetune-phi"}
"""Tag on every endpoint this tool creates; teardown deletes only these unless --all."""
SLOTS = ("blue", "green")

# Probes. The container's port opens within seconds (GET /live answers while the model loads);
# /health turns 200 once the model is loaded, which for a 3.8B model takes minutes (download
# from storage, then to the GPU). So readiness starts probing early and tolerates a long wait
# (a high failure threshold: 10 s x 120 = 20 minutes), and the deployment is ready as soon as the
# model is; only liveness keeps a long initial delay, so a slow start is never killed.
READINESS_INITIAL_DELAY_S = 10
READINESS_FAILURE_THRESHOLD = 120
LIVENESS_INITIAL_DELAY_S = 600
LIVENESS_FAILURE_THRESHOLD = 30
PROBE_PERIOD_S = 10
PROBE_TIMEOUT_S = 10
# Requests: max_concurrent_requests_per_instance, the request timeout and the container's engine caps
# are sized per (instance type, base model) in deployment/sizing.py (vLLM on GPU types).
DEFAULT_BASE_MODEL = "phi-3.5-mini"  # the fine-tune's base when deploy is not told (training.models.DEFAULT_SFT_MODEL)


INSTANCE_TYPES: dict[str, VmSize] = {key: size for key, size in KNOWN_SIZES.items() if size.serving_note}
DEFAULT_INSTANCE_TYPE = "Standard_NC24ads_A100_v4"

_ENDPOINT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]$")


def instance_info(sku: str) -> VmSize | None:
    return INSTANCE_TYPES.get(sku.lower())


def default_endpoint_name(outputs: "StackOutputs") -> str:
    """Endpoint names are unique per region: derive a stable one from the workspace's identity."""
    scope = f"{outputs.subscription_id}/{outputs.resource_group_name}/{outputs.workspace_name}".lower()
    return f"phi3-chat-{hashlib.sha256(scope.encode()).hexdigest()[:8]}"


def check_endpoint_name(name: str) -> str:
    if not _ENDPOINT_NAME.match(name):
        raise UserError(
            f"endpoint name {name!r} is not valid: 3-32 characters, letters, digits and '-', starting with a "
            "letter and not ending with '-'. Pass another with --endpoint-name."
        )
    return name


def build_endpoint(name: str, outputs: "StackOutputs") -> "ManagedOnlineEndpoint":
    """Key auth, the stack's endpoint identity (AcrPull, Blob Data Reader, Metrics Writer only; it cannot
    be changed after creation). Never the training identity, which every job submitter can act as."""
    from azure.ai.ml.entities import IdentityConfiguration, ManagedIdentityConfiguration, ManagedOnlineEndpoint

    return ManagedOnlineEndpoint(
        name=check_endpoint_name(name),
        auth_mode="key",
        description="finetune-phi: chat with the fine-tuned Phi-3 model",
        tags=dict(CREATED_BY),
        identity=IdentityConfiguration(
            type="user_assigned",
            user_assigned_identities=[ManagedIdentityConfiguration(resource_id=outputs.endpoint_uai_resource_id)],
        ),
    )


def build_deployment(
    *,
    name: str,
    endpoint_name: str,
    model: Any,
    environment: Any,
    instance_type: str,
    outputs: "StackOutputs",
    instance_count: int = 1,
    base_model: str = DEFAULT_BASE_MODEL,
) -> "ManagedOnlineDeployment":
    """One deployment slot: the server's container (deployment/environment.py), probes, request limits
    and engine caps sized for (instance type, base model), `instance_count` instances."""
    from azure.ai.ml.entities import ManagedOnlineDeployment, OnlineRequestSettings, ProbeSettings

    size = serving_size(instance_type, base_model)

    return ManagedOnlineDeployment(
        name=name,
        endpoint_name=endpoint_name,
        model=model,
        environment=environment,
        instance_type=instance_type,
        instance_count=check_instance_count(instance_count),
        readiness_probe=ProbeSettings(
            initial_delay=READINESS_INITIAL_DELAY_S, period=PROBE_PERIOD_S, timeout=PROBE_TIMEOUT_S,
            failure_threshold=READINESS_FAILURE_THRESHOLD, success_threshold=1,
        ),
        liveness_probe=ProbeSettings(
            initial_delay=LIVENESS_INITIAL_DELAY_S, period=PROBE_PERIOD_S, timeout=PROBE_TIMEOUT_S,
            failure_threshold=LIVENESS_FAILURE_THRESHOLD, success_threshold=1,
        ),
        request_settings=OnlineRequestSettings(
            request_timeout_ms=size.request_timeout_ms,
            max_concurrent_requests_per_instance=size.max_concurrent_requests,
        ),
        environment_variables={
            # The container signs in (if it ever does) as the endpoint's identity.
            "AZURE_CLIENT_ID": outputs.endpoint_uai_client_id,
            ENV_MODEL_NAME: MODEL_NAME,  # the id /v1/models reports
            # engine, context (vLLM's max_model_len), max_tokens, sequences (max_num_seqs), requests held
            **size.environment(instance_count),
        },
        tags=dict(CREATED_BY),
    )


def check_instance_count(count: int) -> int:
    if count < 1:
        raise UserError(f"--instance-count must be at least 1, got {count}")
    return count


def _plain(value: Any) -> Any:
    """Plain dicts/lists without None values (the SDK's OrderedDicts and null ids break YAML/loaders)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def entity_dict(entity: Any) -> dict[str, Any]:
    """The entity's YAML form. Serializes a deepcopy: serializing an endpoint with a UAI mutates it."""
    return _plain(copy.deepcopy(entity)._to_dict())


def load_back(doc: dict[str, Any]) -> Any:
    """Validate one definition with the SDK's own YAML loaders (no credential, no network)."""
    import yaml
    from azure.ai.ml import load_online_deployment, load_online_endpoint

    loader = load_online_deployment if "endpoint_name" in doc else load_online_endpoint
    try:
        return loader(source=io.StringIO(yaml.safe_dump(doc, sort_keys=False)))
    except Exception as err:  # the SDK raises several validation types
        raise UserError(f"the generated {doc.get('name')!r} definition does not validate: {err}") from None


def definitions_yaml(entities: Iterable[Any]) -> str:
    """Multi-document YAML of the entities, each validated by loading it back with the SDK."""
    import yaml

    entities = list(entities)
    docs = [entity_dict(e) for e in entities]
    for doc in docs:
        load_back(doc)
    return yaml.safe_dump_all(docs, sort_keys=False) + "".join(_build_context_comment(e) for e in entities)


def _build_context_comment(entity: Any) -> str:
    """The image's Dockerfile and requirements as YAML comments, so a dry run shows the whole definition."""
    build = getattr(getattr(entity, "environment", None), "build", None)
    folder = Path(build.path) if build is not None and getattr(build, "path", None) else None
    if folder is None or not (folder / "Dockerfile").is_file():
        return ""
    lines = [f"build context {folder} (Azure ML builds the deployment's image from it):"]
    for name in ("Dockerfile", "requirements.txt"):  # the vLLM image has no requirements.txt: it brings its own
        if (folder / name).is_file():
            lines += [f"--- {name}"] + (folder / name).read_text(encoding="utf-8").splitlines()
    return "".join(f"# {line}\n" for line in lines)
