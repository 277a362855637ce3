"""`python -m infra.preflight`: may the signed-in identity do what a command needs? Asked before anything bills.

    python -m infra.preflight [--stack S] [--outputs-file P] [--for submit|deploy|teardown|up]

For each scope a command touches, ARM answers `GET {scope}/providers/Microsoft.Authorization/
permissions?api-version=2022-04-01` with the permission blocks of every role that applies to the
caller there: roles granted through groups and custom roles included, which a list of the
caller's own role assignments would miss. Each action the command needs is evaluated against
those blocks (actions minus notActions, with ARM's wildcards), and a missing one is named with
the role that grants it. `training.submit` and `deployment.deploy` run the same check after their
dry-run branch (never in a dry run); `FINETUNE_PHI_PREFLIGHT=off` skips it.

Right after `pulumi up`, new role assignments take minutes to reach ARM and the data planes. The
stack exports when the newest was created (`role_assignments_created_on`): the check waits until
they are `SETTLE` old, and a missing right on a younger stack is reported as still propagating.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from infra.outputs import add_stack_arguments
from common.cli import ArgumentParser, UserError, add_verbose_argument, first_line, run_cli, say
from infra.permissions import PermissionsReader, allows

if TYPE_CHECKING:  # pragma: no cover
    from infra.outputs import StackOutputs

SETTLE = dt.timedelta(seconds=120)
"""How long submit and deploy wait after the stack's role assignments were created (mlops-v2 waits 120 s)."""
PROPAGATION = dt.timedelta(minutes=10)
"""How long Azure says a role assignment can take to apply; a denial on a younger stack may be that."""
ENV_SWITCH = "FINETUNE_PHI_PREFLIGHT"
PURPOSES = ("submit", "deploy", "teardown", "up")
_MLS = "Microsoft.MachineLearningServices/workspaces"
DATA_SCIENTIST = "AzureML Data Scientist (or Contributor) on the workspace"
ROLE_ASSIGNER = ("Owner, or Contributor plus User Access Administrator or Role Based Access Control "
                 "Administrator (Contributor alone cannot create role assignments)")


class PreflightError(UserError):
    """The caller lacks a right the command needs (the message names the role), or is not signed in."""


# ---------------------------------------------------------------- what each command needs


@dataclass(frozen=True)
class Need:
    """An action on a scope, and the role to ask for when it is missing."""

    action: str
    scope: str
    where: str
    grant: str
    optional: str | None = None
    """Set for a right only one option needs (for example teardown's --purge-workspace): a warning."""


def workspace_id(outputs: "StackOutputs") -> str:
    return (outputs.workspace_resource_id or
            f"{resource_group_id(outputs)}/providers/Microsoft.MachineLearningServices/workspaces/{outputs.workspace_name}")


def resource_group_id(outputs: "StackOutputs") -> str:
    return f"/subscriptions/{outputs.subscription_id}/resourceGroups/{outputs.resource_group_name}"


FOUNDRY_WRITER = ("Azure AI Developer (or AzureML Data Scientist, or Contributor) on the Foundry project: it is a "
                  "workspace of its own, so rights on the ML workspace do not reach it")


