"""Blue/green deployment to a managed online endpoint, gated by evaluation, with rollback.

register the model -> endpoint (create if missing; never delete it) -> serving environment
(reused when unchanged) -> a new deployment beside the live one -> smoke test it directly
(`azureml-model-deployment` header, the Prompt flow's own client) -> evaluate it and the live
one on the same held-out conversations (deployment/gate.py) -> 100% traffic to it -> delete
the old one -> write the Prompt flow connection.

From the new deployment's creation until traffic moves, every step runs inside
`rollback.guard(...)` (deployment/rollback.py): a failure, or the gate's refusal, leaves
traffic where it was and deletes the new deployment (it bills per hour). The endpoint key is
fetched with the SDK and handed only to the clients and the connection writer: never printed,
logged or returned. azure-core retries 408/429/5xx itself; nothing here wraps calls in retries.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from common.azure import azure_errors
from common.cli import UserError, first_line, say, step
from deployment import definitions
from deployment.environment import serving_environment
from deployment.expiry import DELETE_AFTER, expiry_tags
from deployment.registration import ModelChoice, RegisteredModel, resolve_model
from deployment.rollback import Rollback

if TYPE_CHECKING:  # pragma: no cover
    from deployment.scoring import EvalSet
    from deployment.gate import Verdict
    from infra.outputs import StackOutputs

LOG_LINES = 50
SMOKE_QUESTION = "Reply with one short sentence: what are you?"
SMOKE_MAX_TOKENS = 32
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


def _default_client(endpoint: str, key: str, deployment: str) -> Any:
    """The flow's client on the new deployment, through the OpenAI API its server speaks."""
    from deployment.scoring import client_for

    return client_for(endpoint, key, deployment, api="openai")


def _default_write_connection(endpoint: str, key: str, deployment: str) -> None:
    """`phi_endpoint` as the flow calls our server: the endpoint's base URL and `api: openai`."""
    from deployment.connection import write_phi_connection
    from deployment.scoring import base_url

    write_phi_connection(endpoint=base_url(endpoint), key=key, deployment=deployment, api="openai")


def wait(poller: Any, what: str, *, interval: float = 30.0) -> Any:
    """Block on an SDK poller, printing a line every `interval` seconds so long waits show progress."""
    started = time.monotonic()
    while not poller.done():
        poller.wait(timeout=interval)
        if not poller.done():
            say(f"    {what}: still running after {time.monotonic() - started:.0f}s")
    return poller.result()


def _delete_command(endpoint: str, name: str) -> str:
    return f"`az ml online-deployment delete -e {endpoint} -n {name} --yes`"


def _hint(detail: str, instance_type: str) -> str:
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


# -- the steps -------------------------------------------------------------------------------------


