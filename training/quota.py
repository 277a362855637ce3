"""Will the cluster's VM size fit the subscription's quota? Checked before anything is submitted.

GPU families start at 0 vCPUs in a new subscription, and `pulumi up` succeeds anyway (the
cluster scales from 0), so without this check the first sign would be a job queued forever.
VM facts (vCPUs, GPUs, quota family) come from `compute.list_sizes()`; the table below is the
fallback for dry runs and for sizes the service does not list.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from common.cli import UserError, say
from common.vm_sizes import VmSize, family_display, known_vm

QUOTA_HELP = (
    "Request it in Azure ML studio (Quota > {family} > Request quota) or the Azure portal "
    "(Quotas > Machine learning, region {location}); GPU requests are usually answered within a day."
)


def vm_info(vm_size: str, sizes: Iterable[Any] | None = None) -> VmSize:
    """From the service's VM size list when given, else the table; unknown sizes: a clear error."""
    for size in sizes or ():
        if str(getattr(size, "name", "")).lower() == vm_size.lower():
            reported = dict(
                family=str(_field(size, "family") or ""),
                vcpus=int(_field(size, "v_cp_us", "vCPUs") or 0),
                gpus=int(_field(size, "gpus") or 0),
            )
            known = known_vm(vm_size)  # keeps the table's price and notes; the service's facts win
            return dataclasses.replace(known, **reported) if known else VmSize(name=size.name, **reported)
    info = known_vm(vm_size)
    if info is None:
        where = "the workspace's region" if sizes is not None else "this tool's table"
        raise UserError(
            f"VM size {vm_size} is not offered in {where}. Pick another size in the stack's config "
            "(for example Standard_NC24ads_A100_v4) and run `pulumi up`."
        )
    return info


def offline_vm(vm_size: str) -> VmSize:
    """The size from the offline table (dry runs); an unknown size is assumed to have one GPU, with a note."""
    vm = known_vm(vm_size)
    if vm is None:
        say(f"    note: {vm_size} is not in the offline size table; assuming 1 GPU per node")
        return VmSize(name=vm_size, family="", vcpus=0, gpus=1)
    return vm


def subscription_read(read: Callable[[], Iterable[Any]], action: str, fallback: str) -> list[Any] | None:
    """A subscription-level read (VM sizes, usages). Someone whose roles are scoped to the resource group
    gets 403 there yet can run jobs: warn and return None, so the caller falls back, instead of failing."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    from common.azure import azure_errors

    with azure_errors(action):
        try:
            return list(read())
        except HttpResponseError as err:
            if err.status_code != 403 or isinstance(err, ClientAuthenticationError):
                raise
    say(f"    warning: {action}: permission denied (403); that is a subscription-level read and your roles may be "
        f"scoped to the resource group. {fallback[0].upper() + fallback[1:]}.")
    return None


def _field(obj: Any, *keys: str) -> Any:
    """First non-None of several spellings: azure-ai-ml 1.35 copies the REST model's camelCase dict
    onto its entities, so `Usage.current_value` stays None next to `currentValue` (and VmSize
    has `vCPUs`, not `v_cp_us`; usage names carry `localizedValue`)."""
    for key in keys:
        value = obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
        if value is not None:
            return value
    return None


def _usage_name(usage: Any) -> tuple[str, str]:
    name = _field(usage, "name")
    return str(_field(name, "value") or ""), str(_field(name, "localized_value", "localizedValue") or "")


def _subscription_level(usage: Any) -> bool:
    """Usages also come per workspace and per cluster; the limit lives on the subscription-level entry."""
    text = f"{_field(usage, 'type') or ''} {_field(usage, 'id') or ''}".lower()
    return "workspaces" not in text


@dataclass(frozen=True)
class QuotaLine:
    label: str
    used: int
    limit: int


def _find(usages: list[Any], predicate: Any) -> QuotaLine | None:
    for usage in usages:
        value, localized = _usage_name(usage)
        if _subscription_level(usage) and predicate(value, localized):
            return QuotaLine(
                label=localized or value,
                used=int(_field(usage, "current_value", "currentValue") or 0),
                limit=int(_field(usage, "limit") or 0),
            )
    return None


def _is_low_priority_total(value: str, localized: str) -> bool:
    return value.lower() == "totallowprioritycores" or "total cluster lowpriority regional vcpus" in localized.lower()


def check_quota(usages: Iterable[Any], vm: VmSize, nodes: int, location: str, *, low_priority: bool = False) -> None:
    """Fail when the family's (or the region's) dedicated vCPU limit can never fit the job; warn when it must queue.

    A low-priority cluster draws on a separate, family-independent regional quota
    ("Total Cluster LowPriority Regional vCPUs") instead of the dedicated ones.
    """
    usages = list(usages)
    needed = vm.vcpus * nodes
    shape = f"{nodes} node(s) x {vm.vcpus} vCPUs of {vm.name}"
    if low_priority:
        pool = _find(usages, _is_low_priority_total)
        if pool is None:
            say(
                f"    warning: no low-priority quota entry in {location}; the job may wait for capacity. "
                "Check Quota in Azure ML studio."
            )
            return
        _check_lines([pool], needed, shape, location)
        say(f"    quota ok: '{pool.label}' {pool.used}/{pool.limit} vCPUs used; job needs {needed} (low priority)")
        return
    family = _find(
        usages,
        # the service names the entry by family id; accept its display name too
        lambda value, localized: vm.family.lower() in (value.lower(), localized.lower())
        or localized.lower() == family_display(vm.family).lower(),
    )
    total = _find(usages, lambda value, localized: "total cluster dedicated regional vcpus" in localized.lower())
    if family is None:
        say(
            f"    warning: no quota entry for {family_display(vm.family)} in {location}; "
            "the job may wait for capacity. Check Quota in Azure ML studio."
        )
    _check_lines([family, total], needed, shape, location)
    if family is not None:
        say(f"    quota ok: '{family.label}' {family.used}/{family.limit} vCPUs used; job needs {needed}")


def _check_lines(lines: list[QuotaLine | None], needed: int, shape: str, location: str) -> None:
    for line in lines:
        if line is None:
            continue
        if line.limit < needed:
            raise UserError(
                f"not enough quota: '{line.label}' in {location} allows {line.limit} vCPUs "
                f"({line.used} in use) but this job needs {needed} ({shape}). "
                + QUOTA_HELP.format(family=line.label, location=location)
                + f" Ask for at least {needed} vCPUs, then run the same command again."
            )
        if line.limit - line.used < needed:
            say(
                f"    note: '{line.label}' has {line.limit - line.used} of {line.limit} vCPUs free; "
                f"the job will queue until {needed} are free."
            )
