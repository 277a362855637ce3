"""The serving environment for the managed online deployment, built from the project's own pins.

The packages come from pyproject.toml's `serve` extra (the same pins `make setup` installs for
`python -m deployment.serve`), so the cloud container runs what the local tests ran. They go into
a conda file on top of an Azure ML inference base image. The environment version is a hash of
that content: an unchanged environment is found and reused instead of rebuilt (an image build
takes 10-20 minutes); a changed pin gives a new version.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.pins import PYPROJECT, conda_spec, content_version, extra_pins

ENVIRONMENT_NAME = "phi3-serve"

# Azure ML's minimal inference images (the inference server's runtime user, ports and log
# plumbing). The conda env replaces their Python; the GPU image brings the CUDA user space
# that the PyPI torch wheel's bundled CUDA libraries expect next to the node's driver.
GPU_BASE_IMAGE = "mcr.microsoft.com/azureml/minimal-ubuntu22.04-py39-cuda11.8-gpu-inference:latest"
CPU_BASE_IMAGE = "mcr.microsoft.com/azureml/minimal-ubuntu22.04-py39-cpu-inference:latest"


@dataclass(frozen=True)
class ServingEnvironment:
    """What the deployment's environment is made of; `version` is the content hash."""

    name: str
    version: str
    image: str
    conda: dict[str, Any]

    @property
    def reference(self) -> str:
        return f"azureml:{self.name}:{self.version}"

    def to_entity(self) -> Any:
        """The azure-ai-ml Environment entity (imports the SDK)."""
        from azure.ai.ml.entities import Environment

        return Environment(
            name=self.name,
            version=self.version,
            image=self.image,
            conda_file=self.conda,
            description="finetune-phi serving: deployment/score.py under azureml-inference-server-http",
            tags={"created-by": "finetune-phi"},
        )


def serve_requirements(pyproject: Path = PYPROJECT) -> list[str]:
    """The `serve` extra's requirement strings, in file order (all pinned)."""
    return extra_pins("serve", pyproject)


def is_gpu_sku(instance_type: str) -> bool:
    """Azure's GPU families are the N-series (NC, ND, NV...)."""
    return bool(re.match(r"(?i)^standard_n[a-z]", instance_type))


def serving_environment(instance_type: str, pyproject: Path = PYPROJECT) -> ServingEnvironment:
    """The environment for `instance_type` (GPU or CPU base image), versioned by content hash."""
    image = GPU_BASE_IMAGE if is_gpu_sku(instance_type) else CPU_BASE_IMAGE
    conda = conda_spec(ENVIRONMENT_NAME, serve_requirements(pyproject))
    return ServingEnvironment(
        name=ENVIRONMENT_NAME, version=content_version({"image": image, "conda": conda}), image=image, conda=conda
    )
