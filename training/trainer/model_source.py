"""Where a base model's weights and tokenizer are: a hub id, a save_pretrained folder, or an MLflow model folder.

`training.submit --model azureml:NAME:VERSION` mounts a registered model, and deploy registers
every model as MLflow. Two MLflow layouts reach the trainer:

- the trainer's own output: `MLmodel`, `model/` (config.json and weights), `components/tokenizer/`;
- the azureml registry pipeline's `hftransformers` folder: `MLmodel`, `data/model/`,
  `data/tokenizer/` (and `data/config/`, `code/`, `conda.yaml`).

On Azure ML a mounted model input may be the model folder itself or a folder that holds it, so
one level below is searched too. Standard library only: the check runs before torch is imported.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# (weights, tokenizer) inside an MLflow folder, in the order they are tried
MLFLOW_LAYOUTS = (
    ("mlflow", Path("model"), Path("components") / "tokenizer"),
    ("hftransformers", Path("data") / "model", Path("data") / "tokenizer"),
)
EXPECTED = ("a save_pretrained folder (config.json), the trainer's MLflow model (MLmodel, model/, "
            "components/tokenizer/) or an azureml hftransformers MLflow model (MLmodel, data/model/, data/tokenizer/)")


class NotAModelFolder(ValueError):
    """A local folder in none of the layouts (the message names them)."""


@dataclass(frozen=True)
class ModelSource:
    weights: str
    """A hub id or the folder holding config.json and the weights."""
    tokenizer: str
    """A hub id or the folder holding the tokenizer files."""
    layout: str  # hub | hf | mlflow | hftransformers


def _tokenizer_files(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file()


def _as_model(folder: Path) -> ModelSource | None:
    if (folder / "MLmodel").is_file():
        for layout, weights, tokenizer in MLFLOW_LAYOUTS:
            if (folder / weights / "config.json").is_file():
                tok = folder / tokenizer if _tokenizer_files(folder / tokenizer) else folder / weights
                return ModelSource(str(folder / weights), str(tok), layout)
    if (folder / "config.json").is_file():
        return ModelSource(str(folder), str(folder), "hf")
    return None


def resolve(name_or_path: str) -> ModelSource:
    """The weights and tokenizer for `--model_name_or_path`; a hub id is passed through as is."""
    folder = Path(name_or_path)
    if not folder.exists():
        return ModelSource(name_or_path, name_or_path, "hub")
    if not folder.is_dir():
        raise NotAModelFolder(f"{folder} is a file; expected {EXPECTED}.")
    found = _as_model(folder)
    if found:
        return found
    below = [m for m in (_as_model(child) for child in sorted(folder.iterdir()) if child.is_dir()) if m]
    if len(below) == 1:
        return below[0]
    if below:
        raise NotAModelFolder(f"{folder} holds several models ({', '.join(m.weights for m in below[:3])}); point at one.")
    raise NotAModelFolder(f"{folder} is no model folder: expected {EXPECTED}.")
