"""The Azure ML training environment: a CUDA 12 base image plus the project's pinned `train` extra.

The pins come from pyproject.toml (one source of truth for local and cloud), read with tomllib,
through `common.pins.cloud_pins("train")`: the same packages as locally except torch. The local
venv's torch 2.13.0 is PyPI's CUDA 13 build, which needs NVIDIA driver >= 580; Azure ML nodes run
driver 535 (CUDA 12.x), where that torch sees no GPU. The cloud gets torch 2.10.0, the newest PyPI
build on CUDA 12 (12.8, which 535 runs through minor-version compatibility); tests check the
choice against the wheel's recorded metadata (common.cuda_driver).

Everything else the image installs (huggingface-hub, safetensors, numpy, the CUDA 12 wheels ...) is
pinned by requirements-cloud.lock (`make lock`, common/cloud_lock.py), so every build of one
version installs the same packages.

The version is a hash of the whole definition, so an unchanged environment is found with
`environments.get(name, version)` and reused: Azure ML never rebuilds the image for it. The base
image is a dated tag, so a changed base changes that hash (a `:latest` tag never would).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from common import cloud_lock
from common.cli import say
from common.cuda_driver import require_gpu_torch
from common.pins import PYPROJECT, cloud_pins, conda_spec as _conda_spec, content_version, package_name

ENVIRONMENT_NAME = "finetune-phi-train"
BASE_IMAGE = "mcr.microsoft.com/azureml/openmpi5.0-cuda12.4-ubuntu22.04:20260901.v1"
"""Azure ML's maintained GPU base (Ubuntu 22.04, CUDA 12.4, OpenMPI 5), at a dated tag (tags are
`YYYYMMDD.vN`; azureml-assets' own images pin them the same way). The torch wheel brings its own
CUDA runtime; the image supplies the userland and MPI. Move the date forward deliberately."""
CLOUD_EXTRAS = ("azureml-mlflow==1.62.0.post6",)
"""Cloud-only: lets MLflow inside the job log to the workspace (MLFLOW_TRACKING_URI=azureml://...)."""
CLOUD_OVERRIDES = {"mlflow": "mlflow==3.15.0"}
"""azureml-mlflow 1.62.0.post6 (the newest) requires mlflow-skinny<=3.15.0, so the cloud job uses
mlflow 3.15.0 instead of the local 3.17.0; the MLflow model format it writes loads in both."""


def train_pins(pyproject: Path = PYPROJECT) -> list[str]:
    """The `train` extra as the cloud installs it (CUDA 12 torch), with the cloud overrides applied and extras added."""
    pins = [CLOUD_OVERRIDES.get(package_name(pin), pin) for pin in cloud_pins("train", pyproject)]
    return pins + [extra for extra in CLOUD_EXTRAS if package_name(extra) not in {package_name(p) for p in pins}]


def conda_spec(pyproject: Path = PYPROJECT) -> dict[str, Any]:
    """The pins plus the cloud lock's pins of everything they pull in (requirements-cloud.lock): a conda
    file cannot point pip at a constraints file, so the locked set is listed, which pins it the same way.
    Refused when its torch would see no GPU on Azure ML (common.cuda_driver)."""
    pins = train_pins(pyproject)
    require_gpu_torch(pins, f"the training environment {ENVIRONMENT_NAME}")
    return _conda_spec(ENVIRONMENT_NAME, pins + cloud_lock.constraints("train", pins))


def environment_spec(pyproject: Path = PYPROJECT) -> dict[str, Any]:
    """name, version, image, conda_file: the YAML form of the environment (inline in a dry run)."""
    body = {"image": BASE_IMAGE, "conda_file": conda_spec(pyproject)}
    return {"name": ENVIRONMENT_NAME, "version": content_version(body), **body}


def environment_ref(spec: dict[str, Any]) -> str:
    return f"azureml:{spec['name']}:{spec['version']}"


def environment_studio_path(ref: str) -> str:
    """Studio path of the environment page (from its `azureml:name:version` reference), where its image build log lives."""
    name, _, version = ref.removeprefix("azureml:").partition(":")
    return f"environments/{name}/version/{version}"


def ensure_environment(ml_client: Any, spec: dict[str, Any]) -> str:
    """Reuse the environment version with this content, or register it; returns its `azureml:` reference."""
    from azure.ai.ml.entities import Environment
    from azure.core.exceptions import ResourceNotFoundError

    from common.azure import azure_errors

    name, version = spec["name"], spec["version"]
    with azure_errors(f"looking up environment {name}:{version}"):
        try:
            ml_client.environments.get(name=name, version=version)
            say(f"    environment {name}:{version} exists: reused (no image build)")
            return environment_ref(spec)
        except ResourceNotFoundError:
            pass
    environment = Environment(
        name=name,
        version=version,
        image=spec["image"],
        conda_file=spec["conda_file"],
        description="finetune-phi trainer: CUDA base image + the pinned `train` extra of pyproject.toml",
        tags={"finetune-phi": "train-env"},
    )
    with azure_errors(f"registering environment {name}:{version}"):
        ml_client.environments.create_or_update(environment)
    say(f"    environment {name}:{version} registered; its image is built on first use (about 10-20 min, once)")
    return environment_ref(spec)
