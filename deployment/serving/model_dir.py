"""Find the model to serve in a folder, in any of the three layouts this project meets.

- a `save_pretrained` folder (`config.json` beside the weights and the tokenizer);
- the trainer's MLflow output (`MLmodel`, `model/`, `components/tokenizer/`);
- the azureml registry pipeline's `hftransformers` MLflow folder (`MLmodel`, `data/model/`,
  `data/tokenizer/`, `data/config/`, plus `code/` and `conda.yaml`), whose `MLmodel` carries
  `model_hf_load_kwargs` / `tokenizer_hf_load_kwargs` / `config_hf_load_kwargs`.

On Azure, AZUREML_MODEL_DIR is a folder that holds the registered model folder; locally it may be
the model folder itself, so the search goes a few levels deep (breadth first). Standard library
only (plus yaml for MLmodel), so `--help` and the checks before loading stay instant.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SEARCH_DEPTH = 2  # $AZUREML_MODEL_DIR/<folder>/ on Azure; one more level for safety
HFTRANSFORMERS_FLAVORS = ("hftransformersv2", "hftransformers")
# Load kwargs from MLmodel that this server honours; the rest (device_map, low_cpu_mem_usage, ...)
# are decided by the server itself for the device it runs on.
DTYPE_KWARGS = ("torch_dtype", "dtype")


@dataclass(frozen=True)
class ModelLocation:
    """Where the weights and the tokenizer are, which layout held them, and its load options."""

    weights_dir: Path
    tokenizer_dir: Path
    layout: str  # "hf", "mlflow" (the trainer's) or "hftransformers" (the registry pipeline's)
    trust_remote_code: bool = False  # what MLmodel asked for; the loader decides whether to honour it
    dtype: str | None = None  # e.g. "bfloat16" from model_hf_load_kwargs
    load_kwargs: dict[str, Any] = field(default_factory=dict)  # the raw MLmodel kwargs, for the log

    def describe(self) -> str:
        return f"{self.layout} model {self.weights_dir}"


def _read_mlmodel(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise FileNotFoundError(f"{path} is not readable YAML ({type(err).__name__})") from None
    return data if isinstance(data, dict) else {}


def _hftransformers(folder: Path) -> ModelLocation | None:
    """The registry pipeline's layout: MLmodel + data/model + data/tokenizer (+ data/config)."""
    data = folder / "data"
    if not ((data / "model" / "config.json").is_file() or (data / "config" / "config.json").is_file()):
        return None
    weights = data / "model"
    if not (weights / "config.json").is_file():
        raise FileNotFoundError(f"{weights} has no config.json (the hftransformers layout keeps weights and config there)")
    tokenizer = data / "tokenizer" if (data / "tokenizer" / "tokenizer_config.json").is_file() else weights
    flavors = _read_mlmodel(folder / "MLmodel").get("flavors") or {}
    conf = next((flavors[name] for name in HFTRANSFORMERS_FLAVORS if isinstance(flavors.get(name), dict)), {})
    kwargs: dict[str, Any] = {}
    for key in ("config_hf_load_kwargs", "tokenizer_hf_load_kwargs", "model_hf_load_kwargs", "model_hf_load_args"):
        if isinstance(conf.get(key), dict):
            kwargs[key] = dict(conf[key])
    trust = any(bool(v.get("trust_remote_code")) for v in kwargs.values())
    model_kwargs = {**kwargs.get("model_hf_load_args", {}), **kwargs.get("model_hf_load_kwargs", {})}
    dtype = next((str(model_kwargs[k]) for k in DTYPE_KWARGS if model_kwargs.get(k)), None)
    if dtype:
        dtype = dtype.removeprefix("torch.")
    return ModelLocation(weights, tokenizer, "hftransformers", trust, dtype, kwargs)


def _as_model(folder: Path) -> ModelLocation | None:
    """`folder` as one of the three layouts, else None."""
    mlflow = (folder / "MLmodel").is_file()
    if mlflow:
        found = _hftransformers(folder)
        if found:
            return found
    weights = folder / "model" if mlflow else folder
    if (weights / "adapter_config.json").is_file() and not (weights / "config.json").is_file():
        raise FileNotFoundError(
            f"{weights} holds a LoRA adapter, not a model: deploy the merged model the trainer saves"
        )
    if mlflow and (weights / "config.json").is_file():
        tokenizer = folder / "components" / "tokenizer"
        if not (tokenizer / "tokenizer_config.json").is_file():
            tokenizer = weights  # older MLflow versions kept the tokenizer beside the weights
        return ModelLocation(weights, tokenizer, "mlflow")
    if (folder / "config.json").is_file():
        return ModelLocation(folder, folder, "hf")
    return None


def _name(location: ModelLocation) -> str:
    return str(location.weights_dir.parent if location.layout != "hf" else location.weights_dir)


def locate_model(root: Path | str) -> ModelLocation:
    """Search `root` shallowly (breadth first) for the one model folder in it.

    Raises FileNotFoundError saying what was expected, also when the shallowest level holding a
    model holds several (which one to serve would be a guess).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"model directory {root} does not exist or is not a folder")
    level = [root]
    for _ in range(SEARCH_DEPTH + 1):
        found = [location for location in map(_as_model, level) if location]
        if len(found) > 1:
            names = ", ".join(_name(f) for f in found[:4])
            raise FileNotFoundError(f"several models under {root} ({names}): point at one of them")
        if found:
            return found[0]
        following: list[Path] = []
        for folder in level:
            try:
                following.extend(sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))
            except OSError:
                continue
        level = following
    raise FileNotFoundError(
        f"no model found in {root}: expected a save_pretrained folder (config.json), the trainer's MLflow "
        "model (MLmodel, model/, components/tokenizer/) or an azureml hftransformers model (MLmodel, "
        f"data/model/, data/tokenizer/), at most {SEARCH_DEPTH} folders deep"
    )
