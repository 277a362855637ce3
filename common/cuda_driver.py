"""Will an Azure ML environment's torch see the GPU? Its wheel's CUDA major against the node's driver.

A torch wheel from PyPI brings its own CUDA runtime (the `nvidia-*-cuXX` / `cuda-toolkit` wheels
it requires), so what limits it on a GPU node is the host's NVIDIA driver, not the image's CUDA.
Azure ML compute runs driver 535 (CUDA 12.x) as of mid-2026. PyPI's torch 2.11.0 and later are
CUDA 13 builds (driver >= 580): on Azure ML they import fine and then see no GPU.

The facts come from the wheel's own metadata (Requires-Dist), recorded from PyPI in
common/torch_metadata/ beside this module (refresh with its refresh.py), since it cannot be read
offline; the environment builders read it on every machine, so it is package data, not a test fixture.
Training (training.environment) and serving (deployment.environment) call `require_gpu_torch`
on their pins when they build an environment, so a wrong pin fails before anything is uploaded.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

AZURE_ML_DRIVER = 535
"""The NVIDIA driver branch on Azure ML GPU compute (mid-2026; rapidsai/deployment PR #719 keeps
its Azure ML docs on CUDA 12 for this reason)."""

MIN_DRIVER_BY_CUDA_MAJOR: Mapping[int, int] = {11: 450, 12: 525, 13: 580}
"""NVIDIA's CUDA compatibility table (Linux): the oldest driver branch that runs any toolkit of that
major release through minor-version compatibility (11.x: 450.80.02, 12.x: 525.60.13, 13.x: 580)."""

SNAPSHOT_DIR = Path(__file__).resolve().parent / "torch_metadata"
TARGET_MARKERS = {"platform_system": "Linux", "platform_machine": "x86_64", "sys_platform": "linux",
                  "python_version": "3.11", "python_full_version": "3.11.0", "os_name": "posix"}
"""The Azure ML node: Linux x86-64, the project's Python."""

_CU_SUFFIX = re.compile(r"^nvidia-.+-cu(\d+)$")
_VERSIONED = {"cuda-toolkit", "cuda-bindings", "nvidia-cuda-runtime"}


def cuda_major(requires_dist: Iterable[str]) -> int | None:
    """The CUDA major release a wheel's requirements pull in on a Linux x86-64 node (None: no CUDA)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    majors: list[int] = []
    for line in requires_dist:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({**TARGET_MARKERS, "extra": ""}):
            continue
        name = canonicalize_name(req.name)
        suffix = _CU_SUFFIX.match(name)
        if suffix:
            majors.append(int(suffix.group(1)))
        elif name in _VERSIONED:
            pinned = [spec.version for spec in req.specifier if spec.operator in ("==", "===", ">=", "~=")]
            majors.extend(int(version.split(".")[0]) for version in pinned)
    return max(majors) if majors else None


def min_driver(requires_dist: Iterable[str]) -> int | None:
    """The oldest NVIDIA driver branch that runs the wheel's CUDA (None: a CPU-only wheel)."""
    major = cuda_major(requires_dist)
    if major is None:
        return None
    if major not in MIN_DRIVER_BY_CUDA_MAJOR:
        raise ValueError(f"CUDA {major}: not in the driver table; add NVIDIA's minimum driver for it")
    return MIN_DRIVER_BY_CUDA_MAJOR[major]


def torch_requires(version: str, snapshot_dir: Path = SNAPSHOT_DIR) -> list[str]:
    """PyPI's Requires-Dist of torch==VERSION's Linux wheel, as recorded."""
    path = snapshot_dir / f"torch-{version}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no recorded metadata for torch {version} in {snapshot_dir}; record it with "
            f"`python {snapshot_dir / 'refresh.py'} {version}`"
        )
    return list(json.loads(path.read_text(encoding="utf-8"))["requires_dist"])


def pip_requirements(conda_file: Mapping[str, Any]) -> list[str]:
    """The pip lines of a conda file (the `pip:` list among its dependencies)."""
    return [line for dep in conda_file.get("dependencies", []) if isinstance(dep, dict) for line in dep.get("pip", [])]


