"""Config parsing and validation, Pulumi.yaml's declarations, and the docs table generated from them."""
from __future__ import annotations

import re

import pytest
import yaml

from infra import config_docs
from infra.stack_config import DEFAULTS, InfraConfig, InfraConfigError, parse_config


@pytest.fixture(scope="module")
def project(repo_root) -> dict:
    return yaml.safe_load((repo_root / "Pulumi.yaml").read_text())


def test_pulumi_yaml_runs_the_program_from_the_repo_venv(project) -> None:
    assert project["name"] == "finetune-phi"
    assert project["runtime"] == {"name": "python", "options": {"toolchain": "pip", "virtualenv": ".venv"}}
    assert project["main"] == "infra/"


def test_pulumi_yaml_declares_every_key_with_the_programs_default(project) -> None:
    python_type = {"string": str, "integer": int, "boolean": bool, "array": list}
    assert set(project["config"]) == set(DEFAULTS)
    for key, spec in project["config"].items():
        # Pulumi's project schema allows only these types (no object, no number).
        assert spec["type"] in python_type, key
        assert spec["description"].strip(), key
        assert spec["default"] == DEFAULTS[key], key
        assert type(spec["default"]) is python_type[spec["type"]], key
        if spec["type"] == "array":
            assert spec["items"] == {"type": "string"}


def test_defaults_parse_to_the_documented_values() -> None:
    cfg = parse_config({}, "eastus")
    assert cfg == InfraConfig(location="eastus")
    assert (cfg.compute_vm_size, cfg.compute_max_nodes, cfg.compute_priority) == ("Standard_NC24ads_A100_v4", 1, "Dedicated")
    assert cfg.key_vault_purge_protection is False and cfg.key_vault_retention_days == 7
    assert cfg.enable_foundry is False and cfg.budget_amount == 0 and cfg.budget_emails == ()
    assert cfg.tags == {}


def test_values_arrive_as_engine_strings() -> None:
    cfg = parse_config(
        {"computeMaxNodes": "3", "computePriority": "lowpriority", "keyVaultPurgeProtection": "true",
         "budgetAmount": "50", "budgetEmails": '["a@example.com"]', "tags": '{"team": "ml", "tier": 2}'},
        "westus3",
    )
    assert cfg.compute_max_nodes == 3 and cfg.compute_priority == "LowPriority"
    assert cfg.key_vault_purge_protection is True
    assert cfg.budget_amount == 50 and cfg.budget_emails == ("a@example.com",)
    assert cfg.tags == {"team": "ml", "tier": "2"}
    assert parse_config({"tags": " team = ml , owner=ana "}, "eastus").tags == {"team": "ml", "owner": "ana"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"namePrefix": "Fine-Tune"}, "namePrefix must be 2-10 lowercase letters or digits"),
        ({"namePrefix": "waytoolongprefix"}, "namePrefix must be 2-10"),
        ({"computeVmSize": "a100"}, "computeVmSize must be an Azure VM size"),
        ({"computeMaxNodes": "0"}, "computeMaxNodes must be between 1 and 100, got 0"),
        ({"computeMaxNodes": "1.5"}, "computeMaxNodes must be a whole number"),
        ({"computePriority": "Spot"}, "computePriority must be one of Dedicated, LowPriority"),
        ({"containerRegistrySku": "Free"}, "containerRegistrySku must be one of Basic, Standard, Premium"),
        ({"keyVaultPurgeProtection": "maybe"}, "keyVaultPurgeProtection must be true or false"),
        ({"keyVaultRetentionDays": "3"}, "keyVaultRetentionDays must be between 7 and 90"),
        ({"logRetentionDays": "7"}, "logRetentionDays must be between 30 and 730"),
        ({"enableFoundry": "on"}, "enableFoundry must be true or false"),
        ({"budgetAmount": "-5"}, "budgetAmount must be between 0"),
        ({"budgetAmount": "100"}, "budgetEmails is empty but budgetAmount is 100"),
        ({"budgetEmails": '["not-an-address"]'}, "budgetEmails has entries that are not e-mail addresses"),
        ({"budgetEmails": "a@example.com"}, "budgetEmails must be a list of addresses"),
        ({"tags": "team"}, "tags must be key=value pairs"),
        ({"tags": "stack=prod"}, "tag 'stack' is set by the program itself"),
        ({"tags": '{"a": [1]}'}, "tag 'a' must have a plain value"),
        ({"tags": "{broken"}, "tags is not a valid JSON object"),
    ],
)
def test_each_bad_value_has_an_actionable_message(raw, message) -> None:
    with pytest.raises(InfraConfigError, match=re.escape(message)) as caught:
        parse_config(raw, "eastus")
    assert "pulumi config set" in str(caught.value)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(InfraConfigError) as caught:
        parse_config({"computeMaxNodes": "x", "enableFoundry": "x"}, None, unknown_keys=("computeVMSize",))
    lines = [line for line in str(caught.value).splitlines() if line.startswith("  - ")]
    assert len(lines) == 4
    assert any("did you mean computeVmSize?" in line for line in lines)
    assert any("pulumi config set azure-native:location eastus" in line for line in lines)


def test_a_bad_location_is_refused() -> None:
    with pytest.raises(InfraConfigError, match="azure-native:location must be a region name"):
        parse_config({}, "East US 2")


def test_config_errors_print_without_a_traceback() -> None:
    import pulumi

    assert issubclass(InfraConfigError, pulumi.RunError)


def test_docs_config_table_matches_pulumi_yaml(repo_root) -> None:
    doc = (repo_root / "docs" / "INFRA.md").read_text()
    table = config_docs.render_table(repo_root / "Pulumi.yaml")
    assert config_docs.replace_table(doc, table) == doc, (
        "docs/INFRA.md's config table is out of date: run `python -m infra.config_docs --write`"
    )
    for key in DEFAULTS:
        assert f"`finetune-phi:{key}`" in table


def test_table_rendering_follows_the_yaml(tmp_path) -> None:
    path = tmp_path / "Pulumi.yaml"
    path.write_text(
        "name: demo\nruntime: python\nconfig:\n"
        "  size:\n    type: integer\n    default: 2\n    description: How | many.\n"
        "  flags:\n    type: array\n    items:\n      type: string\n    default: []\n    description: Some flags.\n"
    )
    assert config_docs.render_table(path).splitlines()[2:] == [
        "| `demo:size` | integer | `2` | How \\| many. |",
        "| `demo:flags` | array of string | `[]` | Some flags. |",
    ]
    with pytest.raises(ValueError, match="lacks the markers"):
        config_docs.replace_table("no markers here", "table")
