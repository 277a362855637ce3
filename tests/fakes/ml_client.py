"""The one fake azure-ai-ml MLClient of the test suite: the network edge, nothing more.

It speaks the SDK's operation names and signatures (tests/deployment/test_deploy_definitions.py binds
them against the real MLClient), returns poller-like objects from `begin_*`, and records every call
in one ordered log (`calls`, a list of `Call`) that the registry fake and the fake HTTP endpoints
append to as well, so a test sees the whole order. Everything handed to it is a real azure-ai-ml
entity, validated the way the service would see it (dumped to YAML and loaded back with the SDK's
loaders); lookups of missing things raise the real ResourceNotFoundError; compute sizes and quota
usages are SDK entities built from REST payloads (see `fakes.quota`).
"""
from __future__ import annotations

import copy
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from fakes.quota import A100, LOCATION, a100_usages, default_sizes

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
SECRET_KEY = "sEcReT-kEy-9f8e7d6c5b4a"
SECOND_KEY = "sEcOnD-kEy-1a2b3c4d"
CONTAINER_LOG = "Traceback (most recent call last):\nRuntimeError: CUDA out of memory in init()"


@dataclass
class Call:
    """One recorded call: `op` is the operation group (`jobs`, `registry.models`, `http`, ...)."""

    op: str
    method: str
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.op}.{self.method}"


class FakePoller:
    """What `begin_*` returns: done at once; `result()` returns the value or raises the failure."""

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self._value, self._error = value, error

    def done(self) -> bool:
        return True

    def wait(self, timeout: float | None = None) -> None:
        return None

    def result(self, timeout: float | None = None) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


def http_error(status: int, message: str = "service error") -> HttpResponseError:
    """An azure-core HTTP failure with its status code, as the SDK raises it after its own retries."""
    err = HttpResponseError(message=message)
    err.status_code = status
    return err


def _not_found(what: str) -> ResourceNotFoundError:
    return ResourceNotFoundError(f"{what} not found")


def arm_id(workspace: str, kind: str, reference: Any) -> Any:
    """`azureml:NAME:VERSION` as the service returns it on a deployment: the asset's ARM id (the SDK's own
    `_endpoint_utils` sends that form too). Anything else (already an ARM id, None) is returned as is."""
    if not isinstance(reference, str) or not reference.startswith("azureml:") or reference.count(":") != 2:
        return reference
    _, name, version = reference.split(":")
    return (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-test/providers/Microsoft.MachineLearningServices"
            f"/workspaces/{workspace}/{kind}/{name}/versions/{version}")


def asset_ref(reference: Any) -> str:
    """NAME:VERSION of an asset sent as `azureml:NAME:VERSION` or as its ARM id (both are accepted by the service)."""
    text = str(reference)
    if "/versions/" in text:
        parts = text.rstrip("/").split("/")
        return f"{parts[-3]}:{parts[-1]}"
    return text.removeprefix("azureml:")


def _load_back(loader: Callable[..., Any], entity: Any) -> Any:
    """The entity as the service would accept it: its YAML form loaded back with the SDK's loader."""
    import yaml

    from deployment.definitions import entity_dict

    return loader(source=io.StringIO(yaml.safe_dump(entity_dict(entity))))


class _Ops:
    def __init__(self, client: FakeMLClient, op: str) -> None:
        self._client, self._op = client, op

    def _record(self, method: str, **args: Any) -> None:
        self._client.calls.append(Call(self._op, method, args))


# ---------------------------------------------------------------- online endpoints and deployments


class FakeOnlineEndpoints(_Ops):
    def list(self) -> list[Any]:
        self._record("list")
        if self._client.workspace_deleted:
            raise _not_found(f"workspace {self._client.workspace_name}")
        return [copy.deepcopy(e) for e in self._client.endpoints.values()]

    def get(self, name: str) -> Any:
        self._record("get", name=name)
        if name not in self._client.endpoints:
            raise _not_found(f"endpoint {name}")
        return copy.deepcopy(self._client.endpoints[name])

    def begin_create_or_update(self, endpoint: Any) -> FakePoller:
        from deployment.definitions import entity_dict, load_back

        endpoint._to_rest_online_endpoint(LOCATION)  # what the SDK sends (fails on an entity mutated by _to_dict)
        doc = entity_dict(endpoint)
        self._record("begin_create_or_update", name=endpoint.name, traffic=dict(endpoint.traffic or {}), doc=doc)
        if self._client.fail_traffic and endpoint.name in self._client.endpoints:
            return FakePoller(error=http_error(409, "Conflict: endpoint update failed"))
        stored = load_back(doc)  # what the service would accept
        for name in stored.traffic or {}:
            if (endpoint.name, name) not in self._client.deployments:
                return FakePoller(error=http_error(400, f"traffic to unknown deployment {name}"))
        stored._scoring_uri = self._client.scoring_uri
        stored._provisioning_state = "Succeeded"
        self._client.endpoints[endpoint.name] = stored
        return FakePoller(copy.deepcopy(stored))

    def get_keys(self, name: str) -> Any:
        from azure.ai.ml.entities import EndpointAuthKeys

        self._record("get_keys", name=name)
        return EndpointAuthKeys(primary_key=SECRET_KEY, secondary_key=SECOND_KEY)

    def begin_delete(self, name: str) -> FakePoller:
        self._record("begin_delete", name=name)
        if name not in self._client.endpoints:
            raise _not_found(f"endpoint {name}")
        del self._client.endpoints[name]
        for key in [k for k in self._client.deployments if k[0] == name]:
            del self._client.deployments[key]
        return FakePoller()