def needs(purpose: str, outputs: "StackOutputs | None", subscription_id: str | None = None, *,
          foundry: bool = False) -> list[Need]:
    """The rights `purpose` needs. Action names follow ARM's naming of the REST paths each step calls.

    `foundry`: deploy also writes the Foundry project's connections (`deploy --foundry-connection`).
    """
    if purpose == "up":
        return _up_needs(outputs, subscription_id)
    assert outputs is not None, "submit, deploy and teardown need the stack outputs"
    ws, where = workspace_id(outputs), f"workspace {outputs.workspace_name}"

    def on_workspace(*actions: str, optional: str | None = None, grant: str = DATA_SCIENTIST) -> list[Need]:
        return [Need(f"{_MLS}/{action}", ws, where, grant, optional) for action in actions]

    if purpose == "submit":
        return on_workspace("computes/read", "datastores/listSecrets/action", "data/versions/write",
                            "environments/versions/write", "jobs/write")
    if purpose == "deploy":
        # the model upload and the gate's scores data asset go through the datastore's credentials
        return on_workspace("jobs/read", "models/versions/write", "environments/versions/write",
                            "datastores/listSecrets/action", "data/versions/write",
                            "onlineEndpoints/write", "onlineEndpoints/deployments/write",
                            "onlineEndpoints/listKeys/action") + _foundry_needs(outputs, foundry) + [
            Need("Microsoft.ManagedIdentity/userAssignedIdentities/assign/action", outputs.endpoint_uai_resource_id,
                 f"identity {outputs.endpoint_uai_name}",
                 "Managed Identity Operator on that identity: an endpoint that runs as it may only be created by "
                 "someone allowed to assign it (AzureML Data Scientist is not; Azure answers LinkedAuthorizationFailed)"),
        ]
    if purpose == "teardown":
        return on_workspace("onlineEndpoints/read", "onlineEndpoints/delete", "onlineEndpoints/deployments/delete") + (
            on_workspace("delete", optional="teardown --purge-workspace",
                         grant="Contributor on the workspace (AzureML Data Scientist excludes workspaces/delete)"))
    raise ValueError(f"unknown purpose {purpose!r}; one of {', '.join(PURPOSES)}")


def _foundry_needs(outputs: "StackOutputs", foundry: bool) -> list[Need]:
    """Writing the connections into the Foundry project (a workspace of kind project beside the ML one)."""
    if not foundry:
        return []
    project = outputs.foundry_project_name
    if not project:
        raise PreflightError(
            "--foundry-connection needs a Foundry project, but the stack outputs name none (foundry_project_name). "
            "Set `pulumi config set finetune-phi:enableFoundry true` and run `pulumi up`, or drop the flag."
        )
    scope = f"{resource_group_id(outputs)}/providers/Microsoft.MachineLearningServices/workspaces/{project}"
    return [Need(f"{_MLS}/connections/write", scope, f"Foundry project {project}", FOUNDRY_WRITER)]


def _up_needs(outputs: "StackOutputs | None", subscription_id: str | None) -> list[Need]:
    if outputs is None:  # the first `pulumi up` creates the resource group: subscription scope
        kind, scope, where = "subscription", f"/subscriptions/{subscription_id}", f"subscription {subscription_id}"
        writes = ["Microsoft.Resources/subscriptions/resourceGroups/write"]
    else:
        kind, scope, where = "resource group", resource_group_id(outputs), f"resource group {outputs.resource_group_name}"
        writes = []
    writes += [
        "Microsoft.Storage/storageAccounts/write", "Microsoft.KeyVault/vaults/write",
        "Microsoft.ContainerRegistry/registries/write", "Microsoft.ManagedIdentity/userAssignedIdentities/write",
        "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/write",
        f"{_MLS}/write", f"{_MLS}/computes/write",
        # the cluster is created with the training identity attached
        "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action",
    ]
    return [Need(action, scope, where, f"Contributor (or Owner) on the {kind}") for action in writes] + [
        Need("Microsoft.Authorization/roleAssignments/write", scope, where, f"{ROLE_ASSIGNER} on the {kind}"),
    ]


# ---------------------------------------------------------------- the check


@dataclass
class Verdict:
    purpose: str
    missing: list[Need]
    warnings: list[str]
    unchecked: list[str]
    foundry: bool = False
    """Checked with the Foundry project's rights too (`--foundry-connection`)."""

    @property
    def ok(self) -> bool:
        return not [need for need in self.missing if not need.optional]


