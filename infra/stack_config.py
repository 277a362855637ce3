"""Typed, validated stack configuration.

Pulumi hands every config value to the program as a string (booleans as "true", lists as JSON).
`parse_config` turns the raw strings into an `InfraConfig` and reports every bad value at once,
as one `InfraConfigError` (a `pulumi.RunError`, so `pulumi up` prints it without a traceback).
The defaults here must match Pulumi.yaml; tests/infra keeps the two in step.
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pulumi

PROJECT = "finetune-phi"

DEFAULTS: dict[str, Any] = {
    "namePrefix": "ftphi",
    "computeVmSize": "Standard_NC24ads_A100_v4",
    "computeMaxNodes": 1,
    "computePriority": "Dedicated",
    "containerRegistrySku": "Basic",
    "keyVaultPurgeProtection": False,
    "keyVaultRetentionDays": 7,
    "logRetentionDays": 30,
    "enableFoundry": False,
    "budgetAmount": 0,
    "budgetEmails": [],
    "tags": "",
    "githubRepository": "",
    "contributorOnResourceGroup": False,
}
"""Every project config key and its default (the same as in Pulumi.yaml)."""

RESERVED_TAGS = ("project", "stack")
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,9}$")
_VM_SIZE_RE = re.compile(r"^Standard_[A-Za-z0-9_]+$")
_EMAIL_RE = re.compile(r"^[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+$")
_LOCATION_RE = re.compile(r"^[a-z][a-z0-9]+$")
_TAG_KEY_BAD = re.compile(r"[<>%&\\?/]")
# GitHub: owner 1-39 letters, digits, hyphens; repository letters, digits, '.', '_', '-'.
_GITHUB_REPO_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")


class InfraConfigError(pulumi.RunError):
    """The stack config has a missing or invalid value; the message lists each one and how to fix it."""


@dataclass(frozen=True)
class InfraConfig:
    location: str
    name_prefix: str = DEFAULTS["namePrefix"]
    compute_vm_size: str = DEFAULTS["computeVmSize"]
    compute_max_nodes: int = DEFAULTS["computeMaxNodes"]
    compute_priority: str = DEFAULTS["computePriority"]
    container_registry_sku: str = DEFAULTS["containerRegistrySku"]
    key_vault_purge_protection: bool = DEFAULTS["keyVaultPurgeProtection"]
    key_vault_retention_days: int = DEFAULTS["keyVaultRetentionDays"]
    log_retention_days: int = DEFAULTS["logRetentionDays"]
    enable_foundry: bool = DEFAULTS["enableFoundry"]
    budget_amount: int = DEFAULTS["budgetAmount"]
    budget_emails: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    """User tags only; `program.py` adds the project and stack tags."""
    github_repository: str = DEFAULTS["githubRepository"]
    """OWNER/NAME whose GitHub Actions may sign in (OIDC) as the GitHub identity; empty: no such identity."""
    contributor_on_resource_group: bool = DEFAULTS["contributorOnResourceGroup"]
    """The training identity gets the tutorials' Contributor on the resource group, not AzureML Data Scientist on the workspace."""


def _parse_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise ValueError(f"must be a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ValueError(f"must be true or false, got {text!r}")


def _parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        for choice in choices:
            if str(text).strip().lower() == choice.lower():
                return choice
        raise ValueError(f"must be one of {', '.join(choices)}, got {text!r}")

    return parse


def _parse_prefix(text: str) -> str:
    if not _PREFIX_RE.match(text):
        raise ValueError(
            f"must be 2-10 lowercase letters or digits starting with a letter (storage and registry "
            f"names allow nothing else), got {text!r}"
        )
    return text


def _parse_vm_size(text: str) -> str:
    if not _VM_SIZE_RE.match(text):
        raise ValueError(f"must be an Azure VM size such as Standard_NC24ads_A100_v4, got {text!r}")
    return text


def _parse_emails(text: str) -> tuple[str, ...]:
    try:
        value = json.loads(text) if str(text).strip() else []
    except json.JSONDecodeError:
        raise ValueError(
            "must be a list of addresses: `pulumi config set --path 'budgetEmails[0]' you@example.com`"
        ) from None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"must be a list of e-mail addresses, got {text!r}")
    bad = [item for item in value if not _EMAIL_RE.match(item)]
    if bad:
        raise ValueError(f"has entries that are not e-mail addresses: {', '.join(map(repr, bad))}")
    return tuple(value)