class _Deploy:
    """One run of deploy_to_azure: its inputs and what the steps found, so each step is a short method."""

    def __init__(self, ml_client: Any, outputs: "StackOutputs", plan: DeployPlan, *,
                 client: Callable[[str, str, str], Any], poll_interval: float) -> None:
        self.ml, self.outputs, self.plan = ml_client, outputs, plan
        self.client, self.poll = client, poll_interval
        self.ep_name = definitions.check_endpoint_name(plan.endpoint_name)
        self.key: str | None = None
        self.scoring_uri = ""

    def load_eval_set(self) -> "EvalSet":
        from deployment.scoring import DEFAULT_LIMIT, load_eval_set

        return load_eval_set(self.plan.eval_file, self.plan.eval_limit or DEFAULT_LIMIT)

    def endpoint(self) -> tuple[Any, bool]:
        """The endpoint, created (key auth, the stack's UAI) when missing; never deleted."""
        from azure.core.exceptions import ResourceNotFoundError

        ops = self.ml.online_endpoints
        with azure_errors(f"looking up endpoint {self.ep_name}"):
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
        with azure_errors(f"creating endpoint {self.ep_name}"):
            wait(ops.begin_create_or_update(entity), f"creating endpoint {self.ep_name}", interval=self.poll)
            return ops.get(name=self.ep_name), True

    def slots(self, endpoint: Any) -> Slots:
        traffic = {name: int(share or 0) for name, share in (endpoint.traffic or {}).items()}
        with azure_errors(f"listing the deployments of {self.ep_name}"):
            existing = [d.name for d in self.ml.online_deployments.list(endpoint_name=self.ep_name)]
        slots = Slots(choose_slot(traffic, existing), [n for n, p in traffic.items() if p > 0], existing, traffic)
        say(f"    live: {slots.traffic_text() if slots.live else 'nothing'}; new deployment: {slots.new}")
        return slots

    def environment(self) -> Any:
        from azure.core.exceptions import ResourceNotFoundError

        env = serving_environment(self.plan.instance_type)
        with azure_errors(f"registering environment {env.name}:{env.version}"):
            try:
                self.ml.environments.get(name=env.name, version=env.version)
                say(f"    {env.name}:{env.version} exists (same pins, same image): reusing it")
            except ResourceNotFoundError:
                self.ml.environments.create_or_update(env.to_entity())
                say(f"    registered {env.name}:{env.version}; its image is built on first use (10-20 minutes)")
        return env

    def rollback(self, slots: Slots) -> Rollback:
        return Rollback(
            name=f"deployment {slots.new} on endpoint {self.ep_name}",
            undo=lambda: _delete_deployment(self.ml, self.ep_name, slots.new, interval=self.poll),
            manual=_delete_command(self.ep_name, slots.new),
            kept=f"Traffic was not moved ({slots.traffic_text()}).",
            evidence=lambda: _log_tail(self.ml, self.ep_name, slots.new),
            hint=lambda detail: _hint(detail, self.plan.instance_type),
        )

    def create_deployment(self, slots: Slots, model: RegisteredModel, env: Any) -> None:
        deployment = definitions.build_deployment(
            name=slots.new, endpoint_name=self.ep_name, model=model.reference, environment=env.reference,
            instance_type=self.plan.instance_type, outputs=self.outputs,
            instance_count=self.plan.instance_count, base_model=self.plan.base_model,
        )
        deployment.tags.update(expiry_tags(self.plan.expires_at))
        info = definitions.instance_info(self.plan.instance_type)
        hourly = info.usd_per_hour * self.plan.instance_count if info else None
        say(f"    bills{f' about ${hourly:.2f}/h' if hourly else ' per hour'} from now until deleted; "
            "image build + model load take 10-30 minutes")
        wait(self.ml.online_deployments.begin_create_or_update(deployment), f"deployment {slots.new}", interval=self.poll)

    def connect(self, rollback: Rollback) -> None:
        """The scoring URI and the key (handed to the rollback, which redacts it from then on)."""
        endpoint = self.ml.online_endpoints.get(name=self.ep_name)
        self.scoring_uri = str(endpoint.scoring_uri)
        self.key = self.ml.online_endpoints.get_keys(name=self.ep_name).primary_key
        rollback.secret = self.key
        if not self.key:
            raise UserError(f"endpoint {self.ep_name} returned no key (is it key-auth?)")

    def smoke_test(self, name: str) -> str:
        reply = self.client(self.scoring_uri, self.key or "", name).chat(SMOKE_QUESTION, max_tokens=SMOKE_MAX_TOKENS)
        answer = (reply.text or "").strip()
        if not answer:
            raise UserError("the deployment answered with an empty reply")
        return answer

    def evaluate(self, slots: Slots, model: RegisteredModel, eval_set: "EvalSet") -> "Verdict":
        """Score the new deployment and the live one (or reuse the live one's valid scores), then decide."""
        from deployment import gate
        from deployment.scoring import score_deployment

        def scores(name: str, label: str, model_ref: str) -> Any:
            return score_deployment(self.client(self.scoring_uri, self.key or "", name), eval_set,
                                    label=label, model=model_ref)

        scope = f"azure/{self.outputs.workspace_name}/{self.ep_name}"
        started = time.perf_counter()
        new = scores(slots.new, f"new {slots.new}", model.reference)
        live = None
        if slots.main_live:
            current = self.ml.online_deployments.get(name=slots.main_live, endpoint_name=self.ep_name)
            live_model, label = str(current.model), f"live {slots.main_live}"
            live, reused = gate.live_scores(scope, dict(current.tags or {}), live_model, eval_set, label,
                                            lambda: scores(slots.main_live, label, live_model), self.read_scores)
            if not reused:
                gate.remember(scope, live)
                self.tag(slots.main_live, gate.tags_for(live, self.store_scores(live, slots.main_live)))
        verdict = gate.decide(new, live, force=self.plan.force, margin=self.plan.margin)
        say(f"    evaluation took {time.perf_counter() - started:.0f}s")
        if verdict.promote:
            gate.remember(scope, new)
            self.tag(slots.new, gate.tags_for(new, self.store_scores(new, slots.new)))
        else:
            self.store_scores(new, slots.new)  # kept for the record: the deployment itself is deleted
        return verdict

    def store_scores(self, scores: Any, deployment: str) -> str:
        """Per-conversation scores as a workspace data asset (best effort); returns NAME:VERSION or ''."""
        import tempfile

        from azure.ai.ml.constants import AssetTypes
        from azure.ai.ml.entities import Data

        from deployment import gate

        version = f"{self.ep_name}-{deployment}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
        folder = Path(tempfile.mkdtemp(prefix="eval-scores-"))
        path = folder / f"{deployment}.json"
        path.write_text(gate.scores_text(scores), encoding="utf-8")
        asset = Data(name=SCORES_ASSET, version=version, type=AssetTypes.URI_FILE, path=str(path),
                     description=f"evaluation of {deployment} on endpoint {self.ep_name}", tags=dict(definitions.CREATED_BY))
        try:
            self.ml.data.create_or_update(asset)
        except Exception as err:  # the scores are also under runs/eval/: a failed upload only costs the record
            say(f"    warning: could not store the scores as data asset {SCORES_ASSET}: {first_line(err)}")
            return ""
        return f"{SCORES_ASSET}:{version}"

    def read_scores(self, ref: str) -> str:
        """The content of a scores data asset NAME:VERSION (what store_scores wrote), downloaded from its datastore.

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

    def tag(self, name: str, tags: dict[str, str]) -> None:
        """Record scores on a deployment (a tags-only update); a failure is a warning, never a rollback."""
        try:
            deployment = self.ml.online_deployments.get(name=name, endpoint_name=self.ep_name)
            deployment.tags = {**(deployment.tags or {}), **tags}
            wait(self.ml.online_deployments.begin_create_or_update(deployment), f"tagging {name}", interval=self.poll)
        except Exception as err:
            say(f"    warning: could not tag deployment {name} with its scores: {first_line(err)}")

    def move_traffic(self, slots: Slots, rollback: Rollback, created: bool) -> None:
        """100% to the new deployment; if Azure's answer is unclear, read the traffic back before undoing."""
        endpoint = self.ml.online_endpoints.get(name=self.ep_name)
        if self.plan.expires_at is not None and (created or DELETE_AFTER in (endpoint.tags or {})):
            endpoint.tags = {**(endpoint.tags or {}), **expiry_tags(self.plan.expires_at)}
        elif self.plan.expires_at is not None:
            say(f"    endpoint {self.ep_name} has no expiry (created without --expires-in): it keeps none")
        endpoint.traffic = {slots.new: 100}
        try:
            wait(self.ml.online_endpoints.begin_create_or_update(endpoint), "moving traffic", interval=self.poll)
        except Exception as err:
            now = _current_traffic(self.ml, self.ep_name)
            if now is None:
                raise UserError(
                    f"moving traffic to {slots.new} failed ({first_line(err)}) and the endpoint's traffic could not be "
                    f"read back, so both deployments were kept. Check the endpoint {self.ep_name} in Azure ML studio, then "
                    f"re-run the deploy or delete {slots.new} with {_delete_command(self.ep_name, slots.new)}."
                ) from None
            if int(now.get(slots.new, 0) or 0) > 0:
                raise UserError(
                    f"moving traffic to {slots.new} reported an error ({first_line(err)}), but {slots.new} now takes "
                    f"traffic ({now}); the old deployment(s) {', '.join(slots.live) or '-'} were kept. Check the "
                    "endpoint in Azure ML studio."
                ) from None
            raise rollback.fail("moving traffic", first_line(err)) from None

    def delete_old(self, slots: Slots) -> tuple[list[str], list[str]]:
        """The previous deployments (live or idle slots); returns (replaced, could not be deleted)."""
        old = [n for n in dict.fromkeys(slots.live + [s for s in definitions.SLOTS if s in slots.existing]) if n != slots.new]
        leftovers = [name for name in old if not _delete_deployment(self.ml, self.ep_name, name, interval=self.poll)]
        return old, leftovers

    def write_connections(self, new: str, leftovers: list[str], writers: list[tuple[str, Callable[..., None]]]) -> None:
        """The Prompt flow connection(s); a failure says the deployment is live (never a traceback)."""
        for which, write in writers:
            try:
                write(self.scoring_uri, self.key, new)
            except Exception as err:
                detail = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {first_line(err)}"
                detail = detail.replace(self.key, "<hidden>") if self.key else detail
                raise UserError(
                    f"deployment {new} is live on {self.scoring_uri} with 100% of the traffic, but {which} was not "
                    f"written: {detail.rstrip()} Fix that and run deploy again (it reuses the registered model and "
                    f"the environment), or write the local connection alone with `python -m deployment.connection set "
                    f"--endpoint {self.scoring_uri} --deployment {new}` (key from "
                    f"`az ml online-endpoint get-credentials -n {self.ep_name}`).{_still_bill(self.ep_name, leftovers)}"
                ) from None


