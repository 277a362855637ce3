"""Run the Pulumi program the way `pulumi preview` / `pulumi up` do, against recording mocks.

The Python language host runs `runpy.run_path("infra/", run_name="__main__")` with the stack config
in the PULUMI_CONFIG environment variable (a JSON object of "namespace:key" -> string, the
project's Pulumi.yaml defaults merged in). `run_program` does the same under Pulumi's public testing
API only (`pulumi.runtime.set_mocks`, `@pulumi.runtime.test`), inside a fresh `contextvars.Context`
so no runtime state leaks between tests, and reads the outputs `infra.program.main()` returns.

The mocks answer like Azure would: auto-names resources that get no name (Pulumi's random suffix),
build ARM ids, give the identity principal and client ids, and turn the compute's list of identities
into a map. In preview they leave what Azure computes at create time (ids, principal ids) unknown.
"""
from __future__ import annotations

import asyncio
import contextvars
import json
import runpy
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

PROJECT = "finetune-phi"
SUBSCRIPTION = "00000000-1111-2222-3333-444444444444"
TENANT = "99999999-8888-7777-6666-555555555555"
CLIENT_CONFIG = {
    "clientId": "aaaaaaaa-0000-0000-0000-000000000001",
    "objectId": "aaaaaaaa-0000-0000-0000-000000000002",
    "subscriptionId": SUBSCRIPTION,
    "tenantId": TENANT,
}

# type token -> (name input, ARM provider/type path)
ARM: dict[str, tuple[str, str]] = {
    "azure-native:resources:ResourceGroup": ("resourceGroupName", ""),
    "azure-native:storage:StorageAccount": ("accountName", "Microsoft.Storage/storageAccounts"),
    "azure-native:keyvault:Vault": ("vaultName", "Microsoft.KeyVault/vaults"),
    "azure-native:operationalinsights:Workspace": ("workspaceName", "Microsoft.OperationalInsights/workspaces"),
    "azure-native:applicationinsights:Component": ("resourceName", "Microsoft.Insights/components"),
    "azure-native:containerregistry:Registry": ("registryName", "Microsoft.ContainerRegistry/registries"),
    "azure-native:managedidentity:UserAssignedIdentity": (
        "resourceName", "Microsoft.ManagedIdentity/userAssignedIdentities"),
    "azure-native:machinelearningservices:Workspace": (
        "workspaceName", "Microsoft.MachineLearningServices/workspaces"),
    "azure-native:machinelearningservices:Compute": ("computeName", "computes"),
    "azure-native:authorization:RoleAssignment": (
        "roleAssignmentName", "Microsoft.Authorization/roleAssignments"),
    "azure-native:consumption:Budget": ("budgetName", "Microsoft.Consumption/budgets"),
    "azure-native:managedidentity:FederatedIdentityCredential": (
        "federatedIdentityCredentialResourceName", "federatedIdentityCredentials"),
}
CREATED_ON = "2026-11-29T04:40:13.2553541Z"
"""What Azure answers as a new role assignment's createdOn (seven fractional digits, UTC)."""


@dataclass
class Registered:
    type: str
    name: str
    inputs: dict[str, Any]
    id: str
    outputs: dict[str, Any]


