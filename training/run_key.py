"""What "the same run" is: a key from the model and its revision, the data's content, and the resolved settings.

A run started again with the same key continues from its newest complete checkpoint: locally in
`runs/jobs/<key>` (training.local_target), on Azure ML from the newest unfinished job tagged
`resume-key: <key>` (training.azure_submit). Settings that do not change what is trained
(logging, evaluation cadence, checkpoint interval: `weights=False` in the trainer's settings) are
left out, so changing them does not start over. The world size is not in the key: a changed
world size is refused on resume instead (the data order would not continue where it stopped).

The key reads `<model name>-<12 hex digits>`, e.g. `phi-3.5-mini-instruct-3f9a1c0b7d2e`.
Standard library only: the dry run computes it.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Mapping

from training.trainer import settings

TAG = "resume-key"
"""The Azure ML job tag that carries the key."""
CONTENT_HASHED_BYTES = 16 << 20
"""Files of a local model folder up to this size are hashed by content; bigger ones (weights) by size and mtime."""


def _folder_identity(folder: Path) -> dict[str, str]:
    """A local model folder's files: small ones by content, big ones by size and modification time (reading
    gigabytes of weights at every submit would cost more than it protects)."""
    identity = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        name = path.relative_to(folder).as_posix()
        if stat.st_size <= CONTENT_HASHED_BYTES:
            identity[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            identity[name] = f"size {stat.st_size}, mtime {stat.st_mtime_ns}"
    return identity


def model_identity(model: str, revision: str | None) -> dict[str, Any]:
    """A hub id with its revision, a registered model `azureml:NAME:VERSION`, or a local folder's files."""
    folder = Path(model)
    if not model.startswith("azureml:") and folder.is_dir():
        return {"folder": _folder_identity(folder)}
    return {"model": model, "revision": revision}


def weight_settings(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved hyperparameters that change what is trained."""
    changes = {f.name for f in settings.hyperparameters() if f.metadata["weights"]}
    return {name: settings.text(value) for name, value in sorted(resolved.items()) if name in changes}


def _short_name(model: str) -> str:
    name = model.removeprefix("azureml:").split(":")[0].rstrip("/").split("/")[-1].lower()
    return re.sub(r"[^a-z0-9.-]+", "-", name).strip("-.")[:40] or "model"


def compute(model: str, revision: str | None, train_sha256: str, eval_sha256: str, resolved: Mapping[str, Any]) -> str:
    """The run key for this model, these data files (their sha256) and these resolved hyperparameters."""
    what = {"model": model_identity(model, revision), "data": [train_sha256, eval_sha256],
            "settings": weight_settings(resolved)}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"{_short_name(model)}-{digest[:12]}"
