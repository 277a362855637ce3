"""The serving environment: a custom container that runs `python -m deployment.serve`, the same server as locally.

The image is built by Azure ML from a build context this module stages (content-addressed):
  Dockerfile        a dated Azure ML base image, a Python 3.11 env, the pins, the server code,
                    CMD `python -m deployment.serve --model-dir $AZUREML_MODEL_DIR --host 0.0.0.0 --port 8000`
  requirements.txt  pyproject.toml's `serve` extra through `common.pins.cloud_pins` (torch 2.10.0, the
                    newest PyPI CUDA 12 build, which Azure ML's driver 535 runs; never the local CUDA 13
                    torch 2.13.0) plus the base dependencies
  app/              the server's modules (deployment/serve.py and what it imports), nothing else

`inference_config` tells the managed online endpoint where the container listens: liveness `/live`,
readiness `/health` (200 once the model is loaded), scoring route `/` on port 8000. The endpoint
forwards the path a client calls under its host to the same path in the container, so OpenAI
clients use `https://NAME.REGION.inference.ml.azure.com/v1` and the tutorials' clients the
scoring URI `.../score` (docs/SERVING.md).

The environment version is a hash of the whole build context: an unchanged environment is found
and reused instead of rebuilt (an image build takes 10-20 minutes); a changed pin, base tag or
server file gives a new version.
"""
from __future__ import annotations

import hashlib
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import runs
from common.cuda_driver import require_gpu_torch
from common.pins import PYPROJECT, cloud_pins, content_version
from deployment.definitions import CREATED_BY

ENVIRONMENT_NAME = "phi3-serve"
BASE_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:20250601.v1"
"""Azure ML's maintained Ubuntu 22.04 base (conda included) at a dated tag (`YYYYMMDD.vN`), so a new
base changes the environment's hash. CPU and GPU instances use the same image: the pip torch wheel
brings its own CUDA 12.8 runtime and the node supplies the driver. Move the date forward deliberately."""
PORT = 8000
LIVENESS_PATH = "/live"
READINESS_PATH = "/health"
SCORING_PATH = "/"
"""The scoring route's root: the endpoint appends the caller's path, so /score and /v1/... both arrive."""
REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER_FILES = (
    "common/__init__.py",
    "common/cli.py",
    "deployment/__init__.py",
    "deployment/serve.py",
    "deployment/openai_api.py",
    "deployment/engine.py",
    "deployment/dialects.py",
    "deployment/model_dir.py",
)
"""Everything `python -m deployment.serve` imports from this repository (a test checks the list)."""
SERVE_PYTHON = "/opt/serve/bin/python"


def base_pins(pyproject: Path = PYPROJECT) -> list[str]:
    """pyproject's base `dependencies` (pyyaml: MLmodel files are YAML)."""
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    return list(data.get("project", {}).get("dependencies", []))


def serve_requirements(pyproject: Path = PYPROJECT) -> list[str]:
    """What the container installs: the `serve` extra with the cloud torch, plus the base dependencies.

    Refused when that torch would see no GPU on Azure ML's driver (common.cuda_driver).
    """
    requirements = cloud_pins("serve", pyproject) + base_pins(pyproject)
    require_gpu_torch(requirements, f"the serving environment {ENVIRONMENT_NAME}")
    return requirements


def dockerfile() -> str:
    return f"""\
FROM {BASE_IMAGE}
# Python 3.11 (the project's) beside the image's own; the pins install with pip from PyPI.
RUN conda create -y -q -p /opt/serve python=3.11 pip && conda clean -a -y
COPY requirements.txt /tmp/requirements.txt
RUN {SERVE_PYTHON} -m pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY app/ /app/
WORKDIR /app
ENV PYTHONPATH=/app PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
EXPOSE {PORT}
# Azure ML sets AZUREML_MODEL_DIR to the mounted model (azureml-models/<name>/<version>).
CMD ["/bin/sh", "-c", "exec {SERVE_PYTHON} -m deployment.serve --model-dir \\"$AZUREML_MODEL_DIR\\" --host 0.0.0.0 --port {PORT}"]
"""


def build_context_files(pyproject: Path = PYPROJECT) -> dict[str, bytes]:
    """The build context, path -> content."""
    files = {
        "Dockerfile": dockerfile().encode(),
        "requirements.txt": ("\n".join(serve_requirements(pyproject)) + "\n").encode(),
    }
    for relative in SERVER_FILES:
        files[f"app/{relative}"] = (REPO_ROOT / relative).read_bytes()
    return files


def inference_config() -> dict[str, Any]:
    return {
        "liveness_route": {"port": PORT, "path": LIVENESS_PATH},
        "readiness_route": {"port": PORT, "path": READINESS_PATH},
        "scoring_route": {"port": PORT, "path": SCORING_PATH},
    }


@dataclass(frozen=True)
class ServingEnvironment:
    """What the deployment's environment is made of; `version` is the content hash."""

    name: str
    version: str
    files: dict[str, bytes]

    @property
    def reference(self) -> str:
        return f"azureml:{self.name}:{self.version}"

    def stage(self, root: Path) -> Path:
        """Write the build context under `root` (once per version; a half-written one is replaced)."""
        folder = root / f"serve-image-{self.version}"
        if not (folder / "Dockerfile").is_file():
            tmp = root / f".{folder.name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            for relative, data in self.files.items():
                (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
                (tmp / relative).write_bytes(data)
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
        return folder

    def to_entity(self, stage_root: Path | None = None) -> Any:
        """The azure-ai-ml Environment: build context + inference_config (imports the SDK)."""
        from azure.ai.ml.entities import BuildContext, Environment

        if stage_root is None:
            stage_root = runs.deploy_stage_dir()
        stage_root.mkdir(parents=True, exist_ok=True)
        return Environment(
            name=self.name,
            version=self.version,
            build=BuildContext(path=str(self.stage(stage_root))),
            inference_config=inference_config(),
            description="finetune-phi serving: python -m deployment.serve (OpenAI API + /score, continuous batching)",
            tags=dict(CREATED_BY),
        )


def serving_environment(instance_type: str = "", pyproject: Path = PYPROJECT) -> ServingEnvironment:
    """The environment (the same image for CPU and GPU instance types), versioned by content hash."""
    files = build_context_files(pyproject)
    digest = {path: hashlib.sha256(data).hexdigest() for path, data in sorted(files.items())}
    return ServingEnvironment(name=ENVIRONMENT_NAME, version=content_version(digest), files=files)
