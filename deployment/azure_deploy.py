"""The Azure target of the rollout: blue/green deployments on a managed online endpoint.

deployment/rollout.py runs the procedure (start new, smoke test, gate, promote, retire, connection);
`AzureTarget` supplies the platform's calls: register the model -> endpoint (create if missing; never
delete it) -> serving environment (reused when unchanged) -> a new deployment beside the live one
(the free blue/green slot), reached directly through the `azureml-model-deployment` header ->
100% traffic to it -> the old one deleted. A failure from the new deployment's creation until
traffic moves, or the gate's refusal, deletes the new deployment and leaves traffic where it was.

The endpoint key is fetched with the SDK and handed only to the clients and the connection:
never printed, logged or returned. azure-core retries 408/429/5xx itself; nothing here wraps
calls in retries.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from common.azure import azure_errors, propagation_failure, propagation_hint, wait
from common.cli import UserError, first_line, say, step
from deployment import definitions
from deployment.connection import PhiConnection, save
from deployment.environment import serving_environment
from deployment.expiry import DELETE_AFTER, expiry_tags
from deployment.registration import ModelChoice, RegisteredModel, resolve_model
from deployment.rollback import Rollback
from deployment.rollout import Deployment, GateSettings, Retired, Writer, rollout

if TYPE_CHECKING:  # pragma: no cover
    from deployment.gate import Verdict
    from deployment.scoring import EvalSet, Scores
    from infra.outputs import StackOutputs

LOG_LINES = 50
SCORES_ASSET = "phi3-eval-scores"
"""The data asset holding per-conversation scores (one version per evaluated deployment)."""


@dataclass(frozen=True)
class DeployPlan:
    endpoint_name: str
    instance_type: str = definitions.DEFAULT_INSTANCE_TYPE
    choice: ModelChoice = field(default_factory=ModelChoice)
    foundry_connection: bool = False
    eval_file: Path | None = None
    eval_limit: int | None = None
    force: bool = False
    margin: float | None = None
    expires_at: datetime | None = None
    instance_count: int = 1  # serving scale (the vLLM issue)
    base_model: str = definitions.DEFAULT_BASE_MODEL


@dataclass(frozen=True)
class DeployResult:
    endpoint_name: str
    deployment_name: str
    scoring_uri: str
    model: RegisteredModel
    endpoint_created: bool
    replaced: tuple[str, ...]
    smoke_answer: str
    verdict: "Verdict | None" = None


@dataclass(frozen=True)
class Slots:
    new: str
    live: list[str]
    existing: list[str]
    traffic_before: dict[str, int]

    @property
    def main_live(self) -> str | None:
        """The live deployment the new one is compared with: the one taking most traffic."""
        return max(self.live, key=lambda name: self.traffic_before[name], default=None)

    def traffic_text(self) -> str:
        return ", ".join(f"{n}={p}%" for n, p in self.traffic_before.items() if p) or "none"


def _default_client(connection: PhiConnection) -> Any:
    """The flow's client on one deployment, called as the probed connection says."""
    from deployment.scoring import client_on

    return client_on(connection)


def _delete_command(endpoint: str, name: str) -> str:
    return f"`az ml online-deployment delete -e {endpoint} -n {name} --yes`"


def _hint(detail: str, instance_type: str, roles_created_on: datetime | None = None) -> str:
    role = propagation_failure(detail)
    young = propagation_hint(roles_created_on) if role else ""
    if young:  # AcrPull / Storage Blob Data Reader that have not applied yet fail as BadArgument, not 403
        return f" The endpoint identity lacks {role}, which `pulumi up` granted:{young}"
    low = detail.lower()
    info = definitions.instance_info(instance_type)
    if "quota" in low or "notenoughquota" in low:
        family = info.quota_family if info else f"the {instance_type} family"
        return (
            f" Not enough quota: request vCPUs of '{family}' for Azure ML in this region "
            "(portal: Azure ML studio > Quota), or pass a smaller/other --instance-type."
        )
    if "imagebuild" in low or "image build" in low:
        from deployment.environment import image_build_hint

        return f" The serving image failed to build: {image_build_hint(instance_type)}"
    if "sku" in low and ("not" in low or "invalid" in low):
        return f" {instance_type} is not offered for managed online endpoints here; pass another --instance-type."
    return " The container log above usually says why (the model failed to load, out of memory, a missing package)."


