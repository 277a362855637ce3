"""The Azure edge shared by training.submit and deployment: the MLClient and error translation.

Heavy SDK imports happen inside the functions so that `--help` and `--dry-run` stay instant.
Tests inject a fake MLClient at this edge; nothing else in the project talks to Azure.

Retries: azure-core's RetryPolicy already retries 408, 429, 500, 502, 503, 504 and dropped
connections, honouring Retry-After. `RETRY` sets its patience once, for every service client the
MLClient builds (and the preflight's ARM client); calls are not wrapped again.
"""
from __future__ import annotations

import datetime as dt
import os
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Protocol

from common.cli import UserError, first_line, say

if TYPE_CHECKING:  # pragma: no cover
    from azure.ai.ml import MLClient


class Workspace(Protocol):
    """The stack outputs that name a workspace (infra.outputs.StackOutputs has them): common/ imports
    nothing of the project, so it names only the fields it reads."""

    subscription_id: str
    tenant_id: str
    resource_group_name: str
    workspace_name: str


RETRY: dict[str, float] = {"retry_total": 8, "retry_backoff_factor": 1.0, "retry_backoff_max": 60}
"""azure-core RetryPolicy settings: 8 retries, 1 s doubling to at most 60 s (about 3 minutes in all)."""
PROPAGATION = dt.timedelta(minutes=10)
"""Azure's "up to 10 minutes" for a new role assignment to apply (infra.preflight waits the first two)."""


