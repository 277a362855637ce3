"""LoRA releases: a deployment that serves the base model and a list of adapters, one picked per request.

A LoRA fine-tune changes a few megabytes. On GPU instance types a release registers the job's adapter
(the PEFT folder the trainer writes at `<model output>/adapter`) and deploys the base model, registered
once per workspace (deployment/base_model.py), with the list of adapters (docs/DEPLOY.md "LoRA releases"):

    the new deployment's adapters = the live one's + the new ones (--adapter) - the retired ones (--retire-adapter)

and a default: `--default-adapter`, else the newest new adapter, else the live default. Each release is
still a new blue/green deployment, smoke-tested and gated like any other; the gate compares the new
default with the live default (the rollout's client names no model, so the default answers on both).

The endpoint identity may read blobs but not the workspace's model registry, so deploy resolves each
adapter asset to the https URL of its folder in storage and passes NAME -> URL to the container
($PHI_SERVE_ADAPTERS), which downloads them at start-up (deployment/serving/adapter_download.py).
The live list is read back from the live deployment's tags.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from common.cli import UserError, say
from deployment.registration import SOURCE_JOB_TAG, RegisteredModel, job_output_path, parse_model_ref
from deployment.serving.adapters import ADAPTER_NAME, ENV_ADAPTERS, ENV_DEFAULT_ADAPTER, NAME_RULE
from deployment.serve import ENV_MODEL_NAME

ADAPTER_SUBPATH = "adapter"
"""Where the trainer writes the PEFT adapter inside its `model` output, beside the merged MLflow model."""
ADAPTER_ASSET_PREFIX = "phi3-adapter-"
TAG_ADAPTERS = "lora-adapters"
"""Deployment tag: JSON {NAME: "azureml:ASSET:VERSION"}, the release's list in release order."""
TAG_DEFAULT = "lora-default"
_DATASTORE_PATH = re.compile(r"^azureml://(?:subscriptions/[^/]+/resource[gG]roups/[^/]+/workspaces/[^/]+/)?"
                             r"datastores/(?P<datastore>[^/]+)/paths/(?P<path>.+)$")


@dataclass(frozen=True)
class AdapterFlags:
    """deploy's --adapter NAME=JOB|azureml:NAME:VERSION (repeatable), --default-adapter, --retire-adapter."""

    add: Mapping[str, str] = field(default_factory=dict)
    default: str | None = None
    retire: tuple[str, ...] = ()

    @property
    def given(self) -> bool:
        return bool(self.add or self.default or self.retire)


def parse_flags(adapters: Sequence[str], default: str | None, retire: Sequence[str]) -> AdapterFlags:
    add: dict[str, str] = {}
    for flag in adapters:
        name, sep, source = flag.partition("=")
        if not sep or not name or not source:
            raise UserError(f"--adapter {flag!r} is not NAME=JOB or NAME=azureml:ASSET:VERSION (for example "
                            "--adapter support=sft-20261201-1200)")
        if not ADAPTER_NAME.fullmatch(name):
            raise UserError(f"--adapter name {name!r} is not valid: use {NAME_RULE}")
        if name in add:
            raise UserError(f"--adapter {name} is given twice: each NAME once per release")
        add[name] = source
    clash = sorted(set(add) & set(retire))
    if clash:
        raise UserError(f"{', '.join(clash)} is both added and retired: pass --adapter or --retire-adapter, not both")
    return AdapterFlags(add, default, tuple(dict.fromkeys(retire)))


@dataclass(frozen=True)
class Release:
    """What one LoRA deployment serves: the base, NAME -> adapter asset (release order), and the default."""

    base: RegisteredModel
    adapters: Mapping[str, str]
    default: str
    urls: Mapping[str, str] = field(default_factory=dict)
    """NAME -> the https URL of the adapter's folder in storage (what the container downloads)."""

    def environment(self) -> dict[str, str]:
        """The container's settings (deployment/serving/adapters.py reads them)."""
        return {ENV_ADAPTERS: json.dumps(dict(self.urls)), ENV_DEFAULT_ADAPTER: self.default,
                ENV_MODEL_NAME: self.base.name}

    def tags(self) -> dict[str, str]:
        return {TAG_ADAPTERS: json.dumps(dict(self.adapters)), TAG_DEFAULT: self.default}

    @property
    def default_model(self) -> str:
        """What answers requests without `model`: the gate's record of what was evaluated."""
        return self.adapters[self.default]

    def apply(self, deployment: Any) -> None:
        """Onto the deployment entity (model = the base, built by definitions.build_deployment): what to serve."""
        deployment.environment_variables = {**(deployment.environment_variables or {}), **self.environment()}
        deployment.tags = {**(deployment.tags or {}), **self.tags()}

    def describe(self) -> str:
        listed = ", ".join(f"{n}={ref}" + (" (default)" if n == self.default else "") for n, ref in self.adapters.items())
        return f"base {self.base.reference}; adapters {listed}"


def live_adapters(tags: Mapping[str, str] | None) -> tuple[dict[str, str], str | None]:
    """The live deployment's list and default, from its tags ({} and None for a merged-model deployment)."""
    tags = tags or {}
    try:
        adapters = json.loads(tags.get(TAG_ADAPTERS) or "{}")
    except ValueError:
        adapters = {}
    return (dict(adapters) if isinstance(adapters, dict) else {}), tags.get(TAG_DEFAULT)


