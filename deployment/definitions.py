"""The managed online endpoint and deployment definitions (real azure-ai-ml entities).

One place decides names, identity, probes, request limits and the instance type, for both the
real deploy and `--dry-run`. The SDK is imported inside the builders, never at import time.
"""
from __future__ import annotations

import copy
import hashlib
import io
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from common.cli import UserError
from common.vm_sizes import KNOWN_SIZES, VmSize

if TYPE_CHECKING:  # pragma: no cover
    from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint

    from infra.outputs import StackOutputs

MODEL_NAME = "phi3-finetuned"
CREATED_BY = {"created-by": "finetune-phi"}
"""Tag on every endpoint this tool creates; teardown deletes only these unless --all."""
SLOTS = ("blue", "green")
SCORE_SCRIPT = Path(__file__).resolve().with_name("score.py")

# Long initial delay: a 3.8B model loads in minutes (download from storage + to GPU); the
# tutorials' 500-600 s avoid the container being killed before it is ready.
PROBE_INITIAL_DELAY_S = 600
PROBE_PERIOD_S = 10
PROBE_TIMEOUT_S = 10
PROBE_FAILURE_THRESHOLD = 30
REQUEST_TIMEOUT_MS = 90_000
MAX_CONCURRENT_REQUESTS = 2


INSTANCE_TYPES: dict[str, VmSize] = {key: size for key, size in KNOWN_SIZES.items() if size.serving_note}
DEFAULT_INSTANCE_TYPE = "Standard_NC24ads_A100_v4"

_ENDPOINT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]$")


def instance_info(sku: str) -> VmSize | None:
    return INSTANCE_TYPES.get(sku.lower())


def default_endpoint_name(outputs: "StackOutputs") -> str:
    """Endpoint names are unique per region: derive a stable one from the workspace's identity."""
    explicit = outputs.extra.get("endpoint_name")
    if explicit:
        return str(explicit)
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
    """Key auth, the stack's user-assigned identity (it cannot be changed after creation)."""
    from azure.ai.ml.entities import IdentityConfiguration, ManagedIdentityConfiguration, ManagedOnlineEndpoint

    return ManagedOnlineEndpoint(
        name=check_endpoint_name(name),
        auth_mode="key",
        description="finetune-phi: chat with the fine-tuned Phi-3 model",
        tags=dict(CREATED_BY),
        identity=IdentityConfiguration(
            type="user_assigned",
            user_assigned_identities=[ManagedIdentityConfiguration(resource_id=outputs.uai_resource_id)],
        ),
    )


def build_deployment(
    *,
    name: str,
    endpoint_name: str,
    model: Any,
    environment: Any,
    code_dir: Path,
    instance_type: str,
    outputs: "StackOutputs",
) -> "ManagedOnlineDeployment":
    """One deployment slot: score.py as code, the pinned serving environment, long probes, the UAI id."""
    from azure.ai.ml.entities import (
        CodeConfiguration,
        ManagedOnlineDeployment,
        OnlineRequestSettings,
        ProbeSettings,
    )

    def probe() -> ProbeSettings:
        return ProbeSettings(
            initial_delay=PROBE_INITIAL_DELAY_S,
            period=PROBE_PERIOD_S,
            timeout=PROBE_TIMEOUT_S,
            failure_threshold=PROBE_FAILURE_THRESHOLD,
            success_threshold=1,
        )

    return ManagedOnlineDeployment(
        name=name,
        endpoint_name=endpoint_name,
        model=model,
        environment=environment,
        code_configuration=CodeConfiguration(code=str(code_dir), scoring_script=SCORE_SCRIPT.name),
        instance_type=instance_type,
        instance_count=1,
        liveness_probe=probe(),
        readiness_probe=probe(),
        request_settings=OnlineRequestSettings(
            request_timeout_ms=REQUEST_TIMEOUT_MS,
            max_concurrent_requests_per_instance=MAX_CONCURRENT_REQUESTS,
        ),
        environment_variables={
            # The container signs in to storage/registry as the endpoint's UAI; DefaultAzureCredential
            # inside score.py (if ever used) picks the same identity through AZURE_CLIENT_ID.
            "UAI_CLIENT_ID": outputs.uai_client_id,
            "AZURE_CLIENT_ID": outputs.uai_client_id,
            "WORKER_COUNT": "1",  # one model copy per instance: one GPU, one worker
        },
        tags=dict(CREATED_BY),
    )


def stage_code(root: Path) -> Path:
    """A code folder holding score.py only (Azure ML uploads the whole folder). Content-addressed."""
    if not SCORE_SCRIPT.is_file():
        raise UserError(f"{SCORE_SCRIPT} is missing; the deployment's code is that scoring script.")
    data = SCORE_SCRIPT.read_bytes()
    folder = root / f"code-{hashlib.sha256(data).hexdigest()[:12]}"
    if not (folder / SCORE_SCRIPT.name).is_file():
        tmp = root / f".{folder.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / SCORE_SCRIPT.name).write_bytes(data)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return folder


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

    docs = [entity_dict(e) for e in entities]
    for doc in docs:
        load_back(doc)
    return yaml.safe_dump_all(docs, sort_keys=False)
