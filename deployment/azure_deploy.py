"""Blue/green deployment to a managed online endpoint, with rollback.

register the model -> endpoint (create if missing; never delete it) -> serving environment
(reused when unchanged) -> a new deployment beside the live one -> smoke test it directly
(`azureml-model-deployment` header, the Prompt flow's own client) -> 100% traffic to it ->
delete the old one -> write the Prompt flow connection.

If the new deployment or its smoke test fails, traffic is left where it was, the new deployment
is deleted (it bills per hour) after its container log tail is shown, and a UserError says
what happened. The endpoint key is fetched with the SDK and handed only to the smoke-test
client and the connection writer: it is never printed, logged or returned.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from common.azure import azure_errors, with_retries
from common.cli import UserError, first_line, say, step
from deployment import definitions
from deployment.environment import serving_environment
from deployment.registration import ModelChoice, RegisteredModel, resolve_model

if TYPE_CHECKING:  # pragma: no cover
    from infra.outputs import StackOutputs

LOG_LINES = 50
SMOKE_QUESTION = "Reply with one short sentence: what are you?"
SMOKE_MAX_TOKENS = 32


@dataclass(frozen=True)
class DeployPlan:
    endpoint_name: str
    instance_type: str = definitions.DEFAULT_INSTANCE_TYPE
    choice: ModelChoice = field(default_factory=ModelChoice)
    foundry_connection: bool = False


@dataclass(frozen=True)
class DeployResult:
    endpoint_name: str
    deployment_name: str
    scoring_uri: str
    model: RegisteredModel
    endpoint_created: bool
    replaced: tuple[str, ...]
    smoke_answer: str


def _default_smoke_client(endpoint: str, key: str, deployment: str) -> Any:
    from flows.chat.phi_client import PhiClient

    return PhiClient(endpoint=endpoint, key=key, deployment=deployment, timeout=120.0, max_retries=3, backoff=2.0)


def _default_write_connection(endpoint: str, key: str, deployment: str) -> None:
    from deployment.connection import write_phi_connection

    write_phi_connection(endpoint=endpoint, key=key, deployment=deployment)


def wait(poller: Any, what: str, *, interval: float = 30.0) -> Any:
    """Block on an SDK poller, printing a line every `interval` seconds so long waits show progress."""
    started = time.monotonic()
    while not poller.done():
        poller.wait(timeout=interval)
        if not poller.done():
            say(f"    {what}: still running after {time.monotonic() - started:.0f}s")
    return poller.result()


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "<hidden>") if secret else text


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
        return " The serving image failed to build: check the environment's build log in Azure ML studio."
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
            return str(text).rstrip()
    return ""


def _delete_deployment(ml_client: Any, endpoint: str, name: str, *, interval: float) -> bool:
    """Delete one deployment and wait; True when gone (or never existed)."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        poller = with_retries(
            lambda: ml_client.online_deployments.begin_delete(name=name, endpoint_name=endpoint),
            action=f"deleting deployment {name}",
        )
        wait(poller, f"deleting deployment {name}", interval=interval)
        return True
    except ResourceNotFoundError:
        return True
    except Exception as err:
        say(f"    could not delete deployment {name}: {first_line(err)}")
        return False


def _check_existing_endpoint(endpoint: Any, outputs: "StackOutputs") -> None:
    """An endpoint's identity and auth mode cannot change after creation: refuse a mismatch clearly."""
    name = endpoint.name
    state = str(getattr(endpoint, "provisioning_state", "") or "")
    if state.lower() == "deleting":
        raise UserError(f"endpoint {name} is being deleted; wait until it is gone, or pass another --endpoint-name.")
    identity = getattr(endpoint, "identity", None)
    kind = str(getattr(identity, "type", "") or "none").lower().replace("_", "")
    ids = [
        str(getattr(uai, "resource_id", "") or "").lower()
        for uai in (getattr(identity, "user_assigned_identities", None) or [])
    ]
    if "userassigned" not in kind or outputs.endpoint_uai_resource_id.lower() not in ids:
        have = f"{getattr(identity, 'type', None) or 'no'} identity" + (f" ({', '.join(ids)})" if ids else "")
        raise UserError(
            f"endpoint {name} already exists with {have}, not the stack's endpoint identity "
            f"{outputs.endpoint_uai_name}. An endpoint's identity cannot be changed after creation, and the deployment "
            "relies on that identity's roles (AcrPull, Storage Blob Data Reader). Deploy to a new endpoint with "
            f"--endpoint-name NEW-NAME, or delete this one first (`az ml online-endpoint delete -n {name}`)."
        )
    auth = str(getattr(endpoint, "auth_mode", "") or "key").lower()
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


