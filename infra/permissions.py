"""ARM's answer to "what may the caller do here?", and how to read it.

`GET {scope}/providers/Microsoft.Authorization/permissions?api-version=2022-04-01` returns one
permission block per role that applies to the caller at the scope (assigned to the caller, to a
group it is in, or inherited from above; built-in or custom):
`{"value": [{"actions", "notActions", "dataActions", "notDataActions"}], "nextLink"}`.
An action is allowed when some block's actions cover it and that same block's notActions do not.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

API_VERSION = "2022-04-01"
ARM_ENDPOINT = "https://management.azure.com"
ARM_SCOPE = "https://management.azure.com/.default"


@dataclass(frozen=True)
class Permission:
    """One block of ARM's answer: what one role definition allows at the scope."""

    actions: tuple[str, ...] = ()
    not_actions: tuple[str, ...] = ()
    data_actions: tuple[str, ...] = ()
    not_data_actions: tuple[str, ...] = ()

    @classmethod
    def from_arm(cls, item: Mapping[str, Any]) -> "Permission":
        return cls(*(tuple(item.get(key) or ()) for key in ("actions", "notActions", "dataActions", "notDataActions")))

    def allows(self, action: str, *, data: bool = False) -> bool:
        granted, denied = (self.data_actions, self.not_data_actions) if data else (self.actions, self.not_actions)
        return any(matches(p, action) for p in granted) and not any(matches(p, action) for p in denied)


@functools.lru_cache(maxsize=512)
def _regex(pattern: str) -> re.Pattern[str]:
    # `*` is any text; `/*/` also matches a single `/`: AzureML Data Scientist's `workspaces/*/delete`
    # covers `workspaces/delete` (which is why that role lists it in notActions), and Managed Identity
    # Operator's `userAssignedIdentities/*/assign/action` is how it grants `userAssignedIdentities/assign/action`.
    parts = [re.escape(part) for part in pattern.split("/*/")]
    return re.compile("/(?:.*/)?".join(part.replace(r"\*", ".*") for part in parts), re.IGNORECASE)


def matches(pattern: str, action: str) -> bool:
    """Does an ARM action pattern (case-insensitive, with `*`) cover `action`?"""
    return _regex(pattern).fullmatch(action) is not None


def allows(permissions: Iterable[Permission], action: str, *, data: bool = False) -> bool:
    """Any block grants it: notActions subtract within their own block only, as ARM evaluates them."""
    return any(block.allows(action, data=data) for block in permissions)


class PermissionsReader:
    """GETs the caller's effective permissions through azure-core's ARM pipeline (its retries and auth)."""

    def __init__(self, credential: Any, transport: Any = None) -> None:
        from azure.core.pipeline import policies
        from azure.mgmt.core import ARMPipelineClient
        from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy, ARMHttpLoggingPolicy

        from common.azure import RETRY

        self._client = ARMPipelineClient(
            ARM_ENDPOINT,
            policies=[
                policies.RequestIdPolicy(),
                policies.HeadersPolicy({"Accept": "application/json"}),
                policies.UserAgentPolicy(sdk_moniker="finetune-phi-preflight"),
                policies.RetryPolicy(**RETRY),
                ARMChallengeAuthenticationPolicy(credential, ARM_SCOPE),
                ARMHttpLoggingPolicy(),
            ],
            transport=transport,
        )

    def read(self, scope: str) -> list[Permission]:
        from azure.core.exceptions import HttpResponseError, map_error
        from azure.core.rest import HttpRequest

        url: str | None = f"{ARM_ENDPOINT}{scope}/providers/Microsoft.Authorization/permissions?api-version={API_VERSION}"
        found: list[Permission] = []
        while url:
            response = self._client.send_request(HttpRequest("GET", url))
            if response.status_code != 200:
                map_error(response.status_code, response, {})
                raise HttpResponseError(response=response)
            page = response.json()
            found += [Permission.from_arm(item) for item in page.get("value") or ()]
            url = page.get("nextLink")
        return found
