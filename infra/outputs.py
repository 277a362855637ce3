"""The stack-outputs contract (docs/INFRA.md, "Stack outputs"; docs/ARCHITECTURE.md section 3) and its loader.

Training and deployment read the stack through this module instead of a hand-edited
config. It never imports Pulumi: the outputs come from, in order,

1. an explicit file (`--outputs-file PATH`),
2. the file named by the environment variable STACK_OUTPUTS_FILE,
3. `pulumi stack output --json [--stack NAME]`.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from common.cli import UserError

ENV_VAR = "STACK_OUTPUTS_FILE"
PROJECT_DIR = Path(__file__).resolve().parents[1]
"""Where Pulumi.yaml lives: `pulumi stack output` runs there, so the commands work from any directory."""
EXAMPLE_FILE = PROJECT_DIR / "docs" / "examples" / "stack-outputs.json"
"""A complete example of the outputs (every key a stack exports): for dry runs and benchmarks without a stack."""


@dataclass(frozen=True)
class StackOutputs:
    """Everything downstream needs to find the Azure resources; nothing secret."""

    subscription_id: str
    tenant_id: str
    resource_group_name: str
    location: str
    workspace_name: str
    storage_account_name: str
    container_registry_name: str
    key_vault_name: str
    compute_name: str
    compute_vm_size: str
    compute_max_nodes: int
    uai_name: str
    """The training identity: the cluster's jobs run as it."""
    uai_resource_id: str
    uai_client_id: str
    uai_principal_id: str
    endpoint_uai_name: str
    """The endpoint identity: online deployments run as it (AcrPull, Storage Blob Data Reader, Metrics Writer only)."""
    endpoint_uai_resource_id: str
    endpoint_uai_client_id: str
    endpoint_uai_principal_id: str
    # Optional outputs: None when the stack does not export them (older stacks, features turned off).
    workspace_resource_id: str | None = None
    compute_priority: str | None = None
    application_insights_name: str | None = None
    log_analytics_workspace_name: str | None = None
    foundry_hub_name: str | None = None
    foundry_project_name: str | None = None
    budget_name: str | None = None
    github_uai_client_id: str | None = None
    """Client id of the GitHub Actions identity (config `githubRepository`); not a secret."""
    role_assignments_created_on: dt.datetime | None = None
    """When the newest of the stack's role assignments was created (UTC): they take minutes to apply."""
    source: str = "unknown"
    """Where the outputs were read from (a file path or `pulumi stack output`). Outputs no field names are ignored."""

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], source: str = "unknown", up_command: str = "pulumi up"
    ) -> "StackOutputs":
        missing = [key for key in REQUIRED_KEYS if data.get(key) in (None, "")]
        if missing:
            raise StackOutputsError(
                f"the stack outputs from {source} lack {', '.join(missing)}. "
                f"Run `{up_command}` (the program exports them), "
                "or point --outputs-file / STACK_OUTPUTS_FILE at the right JSON file."
            )
        odd = [key for key in REQUIRED_KEYS if isinstance(data[key], (dict, list)) or data[key] == "[secret]"]
        if odd:
            raise StackOutputsError(
                f"the stack outputs from {source} hold no plain value for {', '.join(odd)} "
                "(a list, an object or a hidden secret); the program exports plain strings. "
                f"Re-run `{up_command}` with this repository's program."
            )
        try:
            max_nodes = int(data["compute_max_nodes"])
        except (TypeError, ValueError):
            raise StackOutputsError(
                f"compute_max_nodes in the stack outputs from {source} is {data['compute_max_nodes']!r}, "
                "not a whole number; re-run `pulumi up`."
            ) from None
        values = {key: str(data[key]) for key in REQUIRED_KEYS if key != "compute_max_nodes"}
        optional = {key: _optional(data, key, source, up_command) for key in OPTIONAL_KEYS}
        return cls(**values, **optional, compute_max_nodes=max_nodes, source=source)

    def as_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in REQUIRED_KEYS}


REQUIRED_KEYS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(StackOutputs) if f.default is dataclasses.MISSING
)
OPTIONAL_KEYS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(StackOutputs) if f.name not in REQUIRED_KEYS + ("source",)
)
_ARM_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})?$")


def parse_arm_time(text: str) -> dt.datetime:
    """An ARM timestamp (`2026-11-29T04:40:13.2553541Z`: up to 7 fractional digits) as an aware UTC datetime."""
    match = _ARM_TIME.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not an ISO 8601 timestamp")
    base, fraction, zone = match.groups()
    parsed = dt.datetime.fromisoformat(f"{base}.{(fraction or '0')[:6]:0<6}{'+00:00' if zone in (None, 'Z') else zone}")
    return parsed.astimezone(dt.timezone.utc)


def latest_time(values: Iterable[str]) -> str:
    """The newest of several ARM timestamps, as ARM wrote it (the program exports it)."""
    return max(values, key=parse_arm_time)


def _optional(data: Mapping[str, Any], key: str, source: str, up_command: str) -> Any:
    value = data.get(key)
    if value in (None, ""):
        return None
    if isinstance(value, (dict, list)) or value == "[secret]":
        raise StackOutputsError(
            f"the stack outputs from {source} hold no plain value for {key}; re-run `{up_command}`."
        )
    if key != "role_assignments_created_on":
        return str(value)
    try:
        return parse_arm_time(str(value))
    except ValueError as err:
        raise StackOutputsError(f"role_assignments_created_on in the stack outputs from {source}: {err}; "
                                f"re-run `{up_command}`.") from None