class FakeOnlineDeployments(_Ops):
    def _as_returned(self, deployment: Any) -> Any:
        """A stored deployment as the service returns it: model and environment as ARM ids."""
        out = copy.deepcopy(deployment)
        out.model = arm_id(self._client.workspace_name, "models", out.model)
        out.environment = arm_id(self._client.workspace_name, "environments", out.environment)
        return out

    def list(self, endpoint_name: str) -> list[Any]:
        self._record("list", endpoint_name=endpoint_name)
        return [self._as_returned(d) for (ep, _), d in self._client.deployments.items() if ep == endpoint_name]

    def begin_create_or_update(self, deployment: Any, **kwargs: Any) -> FakePoller:
        from deployment.definitions import entity_dict, load_back

        doc = entity_dict(deployment)
        self._record("begin_create_or_update", name=deployment.name, endpoint_name=deployment.endpoint_name, doc=doc,
                     update=(deployment.endpoint_name, deployment.name) in self._client.deployments)
        load_back(doc)
        if deployment.endpoint_name not in self._client.endpoints:
            raise _not_found(f"endpoint {deployment.endpoint_name}")
        model = asset_ref(doc["model"])
        if model not in self._client.models_by_ref():
            raise http_error(400, f"model {model} not found")
        env = asset_ref(doc["environment"])
        if env not in self._client.environment_store:
            raise http_error(400, f"environment {env} not found")
        # The service creates the resource, then the container fails to become ready.
        self._client.deployments[(deployment.endpoint_name, deployment.name)] = copy.deepcopy(deployment)
        if self._client.fail_deployment:  # True, or the service's own failure text
            failure = self._client.fail_deployment
            text = failure if isinstance(failure, str) else "ResourceNotReady: User container has crashed or terminated."
            return FakePoller(error=http_error(400, text))
        return FakePoller(copy.deepcopy(deployment))

    def get(self, name: str, endpoint_name: str) -> Any:
        self._record("get", name=name, endpoint_name=endpoint_name)
        if (endpoint_name, name) not in self._client.deployments:
            raise _not_found(f"deployment {name}")
        return self._as_returned(self._client.deployments[(endpoint_name, name)])

    def get_logs(self, name: str, endpoint_name: str, lines: int, *, container_type: str | None = None) -> str:
        self._record("get_logs", name=name, endpoint_name=endpoint_name, lines=lines, container_type=container_type)
        assert container_type in (None, "inference-server", "storage-initializer"), container_type
        return CONTAINER_LOG if container_type is None else ""

    def begin_delete(self, name: str, endpoint_name: str) -> FakePoller:
        self._record("begin_delete", name=name, endpoint_name=endpoint_name)
        if (endpoint_name, name) not in self._client.deployments:
            raise _not_found(f"deployment {name}")
        traffic = self._client.endpoints[endpoint_name].traffic or {}
        if int(traffic.get(name, 0) or 0) > 0:
            return FakePoller(error=http_error(400, f"deployment {name} takes traffic; cannot delete"))
        del self._client.deployments[(endpoint_name, name)]
        return FakePoller()


# ---------------------------------------------------------------- versioned assets


class FakeModels(_Ops):
    def list(self, name: str | None = None, **kwargs: Any) -> list[Any]:
        self._record("list", name=name)
        return [copy.deepcopy(m) for m in self._client.model_store if name is None or m.name == name]

    def get(self, name: str, version: str | None = None, label: str | None = None) -> Any:
        self._record("get", name=name, version=version)
        for m in self._client.model_store:
            if m.name == name and str(m.version) == str(version):
                return copy.deepcopy(m)
        raise _not_found(f"model {name}:{version}")

    def create_or_update(self, model: Any) -> Any:
        from azure.ai.ml import load_model

        self._record("create_or_update", name=model.name, version=model.version, path=model.path, tags=dict(model.tags))
        loaded = _load_back(load_model, model)
        self._client.model_store.append(loaded)
        return copy.deepcopy(loaded)


