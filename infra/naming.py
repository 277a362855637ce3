"""Resource names that meet Azure's rules and never collide with a soft-deleted earlier stack.

The resource group is auto-named by Pulumi (a random suffix kept in the stack state). Every other
name ends with `stack_token(...)`, a hash of the project, the stack and that resource group name,
so names are stable for the life of a stack and fresh for every new stack, including one re-created
under the same name after `pulumi destroy` (when the old vault, workspace and Log Analytics names
are still held by soft delete).
"""
from __future__ import annotations

import hashlib
import re

TOKEN_LENGTH = 8

RULES: dict[str, tuple[str, str]] = {
    # kind: (regex, what Azure allows) -- checked on every name this module builds
    "storage": (r"^[a-z0-9]{3,24}$", "3-24 lowercase letters and digits, globally unique"),
    "key_vault": (r"^(?!.*--)[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$", "3-24 letters, digits, single hyphens"),
    "registry": (r"^[a-zA-Z0-9]{5,50}$", "5-50 letters and digits, globally unique"),
    "log_analytics": (r"^[a-zA-Z0-9][a-zA-Z0-9-]{2,61}[a-zA-Z0-9]$", "4-63 letters, digits, hyphens"),
    "app_insights": (r"^[^%&\\?/]{1,255}$", "1-255 characters without % & \\ ? /"),
    "identity": (r"^[a-zA-Z0-9][a-zA-Z0-9_-]{2,127}$", "3-128 letters, digits, hyphens, underscores"),
    "workspace": (r"^[a-zA-Z0-9][a-zA-Z0-9_-]{2,32}$", "3-33 letters, digits, hyphens, underscores"),
    "compute": (r"^[a-zA-Z][a-zA-Z0-9-]{1,15}$", "2-16 letters, digits, hyphens, starting with a letter"),
    "budget": (r"^[a-zA-Z0-9_-]{1,63}$", "1-63 letters, digits, hyphens, underscores"),
    "resource_group_logical": (r"^[a-zA-Z0-9._()-]{1,80}$", "room for Pulumi's 8-character suffix within 90"),
}

_GPU_MODELS = ("gb200", "h200", "h100", "a100", "mi300x", "v100", "p100", "p40", "k80", "a10", "t4")


def check(kind: str, name: str) -> str:
    """Return `name`, or raise ValueError if it breaks the Azure rule for `kind`."""
    pattern, rule = RULES[kind]
    if not re.match(pattern, name):
        raise ValueError(f"{kind} name {name!r} breaks Azure's rule: {rule}")
    return name


def _hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def stack_token(project: str, stack: str, resource_group_name: str) -> str:
    """8 lowercase hex characters: stable for a stack, new whenever its resource group is re-created."""
    return _hash(project, stack, resource_group_name)[:TOKEN_LENGTH]


def _slug(stack: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", stack.lower()).strip("-")[:40] or "stack"


def resource_group_logical_name(prefix: str, stack: str) -> str:
    """Logical name of the resource group; Pulumi appends a random suffix to form the Azure name."""
    return check("resource_group_logical", f"rg-{prefix}-{_slug(stack)}-")


def budget_name(prefix: str, stack: str) -> str:
    """Budgets live in the resource group's scope, so the stack name is unique enough."""
    return check("budget", f"budget-{prefix}-{_slug(stack)}")


NAME_KINDS = (
    "storage", "key_vault", "registry", "log_analytics", "app_insights", "identity", "endpoint_identity",
    "github_identity", "workspace", "foundry_hub", "foundry_project",
)


def names(prefix: str, token: str) -> dict[str, str]:
    """Names of the workspace and its dependencies for one stack."""
    return {
        "storage": check("storage", f"st{prefix}{token}"),
        "key_vault": check("key_vault", f"kv-{prefix}-{token}"),
        "registry": check("registry", f"cr{prefix}{token}"),
        "log_analytics": check("log_analytics", f"log-{prefix}-{token}"),
        "app_insights": check("app_insights", f"appi-{prefix}-{token}"),
        "identity": check("identity", f"id-{prefix}-{token}"),
        "endpoint_identity": check("identity", f"id-{prefix}-endpoint-{token}"),
        "github_identity": check("identity", f"id-{prefix}-github-{token}"),
        "workspace": check("workspace", f"mlw-{prefix}-{token}"),
        "foundry_hub": check("workspace", f"hub-{prefix}-{token}"),
        "foundry_project": check("workspace", f"proj-{prefix}-{token}"),
    }


def compute_name(vm_size: str, priority: str) -> str:
    """`gpu-a100-1a2b` style: readable, and new for every size or priority.

    Azure ML may keep the old VM size when an existing cluster's size changes, and the priority
    cannot change in place, so a change of either must create a new cluster, which a new name does.
    """
    size = vm_size.lower().removeprefix("standard_")
    model = next((m for m in _GPU_MODELS if m in size.replace("_", "")), None)
    family = re.sub(r"[^a-z0-9]", "", size.split("_")[0])
    if model:
        stem = f"gpu-{model}"
    elif family.startswith("n"):
        stem = f"gpu-{family[:7]}"
    else:
        stem = f"cpu-{family[:7]}"
    return check("compute", f"{stem}-{_hash(vm_size, priority)[:4]}")