class StackOutputsError(UserError):
    """The stack outputs cannot be found or are incomplete."""


def add_stack_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, default_stack: str | None = None) -> None:
    """`--stack` and `--outputs-file`, the two ways every command finds the stack outputs (the loader below)."""
    parser.add_argument("--stack", default=default_stack,
                        help=f"Pulumi stack to read the outputs of (default: {default_stack or 'the selected stack'})")
    parser.add_argument("--outputs-file",
                        help=f"JSON file of stack outputs (`pulumi stack output --json > FILE`); also ${ENV_VAR}")


def load_stack_outputs(
    outputs_file: str | os.PathLike[str] | None = None,
    stack: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    pulumi: str = "pulumi",
    cwd: str | os.PathLike[str] | None = None,
) -> StackOutputs:
    """Load and check the stack outputs: explicit file, then $STACK_OUTPUTS_FILE, then the Pulumi CLI."""
    env = os.environ if env is None else env
    if outputs_file:
        return _from_file(Path(outputs_file), "--outputs-file")
    if env.get(ENV_VAR):
        return _from_file(Path(env[ENV_VAR]), ENV_VAR)
    if cwd is None and (PROJECT_DIR / "Pulumi.yaml").is_file():
        cwd = PROJECT_DIR
    return _from_pulumi(stack, pulumi=pulumi, env=env, cwd=cwd)


def _from_file(path: Path, how: str) -> StackOutputs:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StackOutputsError(
            f"the stack outputs file {path} (from {how}) does not exist. "
            "Write it with `pulumi stack output --json > FILE`, or drop the option to ask Pulumi directly."
        ) from None
    except OSError as err:
        raise StackOutputsError(f"cannot read the stack outputs file {path} (from {how}): {err.strerror}.") from None
    except UnicodeDecodeError:
        raise StackOutputsError(
            f"the stack outputs file {path} (from {how}) is not UTF-8 text; "
            "write it with `pulumi stack output --json > FILE`."
        ) from None
    return StackOutputs.from_mapping(_parse(text, str(path)), source=str(path))


def _from_pulumi(
    stack: str | None, *, pulumi: str, env: Mapping[str, str], cwd: str | os.PathLike[str] | None
) -> StackOutputs:
    executable = shutil.which(pulumi, path=env.get("PATH"))
    if executable is None:
        raise StackOutputsError(
            "the Pulumi CLI is not on PATH, so the stack outputs cannot be read. "
            "Install it (https://www.pulumi.com/docs/install/), run `pulumi up`, "
            f"or pass --outputs-file PATH / set {ENV_VAR} to a file written by `pulumi stack output --json`."
        )
    command = [executable, "stack", "output", "--json"] + (["--stack", stack] if stack else [])
    described = f"stack {stack!r}" if stack else "the selected stack"
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=dict(env), cwd=cwd, timeout=120, check=False
        )
    except subprocess.TimeoutExpired:
        raise StackOutputsError(
            f"`{' '.join(command[1:])}` did not answer within 120 s; check `pulumi login` and the backend."
        ) from None
    except OSError as err:
        raise StackOutputsError(f"cannot run the Pulumi CLI at {executable}: {err.strerror}.") from None
    if done.returncode != 0:
        detail = " ".join(done.stderr.strip().split())[-400:] or "no message"
        hint = (
            "Select one with `pulumi stack select NAME` or pass --stack NAME; "
            "create it with `pulumi stack init NAME` and `pulumi up`."
        )
        raise StackOutputsError(f"`pulumi stack output --json` failed for {described} ({detail}). {hint}")
    data = _parse(done.stdout, f"pulumi stack output for {described}")
    up_command = "pulumi up" + (f" --stack {stack}" if stack else "")
    try:
        if not data:
            raise StackOutputsError(
                f"{described} has no outputs: it has not been deployed yet. Run `{up_command}` first."
            )
        return StackOutputs.from_mapping(data, source=f"pulumi stack output ({described})", up_command=up_command)
    except StackOutputsError as err:
        name = None if stack else _selected_stack(executable, env, cwd)
        if name is None:
            raise
        # Name the stack in the message (only worth a second CLI call on this error path).
        raise StackOutputsError(str(err).replace(described, f"the selected stack {name!r}")) from None


def _selected_stack(executable: str, env: Mapping[str, str], cwd: str | os.PathLike[str] | None) -> str | None:
    """The selected stack's name (`pulumi stack --show-name`), or None if Pulumi cannot say."""
    try:
        done = subprocess.run(
            [executable, "stack", "--show-name"], capture_output=True, text=True, env=dict(env), cwd=cwd,
            timeout=60, check=False,
        )
    except (subprocess.TimeoutExpired, OSError):
        return None
    name = done.stdout.strip()
    return name if done.returncode == 0 and name and "\n" not in name else None


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as err:
        raise StackOutputsError(f"{source} is not valid JSON (line {err.lineno}: {err.msg}).") from None
    if not isinstance(data, dict):
        raise StackOutputsError(f"{source} holds a JSON {type(data).__name__}, not the object of stack outputs.")
    return data