class FakeEnvironments(_Ops):
    def get(self, name: str, version: str | None = None, label: str | None = None) -> Any:
        self._record("get", name=name, version=version)
        if f"{name}:{version}" not in self._client.environment_store:
            raise _not_found(f"environment {name}:{version}")
        return self._client.environment_store[f"{name}:{version}"]

    def create_or_update(self, environment: Any) -> Any:
        from azure.ai.ml import load_environment

        self._record("create_or_update", name=environment.name, version=environment.version)
        loaded = _load_back(load_environment, environment)
        self._client.environment_store[f"{loaded.name}:{loaded.version}"] = loaded
        return loaded


class FakeData(_Ops):
    """Data assets: the file is read at create time (what the SDK uploads), then kept by NAME:VERSION."""

    def create_or_update(self, data: Any) -> Any:
        from azure.ai.ml import load_data

        content = Path(data.path).read_text(encoding="utf-8")
        self._record("create_or_update", name=data.name, version=data.version, type=data.type, tags=dict(data.tags or {}))
        loaded = _load_back(load_data, data)
        self._client.data_store[f"{data.name}:{data.version}"] = (loaded, content)
        return copy.deepcopy(loaded)

    def get(self, name: str, version: str | None = None, label: str | None = None) -> Any:
        """The asset as the service returns it: `path` is where the upload landed on the workspace datastore."""
        self._record("get", name=name, version=version)
        if f"{name}:{version}" not in self._client.data_store:
            raise _not_found(f"data asset {name}:{version}")
        asset = copy.deepcopy(self._client.data_store[f"{name}:{version}"][0])
        asset.path = self._blob_uri(name, str(version), Path(str(asset.path)).name)
        return asset

    def _blob_uri(self, name: str, version: str, filename: str) -> str:
        c = self._client
        return (f"azureml://subscriptions/{SUBSCRIPTION}/resourcegroups/rg-test/workspaces/{c.workspace_name}"
                f"/datastores/workspaceblobstore/paths/LocalUpload/{name}-{version}/{filename}")

    def download_from_storage(self, uri: str, destination: str, datastore_operation: Any) -> str:
        """Stands in for the SDK's `download_artifact_from_aml_uri` (the storage edge): parses the URI with
        the SDK's own parser and writes the blob under `destination` as the SDK names it."""
        from azure.ai.ml._utils._storage_utils import AzureMLDatastorePathUri

        assert datastore_operation is self._client.datastores
        parsed = AzureMLDatastorePathUri(uri)
        assert parsed.datastore == "workspaceblobstore", uri
        self._record("download", path=parsed.path)
        for key, (asset, content) in self._client.data_store.items():
            name, _, version = key.partition(":")
            if self._blob_uri(name, version, Path(str(asset.path)).name) == uri:
                (Path(destination) / Path(parsed.path).name).write_text(content, encoding="utf-8")
                return destination
        raise _not_found(f"blob {parsed.path}")


# ---------------------------------------------------------------- compute, jobs, workspaces, connections


class FakeCompute(_Ops):
    def get(self, name: str) -> Any:
        self._record("get", name=name)
        compute = self._client.computes.get(name)
        if compute is None:
            raise ResourceNotFoundError(f"Compute {name} not found in workspace")
        return compute

    def list_sizes(self, *, location: str | None = None, compute_type: str | None = None) -> list[Any]:
        self._record("list_sizes", location=location)
        return list(self._client.sizes)

    def list_usage(self, *, location: str | None = None) -> list[Any]:
        self._record("list_usage", location=location)
        return list(self._client.usages)


def complete(jobs: FakeJobs, name: str) -> None:
    """The default end of `jobs.stream`: the job completes."""
    jobs.set_status(name, "Completed")


class FakeJobs(_Ops):
    """`store` is what `jobs.list` yields, newest last (None where the SDK cannot parse a job);
    `submitted` keeps the entities given to `create_or_update`."""

    def __init__(self, client: FakeMLClient, op: str) -> None:
        super().__init__(client, op)
        self.store: list[Any] = []
        self.submitted: list[Any] = []
        self.fail_submit: list[BaseException] = []
        """Raised (once each) by create_or_update before it succeeds: transient-error tests."""

    def create_or_update(self, job: Any, **kwargs: Any) -> Any:
        self._record("create_or_update", name=getattr(job, "name", None))
        if self.fail_submit:
            raise self.fail_submit.pop(0)
        self.submitted.append(job)
        self.store.append(SimpleNamespace(
            name=job.name, type=job.type, status="Starting", tags=dict(job.tags or {}),
            experiment_name=job.experiment_name, creation_context=SimpleNamespace(created_at=datetime.now(UTC)),
        ))
        return copy.copy(job)

    def stream(self, name: str) -> None:
        self._record("stream", name=name)
        self._client.on_stream(self, name)

    def get(self, name: str) -> Any:
        self._record("get", name=name)
        return self._find(name)

    def list(self, **kwargs: Any) -> list[Any]:
        self._record("list")
        return list(self.store)

    def set_status(self, name: str, status: str) -> None:
        self._find(name).status = status

    def _find(self, name: str) -> Any:
        for job in self.store:
            if job is not None and job.name == name:
                return job
        raise _not_found(f"job {name}")


