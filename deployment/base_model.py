"""The base model of LoRA releases: registered once per workspace, by hub id and pinned revision.

Its weights come from the hub, fetched by a small command job on the stack's cluster: managed compute
reaches the hub, while this machine need not and the endpoint's container must not (it reads only
the workspace's storage). The job runs `huggingface_hub.snapshot_download(ID, revision=REV)` into its
`base` output (weights, config, tokenizer; no Python code), and that output is registered as the model
asset `base-<hub id>` tagged with the id and the revision. Every later release finds that asset by its
tags and registers, uploads and downloads nothing for the base. Its one-time cost is in docs/DEPLOY.md.
"""
from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass
from typing import Any

from common.cli import UserError, say
from deployment.registration import RegisteredModel, job_output_path

TAG_HUB_ID = "hf-id"
TAG_REVISION = "hf-revision"
OUTPUT = "base"
FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja")
"""What the job keeps: weights, configs, the tokenizer and its chat template; no modeling code, no .bin copies."""
EXPERIMENT = "finetune-phi-base"


@dataclass(frozen=True)
class BaseModel:
    hub_id: str
    revision: str

    @property
    def asset_name(self) -> str:
        return "base-" + re.sub(r"[^a-z0-9._-]+", "-", self.hub_id.lower()).strip("-")


def base_for(model: str) -> BaseModel:
    """The supported model's hub id and pinned revision (training/models.py); others are refused."""
    from training import models

    supported = models.find(model)
    if supported is None or not supported.hub_id or not supported.revision:
        pinned = ", ".join(m.key for m in models.MODELS if m.hub_id and m.revision)
        raise UserError(f"LoRA releases need a base with a hub id and a pinned revision; {model!r} has none "
                        f"(pinned: {pinned})")
    return BaseModel(supported.hub_id, supported.revision)


def find_base(ml_client: Any, base: BaseModel) -> RegisteredModel | None:
    """The workspace's registered base for this id and revision, or None."""
    for version in _versions(ml_client, base):
        tags = version.tags or {}
        if tags.get(TAG_HUB_ID) == base.hub_id and tags.get(TAG_REVISION) == base.revision:
            return RegisteredModel(base.asset_name, str(version.version), tags.get("source-job"), reused=True)
    return None


def download_job(base: BaseModel, compute: str, environment: str) -> dict[str, Any]:
    """The command job (Azure ML's YAML job schema) that fetches the base into its `base` output."""
    script = ("import sys; from huggingface_hub import snapshot_download; "
              "snapshot_download(repo_id=sys.argv[1], revision=sys.argv[2], local_dir=sys.argv[3], "
              f"allow_patterns={list(FILES)!r})")
    command = " ".join(["python", "-c", shlex.quote(script), shlex.quote(base.hub_id), shlex.quote(base.revision),
                        "${{outputs.base}}"])
    return {
        "$schema": "https://azuremlschemas.azureedge.net/latest/commandJob.schema.json",
        "type": "command",
        "name": f"fetch-base-{base.revision[:8]}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}",
        "experiment_name": EXPERIMENT,
        "display_name": f"fetch the LoRA base {base.hub_id}@{base.revision[:12]}",
        "command": command,
        "environment": environment,
        "compute": f"azureml:{compute}",
        "outputs": {OUTPUT: {"type": "uri_folder", "mode": "rw_mount"}},
        "tags": {TAG_HUB_ID: base.hub_id, TAG_REVISION: base.revision},
    }


def ensure_base(ml_client: Any, outputs: Any, base: BaseModel) -> RegisteredModel:
    """The registered base: found by its tags, or fetched by the download job (once) and registered."""
    from common.azure import azure_errors

    with azure_errors(f"looking up the base model {base.asset_name}"):
        found = find_base(ml_client, base)
    if found is not None:
        say(f"    base {found.name}:{found.version} ({base.hub_id}@{base.revision[:12]}) is registered: reusing it")
        return found
    say(f"    base {base.hub_id}@{base.revision[:12]} is not registered in this workspace: fetching it once "
        f"with a job on {outputs.compute_name} (about 15 minutes)")
    job = _run_download(ml_client, outputs, base)
    return _register(ml_client, base, job)


def _run_download(ml_client: Any, outputs: Any, base: BaseModel) -> str:
    from common.azure import azure_errors
    from training.environment import ensure_environment, environment_spec
    from training.jobs import load

    environment = ensure_environment(ml_client, environment_spec())
    spec = download_job(base, outputs.compute_name, environment)
    with azure_errors("submitting the base model's download job"):
        submitted = ml_client.jobs.create_or_update(load(spec))
    name = submitted.name
    say(f"    job {name} fetches the base; following it")
    try:
        ml_client.jobs.stream(name)
    except Exception as err:  # the SDK raises JobException when the job fails
        raise UserError(f"the base model's download job {name} failed ({str(err).splitlines()[0][:200]}): see "
                        f"`az ml job show -n {name}`; deploy again once it is fixed") from None
    return name


def _register(ml_client: Any, base: BaseModel, job: str) -> RegisteredModel:
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Model

    from common.azure import azure_errors
    from deployment.definitions import CREATED_BY

    with azure_errors(f"registering the base model {base.asset_name}"):
        version = str(max((int(v.version) for v in _versions(ml_client, base) if str(v.version).isdigit()),
                          default=0) + 1)
        ml_client.models.create_or_update(Model(
            name=base.asset_name, version=version, path=job_output_path(job, OUTPUT), type=AssetTypes.CUSTOM_MODEL,
            description=f"{base.hub_id} at revision {base.revision}, the base of this workspace's LoRA releases",
            tags={TAG_HUB_ID: base.hub_id, TAG_REVISION: base.revision, "source-job": job, **CREATED_BY}))
    say(f"    registered base {base.asset_name}:{version} from job {job}")
    return RegisteredModel(base.asset_name, version, job, reused=False)


def _versions(ml_client: Any, base: BaseModel) -> list[Any]:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return list(ml_client.models.list(name=base.asset_name))
    except ResourceNotFoundError:
        return []