def evaluate(
    purpose: str,
    outputs: "StackOutputs | None",
    reader: PermissionsReader,
    *,
    subscription_id: str | None = None,
    foundry: bool = False,
) -> Verdict:
    """Ask ARM once per scope and compare; no exception for a missing right (see `require`)."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
    )

    verdict = Verdict(purpose, [], [], [], foundry)
    by_scope: dict[str, list[Need]] = {}
    for need in needs(purpose, outputs, subscription_id, foundry=foundry):
        by_scope.setdefault(need.scope, []).append(need)
    for scope, scope_needs in by_scope.items():
        where = scope_needs[0].where
        try:
            granted = reader.read(scope)
        except ClientAuthenticationError as err:
            raise PreflightError(
                f"checking your permissions on {where}: not signed in to Azure ({first_line(err, 200)}). "
                "Run `az login` (or use a managed or workload identity), then try again."
            ) from None
        except HttpResponseError as err:
            if err.status_code in (400, 404) and _is_subscription(scope):
                # The REST reference documents the permissions call on resource groups and resources, not on
                # a subscription: a 400 or 404 there says nothing about the subscription or the caller.
                verdict.unchecked.append(f"{where} (ARM answered {err.status_code} to the subscription-scope "
                                         "permissions call, which its REST reference does not document)")
                continue
            if err.status_code == 404:
                raise PreflightError(
                    f"{where} does not exist ({first_line(err, 200)}). Check the stack outputs "
                    "(`pulumi stack output`), or run `pulumi up`."
                ) from None
            # 403 here means the caller may not even read its own permissions (Reader gives
            # Microsoft.Authorization/permissions/read); the command's own calls will say what fails.
            verdict.unchecked.append(f"{where} (ARM answered {err.status_code}: {first_line(err, 200)})")
            continue
        except (ServiceRequestError, ServiceResponseError) as err:  # after azure-core's own retries
            verdict.unchecked.append(f"{where} (cannot reach ARM: {first_line(err, 200)})")
            continue
        verdict.missing += [need for need in scope_needs if not allows(granted, need.action)]
    verdict.warnings += [f"{need.optional} also needs {need.action} on {need.where}: {need.grant}"
                         for need in verdict.missing if need.optional]
    return verdict


def _is_subscription(scope: str) -> bool:
    return scope.strip("/").count("/") == 1  # subscriptions/{id}


def role_age(outputs: "StackOutputs | None", now: dt.datetime) -> dt.timedelta | None:
    created = outputs.role_assignments_created_on if outputs else None
    return None if created is None else max(now - created, dt.timedelta(0))  # a clock behind ARM's: 0


def wait_for_roles(
    outputs: "StackOutputs", *, now: Callable[[], dt.datetime], sleep: Callable[[float], None], tick: float = 15.0
) -> None:
    """Wait, with progress, until the stack's role assignments are `SETTLE` old."""
    age = role_age(outputs, now())
    while age is not None and age < SETTLE:
        left = (SETTLE - age).total_seconds()
        say(f"    the stack's role assignments were created {age.total_seconds():.0f} s ago; waiting {left:.0f} s more "
            f"for them to reach Azure ML, storage and the registry")
        sleep(min(tick, left))
        age = role_age(outputs, now())


def message(verdict: Verdict, outputs: "StackOutputs | None", now: dt.datetime) -> str:
    """One paragraph: each scope, what is missing there, the role to ask for; propagation if the stack is new."""
    required = [need for need in verdict.missing if not need.optional]
    parts = []
    for where in dict.fromkeys(need.where for need in required):
        here = [need for need in required if need.where == where]
        grants = " / ".join(dict.fromkeys(need.grant for need in here))
        parts.append(f"on {where} you lack {', '.join(need.action for need in here)}; ask for {grants}")
    text = f"{COMMANDS[verdict.purpose]} would be refused: {'; '.join(parts)}."
    age = role_age(outputs, now)
    if age is not None and age < PROPAGATION:
        minutes = max(1, round((PROPAGATION - age).total_seconds() / 60))
        text += (f" The stack's role assignments were created {age.total_seconds() / 60:.0f} min ago: if `pulumi up` "
                 f"granted you these roles (the GitHub identity, say), roles are still propagating; retry in "
                 f"{minutes} minutes.")
    flag = " --foundry-connection" if verdict.foundry else ""
    return text + f" Check again with `python -m infra.preflight --for {verdict.purpose}{flag}`."