def propagation_hint(roles_created_on: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """A sentence for a 403 from a young stack: its role assignments (created at `roles_created_on`, a stack
    output) may still be propagating. Empty when they are older than PROPAGATION or unknown."""
    if roles_created_on is None:
        return ""
    age = (now or dt.datetime.now(dt.timezone.utc)) - roles_created_on
    if age >= PROPAGATION:
        return ""
    minutes = max(1, round((PROPAGATION - age).total_seconds() / 60))
    return (f" The stack's role assignments were created {age.total_seconds() / 60:.0f} min ago: "
            f"roles are still propagating; retry in {minutes} minutes.")


PROPAGATION_FAILURES: tuple[tuple[tuple[str, ...], str], ...] = (
    # AcrPull not applied yet: the deployment fails with BadArgument, not 403 (reported publicly as
    # "... does not have pull permission ..."), so a 403-only hint never fired.
    (("pull permission", "not authorized to pull", "unauthorized: authentication required"),
     "AcrPull on the container registry"),
    # Storage Blob Data Reader not applied yet: the storage initializer cannot read the model.
    (("authorizationpermissionmismatch", "not authorized to perform this operation using this permission",
      "authorizationfailure"), "Storage Blob Data Reader on the storage account"),
)
"""Deployment failures that are a role the endpoint identity holds but that has not applied yet:
(phrases, any of which matches case-insensitively; the role it names)."""


def propagation_failure(detail: str) -> str | None:
    """The role a deployment failure shows the endpoint identity lacks (a fresh role still propagating), or None."""
    low = detail.lower()
    return next((role for phrases, role in PROPAGATION_FAILURES if any(p in low for p in phrases)), None)


def quiet_sdk() -> None:
    """azure-ai-ml logs a warning per experimental class it touches; noise for the user of a CLI."""
    import logging

    logging.getLogger("azure.ai.ml._utils._experimental").setLevel(logging.ERROR)


def wait(poller: Any, what: str, *, interval: float = 30.0) -> Any:
    """Block on an SDK poller, printing a line every `interval` seconds so long waits show progress."""
    started = time.monotonic()
    while not poller.done():
        poller.wait(timeout=interval)
        if not poller.done():
            say(f"    {what}: still running after {time.monotonic() - started:.0f}s")
    return poller.result()


def studio_url(outputs: "Workspace", path: str = "") -> str:
    """An Azure ML studio link into the stack's workspace."""
    wsid = (
        f"/subscriptions/{outputs.subscription_id}/resourcegroups/{outputs.resource_group_name}"
        f"/workspaces/{outputs.workspace_name}"
    )
    return f"https://ml.azure.com/{path.lstrip('/')}?wsid={wsid}&tid={outputs.tenant_id}"


def azure_credential(tenant_id: str = "", env: Mapping[str, str] | None = None, **kwargs: Any) -> Any:
    """The credential every Azure client here uses; constructing it makes no network call.

    In a GitHub Actions job that may request ID tokens (ACTIONS_ID_TOKEN_REQUEST_URL) and names the
    identity (AZURE_CLIENT_ID): ClientAssertionCredential with a fresh GitHub ID token per exchange,
    so a job signs in again by itself however long it runs (common/github_oidc.py). Elsewhere:
    DefaultAzureCredential (environment, workload or managed identity, `az login` ...).
    """
    from common import github_oidc

    env = os.environ if env is None else env
    if github_oidc.in_github_actions(env):
        return github_oidc.github_actions_credential(tenant_id, env, retry=RETRY, **kwargs)
    from azure.identity import DefaultAzureCredential

    # The shared token cache (Visual Studio's, and Azure CLI's before 2.30) is not used on the platforms
    # this runs on, and looking for it creates ~/.IdentityService.
    return DefaultAzureCredential(**{"exclude_shared_token_cache_credential": True, **kwargs})


def make_ml_client(outputs: "Workspace", credential: Any = None) -> "MLClient":
    """An MLClient on the stack's workspace. Construction makes no network or credential call."""
    from azure.ai.ml import MLClient

    return MLClient(
        credential or azure_credential(outputs.tenant_id),
        subscription_id=outputs.subscription_id,
        resource_group_name=outputs.resource_group_name,
        workspace_name=outputs.workspace_name,
        **RETRY,
    )


def _error_code(err: Any) -> str:
    """ARM's error code (`LinkedAuthorizationFailed`, `AuthorizationFailed` ...), from the body or the message."""
    code = getattr(getattr(err, "error", None), "code", None)
    if code:
        return str(code)
    for known in ("LinkedAuthorizationFailed", "AuthorizationFailed"):
        if known in str(err):
            return known
    return ""


def forbidden_message(action: str, err: Any, roles_created_on: dt.datetime | None = None) -> str:
    """What a 403 means here, and who needs which role (docs/DEPLOY.md, "Who needs which role")."""
    if _error_code(err) == "LinkedAuthorizationFailed":
        text = (f"{action}: permission denied (LinkedAuthorizationFailed): creating an endpoint that runs as the "
                "stack's endpoint identity needs Microsoft.ManagedIdentity/userAssignedIdentities/assign/action on "
                "that identity. Ask for Managed Identity Operator on it (AzureML Data Scientist does not include it).")
    else:
        text = (f"{action}: permission denied (403). Submitting needs AzureML Data Scientist (or Contributor) on "
                "the workspace; deploying also needs Managed Identity Operator on the endpoint identity.")
    return text + (propagation_hint(roles_created_on) or
                   " `python -m infra.preflight` names what is missing.")


@contextmanager
def azure_errors(action: str, roles_created_on: dt.datetime | None = None) -> Iterator[None]:
    """Turn the SDK's expected failures into one message a person can act on.

    `roles_created_on` (the stack output of that name): a 403 on a young stack says its roles may still be propagating.
    """
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    try:
        yield
    except UserError:
        raise
    except ClientAuthenticationError as err:
        raise UserError(
            f"{action}: not signed in to Azure ({first_line(err, 200)}). Run `az login` (or set AZURE_CLIENT_ID/"
            "AZURE_TENANT_ID/AZURE_CLIENT_SECRET, or use a managed or workload identity), then try again."
        ) from None
    except ResourceNotFoundError as err:
        raise UserError(f"{action}: not found ({first_line(err)}). Check the stack with `pulumi stack output`.") from None
    except ServiceRequestError as err:
        raise UserError(f"{action}: cannot reach Azure ({first_line(err)}). Check the network and retry.") from None
    except ServiceResponseError as err:  # the connection dropped mid-answer: the request may or may not have applied
        raise UserError(
            f"{action}: the connection to Azure broke before it answered ({first_line(err)}). "
            "Check the network and run the command again (it is safe to re-run)."
        ) from None
    except HttpResponseError as err:
        code = err.status_code
        if code == 403:
            raise UserError(forbidden_message(action, err, roles_created_on)) from None
        raise UserError(f"{action}: Azure answered {code or 'an error'}: {first_line(err)}") from None