def torch_version(requirements: Iterable[str]) -> str | None:
    for line in requirements:
        match = re.fullmatch(r"\s*torch\s*==\s*([0-9][^;\s]*)\s*", line)
        if match:
            return match.group(1)
        if re.match(r"\s*torch\b(?![-_.\w])", line):
            raise ValueError(f"{line!r}: pin torch with == so its build (and CUDA) is known")
    return None


def environment_driver_problem(conda_file: Mapping[str, Any], driver: int = AZURE_ML_DRIVER,
                               snapshot_dir: Path = SNAPSHOT_DIR) -> str | None:
    """Why this environment's torch would not see the GPU on a node with `driver`, or None when it would."""
    return driver_problem(pip_requirements(conda_file), driver, snapshot_dir)


def require_gpu_torch(requirements: Iterable[str], what: str) -> None:
    """UserError when the torch these pip requirements install would see no GPU on Azure ML (or cannot be checked)."""
    from common.cli import UserError

    try:
        problem = driver_problem(requirements)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(f"cannot check the torch of {what}: {err}") from None
    if problem:
        raise UserError(f"{what}: {problem}")


def driver_problem(requirements: Iterable[str], driver: int = AZURE_ML_DRIVER,
                   snapshot_dir: Path = SNAPSHOT_DIR) -> str | None:
    """Why the torch these pip requirements pin would not see the GPU on a node with `driver`, or None."""
    version = torch_version(requirements)
    if version is None:
        return None
    needed = min_driver(torch_requires(version, snapshot_dir))
    if needed is None or needed <= driver:
        return None
    return (f"torch=={version} from PyPI is a CUDA {cuda_major(torch_requires(version, snapshot_dir))} build that needs "
            f"NVIDIA driver >= {needed}; Azure ML nodes run {driver}, so torch would see no GPU. "
            "Pin a CUDA 12 build (common.pins.CLOUD_TORCH_PIN).")


# -- serving images ------------------------------------------------------------------------------------

IMAGE_CUDA_MAJOR: Mapping[str, int] = {
    "vllm/vllm-openai:v0.32.0-cu129": 12,
}
"""The CUDA major of each serving image this project pins (deployment/serving/Dockerfile.vllm). vLLM's
tags: since vllm-project/vllm PR #39878 (2026-04) the unsuffixed tags (`latest`, `vX.Y.Z`) are CUDA 13.0
builds and `-cu129` marks the CUDA 12.9 variant; before it, unsuffixed meant 12.x."""
_CUDA_SUFFIX = re.compile(r"-cu(\d{2,3})$")


def image_cuda_major(image: str) -> int:
    """The CUDA major of a serving image: recorded, else read from a `-cuNNN` tag suffix; an unsuffixed or
    `latest` vLLM tag is CUDA 13. A ValueError for what cannot be known offline."""
    if image in IMAGE_CUDA_MAJOR:
        return IMAGE_CUDA_MAJOR[image]
    repository, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "latest")
    suffix = _CUDA_SUFFIX.search(tag)
    if suffix:
        return int(suffix.group(1)[:-1])  # cu129 -> 12, cu130 -> 13
    if repository.endswith("vllm/vllm-openai"):
        return 13
    raise ValueError(f"{image}: its CUDA version is not recorded in common/cuda_driver.py IMAGE_CUDA_MAJOR")


def image_driver_problem(image: str, driver: int = AZURE_ML_DRIVER) -> str | None:
    """Why a GPU serving image would see no GPU on a node with `driver` (or is not pinned), or None."""
    tag = image.rsplit("/", 1)[-1].partition(":")[2] or "latest"
    if tag.startswith("latest"):
        return (f"{image}: never a `latest` tag: it moves (and vLLM's `latest` is a CUDA 13 build since "
                "vllm-project/vllm PR #39878). Pin a version with a CUDA 12 build, e.g. vllm/vllm-openai:vX.Y.Z-cu129.")
    major = image_cuda_major(image)
    needed = MIN_DRIVER_BY_CUDA_MAJOR.get(major)
    if needed is None or needed > driver:
        return (f"{image} is a CUDA {major} build that needs NVIDIA driver >= {needed}; Azure ML nodes run {driver} "
                "(CUDA 12.x only), so it would see no GPU. Pin its CUDA 12 variant (a -cu129 tag).")
    return None