def _parse_tags(text: str) -> dict[str, str]:
    text = str(text).strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"is not a valid JSON object ({err.msg})") from None
        if not isinstance(raw, dict):
            raise ValueError("must be a JSON object of tag names to values")
        pairs = [(str(k), v) for k, v in raw.items()]
    else:
        pairs = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"must be key=value pairs separated by commas; {item!r} is not one")
            pairs.append((key.strip(), value.strip()))
    tags: dict[str, str] = {}
    for key, value in pairs:
        if not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"tag {key!r} must have a plain value, got {value!r}")
        if key.lower() in RESERVED_TAGS:
            raise ValueError(f"tag {key!r} is set by the program itself; choose another name")
        if len(key) > 512 or _TAG_KEY_BAD.search(key):
            raise ValueError(f"tag name {key!r} is too long or contains one of < > % & \\ ? /")
        if len(str(value)) > 256:
            raise ValueError(f"tag {key!r} has a value longer than 256 characters")
        tags[key] = str(value).lower() if isinstance(value, bool) else str(value)
    if len(tags) > 48:
        raise ValueError("has more tags than the 48 Azure allows (two are used by the program)")
    return tags


def _parse_github_repository(text: str) -> str:
    value = str(text).strip()
    if value and not _GITHUB_REPO_RE.match(value):
        raise ValueError(f"must be OWNER/NAME of a GitHub repository (for example acme/finetune-phi), got {text!r}")
    return value


_PARSERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "namePrefix": ("name_prefix", _parse_prefix),
    "computeVmSize": ("compute_vm_size", _parse_vm_size),
    "computeMaxNodes": ("compute_max_nodes", _parse_int(1, 100)),
    "computePriority": ("compute_priority", _parse_choice("Dedicated", "LowPriority")),
    "containerRegistrySku": ("container_registry_sku", _parse_choice("Basic", "Standard", "Premium")),
    "keyVaultPurgeProtection": ("key_vault_purge_protection", _parse_bool),
    "keyVaultRetentionDays": ("key_vault_retention_days", _parse_int(7, 90)),
    "logRetentionDays": ("log_retention_days", _parse_int(30, 730)),
    "enableFoundry": ("enable_foundry", _parse_bool),
    "budgetAmount": ("budget_amount", _parse_int(0, 10_000_000)),
    "budgetEmails": ("budget_emails", _parse_emails),
    "tags": ("tags", _parse_tags),
    "githubRepository": ("github_repository", _parse_github_repository),
    "contributorOnResourceGroup": ("contributor_on_resource_group", _parse_bool),
}
assert set(_PARSERS) == set(DEFAULTS), "every config key needs a default and a parser"


def _engine_string(value: Any) -> str:
    """A value as the engine passes it in PULUMI_CONFIG: booleans lower-case, lists as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def parse_config(
    raw: Mapping[str, str | None],
    location: str | None,
    unknown_keys: tuple[str, ...] = (),
) -> InfraConfig:
    """Build the typed config from raw strings (None = unset, the default applies)."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key, (attr, parse) in _PARSERS.items():
        text = raw.get(key)
        if text is None:  # unset: the default, parsed the same way as the engine would pass it
            text = _engine_string(DEFAULTS[key])
        try:
            values[attr] = parse(text)
        except ValueError as err:
            problems.append(f"{PROJECT}:{key} {err}")
    for key in unknown_keys:
        close = difflib.get_close_matches(key, list(DEFAULTS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else f" (known keys: {', '.join(DEFAULTS)})"
        problems.append(f"{PROJECT}:{key} is not a config key of this project{hint}")
    if not location:
        problems.append(
            "azure-native:location is not set; run `pulumi config set azure-native:location eastus` "
            "(a region with NCADSA100v4 quota)"
        )
    elif not _LOCATION_RE.match(location):
        problems.append(f"azure-native:location must be a region name such as eastus, got {location!r}")
    if values.get("budget_amount") and not values.get("budget_emails"):
        problems.append(
            f"{PROJECT}:budgetEmails is empty but budgetAmount is {values['budget_amount']}; add an address "
            "with `pulumi config set --path 'budgetEmails[0]' you@example.com` or set budgetAmount to 0"
        )
    if problems:
        raise InfraConfigError(
            "invalid stack configuration:\n  - " + "\n  - ".join(problems)
            + "\nFix with `pulumi config set <key> <value>`; see docs/INFRA.md for every key."
        )
    return InfraConfig(location=location or "", **values)


def _project_config_keys() -> tuple[str, ...]:
    """Every `finetune-phi:*` key the engine passed, so typos are reported instead of ignored."""
    from pulumi.runtime import config as runtime_config

    names = set(runtime_config.get_config_env()) | set(runtime_config.CONFIG.get())
    return tuple(sorted(name.split(":", 1)[1] for name in names if name.startswith(f"{PROJECT}:")))


def load_config() -> InfraConfig:
    """Read and validate this stack's config (inside a running Pulumi program)."""
    config = pulumi.Config(PROJECT)
    raw = {key: config.get(key) for key in DEFAULTS}
    unknown = tuple(key for key in _project_config_keys() if key not in DEFAULTS)
    location = pulumi.Config("azure-native").get("location")
    return parse_config(raw, location.strip().lower() if location else None, unknown)
