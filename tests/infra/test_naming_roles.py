"""Name rules, cluster names, role definition ids and deterministic assignment names."""
from __future__ import annotations

import uuid

import pytest

from infra import naming, roles


def test_names_meet_azure_rules_even_with_the_longest_prefix() -> None:
    token = naming.stack_token("finetune-phi", "a-very-long-stack-name-for-production", "rg-x-1234abcd")
    for prefix in ("ab", "abcdefghij"):
        names = naming.names(prefix, token)
        assert len(names["storage"]) <= 24 and names["storage"].isalnum() and names["storage"].islower()
        assert len(names["key_vault"]) <= 24
        assert all(name.endswith(token) for name in names.values())
    assert naming.resource_group_logical_name("ftphi", "Team/Dev.1") == "rg-ftphi-team-dev-1-"


def test_stack_token_is_stable_per_resource_group_and_fresh_otherwise() -> None:
    token = naming.stack_token("finetune-phi", "dev", "rg-ftphi-dev-1a2b3c4d")
    assert token == naming.stack_token("finetune-phi", "dev", "rg-ftphi-dev-1a2b3c4d")
    assert len(token) == 8 and int(token, 16) >= 0
    assert token != naming.stack_token("finetune-phi", "dev", "rg-ftphi-dev-9f8e7d6c")
    assert token != naming.stack_token("finetune-phi", "prod", "rg-ftphi-dev-1a2b3c4d")


@pytest.mark.parametrize(
    ("size", "stem"),
    [
        ("Standard_NC24ads_A100_v4", "gpu-a100-"),
        ("Standard_NC40ads_H100_v5", "gpu-h100-"),
        ("Standard_ND96isr_H200_v5", "gpu-h200-"),
        ("Standard_NC6s_v3", "gpu-nc6s-"),
        ("Standard_NC4as_T4_v3", "gpu-t4-"),
        ("Standard_E4s_v3", "cpu-e4s-"),
    ],
)
def test_cluster_names_say_what_they_run(size: str, stem: str) -> None:
    name = naming.compute_name(size, "Dedicated")
    assert name.startswith(stem) and len(name) == len(stem) + 4
    naming.check("compute", name)
    assert naming.compute_name(size, "LowPriority") != name


@pytest.mark.parametrize(
    ("kind", "name"),
    [("storage", "St-Bad"), ("storage", "a" * 25), ("key_vault", "kv--double"), ("key_vault", "1kv"),
     ("registry", "cr-x1"), ("compute", "1gpu"), ("compute", "gpu-a100-toolong-x"), ("workspace", "-ws")],
)
def test_check_rejects_names_azure_would_refuse(kind: str, name: str) -> None:
    with pytest.raises(ValueError, match="breaks Azure's rule"):
        naming.check(kind, name)


def test_role_definition_ids_are_subscription_scoped() -> None:
    sub = "00000000-1111-2222-3333-444444444444"
    assert roles.role_definition_id(sub, roles.ACR_PULL) == (
        f"/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/7f951dda-4ed3-4680-a7ca-43fe172d538d"
    )


def test_builtin_role_guids() -> None:
    assert roles.CONTRIBUTOR == "b24988ac-6180-42a0-ab88-20f7382dd24c"
    assert roles.STORAGE_BLOB_DATA_READER == "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
    assert roles.ACR_PULL == "7f951dda-4ed3-4680-a7ca-43fe172d538d"
    assert roles.AZUREML_METRICS_WRITER == "635dd51f-9968-44d3-b7fb-6d9a6bd613ae"


def test_assignment_names_are_deterministic_guids() -> None:
    scope, principal = "/subscriptions/s/resourceGroups/rg", "11111111-2222-3333-4444-555555555555"
    name = roles.assignment_name(scope, principal, roles.CONTRIBUTOR)
    assert uuid.UUID(name).version == 5
    assert name == roles.assignment_name(scope.upper(), principal.upper(), roles.CONTRIBUTOR)  # ARM ids are case-insensitive
    others = {
        roles.assignment_name(scope + "/x", principal, roles.CONTRIBUTOR),
        roles.assignment_name(scope, "99999999-2222-3333-4444-555555555555", roles.CONTRIBUTOR),
        roles.assignment_name(scope, principal, roles.ACR_PULL),
    }
    assert name not in others and len(others) == 3


def test_name_kinds_cover_every_name() -> None:
    assert tuple(naming.names("ftphi", "0123abcd")) == naming.NAME_KINDS
