"""The prepared data files, checked locally, and their Azure ML data assets (uploaded once).

`python -m training.data ... --out DIR` writes DIR/train.jsonl and DIR/test.jsonl. Each becomes
a uri_file data asset whose version is a prefix of the file's sha256: a second submit with the
same data finds the asset and uploads nothing (a plain local Input would upload on every submit).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.cli import UserError, say

TRAIN_FILE = "train.jsonl"
EVAL_FILE = "test.jsonl"
ASSET_NAMES = {"train": "finetune-phi-train", "eval": "finetune-phi-eval"}


@dataclass(frozen=True)
class DataFile:
    role: str
    """train or eval."""
    path: Path
    sha256: str

    @property
    def asset_name(self) -> str:
        return ASSET_NAMES[self.role]

    @property
    def version(self) -> str:
        return self.sha256[:16]

    @property
    def ref(self) -> str:
        return f"azureml:{self.asset_name}:{self.version}"


@dataclass(frozen=True)
class DataFiles:
    train: DataFile
    eval: DataFile

    @property
    def hash(self) -> str:
        """One short hash naming this train/eval pair (a job tag)."""
        return hashlib.sha256((self.train.sha256 + self.eval.sha256).encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def prepare_hint(data_dir: Path, source: str) -> str:
    return f"Prepare it with `python -m training.data --source {source} --out {data_dir}` (or pass --data DIR)."


def check_data(data_dir: Path, *, source_hint: str = "hf") -> DataFiles:
    """Both files present with valid rows, or one message saying what is wrong and how to make them."""
    from training.data import require_valid_rows  # the row check training.data runs

    if data_dir.is_file():
        raise UserError(
            f"the data folder {data_dir} is a file; --data takes the folder that holds {TRAIN_FILE} and {EVAL_FILE} "
            f"(here perhaps {data_dir.parent})."
        )
    missing = []
    for name in (TRAIN_FILE, EVAL_FILE):
        path = data_dir / name
        if not path.is_file() or path.stat().st_size == 0:
            missing.append(name)
    if missing:
        what = "does not exist" if not data_dir.is_dir() else f"lacks {' and '.join(missing)} (or they are empty)"
        raise UserError(f"the data folder {data_dir} {what}. {prepare_hint(data_dir, source_hint)}")
    train, evaluation = data_dir / TRAIN_FILE, data_dir / EVAL_FILE
    require_valid_rows(train, evaluation, hint=prepare_hint(data_dir, source_hint))
    return DataFiles(
        train=DataFile("train", train.resolve(), _sha256(train)),
        eval=DataFile("eval", evaluation.resolve(), _sha256(evaluation)),
    )


def ensure_data_asset(ml_client: Any, data: DataFile) -> str:
    """Reuse the asset version with this content, or upload and register it; returns its reference."""
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Data
    from azure.core.exceptions import ResourceNotFoundError

    from common.azure import azure_errors

    with azure_errors(f"looking up data asset {data.asset_name}:{data.version}"):
        try:
            ml_client.data.get(name=data.asset_name, version=data.version)
            say(f"    data {data.asset_name}:{data.version} exists: reused (no upload)")
            return data.ref
        except ResourceNotFoundError:
            pass
    asset = Data(
        name=data.asset_name,
        version=data.version,
        type=AssetTypes.URI_FILE,
        path=str(data.path),
        description=f"finetune-phi {data.role} split ({data.path.name})",
        tags={"sha256": data.sha256, "finetune-phi": "data"},
    )
    with azure_errors(f"uploading data asset {data.asset_name}:{data.version}"):
        ml_client.data.create_or_update(asset)
    say(f"    data {data.asset_name}:{data.version} uploaded ({data.path.stat().st_size / 1e6:.1f} MB)")
    return data.ref


def ensure_data_assets(ml_client: Any, files: DataFiles) -> dict[str, str]:
    return {"train": ensure_data_asset(ml_client, files.train), "eval": ensure_data_asset(ml_client, files.eval)}
