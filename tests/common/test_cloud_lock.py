"""requirements-cloud.lock: the cloud images install the full locked set, torch on CUDA 12.

The dry runs are the real command lines (`training.submit --dry-run`, `deployment.deploy --dry-run`
on a CPU instance type); what they print or stage is what Azure ML would build. Whether the lock
really covers each package's dependencies is checked against metadata the lock did not write:
the packages installed on this machine at the same version.
"""
from __future__ import annotations

import importlib.metadata
import io
import re
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml
from fakes.inputs import write_data, write_stack_outputs
from packaging.requirements import Requirement

from common import cloud_lock, cuda_driver
from common.cli import UserError
from common.pins import CLOUD_TORCH_PIN, package_name

MUST_PIN = ("safetensors", "huggingface-hub", "tokenizers", "numpy")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_PHI_RUNS", str(tmp_path / "runs"))


def pinned(lines: list[str]) -> dict[str, str]:
    """name -> version of `name==version` lines; any other form fails the test."""
    found = {}
    for line in lines:
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line.strip())
        assert match, f"{line!r} is not pinned with =="
        found[package_name(match[1])] = match[2]
    return found


def locked(image: str) -> dict[str, str]:
    return {name: entry.version for name, entry in cloud_lock.read().items() if image in entry.images}


def check_cuda12_and_the_named_pins(versions: dict[str, str]) -> None:
    assert versions["torch"] == CLOUD_TORCH_PIN.partition("==")[2] == "2.10.0"
    cuda = {name: version for name, version in versions.items() if name.startswith("nvidia-")}
    assert cuda and all(name.endswith("-cu12") for name in cuda), cuda  # CUDA 12 wheels only, no -cu13
    assert versions["nvidia-cuda-runtime-cu12"].startswith("12.8.")
    for name in MUST_PIN:
        assert name in versions, f"{name} is not pinned"


def covers_its_dependencies(versions: dict[str, str]) -> int:
    """Every dependency (on Linux x86-64, Python 3.11) of each listed package that this machine has
    at the same version is listed too. Returns how many packages could be checked that way."""
    checked = 0
    for name, version in versions.items():
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if dist.version != version:
            continue
        checked += 1
        for line in dist.requires or ():
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({**cuda_driver.TARGET_MARKERS, "extra": ""}):
                assert package_name(req.name) in versions, f"{name}=={version} needs {req}, which is not pinned"
    return checked


# ---------------------------------------------------------------- the images, through their dry runs


def test_the_training_dry_run_installs_the_whole_locked_set(tmp_path: Path) -> None:
    from training import submit

    argv = ["--outputs-file", str(write_stack_outputs(tmp_path / "outputs.json")),
            "--data", str(write_data(tmp_path / "data")), "--model", "tiny", "--dry-run"]
    out = io.StringIO()
    with redirect_stdout(out):
        assert submit.main(argv) == 0
    conda_file = yaml.safe_load(out.getvalue())["environment"]["conda_file"]
    versions = pinned(cuda_driver.pip_requirements(conda_file))
    assert versions == locked("train")  # the top-level pins and everything they pull in, as locked
    check_cuda12_and_the_named_pins(versions)
    assert cuda_driver.environment_driver_problem(conda_file) is None  # runs on Azure ML's driver 535
    assert covers_its_dependencies(versions) > 50


def test_the_cpu_serving_dry_run_installs_with_the_lock_as_constraints(tmp_path: Path) -> None:
    from deployment import deploy

    argv = ["--outputs-file", str(write_stack_outputs(tmp_path / "outputs.json")),
            "--instance-type", "Standard_E4s_v3", "--dry-run"]
    out = io.StringIO()
    with redirect_stdout(out):
        assert deploy.main(argv) == 0
    deployment = next(doc for doc in yaml.safe_load_all(out.getvalue()) if doc and "instance_type" in doc)
    context = Path(deployment["environment"]["build"]["path"])
    dockerfile = (context / "Dockerfile").read_text()
    assert re.search(r"pip install .*-r /tmp/requirements\.txt -c /tmp/constraints\.txt", dockerfile)
    assert "COPY requirements.txt constraints.txt /tmp/" in dockerfile
    requirements = pinned((context / "requirements.txt").read_text().split())
    constraints = pinned((context / "constraints.txt").read_text().split())
    assert not set(requirements) & set(constraints)  # one pin per package: the two never disagree
    versions = {**requirements, **constraints}
    assert versions == locked("serve")
    check_cuda12_and_the_named_pins(versions)
    assert {"safetensors", "huggingface-hub", "numpy"} <= set(constraints)  # pulled in: only the lock pins them
    assert covers_its_dependencies(versions) > 20


def test_the_lock_is_current_with_the_images_pins() -> None:
    """A pin changed in pyproject.toml without `make lock` fails here (and warns at submit and deploy)."""
    for image, requirements in cloud_lock.image_requirements().items():
        lock = cloud_lock.read()
        for requirement in requirements:
            name, _, version = requirement.partition("==")
            entry = lock.get(package_name(name))
            assert entry and entry.version == version and image in entry.images, f"{image}: {requirement}; run `make lock`"


def test_the_lock_says_how_it_was_made(repo_root: Path) -> None:
    text = (repo_root / "requirements-cloud.lock").read_text()
    assert "make lock" in text.splitlines()[1] and "Linux x86-64, CPython 3.11" in text.splitlines()[0]
    names = [line.split("==")[0] for line in text.splitlines() if line and not line.startswith("#")]
    assert names == sorted(names) and len(names) == len(set(names))
    assert all(entry.images for entry in cloud_lock.read().values())  # every package belongs to an image