class FakeWorkspaces(_Ops):
    def begin_delete(self, name: str, *, delete_dependent_resources: bool, permanently_delete: bool = False) -> FakePoller:
        self._record(
            "begin_delete", name=name, delete_dependent_resources=delete_dependent_resources,
            permanently_delete=permanently_delete,
        )
        if name in self._client.deleted_workspaces:
            raise _not_found(f"workspace {name}")
        self._client.deleted_workspaces.add(name)
        self._client.workspace_deleted = self._client.workspace_name in self._client.deleted_workspaces
        return FakePoller()


class FakeConnections(_Ops):
    def create_or_update(self, connection: Any) -> Any:
        from azure.ai.ml.entities import WorkspaceConnection

        rest = connection._to_rest_object()
        self._record("create_or_update", name=connection.name, category=str(rest.properties.category),
                     metadata=dict(rest.properties.metadata))
        self._client.connection_store[connection.name] = rest
        return WorkspaceConnection._from_rest_object(rest_obj=rest)  # what the SDK parses from the response


class FakeMLClient:
    """The workspace client. `on_stream(jobs, name)` decides how `jobs.stream` ends (default: the job completes)."""

    def __init__(self, scoring_uri: str = "http://127.0.0.1:9/score", workspace_name: str = "mlw-test", *,
                 computes: dict[str, Any] | None = None, sizes: list[Any] | None = None,
                 usages: list[Any] | None = None) -> None:
        from azure.ai.ml.entities import AmlCompute

        self.calls: list[Call] = []
        self.scoring_uri = scoring_uri
        self.workspace_name = workspace_name
        self.computes = computes if computes is not None else {
            "gpu-a100": AmlCompute(name="gpu-a100", size=A100, max_instances=2, min_instances=0)
        }
        self.sizes = sizes if sizes is not None else default_sizes()
        self.usages = usages if usages is not None else a100_usages()
        self.endpoints: dict[str, Any] = {}
        self.deployments: dict[tuple[str, str], Any] = {}
        self.model_store: list[Any] = []
        self.environment_store: dict[str, Any] = {}
        self.connection_store: dict[str, Any] = {}
        self.data_store: dict[str, tuple[Any, str]] = {}
        self.fail_deployment: bool | str = False
        self.fail_traffic = False
        self.workspace_deleted = False
        self.deleted_workspaces: set[str] = set()
        self.on_stream: Callable[[FakeJobs, str], None] = complete
        self.online_endpoints = FakeOnlineEndpoints(self, "online_endpoints")
        self.online_deployments = FakeOnlineDeployments(self, "online_deployments")
        self.models = FakeModels(self, "models")
        self.environments = FakeEnvironments(self, "environments")
        self.data = FakeData(self, "data")
        self.compute = FakeCompute(self, "compute")
        self.jobs = FakeJobs(self, "jobs")
        self.workspaces = FakeWorkspaces(self, "workspaces")
        self.connections = FakeConnections(self, "connections")
        self.datastores = _Ops(self, "datastores")  # only handed to the storage download (FakeData.download_from_storage)

    def models_by_ref(self) -> set[str]:
        return {f"{m.name}:{m.version}" for m in self.model_store}

    def names(self) -> list[str]:
        return [c.name for c in self.calls]

    def index(self, what: str, /, **match: Any) -> int:
        """Position of the first call `op.method` whose args include `match`."""
        for i, call in enumerate(self.calls):
            if call.name == what and all(call.args.get(k) == v for k, v in match.items()):
                return i
        raise AssertionError(f"no call {what} {match} in {self.names()}")

    def count(self, what: str, /, **match: Any) -> int:
        return sum(1 for c in self.calls if c.name == what and all(c.args.get(k) == v for k, v in match.items()))

    def add_job(self, name: str, status: str = "Completed", recipe: str = "sft", created: str = "2026-11-01T10:00:00Z") -> None:
        """A finished training job in the workspace, as `jobs.list` / `jobs.get` yield it."""
        self.jobs.store.append(SimpleNamespace(
            name=name, type="pipeline" if recipe == "registry" else "command", status=status,
            tags={"finetune-phi": recipe}, experiment_name="finetune-phi",
            creation_context=SimpleNamespace(created_at=datetime.fromisoformat(created)),
        ))