def adapter_list(live: Mapping[str, str], live_default: str | None, flags: AdapterFlags,
                 new: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """(NAME -> asset ref, the default): live + new - retired. `new` holds the registered refs of flags.add."""
    unknown = [name for name in flags.retire if name not in live]
    if unknown:
        raise UserError(f"--retire-adapter {', '.join(unknown)}: not served by the live deployment "
                        f"(it serves {', '.join(live) or 'no adapters'})")
    adapters = {name: ref for name, ref in live.items() if name not in flags.retire and name not in new}
    adapters.update(new)
    if not adapters:
        raise UserError("this release would serve no adapter: keep one (drop a --retire-adapter) or add one with "
                        "--adapter NAME=JOB; to serve a merged model instead, deploy with --job alone")
    default = flags.default or (list(new)[-1] if new else live_default)
    if default not in adapters:
        raise UserError(f"the default adapter {default!r} would not be served (serving: {', '.join(adapters)}): "
                        "name one of them with --default-adapter")
    return adapters, default


def plan_release(ml_client: Any, base: RegisteredModel, live_tags: Mapping[str, str], flags: AdapterFlags) -> Release:
    """The new deployment's list: the new adapters registered, the live ones kept but the retired, each resolved to
    its storage URL. Says what each adapter is and what this release uploads."""
    live, live_default = live_adapters(live_tags)
    new = {name: register_adapter(ml_client, name, source) for name, source in flags.add.items()}
    adapters, default = adapter_list(live, live_default, flags, new)
    urls = {name: storage_url(ml_client, ref) for name, ref in adapters.items()}
    release = Release(base, adapters, default, urls)
    kept = [name for name in adapters if name not in new]
    say(f"    serving {', '.join(adapters)} (default {default}); new: {', '.join(new) or 'none'}; kept from the live "
        f"deployment: {', '.join(kept) or 'none'}; retired: {', '.join(flags.retire) or 'none'}")
    return release


def dry_run_release(base_name: str, flags: AdapterFlags) -> Release:
    """The release as far as the flags say, offline: new adapters only, each at its job output (or asset) path."""
    refs = {name: source if source.startswith("azureml:") else f"{job_output_path(source, 'model')}/paths/{ADAPTER_SUBPATH}"
            for name, source in flags.add.items()}
    if not refs:
        raise UserError("the dry run shows the adapters this release adds; --default-adapter and --retire-adapter "
                        "alone change the live list, which only the real deploy reads")
    default = flags.default or list(refs)[-1]
    return Release(RegisteredModel(base_name, "latest", None, True), refs, default, refs)


def served_model(deployment: Any) -> str:
    """What answers a deployment's requests without `model`, as the gate records it: the default adapter's
    asset for a LoRA release, the model asset otherwise."""
    adapters, default = live_adapters(deployment.tags)
    return adapters.get(default or "", str(deployment.model))


def register_adapter(ml_client: Any, name: str, source: str) -> str:
    """The asset of one --adapter: `azureml:ASSET:VERSION` as is, or a job's adapter folder registered as
    `phi3-adapter-NAME` (a version registered from that job already is reused). Returns its reference."""
    from azure.core.exceptions import ResourceNotFoundError

    from common.azure import azure_errors

    if source.startswith("azureml:"):
        asset, version = parse_model_ref(source)
        with azure_errors(f"looking up adapter {asset}:{version}"):
            try:
                ml_client.models.get(name=asset, version=version)
            except ResourceNotFoundError:
                raise UserError(f"--adapter {name}={source}: model {asset}:{version} is not registered "
                                f"(`az ml model list --name {asset}`)") from None
        return f"azureml:{asset}:{version}"
    return _register_job_adapter(ml_client, ADAPTER_ASSET_PREFIX + name, source)


def _register_job_adapter(ml_client: Any, asset: str, job: str) -> str:
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Model
    from azure.core.exceptions import ResourceNotFoundError

    from common.azure import azure_errors
    from deployment.definitions import CREATED_BY

    with azure_errors(f"registering the adapter of job {job!r}"):
        try:
            versions = list(ml_client.models.list(name=asset))
        except ResourceNotFoundError:
            versions = []
        for existing in versions:
            if (existing.tags or {}).get(SOURCE_JOB_TAG) == job:
                say(f"    adapter {asset}:{existing.version} was already registered from job {job}: reusing it")
                return f"azureml:{asset}:{existing.version}"
        version = str(max((int(v.version) for v in versions if str(v.version).isdigit()), default=0) + 1)
        path = f"{job_output_path(job, 'model')}/paths/{ADAPTER_SUBPATH}"
        ml_client.models.create_or_update(Model(
            name=asset, version=version, path=path, type=AssetTypes.CUSTOM_MODEL,
            description=f"LoRA adapter (PEFT) trained by job {job}", tags={SOURCE_JOB_TAG: job, **CREATED_BY}))
    say(f"    registered adapter {asset}:{version} from {path} (megabytes: the base is not copied)")
    return f"azureml:{asset}:{version}"


def storage_url(ml_client: Any, ref: str) -> str:
    """The https URL of an adapter asset's folder in the workspace's storage, which the endpoint identity reads."""
    from common.azure import azure_errors

    asset, version = parse_model_ref(ref)
    with azure_errors(f"resolving adapter {asset}:{version} to its storage path"):
        path = str(ml_client.models.get(name=asset, version=version).path)
        match = _DATASTORE_PATH.match(path)
        if not match:
            raise UserError(f"adapter {asset}:{version} is stored at {path!r}, not on a workspace datastore: register "
                            "it from a job output or a datastore path")
        store = ml_client.datastores.get(match["datastore"])
    return (f"{store.protocol or 'https'}://{store.account_name}.blob.{store.endpoint or 'core.windows.net'}/"
            f"{store.container_name}/{match['path'].rstrip('/')}")
