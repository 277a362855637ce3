"""Both Azure ML environments check their torch against Azure ML's NVIDIA driver where they are built."""
from __future__ import annotations

import pytest

from common import pins
from common.cli import UserError


def test_both_environments_build_with_the_cloud_torch() -> None:
    from deployment.environment import serve_requirements
    from training.environment import conda_spec

    assert pins.CLOUD_TORCH_PIN in serve_requirements()
    assert pins.CLOUD_TORCH_PIN in conda_spec()["dependencies"][-1]["pip"]


@pytest.mark.parametrize("build", ["training", "serving"])
def test_a_cuda_13_torch_is_refused_before_anything_is_uploaded(build: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from deployment.environment import serving_environment
    from training.environment import environment_spec

    monkeypatch.setattr(pins, "CLOUD_TORCH_PIN", "torch==2.13.0")  # PyPI's CUDA 13 build: needs driver >= 580
    with pytest.raises(UserError, match=r"torch==2\.13\.0 .* CUDA 13 build .* driver >= 580; Azure ML nodes run 535"):
        environment_spec() if build == "training" else serving_environment()


def test_a_torch_whose_build_is_unknown_cannot_pass_unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    from deployment.environment import serving_environment

    monkeypatch.setattr(pins, "CLOUD_TORCH_PIN", "torch==9.9.9")
    with pytest.raises(UserError, match=r"cannot check the torch of the serving environment .*refresh\.py 9\.9\.9"):
        serving_environment()
