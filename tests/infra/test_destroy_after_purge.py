"""The fact docs/INFRA.md relies on for `pulumi destroy` after `teardown --purge-workspace`.

pulumi-azure-native's Delete treats a 404 as already deleted, and since v3.11.0 its Read (refresh)
drops a resource from the state only on a 404 whose ARM error code is on an allowlist (NotFound,
ResourceNotFound, ParentResourceNotFound, ...; see pulumi/pulumi-azure-native#4416 and #4841).
A purged workspace answers DELETE with 204 ("resource does not exist", Workspaces - Delete), and its
compute with ARM's ParentResourceNotFound. That holds for the provider version pinned here only
if it is 3.11 or newer: this test reads the installed package's metadata and the lock file.
"""
from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path


def _tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_the_pinned_provider_has_the_not_found_handling(repo_root: Path) -> None:
    assert _tuple(version("pulumi_azure_native")) >= (3, 11, 0)
    pinned = re.search(r"^pulumi[-_]azure[-_]native==(\S+)$", (repo_root / "requirements.lock").read_text(), re.M)
    assert pinned and _tuple(pinned.group(1)) >= (3, 11, 0)
    assert pinned.group(1) == version("pulumi_azure_native")