# ---------------------------------------------------------------- the readers


def write_lock(path: Path, body: str) -> Path:
    path.write_text(cloud_lock.HEADER + body, encoding="utf-8")
    return path


def test_constraints_keep_the_images_own_pins_and_warn_when_the_lock_is_stale(tmp_path: Path, capsys) -> None:
    lock = write_lock(tmp_path / "lock", "a==1  # train serve\nb==2  # train\nc==3  # serve\n")
    assert cloud_lock.constraints("train", ["a==1"], lock) == ["b==2"]
    assert capsys.readouterr().err == ""
    assert cloud_lock.constraints("train", ["a==1.1"], lock) == ["b==2"]  # the image's own pin wins ...
    warning = capsys.readouterr().err  # ... and the stale lock is named
    assert "out of date for the train image: a==1.1 (lock: 1)" in warning and "run `make lock`" in warning
    with pytest.raises(UserError, match="no packages for the `vllm` image"):
        cloud_lock.constraints("vllm", [], lock)


def test_pins_for_constrains_only_the_named_packages(tmp_path: Path) -> None:
    """What the vLLM image calls: its base brings torch and CUDA; we pin only what we add."""
    lock = write_lock(tmp_path / "lock", "fastapi==0.141.1  # serve\ntorch==2.10.0  # train serve\n")
    assert cloud_lock.pins_for(["FastAPI"], lock) == ["fastapi==0.141.1"]
    with pytest.raises(UserError, match="openai not in the cloud lock"):
        cloud_lock.pins_for(["openai"], lock)


def test_a_broken_or_missing_lock_is_one_message(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="restore it from git or run `make lock`"):
        cloud_lock.read(tmp_path / "absent")
    line = len(cloud_lock.HEADER.splitlines()) + 2
    with pytest.raises(UserError, match=rf"lock:{line}: 'numpy>=2  # train' is not NAME==VERSION"):
        cloud_lock.read(write_lock(tmp_path / "lock", "a==1  # train\nnumpy>=2  # train\n"))


# ---------------------------------------------------------------- the locking


def report(*items: tuple[str, str, list[str]]) -> dict:
    environment = {"sys_platform": "linux", "platform_machine": "x86_64", "platform_system": "Linux",
                   "python_version": "3.11", "python_full_version": "3.11.7", "os_name": "posix",
                   "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    return {"environment": environment, "install": [
        {"metadata": {"name": name, "version": version, "requires_dist": requires}} for name, version, requires in items]}


def test_each_image_gets_its_own_closure_with_markers_and_extras() -> None:
    resolved = report(
        ("app", "1", ["Lib[fast]>=1", 'winonly; sys_platform == "win32"', 'extraonly; extra == "docs"']),
        ("lib", "2", ["core", 'speedup; extra == "fast"']),
        ("core", "3", []), ("speedup", "4", ['core; platform_machine == "x86_64"']),
        ("server", "5", ["core"]), ("winonly", "6", []), ("extraonly", "7", []),
    )
    assert cloud_lock.closure(resolved, ["app==1"]) == {"app", "lib", "core", "speedup"}
    assert cloud_lock.closure(resolved, ["server==5"]) == {"server", "core"}
    text = cloud_lock.render(resolved, {"train": ["app==1"], "serve": ["server==5"]})
    assert text.startswith(cloud_lock.HEADER)
    assert text.splitlines()[len(cloud_lock.HEADER.splitlines()):] == [
        "app==1  # train", "core==3  # train serve", "extraonly==7  # ", "lib==2  # train",
        "server==5  # serve", "speedup==4  # train", "winonly==6  # "]


def test_locking_refuses_another_platform_and_a_cuda13_torch() -> None:
    with pytest.raises(UserError, match="Linux x86-64 with Python 3.11"):
        cloud_lock.check_platform({"sys_platform": "darwin", "platform_machine": "arm64", "python_version": "3.11"})
    cloud_lock.check_platform(report()["environment"])
    new = cuda_driver.torch_requires("2.13.0")
    with pytest.raises(UserError, match="torch 2.10.0 on CUDA 12"):
        cloud_lock.check_torch(report(("torch", "2.13.0", new)))
    cloud_lock.check_torch(report(("torch", "2.10.0", cuda_driver.torch_requires("2.10.0"))))


def test_pip_is_asked_for_the_images_platform_without_the_local_wheels(monkeypatch, tmp_path: Path) -> None:
    """The command line `make lock` runs (pip itself needs the network, so it is not run here)."""
    import json
    import subprocess

    seen = {}

    def fake_run(command, env, **kwargs):
        seen.update(command=command, env=env)
        Path(command[command.index("--report") + 1]).write_text(json.dumps(report()))
        return subprocess.CompletedProcess(command, 0, "")

    monkeypatch.setattr(cloud_lock.subprocess, "run", fake_run)
    assert cloud_lock.pip_report(["torch==2.10.0"]) == report()
    command = seen["command"]
    assert command[1:5] == ["-m", "pip", "install", "--isolated"]
    assert {"--dry-run", "--ignore-installed", "--only-binary=:all:", "--python-version=3.11"} <= set(command)
    assert "--platform=manylinux_2_28_x86_64" in command and "--platform=manylinux_2_17_x86_64" in command
    assert seen["env"]["PIP_FIND_LINKS"] == "" and seen["env"]["PIP_CONSTRAINT"] == ""