COMMANDS = {
    "submit": "`python -m training.submit`",
    "deploy": "`python -m deployment.deploy`",
    "teardown": "`python -m deployment.teardown`",
    "up": "`pulumi up`",
}


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def default_credential(outputs: "StackOutputs | None") -> Any:
    """common.azure's credential (in GitHub Actions: a fresh OIDC token per exchange), in the stack's tenant."""
    from common.azure import azure_credential

    return azure_credential(outputs.tenant_id if outputs else "")


def require(
    outputs: "StackOutputs",
    purpose: str,
    credential: Any = None,
    *,
    transport: Any = None,
    now: Callable[[], dt.datetime] = _utcnow,
    sleep: Callable[[float], None] = time.sleep,
    env: Mapping[str, str] | None = None,
    foundry: bool = False,
) -> Verdict | None:
    """submit's and deploy's preflight: wait for fresh roles, then refuse with one message if a right is missing.

    `foundry`: deploy will also write the Foundry project's connections, so check that scope too.
    """
    if (os.environ if env is None else env).get(ENV_SWITCH, "").lower() in ("off", "0", "false", "no"):
        say(f"    preflight: skipped ({ENV_SWITCH}=off)")
        return None
    wait_for_roles(outputs, now=now, sleep=sleep)
    say(f"    preflight: checking your Azure permissions for {purpose}")
    verdict = evaluate(purpose, outputs, PermissionsReader(credential or default_credential(outputs), transport),
                       foundry=foundry)
    for line in verdict.warnings:
        say(f"    warning: {line}")
    for where in verdict.unchecked:
        say(f"    warning: could not check your permissions on {where}; going ahead")
    if not verdict.ok:
        raise PreflightError(message(verdict, outputs, now()))
    return verdict


# ---------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m infra.preflight",
        description="Check, without changing anything, that you may run pulumi up, submit, deploy or teardown "
                    "on this stack; names the role to ask for when a right is missing.",
    )
    add_stack_arguments(parser)
    parser.add_argument("--for", dest="purposes", action="append", choices=PURPOSES,
                        help="what to check (repeatable; default: submit, deploy and teardown)")
    parser.add_argument("--foundry-connection", action="store_true",
                        help="with --for deploy: also check that you may write connections in the stack's Foundry "
                             "project (what `deploy --foundry-connection` does)")
    parser.add_argument("--subscription", default=os.environ.get("AZURE_SUBSCRIPTION_ID"),
                        help="for `--for up` before the stack exists: the subscription (default $AZURE_SUBSCRIPTION_ID)")
    add_verbose_argument(parser)
    return parser


def main(argv: Sequence[str] | None = None, *, credential: Any = None, transport: Any = None,
         now: Callable[[], dt.datetime] = _utcnow) -> int:
    from infra.outputs import StackOutputsError, load_stack_outputs

    args = build_parser().parse_args(argv)
    purposes = args.purposes or ["submit", "deploy", "teardown"]
    try:
        outputs = load_stack_outputs(args.outputs_file, args.stack)
    except StackOutputsError:
        if purposes != ["up"] or not args.subscription:
            raise
        outputs = None  # the stack is not up yet: check the subscription
    reader = PermissionsReader(credential or default_credential(outputs), transport)
    failed = []
    for purpose in purposes:
        verdict = evaluate(purpose, outputs, reader, subscription_id=args.subscription,
                           foundry=args.foundry_connection and purpose == "deploy")
        status = "ok" if verdict.ok else "MISSING RIGHTS"
        print(f"{purpose}: {status}")
        for line in verdict.warnings:
            print(f"  warning: {line}")
        for where in verdict.unchecked:
            print(f"  not checked: {where}")
        if not verdict.ok:
            print(f"  {message(verdict, outputs, now())}")
            failed.append(purpose)
    if failed:
        raise PreflightError(f"missing rights for {', '.join(failed)} (see above).")
    return 0


if __name__ == "__main__":
    run_cli(main)
