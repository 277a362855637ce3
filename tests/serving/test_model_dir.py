"""deployment/model_dir.py: the three model layouts, found where Azure ML mounts them, or one clear refusal."""
from __future__ import annotations

from pathlib import Path

import pytest

from deployment.serving.model_dir import ModelLocation, locate_model
from serving.helpers import build_hftransformers_tree


def _mlflow_layout(folder: Path) -> Path:
    (folder / "model").mkdir(parents=True)
    (folder / "components" / "tokenizer").mkdir(parents=True)
    (folder / "MLmodel").write_text("flavors: {}\n")
    (folder / "model" / "config.json").write_text("{}")
    (folder / "components" / "tokenizer" / "tokenizer_config.json").write_text("{}")
    return folder


def test_trainer_mlflow_and_plain_layouts(tmp_path: Path) -> None:
    root = tmp_path / "azureml-models" / "finetune-phi" / "3"  # Azure ML mounts the registered folder in here
    mlflow = _mlflow_layout(root / "model")
    found = locate_model(root)
    assert (found.layout, found.weights_dir, found.tokenizer_dir) == ("mlflow", mlflow / "model", mlflow / "components" / "tokenizer")
    assert locate_model(mlflow).layout == "mlflow"  # the MLflow folder itself, not its model/ subfolder
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    assert locate_model(plain) == ModelLocation(plain, plain, "hf")


@pytest.mark.slow  # builds the tiny model (about 5 s)
def test_registry_hftransformers_layout(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The registry pipeline's tree: data/model and data/config both hold a config.json; the MLflow folder wins."""
    root = tmp_path / "azureml-models" / "phi3-registry" / "1"
    tree = build_hftransformers_tree(tiny_model_dir, root / "mlflow_model_folder")
    found = locate_model(root)
    assert found.layout == "hftransformers"
    assert (found.weights_dir, found.tokenizer_dir) == (tree / "data" / "model", tree / "data" / "tokenizer")
    assert found.trust_remote_code is True and found.dtype == "bfloat16"
    assert found.load_kwargs["tokenizer_hf_load_kwargs"]["padding_side"] == "right"
    assert locate_model(tree) == found
    from transformers import AutoConfig

    with pytest.raises(RuntimeError, match="own code ran"):  # the trap is armed: honouring MLmodel's flag would run it
        AutoConfig.from_pretrained(found.weights_dir, trust_remote_code=True)


def _two_models(p: Path) -> Path:
    for name in ("a", "b"):
        (p / name).mkdir()
        (p / name / "config.json").write_text("{}")
    return p


def _touch(p: Path, name: str) -> Path:
    (p / name).write_text("{}")
    return p


def _hf_without_weights_config(p: Path) -> Path:
    (p / "MLmodel").write_text("flavors: {}\n")
    (p / "data" / "config").mkdir(parents=True)
    (p / "data" / "config" / "config.json").write_text("{}")
    return p


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p, "no model found"),
        (lambda p: p / "missing", "does not exist"),
        (_two_models, "several models"),
        (lambda p: _touch(p, "MLmodel"), "no model found"),
        (lambda p: _touch(p, "adapter_config.json"), "LoRA adapter"),
        (_hf_without_weights_config, "has no config.json"),
    ],
    ids=["empty", "missing", "two-models", "mlflow-without-weights", "adapter-only", "hftransformers-no-model"],
)
def test_refusals(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(FileNotFoundError, match=message):
        locate_model(make(tmp_path))


@pytest.mark.slow  # builds the tiny model
def test_the_local_deploy_gets_a_one_line_description(tmp_path: Path, tiny_model_dir: Path) -> None:
    from deployment.serve import check_model_dir

    tree = build_hftransformers_tree(tiny_model_dir, tmp_path / "mlflow_model_folder")
    folder, description = check_model_dir(tmp_path)
    assert folder == tmp_path.resolve() and description == f"hftransformers model {tree / 'data' / 'model'}"
