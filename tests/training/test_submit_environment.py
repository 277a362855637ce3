"""The environments dry runs produce install a torch build that Azure ML's NVIDIA driver 535 runs.

The fact lives in the wheels' metadata: PyPI's torch 2.13.0 requires `cuda-toolkit==13.0.3` and
`nvidia-*-cu13` (driver >= 580); torch 2.10.0 requires `nvidia-*-cu12` 12.8 (driver >= 525).
Recorded from PyPI in common/torch_metadata/ (refresh.py there re-records it).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from common import cuda_driver
from common.pins import CLOUD_TORCH_PIN, conda_spec, extra_pins
from fakes.inputs import write_data, write_stack_outputs
from training import environment, submit


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_PHI_RUNS", str(tmp_path / "runs"))


def _environments(node: Any) -> Iterator[dict[str, Any]]:
    """Every inline environment (a mapping with a conda_file) anywhere in a job spec."""
    if isinstance(node, dict):
        if isinstance(node.get("environment"), dict):
            yield node["environment"]
        for value in node.values():
            yield from _environments(value)
    elif isinstance(node, list):
        for value in node:
            yield from _environments(value)


def _dry_run_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> dict[str, Any]:
    argv = ["--outputs-file", str(write_stack_outputs(tmp_path / "outputs.json")),
            "--data", str(write_data(tmp_path / "data")), "--dry-run", *flags]
    assert submit.main(argv) == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("recipe, expected", [("sft", 1), ("registry", 0)])
def test_dry_run_environments_run_on_the_azure_ml_driver(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         recipe: str, expected: int) -> None:
    """sft carries our environment; the registry pipeline's components bring their own (none of ours)."""
    spec = _dry_run_yaml(tmp_path, capsys, "--recipe", recipe)
    envs = list(_environments(spec))
    assert len(envs) == expected
    for env in envs:
        assert cuda_driver.torch_version(cuda_driver.pip_requirements(env["conda_file"])) == "2.10.0"
        assert cuda_driver.environment_driver_problem(env["conda_file"]) is None


def test_the_local_torch_build_would_see_no_gpu_on_azure_ml() -> None:
    """What the environment had before: the local `train` extra (torch 2.13.0, CUDA 13) is refused."""
    local = conda_spec("x", extra_pins("train"))
    problem = cuda_driver.environment_driver_problem(local)
    assert problem is not None and "torch==2.13.0" in problem and ">= 580" in problem and "535" in problem


def test_snapshot_facts_cuda_majors_and_drivers() -> None:
    new, cloud = cuda_driver.torch_requires("2.13.0"), cuda_driver.torch_requires("2.10.0")
    assert any(line.startswith("cuda-toolkit") and "==13.0.3" in line for line in new)
    assert any(line.startswith("nvidia-cuda-runtime-cu12==12.8") for line in cloud)
    assert (cuda_driver.cuda_major(new), cuda_driver.min_driver(new)) == (13, 580)
    assert (cuda_driver.cuda_major(cloud), cuda_driver.min_driver(cloud)) == (12, 525)
    assert cuda_driver.min_driver(new) > cuda_driver.AZURE_ML_DRIVER >= cuda_driver.min_driver(cloud)
    assert cuda_driver.min_driver(["filelock", "sympy>=1.13.3"]) is None  # a CPU-only wheel needs no driver
    # markers count: a requirement for another platform pulls nothing onto the node
    assert cuda_driver.cuda_major(['nvidia-nccl-cu13==2.29.7; platform_system == "Windows"']) is None


def test_snapshots_are_what_they_say(repo_root: Path) -> None:
    folder = repo_root / "common" / "torch_metadata"
    for path in folder.glob("torch-*.json"):
        data = json.loads(path.read_text())
        assert path.name == f"torch-{data['version']}.json" and data["name"] == "torch"
        assert data["wheel"].endswith("manylinux_2_28_x86_64.whl") and data["requires_dist"]
    assert cuda_driver.environment_driver_problem(conda_spec("x", [CLOUD_TORCH_PIN])) is None


def test_an_unpinned_torch_is_refused() -> None:
    with pytest.raises(ValueError, match="pin torch with =="):
        cuda_driver.torch_version(["torch>=2.10"])


def test_base_image_is_a_dated_cuda12_tag() -> None:
    """A `:latest` base inside a content-hashed environment never gets a new version when the base changes."""
    image = environment.environment_spec()["image"]
    assert re.fullmatch(r"mcr\.microsoft\.com/azureml/openmpi5\.0-cuda12\.\d+-ubuntu22\.04:\d{8}\.v\d+", image), image
