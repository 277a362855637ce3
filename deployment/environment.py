"""The serving environment: a custom container that runs the project's server, the same one as locally.

Two images, one server. Azure ML builds each from a build context this module stages
(content-addressed): the server package deployment/serving/ as it is (its modules;
deployment/serving/__init__.py lists them) with one of its Dockerfiles:
- GPU instance types (`phi3-serve-vllm`): Dockerfile.vllm, vLLM's official image pinned at a CUDA 12
  (`-cu129`) tag, checked against Azure ML's driver 535 here (common/cuda_driver.py); the engine is vLLM.
- CPU instance types (`phi3-serve`): Dockerfile, a dated Azure ML base image plus requirements.txt:
  pyproject.toml's `serve` extra through `common.pins.cloud_pins` (torch 2.10.0, PyPI's newest CUDA 12
  build; never the local CUDA 13 torch 2.13.0) and the base dependencies, with constraints.txt
  (requirements-cloud.lock's pins of everything those pull in, common/cloud_lock.py); the transformers engine.
The package imports nothing from the rest of the repository, so there is no list of files to keep.

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

from common import cloud_lock, runs
from common.cli import UserError
from common.cuda_driver import require_gpu_torch
from common.pins import PYPROJECT, cloud_pins, content_version
from deployment.definitions import CREATED_BY

ENVIRONMENT_NAME = "phi3-serve"  # CPU instance types: the transformers engine
VLLM_ENVIRONMENT_NAME = "phi3-serve-vllm"  # GPU instance types: vLLM's image (Dockerfile.vllm)
DOCKERFILES = {"transformers": "Dockerfile", "vllm": "Dockerfile.vllm"}
PORT = 8000  # the Dockerfile's EXPOSE and --port (a test checks they agree)
LIVENESS_PATH = "/live"
READINESS_PATH = "/health"
SCORING_PATH = "/"
"""The scoring route's root: the endpoint appends the caller's path, so /score and /v1/... both arrive."""
SERVING_PACKAGE = Path(__file__).resolve().parent / "serving"
"""The server package: the image's build context as it is (plus requirements.txt)."""
CONTEXT_SUFFIXES = (".py",)
"""What of the package goes into the image besides its Dockerfile (never __pycache__ or editor files)."""


def package_files(dockerfile: str = "Dockerfile", package: Path = SERVING_PACKAGE) -> dict[str, bytes]:
    """The server package's modules and one of its Dockerfiles (as `Dockerfile`), path -> content."""
    files = {"Dockerfile": (package / dockerfile).read_bytes()}
    for path in sorted(package.rglob("*")):
        if path.suffix in CONTEXT_SUFFIXES and path.is_file() and "__pycache__" not in path.parts:
            files[path.relative_to(package).as_posix()] = path.read_bytes()
    return files


def base_image(dockerfile: bytes) -> str:
    """The image a Dockerfile builds on (its first FROM line)."""
    for line in dockerfile.decode().splitlines():
        if line.startswith("FROM "):
            return line.split()[1]
    raise ValueError("the Dockerfile has no FROM line")


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


def build_context_files(pyproject: Path = PYPROJECT) -> dict[str, bytes]:
    """The CPU image's build context, path -> content: the server package, its requirements and constraints."""
    requirements = serve_requirements(pyproject)
    constraints = cloud_lock.constraints("serve", requirements)
    return {**package_files(), "requirements.txt": ("\n".join(requirements) + "\n").encode(),
            "constraints.txt": ("\n".join(constraints) + "\n").encode()}


def vllm_context_files(package: Path = SERVING_PACKAGE) -> dict[str, bytes]:
    """The GPU image's build context: the server package on vLLM's image, whose CUDA must suit Azure ML's
    driver (checked here, where the image is defined, before anything is registered or billed)."""
    from common.cuda_driver import image_driver_problem

    files = package_files(DOCKERFILES["vllm"], package)
    problem = image_driver_problem(base_image(files["Dockerfile"]))
    if problem:
        raise UserError(f"the GPU serving image ({package / DOCKERFILES['vllm']}) cannot run on Azure ML: {problem}")
    return files


def engine_for(instance_type: str) -> str:
    """vLLM on GPU instance types, transformers' continuous batching on CPU ones (deployment/sizing.py)."""
    from deployment.sizing import GPU_SPECS

    return "vllm" if instance_type.lower() in GPU_SPECS else "transformers"


def image_build_hint(instance_type: str) -> str:
    """What to check when Azure ML could not build the serving image (deploy appends it to the error)."""
    if engine_for(instance_type) != "vllm":
        return "check the environment's build log in Azure ML studio."
    image = base_image(package_files(DOCKERFILES["vllm"])["Dockerfile"])
    return (f"check the environment's build log in Azure ML studio. If it cannot pull {image}: that tag was "
            "pinned without reaching Docker Hub; pick an existing vX.Y.Z-cu129 tag of vllm/vllm-openai (a CUDA 12 "
            "build), put it in deployment/serving/Dockerfile.vllm and common/cuda_driver.py IMAGE_CUDA_MAJOR, "
            "and deploy again (docs/DEPLOY.md, \"The vLLM image\").")


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
    def engine(self) -> str:
        return "vllm" if self.name == VLLM_ENVIRONMENT_NAME else "transformers"

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
            description=f"finetune-phi serving: python -m deployment.serving ({self.engine} engine; OpenAI API + /score)",
            tags=dict(CREATED_BY),
        )


def serving_environment(instance_type: str = "", pyproject: Path = PYPROJECT) -> ServingEnvironment:
    """The environment for `instance_type` (vLLM's image on GPU types, the CPU image else), versioned by content hash."""
    if engine_for(instance_type) == "vllm":
        name, files = VLLM_ENVIRONMENT_NAME, vllm_context_files()
    else:
        name, files = ENVIRONMENT_NAME, build_context_files(pyproject)
    digest = {path: hashlib.sha256(data).hexdigest() for path, data in sorted(files.items())}
    return ServingEnvironment(name=name, version=content_version(digest), files=files)
