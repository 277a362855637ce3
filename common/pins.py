"""The project's package pins, read from pyproject.toml's extras, as Azure ML environments use them.

pyproject.toml is the one place versions are pinned: `make setup` installs its extras locally,
and the training and serving environments on Azure ML are conda files built from the `train`
and `serve` extras here. An environment's version is a hash of its content, so an unchanged
environment is found and reused instead of rebuilt (an image build takes 10-20 minutes).
"""
from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any

from common.cli import UserError

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
PYTHON_VERSION = "3.11"

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def package_name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (`Foo_Bar==1` -> `foo-bar`)."""
    match = _NAME.match(requirement)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else requirement


def extra_pins(extra: str, pyproject: Path = PYPROJECT) -> list[str]:
    """The requirement strings of one extra, in file order; every one must be pinned."""
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise UserError(f"cannot read the `{extra}` pins from {pyproject} ({err}); restore the file from git.") from None
    reqs = [r for r in data.get("project", {}).get("optional-dependencies", {}).get(extra, [])
            if not r.startswith("finetune-phi")]
    if not reqs:
        raise UserError(f"{pyproject} has no `{extra}` extra; the Azure ML environment is built from it.")
    unpinned = [r for r in reqs if not re.search(r"==|<|>|~=|@", r)]
    if unpinned:
        raise UserError(
            f"the `{extra}` extra in {pyproject} has unpinned packages ({', '.join(unpinned)}); pin them "
            "(name==version) so Azure ML runs the versions the tests ran."
        )
    return reqs


def conda_spec(name: str, pins: list[str]) -> dict[str, Any]:
    """A conda file: the project's Python plus the pins through pip."""
    return {
        "name": name,
        "channels": ["conda-forge"],
        "dependencies": [f"python={PYTHON_VERSION}", "pip", {"pip": list(pins)}],
    }


def content_version(payload: Any, length: int = 16) -> str:
    """A stable version string for any JSON-able definition."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


CLOUD_TORCH_PIN = "torch==2.10.0"
"""The torch build Azure ML environments install. PyPI's torch 2.11.0 and later (2.13.0 included,
which the local CPU venv uses) are CUDA 13 builds that need NVIDIA driver >= 580; Azure ML GPU
nodes run driver 535 (CUDA 12.x). torch 2.10.0 is the newest PyPI build on CUDA 12 (12.8, which
runs on 535 through CUDA's minor-version compatibility), so cloud jobs and deployments pin it."""


def cloud_pins(extra: str, pyproject: Path = PYPROJECT) -> list[str]:
    """An extra's pins as an Azure ML environment installs them: torch swapped for CLOUD_TORCH_PIN."""
    return [CLOUD_TORCH_PIN if package_name(pin) == "torch" else pin for pin in extra_pins(extra, pyproject)]