def _still_bill(endpoint: str, leftovers: list[str]) -> str:
    if not leftovers:
        return ""
    return (f" Also, the old deployment(s) {', '.join(leftovers)} could not be deleted and still bill per hour: "
            + "; ".join(_delete_command(endpoint, n) for n in leftovers) + ".")


def deploy_to_azure(
    ml_client: Any,
    outputs: "StackOutputs",
    plan: DeployPlan,
    *,
    smoke_client: Callable[[str, str, str], Any] = _default_client,
    write_connection: Callable[[str, str, str], None] = _default_write_connection,
    foundry_writer: Callable[[str, str, str], None] | None = None,
    poll_interval: float = 30.0,
) -> DeployResult:
    """The whole gated blue/green deployment; see the module docstring for the order and the rollback.

    `smoke_client(url, key, deployment)` builds the client of the smoke test and the evaluation.
    """
    run = _Deploy(ml_client, outputs, plan, client=smoke_client, poll_interval=poll_interval)
    eval_set = run.load_eval_set()  # a missing eval file fails before anything is created
    with step("register the model"):
        model = resolve_model(ml_client, plan.choice)
    with step(f"endpoint {run.ep_name}"):
        endpoint, created = run.endpoint()
        slots = run.slots(endpoint)
    with step("serving environment"):
        env = run.environment()
    rollback = run.rollback(slots)
    with step(f"deployment {slots.new} on {plan.instance_type}"), rollback.guard("creation"):
        run.create_deployment(slots, model, env)
    with step(f"smoke test {slots.new} (azureml-model-deployment: {slots.new})"), rollback.guard("the smoke test"):
        run.connect(rollback)
        answer = run.smoke_test(slots.new)
        say(f"    answered: {rollback.redact(answer)[:160]!r}")
    with step(f"evaluate {slots.new}" + (f" against {slots.main_live}" if slots.main_live else " (first deployment: baseline)")):
        with rollback.guard("the evaluation"):
            verdict = run.evaluate(slots, model, eval_set)
        if not verdict.promote:
            raise rollback.refuse(verdict)
    with step(f"traffic: 100% to {slots.new}"):
        run.move_traffic(slots, rollback, created)
    replaced, leftovers = [], []
    if [n for n in slots.live + slots.existing if n != slots.new]:
        with step("delete the old deployment(s)"):
            replaced, leftovers = run.delete_old(slots)
    with step("write the Prompt flow connection phi_endpoint"):
        writers = [("the connection", write_connection)]
        if foundry_writer is not None:
            writers.append(("the Foundry project connection (the local one was written)", foundry_writer))
        run.write_connections(slots.new, leftovers, writers)
    if leftovers:
        raise UserError(
            f"deployment {slots.new} is live on {run.scoring_uri} and the connection is written, but the old "
            f"deployment(s) {', '.join(leftovers)} could not be deleted and still bill per hour: delete them with "
            + "; ".join(_delete_command(run.ep_name, n) for n in leftovers)
        )
    return DeployResult(run.ep_name, slots.new, run.scoring_uri, model, created, tuple(replaced), answer, verdict)


def _current_traffic(ml_client: Any, endpoint: str) -> dict[str, int] | None:
    try:
        return dict(ml_client.online_endpoints.get(name=endpoint).traffic or {})
    except Exception:
        return None