def deploy_to_azure(
    ml_client: Any,
    outputs: "StackOutputs",
    plan: DeployPlan,
    *,
    code_root: Path,
    smoke_client: Callable[[str, str, str], Any] = _default_smoke_client,
    write_connection: Callable[[str, str, str], None] = _default_write_connection,
    foundry_writer: Callable[[str, str, str], None] | None = None,
    poll_interval: float = 30.0,
) -> DeployResult:
    """Run the whole blue/green deployment; see the module docstring for the order and the rollback."""
    from azure.core.exceptions import ResourceNotFoundError

    ep_name = definitions.check_endpoint_name(plan.endpoint_name)
    ops_ep, ops_dep = ml_client.online_endpoints, ml_client.online_deployments

    with step("register the model"):
        model = resolve_model(ml_client, plan.choice)

    with step(f"endpoint {ep_name}"):
        with azure_errors(f"looking up endpoint {ep_name}"):
            try:
                endpoint = with_retries(lambda: ops_ep.get(name=ep_name), action="getting the endpoint")
            except ResourceNotFoundError:
                endpoint = None
        created = endpoint is None
        if created:
            say(f"    creating endpoint {ep_name} (key auth, identity {outputs.endpoint_uai_name}); about 1-2 minutes")
            entity = definitions.build_endpoint(ep_name, outputs)
            with azure_errors(f"creating endpoint {ep_name}"):
                poller = with_retries(lambda: ops_ep.begin_create_or_update(entity), action="creating the endpoint")
                wait(poller, f"creating endpoint {ep_name}", interval=poll_interval)
                endpoint = with_retries(lambda: ops_ep.get(name=ep_name), action="getting the endpoint")
        else:
            _check_existing_endpoint(endpoint, outputs)
            say(f"    endpoint {ep_name} exists: adding a deployment beside the live one (it is never deleted)")
        traffic_before = dict(getattr(endpoint, "traffic", None) or {})
        with azure_errors(f"listing the deployments of {ep_name}"):
            existing = [d.name for d in with_retries(lambda: list(ops_dep.list(endpoint_name=ep_name)), action="listing deployments")]
        new = choose_slot(traffic_before, existing)
        live = [name for name, share in traffic_before.items() if share and int(share) > 0]
        say(f"    live: {', '.join(f'{n}={traffic_before[n]}%' for n in live) or 'nothing'}; new deployment: {new}")

    with step("serving environment"):
        env = serving_environment(plan.instance_type)
        with azure_errors(f"registering environment {env.name}:{env.version}"):
            try:
                with_retries(lambda: ml_client.environments.get(name=env.name, version=env.version), action="getting the environment")
                say(f"    {env.name}:{env.version} exists (same pins, same image): reusing it")
            except ResourceNotFoundError:
                entity = env.to_entity()
                with_retries(lambda: ml_client.environments.create_or_update(entity), action="registering the environment")
                say(f"    registered {env.name}:{env.version}; its image is built on first use (10-20 minutes)")

    deployment = definitions.build_deployment(
        name=new,
        endpoint_name=ep_name,
        model=model.reference,
        environment=env.reference,
        instance_type=plan.instance_type,
        outputs=outputs,
    )
    info = definitions.instance_info(plan.instance_type)
    cost = f" about ${info.usd_per_hour:.2f}/h" if info else ""

    def fail(stage: str, err: BaseException, secret: str | None = None) -> UserError:
        detail = _redact(first_line(err), secret)
        say(f"!!! {stage} failed: {detail}")
        say(f"    traffic stays where it was ({', '.join(f'{n}={p}%' for n, p in traffic_before.items() if p) or 'none'})")
        logs = _log_tail(ml_client, ep_name, new)
        if logs:
            say(f"---- last {LOG_LINES} lines of the {new} container log ----")
            say(_redact(logs, secret))
            say("---- end of log ----")
        say(f"    deleting the failed deployment {new} (it bills per hour)")
        gone = _delete_deployment(ml_client, ep_name, new, interval=poll_interval)
        cleanup = (
            f"The failed deployment {new} was deleted (or had not been created)."
            if gone
            else f"The failed deployment {new} could NOT be deleted and bills per hour: delete it with "
            f"`az ml online-deployment delete -e {ep_name} -n {new} --yes`."
        )
        return UserError(
            f"{stage} failed for deployment {new} on endpoint {ep_name}: {detail.rstrip('.')}. Traffic was not moved. "
            f"{cleanup}{_hint(detail, plan.instance_type)}"
        )

    with step(f"deployment {new} on {plan.instance_type}"):
        say(f"    bills{cost or ' per hour'} from now until deleted; image build + model load take 10-30 minutes")
        try:
            poller = with_retries(lambda: ops_dep.begin_create_or_update(deployment), action=f"creating deployment {new}")
            wait(poller, f"deployment {new}", interval=poll_interval)
        except KeyboardInterrupt:
            say(f"interrupted: deployment {new} may still be starting in Azure and bills per hour once it runs; "
                f"delete it with `az ml online-deployment delete -e {ep_name} -n {new} --yes` (traffic was not moved)")
            raise
        except Exception as err:
            raise fail("creation", err) from None

    key: str | None = None
    with step(f"smoke test {new} (azureml-model-deployment: {new})"):
        try:
            with azure_errors(f"reading endpoint {ep_name}"):
                endpoint = with_retries(lambda: ops_ep.get(name=ep_name), action="getting the endpoint")
                scoring_uri = str(endpoint.scoring_uri)
                key = with_retries(lambda: ops_ep.get_keys(name=ep_name), action="fetching the endpoint key").primary_key
            if not key:
                raise UserError(f"endpoint {ep_name} returned no key (is it key-auth?)")
            reply = smoke_client(scoring_uri, key, new).chat(SMOKE_QUESTION, max_tokens=SMOKE_MAX_TOKENS)
            answer = (getattr(reply, "text", "") or "").strip()
            if not answer:
                raise UserError("the deployment answered with an empty reply")
        except KeyboardInterrupt:
            say(f"interrupted: deployment {new} is running without traffic and bills per hour; delete it with "
                f"`az ml online-deployment delete -e {ep_name} -n {new} --yes` (traffic was not moved)")
            raise
        except Exception as err:
            raise fail("the smoke test", err, key) from None
        say(f"    answered: {_redact(answer, key)[:160]!r}")

    with step(f"traffic: 100% to {new}"):
        try:
            endpoint.traffic = {new: 100}
            poller = with_retries(lambda: ops_ep.begin_create_or_update(endpoint), action="moving traffic")
            wait(poller, "moving traffic", interval=poll_interval)
        except Exception as err:
            now = _current_traffic(ml_client, ep_name)
            if now is None:
                raise UserError(
                    f"moving traffic to {new} failed ({first_line(err)}) and the endpoint's traffic could not be read "
                    f"back, so both deployments were kept. Check the endpoint {ep_name} in Azure ML studio, then "
                    f"re-run the deploy or delete {new} with `az ml online-deployment delete -e {ep_name} -n {new} --yes`."
                ) from None
            if int(now.get(new, 0) or 0) > 0:
                raise UserError(
                    f"moving traffic to {new} reported an error ({first_line(err)}), but {new} now takes traffic "
                    f"({now}); the old deployment(s) {', '.join(live) or '-'} were kept. Check the endpoint in Azure ML studio."
                ) from None
            raise fail("moving traffic", err, key) from None

    leftovers: list[str] = []
    old = [name for name in dict.fromkeys(live + [s for s in definitions.SLOTS if s in existing]) if name != new]
    if old:
        with step(f"delete the old deployment(s): {', '.join(old)}"):
            for name in old:
                if not _delete_deployment(ml_client, ep_name, name, interval=poll_interval):
                    leftovers.append(name)

    with step("write the Prompt flow connection phi_endpoint"):
        which = "the connection"
        try:
            write_connection(scoring_uri, key, new)
            if foundry_writer is not None:
                which = "the Foundry project connection (the local one was written)"
                foundry_writer(scoring_uri, key, new)
        except Exception as err:  # any failure here: the deployment is live, say so (never a traceback)
            detail = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {first_line(err)}"
            still_bill = (
                f" Also, the old deployment(s) {', '.join(leftovers)} could not be deleted and still bill per hour: "
                + "; ".join(f"`az ml online-deployment delete -e {ep_name} -n {n} --yes`" for n in leftovers)
                + "."
                if leftovers
                else ""
            )
            raise UserError(
                f"deployment {new} is live on {scoring_uri} with 100% of the traffic, but {which} was not "
                f"written: {_redact(detail, key).rstrip()} Fix that and run deploy again (it reuses the registered "
                f"model and the environment), or write the local connection alone with `python -m "
                f"deployment.connection set --endpoint {scoring_uri} --deployment {new}` (key from "
                f"`az ml online-endpoint get-credentials -n {ep_name}`).{still_bill}"
            ) from None

    if leftovers:
        raise UserError(
            f"deployment {new} is live on {scoring_uri} and the connection is written, but the old deployment(s) "
            f"{', '.join(leftovers)} could not be deleted and still bill per hour: delete them with "
            + "; ".join(f"`az ml online-deployment delete -e {ep_name} -n {n} --yes`" for n in leftovers)
        )
    return DeployResult(
        endpoint_name=ep_name,
        deployment_name=new,
        scoring_uri=scoring_uri,
        model=model,
        endpoint_created=created,
        replaced=tuple(old),
        smoke_answer=answer,
    )


def _current_traffic(ml_client: Any, endpoint: str) -> dict[str, int] | None:
    try:
        return dict(ml_client.online_endpoints.get(name=endpoint).traffic or {})
    except Exception:
        return None