def _log_tail(ml_client: Any, endpoint: str, name: str) -> str:
    """The last lines of the deployment's container log; best effort (the deployment may not exist)."""
    for container in (None, "storage-initializer"):
        try:
            kwargs = {"container_type": container} if container else {}
            text = ml_client.online_deployments.get_logs(name=name, endpoint_name=endpoint, lines=LOG_LINES, **kwargs)
        except Exception as err:  # a failed log fetch must not hide the real failure
            say(f"    (could not fetch the {container or 'inference server'} log of {name}: {first_line(err)})")
            continue
        if text and str(text).strip():
            return f"---- last {LOG_LINES} lines of the {name} container log ----\n{str(text).rstrip()}\n---- end of log ----"
    return ""


def _delete_deployment(ml_client: Any, endpoint: str, name: str, *, interval: float) -> bool:
    """Delete one deployment and wait; True when gone (or never existed)."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        wait(ml_client.online_deployments.begin_delete(name=name, endpoint_name=endpoint),
             f"deleting deployment {name}", interval=interval)
        return True
    except ResourceNotFoundError:
        return True
    except Exception as err:
        say(f"    could not delete deployment {name}: {first_line(err)}")
        return False


def _endpoint_identity(outputs: "StackOutputs") -> tuple[str, str]:
    """(resource id, name) of the identity deploy gives a new endpoint (definitions.build_endpoint's choice)."""
    built = definitions.build_endpoint("probe-identity", outputs)
    resource_id = str(built.identity.user_assigned_identities[0].resource_id)
    named = {outputs.uai_resource_id.lower(): outputs.uai_name,
             outputs.endpoint_uai_resource_id.lower(): outputs.endpoint_uai_name}
    return resource_id, named.get(resource_id.lower(), resource_id.rsplit("/", 1)[-1])


def _check_existing_endpoint(endpoint: Any, outputs: "StackOutputs") -> None:
    """An endpoint's identity and auth mode cannot change after creation: refuse a mismatch clearly."""
    name = endpoint.name
    expected_id, expected_name = _endpoint_identity(outputs)
    if str(endpoint.provisioning_state or "").lower() == "deleting":
        raise UserError(f"endpoint {name} is being deleted; wait until it is gone, or pass another --endpoint-name.")
    identity = endpoint.identity
    kind = str(getattr(identity, "type", "") or "none").lower().replace("_", "")
    ids = [str(uai.resource_id or "").lower() for uai in (getattr(identity, "user_assigned_identities", None) or [])]
    if "userassigned" not in kind or expected_id.lower() not in ids:
        have = f"{getattr(identity, 'type', None) or 'no'} identity" + (f" ({', '.join(ids)})" if ids else "")
        raise UserError(
            f"endpoint {name} already exists with {have}, not the stack's user-assigned identity "
            f"{expected_name}. An endpoint's identity cannot be changed after creation, and the deployment "
            "relies on the UAI's roles (AcrPull, Storage Blob Data Reader). Deploy to a new endpoint with "
            f"--endpoint-name NEW-NAME, or delete this one first (`az ml online-endpoint delete -n {name}`)."
        )
    auth = str(endpoint.auth_mode or "key").lower()
    if auth != "key":
        raise UserError(
            f"endpoint {name} uses {auth} auth, not key auth; the Prompt flow connection needs a key. "
            "Pass --endpoint-name NEW-NAME to create a key-auth endpoint."
        )


def choose_slot(traffic: dict[str, int], existing: list[str]) -> str:
    """The blue/green name that is not live (prefer one that does not exist at all)."""
    live = {name for name, share in (traffic or {}).items() if share and int(share) > 0}
    free = [slot for slot in definitions.SLOTS if slot not in live]
    if not free:
        raise UserError(
            f"both {' and '.join(definitions.SLOTS)} take traffic on this endpoint (a split set by hand?). "
            "Move all traffic to one of them (`az ml online-endpoint update --traffic blue=100`) and retry."
        )
    unused = [slot for slot in free if slot not in existing]
    return (unused or free)[0]


# -- the target ------------------------------------------------------------------------------------


class AzureTarget:
    """The rollout's steps on a managed online endpoint (deployment/rollout.py's Target)."""

    def __init__(self, ml_client: Any, outputs: "StackOutputs", plan: DeployPlan, *,
                 client: Callable[[PhiConnection], Any], poll_interval: float) -> None:
        self.ml, self.outputs, self.plan = ml_client, outputs, plan
        self.make_client, self.poll = client, poll_interval
        self.ep_name = definitions.check_endpoint_name(plan.endpoint_name)
        self.scope = f"azure/{outputs.workspace_name}/{self.ep_name}"
        self.key_hint = f"key from `az ml online-endpoint get-credentials -n {self.ep_name}`"
        self.key = ""
        self.scoring_uri = ""
        self.route: PhiConnection | None = None
        """Where the new deployment's OpenAI API answers (probed in start_new); every client and writer uses it."""

    def hold(self) -> contextlib.nullcontext:
        return contextlib.nullcontext()  # Azure's own operations serialize concurrent updates

    def prepare(self) -> None:
        with step("register the model"):
            self.model = resolve_model(self.ml, self.plan.choice)
        with step(f"endpoint {self.ep_name}"):
            endpoint, self.created = self._endpoint()
            self.slots = self._slots(endpoint)
        with step("serving environment"):
            self.env = self._environment()

    @property
    def start_title(self) -> str:
        return f"deployment {self.slots.new} on {self.plan.instance_type}"

    def rollback(self) -> Rollback:
        new = self.slots.new
        return Rollback(
            name=f"deployment {new} on endpoint {self.ep_name}",
            undo=lambda: _delete_deployment(self.ml, self.ep_name, new, interval=self.poll),
            manual=_delete_command(self.ep_name, new),
            kept=f"Traffic was not moved ({self.slots.traffic_text()}).",
            evidence=lambda: _log_tail(self.ml, self.ep_name, new),
            hint=lambda detail: _hint(detail, self.plan.instance_type, self.outputs.role_assignments_created_on),
        )

    def start_new(self, rollback: Rollback) -> Deployment:
        """Create the deployment in the free slot, then read the scoring URI and the key (redacted from then on)."""
        new = self.slots.new
        deployment = definitions.build_deployment(
            name=new, endpoint_name=self.ep_name, model=self.model.reference, environment=self.env.reference,
            instance_type=self.plan.instance_type, outputs=self.outputs,
            instance_count=self.plan.instance_count, base_model=self.plan.base_model,
        )
        deployment.tags.update(expiry_tags(self.plan.expires_at))
        info = definitions.instance_info(self.plan.instance_type)
        hourly = info.usd_per_hour * self.plan.instance_count if info else None
        say(f"    bills{f' about ${hourly:.2f}/h' if hourly else ' per hour'} from now until deleted; "
            "image build + model load take 10-30 minutes")
        wait(self.ml.online_deployments.begin_create_or_update(deployment), f"deployment {new}", interval=self.poll)
        self.scoring_uri = str(self.ml.online_endpoints.get(name=self.ep_name).scoring_uri)
        self.key = self.ml.online_endpoints.get_keys(name=self.ep_name).primary_key
        rollback.secret = self.key
        if not self.key:
            raise UserError(f"endpoint {self.ep_name} returned no key (is it key-auth?)")
        self.route = PhiConnection.probed(self.scoring_uri, self.key, new)  # before the smoke test
        return Deployment(new, f"new {new}", self.model.reference, new, environment=self.env.reference)

    def client(self, deployment: Deployment) -> Any:
        return self.make_client(self.connection(deployment))

    def live(self) -> Deployment | None:
        name = self.slots.main_live
        if name is None:
            return None
        current = self.ml.online_deployments.get(name=name, endpoint_name=self.ep_name)
        return Deployment(name, f"live {name}", str(current.model), name, dict(current.tags or {}),
                          environment=str(current.environment or ""))

    def gate_estimate(self, eval_set: "EvalSet") -> str:
        """The gate's expected time and cost on this instance type (a CPU instance takes far longer than an A100)."""
        from deployment import gate_cost

        return gate_cost.estimate(self.plan.instance_type, eval_set).sentence()

    def tag(self, deployment: Deployment, tags: dict[str, str]) -> None:
        """Record scores on a deployment (a tags-only update); a failure is a warning, never a rollback."""
        try:
            current = self.ml.online_deployments.get(name=deployment.ref, endpoint_name=self.ep_name)
            current.tags = {**(current.tags or {}), **tags}
            wait(self.ml.online_deployments.begin_create_or_update(current), f"tagging {deployment.ref}",
                 interval=self.poll)
        except Exception as err:
            say(f"    warning: could not tag deployment {deployment.ref} with its scores: {first_line(err)}")

    def keep_scores(self, scores: "Scores", deployment: Deployment, cached: Path | None) -> str:
        """Per-conversation scores as a workspace data asset (best effort); returns NAME:VERSION or ''."""
        import tempfile

        from azure.ai.ml.constants import AssetTypes
        from azure.ai.ml.entities import Data

        from deployment.gate import scores_text

        name = deployment.ref
        version = f"{self.ep_name}-{name}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
        path = Path(tempfile.mkdtemp(prefix="eval-scores-")) / f"{name}.json"
        path.write_text(scores_text(scores), encoding="utf-8")
        asset = Data(name=SCORES_ASSET, version=version, type=AssetTypes.URI_FILE, path=str(path),
                     description=f"evaluation of {name} on endpoint {self.ep_name}", tags=dict(definitions.CREATED_BY))
        try:
            self.ml.data.create_or_update(asset)
        except Exception as err:  # the scores are also under runs/eval/: a failed upload only costs the record
            say(f"    warning: could not store the scores as data asset {SCORES_ASSET}: {first_line(err)}")
            return ""
        return f"{SCORES_ASSET}:{version}"

    def fetch_scores(self, ref: str) -> str:
        """The content of a scores data asset NAME:VERSION (what keep_scores wrote), downloaded from its datastore.

        The SDK has no public download for data assets; this is the call its own `jobs.download` makes.
        """
        import tempfile

        from azure.ai.ml._artifacts._artifact_utilities import download_artifact_from_aml_uri

        name, _, version = ref.partition(":")
        asset = self.ml.data.get(name=name, version=version)
        with tempfile.TemporaryDirectory(prefix="eval-scores-") as folder:
            download_artifact_from_aml_uri(str(asset.path), folder, self.ml.datastores)
            files = [p for p in Path(folder).rglob("*") if p.is_file()]
            if len(files) != 1:
                raise ValueError(f"data asset {ref} holds {len(files)} files, not one scores file")
            return files[0].read_text(encoding="utf-8")

    def promote(self, new: Deployment, rollback: Rollback) -> None:
        """100% to the new deployment; if Azure's answer is unclear, read the traffic back before undoing."""
        endpoint = self.ml.online_endpoints.get(name=self.ep_name)
        expires_at = self.plan.expires_at
        if expires_at is not None and (self.created or DELETE_AFTER in (endpoint.tags or {})):
            endpoint.tags = {**(endpoint.tags or {}), **expiry_tags(expires_at)}
        elif expires_at is not None:
            say(f"    endpoint {self.ep_name} has no expiry (created without --expires-in): it keeps none")
        endpoint.traffic = {new.ref: 100}
        try:
            wait(self.ml.online_endpoints.begin_create_or_update(endpoint), "moving traffic", interval=self.poll)
        except Exception as err:
            raise self._unclear_switch(new.ref, rollback, first_line(err)) from None

    def _unclear_switch(self, new: str, rollback: Rollback, detail: str) -> UserError:
        now = _current_traffic(self.ml, self.ep_name)
        if now is None:
            return UserError(
                f"moving traffic to {new} failed ({detail}) and the endpoint's traffic could not be read back, so "
                f"both deployments were kept. Check the endpoint {self.ep_name} in Azure ML studio, then re-run the "
                f"deploy or delete {new} with {_delete_command(self.ep_name, new)}.")
        if int(now.get(new, 0) or 0) > 0:
            return UserError(
                f"moving traffic to {new} reported an error ({detail}), but {new} now takes traffic ({now}); the old "
                f"deployment(s) {', '.join(self.slots.live) or '-'} were kept. Check the endpoint in Azure ML studio.")
        return rollback.fail("moving traffic", detail)

    def retiring(self, new: Deployment) -> list[str]:
        """The previous deployments (live or idle slots)."""
        slots = self.slots
        return [n for n in dict.fromkeys(slots.live + [s for s in definitions.SLOTS if s in slots.existing])
                if n != new.ref]

    def retire(self, old: list[str]) -> Retired:
        leftovers = tuple(name for name in old if not _delete_deployment(self.ml, self.ep_name, name, interval=self.poll))
        return Retired(tuple(old), leftovers, "; ".join(_delete_command(self.ep_name, n) for n in leftovers))

    def connection(self, new: Deployment) -> PhiConnection:
        """The probed route, pinned to `new` (the same endpoint serves the live deployment)."""
        assert self.route is not None, "start_new probes the route first"
        return dataclasses.replace(self.route, deployment=new.ref)

    def where(self, new: Deployment) -> str:
        return f"deployment {new.ref} is live on {self.scoring_uri} with 100% of the traffic"

    # -- prepare's parts ---------------------------------------------------------------------------

    def _endpoint(self) -> tuple[Any, bool]:
        """The endpoint, created (key auth, the stack's UAI) when missing; never deleted."""
        from azure.core.exceptions import ResourceNotFoundError

        ops, roles = self.ml.online_endpoints, self.outputs.role_assignments_created_on
        with azure_errors(f"looking up endpoint {self.ep_name}", roles):
            try:
                endpoint = ops.get(name=self.ep_name)
            except ResourceNotFoundError:
                endpoint = None
        if endpoint is not None:
            _check_existing_endpoint(endpoint, self.outputs)
            say(f"    endpoint {self.ep_name} exists: adding a deployment beside the live one (it is never deleted)")
            return endpoint, False
        say(f"    creating endpoint {self.ep_name} (key auth, identity {_endpoint_identity(self.outputs)[1]}); "
            "about 1-2 minutes")
        entity = definitions.build_endpoint(self.ep_name, self.outputs)
        entity.tags.update(expiry_tags(self.plan.expires_at))
        with azure_errors(f"creating endpoint {self.ep_name}", roles):
            wait(ops.begin_create_or_update(entity), f"creating endpoint {self.ep_name}", interval=self.poll)
            return ops.get(name=self.ep_name), True

    def _slots(self, endpoint: Any) -> Slots:
        traffic = {name: int(share or 0) for name, share in (endpoint.traffic or {}).items()}
        with azure_errors(f"listing the deployments of {self.ep_name}"):
            existing = [d.name for d in self.ml.online_deployments.list(endpoint_name=self.ep_name)]
        slots = Slots(choose_slot(traffic, existing), [n for n, p in traffic.items() if p > 0], existing, traffic)
        say(f"    live: {slots.traffic_text() if slots.live else 'nothing'}; new deployment: {slots.new}")
        return slots

    def _environment(self) -> Any:
        from azure.core.exceptions import ResourceNotFoundError

        env = serving_environment(self.plan.instance_type)
        with azure_errors(f"registering environment {env.name}:{env.version}", self.outputs.role_assignments_created_on):
            try:
                self.ml.environments.get(name=env.name, version=env.version)
                say(f"    {env.name}:{env.version} exists (same pins, same image): reusing it")
            except ResourceNotFoundError:
                self.ml.environments.create_or_update(env.to_entity())
                say(f"    registered {env.name}:{env.version}; its image is built on first use (10-20 minutes)")
        return env


def deploy_to_azure(
    ml_client: Any,
    outputs: "StackOutputs",
    plan: DeployPlan,
    *,
    smoke_client: Callable[[PhiConnection], Any] = _default_client,
    write_connection: Callable[[PhiConnection], None] = save,
    foundry_writer: Callable[[PhiConnection], None] | None = None,
    poll_interval: float = 30.0,
) -> DeployResult:
    """The gated blue/green rollout (deployment/rollout.py) on Azure.

    `smoke_client(connection)` builds the client of the smoke test and the evaluation;
    the writers get the one connection the rollout builds.
    """
    target = AzureTarget(ml_client, outputs, plan, client=smoke_client, poll_interval=poll_interval)
    writers: list[Writer] = [("the connection", write_connection)]
    if foundry_writer is not None:
        writers.append(("the Foundry project connection (the local one was written)", foundry_writer))
    settings = GateSettings(plan.eval_file, plan.eval_limit, plan.force, plan.margin)
    done = rollout(target, settings, writers)
    return DeployResult(target.ep_name, done.new.ref, target.scoring_uri, target.model, target.created,
                        done.retired.replaced, done.smoke_answer, done.verdict)


def _current_traffic(ml_client: Any, endpoint: str) -> dict[str, int] | None:
    try:
        return dict(ml_client.online_endpoints.get(name=endpoint).traffic or {})
    except Exception:
        return None
