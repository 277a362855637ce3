"""What a principal can reach in a stack: its own roles, plus the roles of every identity it can run as.

Built from what the Pulumi program registered under the mock engine (who holds which role, on which
scope; which identity each cluster runs as) and from the recorded built-in role definitions
(builtin_roles.py). A role applies at its scope and below it (ARM ids are case-insensitive).
Ways to act as another identity, repeated until nothing new is reached:

- submit a job (`workspaces/jobs/write`) to a cluster that runs as the identity: a job takes tokens
  as the cluster's identity (`ManagedIdentityCredential(client_id=DEFAULT_IDENTITY_CLIENT_ID)`,
  Microsoft's identity-based service authentication doc);
- attach the identity to something that runs code (`userAssignedIdentities/assign/action` on it, plus
  `onlineEndpoints/write` or `computes/write` in the workspace): a deployment or a new cluster;
- add a federated credential to it (`userAssignedIdentities/federatedIdentityCredentials/write`) and
  sign in as it from an issuer of one's choosing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from builtin_roles import DEFINITIONS
from pulumi_harness import Run
from test_program import ROLE_DEF

from infra.permissions import Permission

JOBS_WRITE = "Microsoft.MachineLearningServices/workspaces/jobs/write"
ENDPOINTS_WRITE = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/write"
COMPUTES_WRITE = "Microsoft.MachineLearningServices/workspaces/computes/write"
ASSIGN = "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action"
FEDERATE = "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/write"


@dataclass(frozen=True)
class Holding:
    """One role held on one scope, and through whom (an identity's logical name)."""

    via: str
    role: str
    scope: str

    @property
    def permission(self) -> Permission:
        return DEFINITIONS[self.role]


def covers(scope: str, resource_id: str) -> bool:
    """Does a role assigned at `scope` apply to `resource_id` (the scope itself or anything under it)?"""
    scope, resource_id = scope.lower().rstrip("/"), resource_id.lower()
    return resource_id == scope or resource_id.startswith(scope + "/")


@dataclass
class Reach:
    holdings: list[Holding]
    runs_as: dict[str, str] = field(default_factory=dict)
    """identity logical name -> how the principal gets to act as it"""

    def granting(self, action: str, resource_id: str, *, data: bool = False) -> list[Holding]:
        """The holdings that allow `action` on `resource_id`."""
        return [h for h in self.holdings if covers(h.scope, resource_id) and h.permission.allows(action, data=data)]

    def can(self, action: str, resource_id: str, *, data: bool = False) -> bool:
        return bool(self.granting(action, resource_id, data=data))


def holdings(run: Run) -> dict[str, list[Holding]]:
    """Identity logical name -> the roles the program assigned it."""
    by_principal = {res.outputs["principalId"]: res.name for res in run.of_type("UserAssignedIdentity")}
    found: dict[str, list[Holding]] = {name: [] for name in by_principal.values()}
    for ra in run.of_type("RoleAssignment"):
        name = by_principal[ra.inputs["principalId"]]
        found[name].append(Holding(name, ROLE_DEF.match(ra.inputs["roleDefinitionId"])["guid"], ra.inputs["scope"]))
    return found


def cluster_identities(run: Run) -> dict[str, str]:
    """Identity resource id -> the workspace whose cluster runs as it."""
    workspaces = {res.outputs["name"]: res.id for res in run.of_type("machinelearningservices:Workspace")}
    return {uai: workspaces[compute.inputs["workspaceName"]] for compute in run.of_type("Compute")
            for uai in compute.inputs.get("identity", {}).get("userAssignedIdentities", [])}


def _path_to(reach: Reach, identity_id: str, clusters: dict[str, str], workspaces: list[str]) -> str | None:
    if identity_id in clusters and reach.can(JOBS_WRITE, clusters[identity_id]):
        return "submits a job to the cluster that runs as it"
    if reach.can(ASSIGN, identity_id) and any(reach.can(ENDPOINTS_WRITE, ws) or reach.can(COMPUTES_WRITE, ws)
                                              for ws in workspaces):
        return "attaches it to an endpoint or cluster it creates"
    if reach.can(FEDERATE, identity_id):
        return "adds a federated credential to it and signs in as it"
    return None


def reach(run: Run, start: str, extra: list[Holding] = ()) -> Reach:
    """Everything `start` (an identity's logical name, or a person holding `extra`) can reach, to a fixed point."""
    assigned = holdings(run)
    identities = {res.name: res.id for res in run.of_type("UserAssignedIdentity")}
    clusters = cluster_identities(run)
    workspaces = [res.id for res in run.of_type("machinelearningservices:Workspace")]
    result = Reach([*assigned.get(start, []), *extra], {start: "itself"})
    changed = True
    while changed:
        changed = False
        for name, identity_id in identities.items():
            if name in result.runs_as:
                continue
            how = _path_to(result, identity_id, clusters, workspaces)
            if how:
                result.runs_as[name] = how
                result.holdings += assigned[name]
                changed = True
    return result
