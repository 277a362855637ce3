"""python -m deployment.teardown: stop what bills per hour; with --purge-workspace, free the workspace name.

target azure: delete the endpoints this tool created (tag created-by=finetune-phi; every endpoint
with --all; with --expired only ours whose DeleteAfter tag from `deploy --expires-in` has passed,
saying what that saves per hour), then, with --purge-workspace, permanently delete the workspace so `pulumi destroy`
finishes cleanly and no soft-deleted name is left behind. Asks first unless --yes. Safe to run
twice: nothing left -> says so, exit 0. The local `phi_endpoint` connection is deleted when it
points at an endpoint that was deleted. target local: stop the local server.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

from common.cli import ArgumentParser, UserError, first_line, run_cli, say, step
from deployment.definitions import CREATED_BY
from infra.outputs import add_stack_arguments

STILL_BILLS = (
    "Still billing until `pulumi destroy`: the workspace's storage account, container registry, key vault "
    "and Log Analytics / Application Insights (small, usage-based). The training cluster scales to 0 nodes "
    "and costs nothing while idle."
)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m deployment.teardown",
        description="Delete what deploy created so nothing bills per hour (and, with --purge-workspace, the workspace).",
    )
    add_stack_arguments(parser)
    parser.add_argument("--target", choices=("azure", "local"), default="azure", help="what to tear down (default: azure)")
    parser.add_argument("--all", action="store_true", help="delete every online endpoint in the workspace, not only ours")
    parser.add_argument(
        "--purge-workspace",
        action="store_true",
        help="also permanently delete the workspace (no 14-day soft delete), before `pulumi destroy`",
    )
    parser.add_argument(
        "--expired",
        action="store_true",
        help="delete only this tool's endpoints past the expiry `deploy --expires-in` gave them",
    )
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation (needed without a terminal)")
    return parser


@dataclass
class TeardownReport:
    deleted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    """Endpoints left in place because this tool did not create them (use --all)."""
    not_expired: list[str] = field(default_factory=list)
    """--expired: our endpoints left in place (no expiry, or not reached yet)."""
    ours_in_kept: dict[str, list[str]] = field(default_factory=dict)
    """Deployments this tool created inside kept endpoints (`deploy --endpoint-name` on someone's endpoint)."""
    hourly_usd: dict[str, float | None] = field(default_factory=dict)
    """Per endpoint to delete: the list price per hour of its deployments (None: a size without a price)."""
    workspace_purged: bool = False
    workspace_missing: bool = False
    connection_deleted: bool = False
    foundry_purged: list[str] = field(default_factory=list)

    def saved_per_hour(self) -> tuple[float, list[str]]:
        """Dollars per hour no longer billed, and the deleted endpoints whose price is unknown."""
        known = [self.hourly_usd.get(name) for name in self.deleted]
        return sum(v for v in known if v), [n for n in self.deleted if self.hourly_usd.get(n) is None]


def _is_ours(resource: Any) -> bool:
    """Endpoints and deployments that deploy created carry the created-by tag."""
    return all((resource.tags or {}).get(key) == value for key, value in CREATED_BY.items())


def _our_deployments(ml_client: Any, endpoint_names: Sequence[str]) -> dict[str, list[str]]:
    """Our deployments inside endpoints we did not create. Not deleted: their traffic is someone else's to move."""
    found: dict[str, list[str]] = {}
    for name in endpoint_names:
        try:
            deployments = list(ml_client.online_deployments.list(endpoint_name=name))
        except Exception as err:  # only a report: never stop the teardown for it
            say(f"    could not list the deployments of endpoint {name}: {first_line(err)}")
            continue
        ours = [d.name for d in deployments if _is_ours(d)]
        if ours:
            found[name] = ours
    return found


def _hourly_price(ml_client: Any, endpoint: str) -> float | None:
    """What an endpoint's deployments bill per hour (list prices of common/vm_sizes.py); None if unknown."""
    from common.vm_sizes import known_vm

    try:
        deployments = list(ml_client.online_deployments.list(endpoint_name=endpoint))
    except Exception as err:
        say(f"    could not list the deployments of endpoint {endpoint}: {first_line(err)}")
        return None
    total = 0.0
    for deployment in deployments:
        size = known_vm(str(deployment.instance_type or ""))
        if size is None or size.usd_per_hour is None:
            return None
        total += size.usd_per_hour * int(deployment.instance_count or 1)
    return total


def _endpoint_name_of(url: str) -> str | None:
    host = urlparse(url or "").hostname or ""
    return host.split(".")[0] if host.endswith(".inference.ml.azure.com") else None


def _default_connection_cleanup(deleted: list[str]) -> bool:
    """Delete the local phi_endpoint connection when it points at one of the deleted endpoints."""
    from deployment.connection import delete_phi_connection, read_phi_connection

    configs = read_phi_connection()
    if not configs or _endpoint_name_of(configs.get("endpoint", "")) not in deleted:
        return False
    return delete_phi_connection()


# -- the steps -------------------------------------------------------------------------------------


def _list_endpoints(ml_client: Any, workspace_name: str, report: TeardownReport) -> list[Any]:
    from azure.core.exceptions import ResourceNotFoundError

    from common.azure import azure_errors

    with azure_errors(f"listing the endpoints of workspace {workspace_name}"):
        try:
            return list(ml_client.online_endpoints.list())
        except ResourceNotFoundError:
            report.workspace_missing = True
            say(f"workspace {workspace_name} does not exist (already deleted or purged): no endpoint to delete")
            return []


def _select(endpoints: list[Any], report: TeardownReport, *, all_endpoints: bool, expired: bool,
            now: datetime) -> list[str]:
    """The endpoints to delete: ours (every one with --all; with --expired, ours past their DeleteAfter)."""
    from deployment.expiry import is_expired

    ours = [e for e in endpoints if all_endpoints or _is_ours(e)]
    report.kept = [e.name for e in endpoints if e not in ours]
    if not expired:
        return [e.name for e in ours]
    report.not_expired = [e.name for e in ours if not is_expired(e.tags, now)]
    return [e.name for e in ours if is_expired(e.tags, now)]


def _plan(targets: list[str], report: TeardownReport, workspace_name: str, purging: bool,
          foundry_workspaces: Sequence[str]) -> str:
    lines = []
    for name in targets:
        price = report.hourly_usd.get(name)
        lines.append(f"endpoint {name} (and its deployments" + (f", about ${price:.2f}/h)" if price else ")"))
    if purging:
        lines += [f"Foundry workspace {name}, PERMANENTLY" for name in foundry_workspaces]
        lines.append(f"workspace {workspace_name}, PERMANENTLY (its models, jobs, environments and data assets)")
    return "This deletes:\n  - " + "\n  - ".join(lines)


def _delete_endpoints(ml_client: Any, targets: list[str], report: TeardownReport, poll_interval: float) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    from common.azure import wait

    for name in targets:
        with step(f"delete endpoint {name} (a few minutes)"):
            try:
                wait(ml_client.online_endpoints.begin_delete(name=name), f"deleting endpoint {name}", interval=poll_interval)
                report.deleted.append(name)
            except ResourceNotFoundError:
                report.deleted.append(name)
            except Exception as err:
                say(f"    could not delete endpoint {name}: {first_line(err)}")
                report.failed.append(name)


def _clean_connection(cleanup: Callable[[list[str]], bool], report: TeardownReport) -> None:
    if not report.deleted:
        return
    try:
        report.connection_deleted = cleanup(report.deleted)
    except UserError as err:  # a local Prompt flow problem must not stop the purge or hide the report
        say(f"warning: the endpoints are deleted, but {err} "
            "Delete the stale connection with `python -m deployment.connection delete`.")


def _purge(ml_client: Any, workspace_name: str, foundry_workspaces: Sequence[str], report: TeardownReport,
           poll_interval: float) -> None:
    """The Foundry project before its hub, both before the workspace: each is a workspace that would
    otherwise sit soft-deleted for 14 days holding its name."""
    from azure.core.exceptions import ResourceNotFoundError

    from common.azure import azure_errors
    from common.azure import wait

    if report.failed:
        raise UserError(
            f"could not delete endpoint(s) {', '.join(report.failed)}, so the workspace was not purged. "
            "Run the teardown again; if it keeps failing, delete them in Azure ML studio."
        )
    for name in [*foundry_workspaces, workspace_name]:
        with step(f"permanently delete workspace {name} (several minutes)"), azure_errors(f"purging workspace {name}"):
            try:
                wait(ml_client.workspaces.begin_delete(name, permanently_delete=True, delete_dependent_resources=False),
                     f"deleting workspace {name}", interval=poll_interval)
            except ResourceNotFoundError:
                report.workspace_missing = report.workspace_missing or name == workspace_name
                continue
        if name == workspace_name:
            report.workspace_purged = True
        else:
            report.foundry_purged.append(name)


def teardown_azure(
    ml_client: Any,
    workspace_name: str,
    *,
    all_endpoints: bool,
    purge_workspace: bool,
    confirm: Callable[[str], bool],
    expired: bool = False,
    now: datetime | None = None,
    connection_cleanup: Callable[[list[str]], bool] | None = None,
    foundry_workspaces: Sequence[str] = (),
    poll_interval: float = 30.0,
) -> TeardownReport:
    """Delete the endpoints (ours, all, or ours past expiry) and optionally purge the workspace."""
    report = TeardownReport()
    endpoints = _list_endpoints(ml_client, workspace_name, report)
    targets = _select(endpoints, report, all_endpoints=all_endpoints, expired=expired,
                      now=now or datetime.now(timezone.utc))
    report.ours_in_kept = _our_deployments(ml_client, report.kept)
    purging = purge_workspace and not report.workspace_missing
    if not targets and not purging:
        return report
    report.hourly_usd = {name: _hourly_price(ml_client, name) for name in targets}
    if not confirm(_plan(targets, report, workspace_name, purging, foundry_workspaces)):
        raise UserError("teardown cancelled: nothing was deleted.")
    _delete_endpoints(ml_client, targets, report, poll_interval)
    _clean_connection(connection_cleanup or _default_connection_cleanup, report)
    if purging:
        _purge(ml_client, workspace_name, foundry_workspaces, report, poll_interval)
    return report


def _confirm_factory(assume_yes: bool) -> Callable[[str], bool]:
    def confirm(what: str) -> bool:
        if assume_yes:
            return True
        if not sys.stdin.isatty():
            raise UserError(
                "teardown deletes Azure resources and asks first, but there is no terminal to ask on (CI?). "
                "Re-run with --yes to confirm."
            )
        print(what, file=sys.stderr)
        return input("Continue? [y/N] ").strip().lower() in ("y", "yes")

    return confirm


def _print_report(report: TeardownReport, workspace: str, purge: bool, expired: bool = False) -> None:
    if report.deleted:
        print(f"deleted endpoints: {', '.join(report.deleted)}")
        saved, unknown = report.saved_per_hour()
        print(f"saved: about ${saved:.2f}/h (list prices East US)"
              + (f"; no price recorded for the sizes of {', '.join(unknown)}" if unknown else ""))
    elif expired and not report.workspace_missing:
        print("nothing to delete: no endpoint created by finetune-phi is past its expiry")
    elif not report.workspace_missing and not report.workspace_purged:
        print("nothing to delete: no endpoint created by finetune-phi in this workspace")
    if report.not_expired:
        print(f"not expired (left running): {', '.join(report.not_expired)}")
    if report.connection_deleted:
        print("deleted the local Prompt flow connection phi_endpoint (it pointed at a deleted endpoint)")
    if report.kept:
        print(f"left in place (not created by this tool; they bill if they have deployments): {', '.join(report.kept)} "
              "- delete them with --all")
    for endpoint, deployments in report.ours_in_kept.items():
        print(f"warning: endpoint {endpoint} was not created by this tool but holds deployment(s) {', '.join(deployments)} "
              f"that deploy created; they bill per hour until deleted: move their traffic, then "
              + "; ".join(f"`az ml online-deployment delete -e {endpoint} -n {d} --yes`" for d in deployments))
    for name in report.foundry_purged:
        print(f"Foundry workspace {name} permanently deleted")
    if report.workspace_purged:
        print(f"workspace {workspace} permanently deleted: its name is free again")
    elif purge and report.workspace_missing:
        print(f"workspace {workspace} is already gone")
    print(STILL_BILLS)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.target == "local":
        if args.all or args.purge_workspace or args.expired:
            raise UserError("--all, --expired and --purge-workspace apply to --target azure only.")
        return _local()
    if args.expired and (args.all or args.purge_workspace):
        raise UserError("--expired deletes only this tool's expired endpoints: it does not combine with "
                        "--all or --purge-workspace.")
    from common import azure as azure_edge
    from common.azure import quiet_sdk
    from infra.outputs import load_stack_outputs

    quiet_sdk()
    outputs = load_stack_outputs(args.outputs_file, args.stack)
    ml_client = azure_edge.make_ml_client(outputs)
    report = teardown_azure(
        ml_client,
        outputs.workspace_name,
        all_endpoints=args.all,
        purge_workspace=args.purge_workspace,
        expired=args.expired,
        confirm=_confirm_factory(args.yes),
        foundry_workspaces=[
            name for name in (outputs.foundry_project_name, outputs.foundry_hub_name) if name
        ],
    )
    _print_report(report, outputs.workspace_name, args.purge_workspace, args.expired)
    if report.failed:
        raise UserError(
            f"could not delete endpoint(s) {', '.join(report.failed)}; they may still bill. Run the teardown again, "
            "or delete them in Azure ML studio (Endpoints)."
        )
    return 0


def _local() -> int:
    from deployment.local import teardown_local

    stopped = teardown_local()
    print("stopped the local endpoint" if stopped else "nothing to stop: no local endpoint is running")
    try:
        from deployment.connection import delete_phi_connection, read_phi_connection

        configs = read_phi_connection()
        host = urlparse((configs or {}).get("endpoint", "")).hostname
        if host in ("127.0.0.1", "localhost") and delete_phi_connection():
            print("deleted the local Prompt flow connection phi_endpoint")
    except UserError as err:
        say(f"warning: {err}")
    return 0


if __name__ == "__main__":
    run_cli(main)