class AzureMocks(pulumi.runtime.Mocks):
    """Records every resource and invoke in order; answers roughly as Azure Resource Manager would."""

    def __init__(self, preview: bool) -> None:
        self.preview = preview
        self.resources: list[Registered] = []
        self.calls: list[tuple[str, dict]] = []

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.calls.append((args.token, dict(args.args)))
        if args.token == "azure-native:authorization:getClientConfig":
            return dict(CLIENT_CONFIG)
        raise AssertionError(f"unexpected invoke {args.token}")  # an unmocked invoke would return {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        if args.typ not in ARM:
            raise AssertionError(f"unexpected resource type {args.typ}")
        name_key, arm_type = ARM[args.typ]
        inputs = dict(args.inputs)
        outputs = dict(inputs)
        # Pulumi auto-naming (done in the provider's check step, so known in preview too).
        name = inputs.get(name_key) or f"{args.name}{secrets.token_hex(4)}"
        outputs["name"] = name
        arm_id = self._arm_id(args.typ, name, inputs, arm_type)
        if args.typ == "azure-native:machinelearningservices:Compute" and "identity" in inputs:
            ids = inputs["identity"].get("userAssignedIdentities") or []
            outputs["identity"] = {**inputs["identity"], "userAssignedIdentities": {
                i: {"principalId": str(uuid.uuid4()), "clientId": str(uuid.uuid4())} for i in ids if isinstance(i, str)
            }}
        if self.preview:  # ids and identities exist only once Azure has created the resource
            self.resources.append(Registered(args.typ, args.name, inputs, "", outputs))
            return "", outputs
        if args.typ == "azure-native:managedidentity:UserAssignedIdentity":
            outputs.update(principalId=str(uuid.uuid4()), clientId=str(uuid.uuid4()), tenantId=TENANT)
        if args.typ == "azure-native:authorization:RoleAssignment":
            outputs["createdOn"] = CREATED_ON
        outputs["id"] = arm_id
        self.resources.append(Registered(args.typ, args.name, inputs, arm_id, outputs))
        return arm_id, outputs

    def _arm_id(self, typ: str, name: str, inputs: dict, arm_type: str) -> str:
        if typ == "azure-native:resources:ResourceGroup":
            return f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{name}"
        if typ == "azure-native:authorization:RoleAssignment":
            return f"{inputs['scope']}/providers/{arm_type}/{name}"
        if typ == "azure-native:consumption:Budget":
            return f"{inputs['scope']}/providers/{arm_type}/{name}"
        rg = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{inputs['resourceGroupName']}"
        if typ == "azure-native:machinelearningservices:Compute":
            return f"{rg}/providers/Microsoft.MachineLearningServices/workspaces/{inputs['workspaceName']}/computes/{name}"
        if typ == "azure-native:managedidentity:FederatedIdentityCredential":
            uai = f"{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{inputs['resourceName']}"
            return f"{uai}/{arm_type}/{name}"
        return f"{rg}/providers/{arm_type}/{name}"


@dataclass
class Run:
    """What one program run registered and exported."""

    mocks: AzureMocks
    outputs: dict[str, Any]
    unknown_outputs: set[str] = field(default_factory=set)
    secret_outputs: set[str] = field(default_factory=set)

    @property
    def resources(self) -> list[Registered]:
        return self.mocks.resources

    def of_type(self, suffix: str) -> list[Registered]:
        return [r for r in self.resources if r.type.endswith(suffix)]

    def one(self, suffix: str) -> Registered:
        found = self.of_type(suffix)
        assert len(found) == 1, f"expected one {suffix}, got {[r.name for r in found]}"
        return found[0]

    def named(self, logical_name: str) -> Registered:
        found = [r for r in self.resources if r.name == logical_name]
        assert len(found) == 1, f"no single resource named {logical_name!r}"
        return found[0]


def engine_config(repo_root: Path, overrides: dict[str, Any] | None, location: str | None) -> dict[str, str]:
    """The PULUMI_CONFIG the engine builds: Pulumi.yaml defaults plus stack values, all as strings."""
    project = yaml.safe_load((repo_root / "Pulumi.yaml").read_text())
    values = {key: spec["default"] for key, spec in project["config"].items() if "default" in spec}
    values.update(overrides or {})
    config = {f"{PROJECT}:{key}": _as_engine_string(value) for key, value in values.items()}
    if location is not None:
        config["azure-native:location"] = location
    return config


def _as_engine_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def run_program(
    repo_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    preview: bool = False,
    stack: str = "dev",
    config: dict[str, Any] | None = None,
    location: str | None = "eastus",
    raw_config: dict[str, str] | None = None,
    mocks: AzureMocks | None = None,
) -> Run:
    """Run infra/ as the language host does, under mocks; `raw_config` replaces PULUMI_CONFIG entirely."""
    env = raw_config if raw_config is not None else engine_config(repo_root, config, location)
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps(env))
    mocks = mocks or AzureMocks(preview)
    resolved: dict[str, tuple[bool, bool, Any]] = {}

    @pulumi.runtime.test
    def program() -> Any:
        exported = runpy.run_path(str(repo_root / "infra"), run_name="__main__")["outputs"]  # main()'s return

        async def settle() -> None:
            for name, value in exported.items():
                resolved[name] = await _resolve(value)

        return settle()

    def in_fresh_context() -> None:
        # Pulumi's mocks create futures on the current event loop; a library that ran
        # asyncio.run() earlier in the session (promptflow does) leaves the thread without one.
        asyncio.set_event_loop(asyncio.new_event_loop())
        pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=preview)
        program()

    contextvars.Context().run(in_fresh_context)
    return Run(
        mocks,
        outputs={name: value for name, (known, _, value) in resolved.items() if known},
        unknown_outputs={name for name, (known, _, _) in resolved.items() if not known},
        secret_outputs={name for name, (_, secret, _) in resolved.items() if secret},
    )


async def _resolve(value: Any) -> tuple[bool, bool, Any]:
    output = pulumi.Output.from_input(value)
    known = await output.is_known()
    return known, await output.is_secret(), (await output.future() if known else None)
