"""The job's code folder: a copy of training/trainer/ named `trainer/`, so the job runs `python -m trainer.fine_tune`.

The trainer is a package whose modules import their siblings relatively; on the cluster it must
sit in a folder named `trainer` under the job's working directory. Uploading training/ itself
would ship the whole CLI, so the trainer alone is staged under runs/staged/trainer-<hash>/ (hash
of its files: an unchanged trainer is staged and uploaded once; Azure ML hashes code snapshots
too). The dry run stages it as well, so its YAML submits as printed with `az ml job create -f`.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from common import runs

TRAINER_DIR = Path(__file__).resolve().parent / "trainer"
"""The trainer package (training.trainer locally), the only code a job uploads."""
PACKAGE = "trainer"
ENTRY_MODULE = f"{PACKAGE}.fine_tune"
_SKIP = ("__pycache__", ".pytest_cache")


def _files(source: Path) -> list[Path]:
    return sorted(p for p in source.rglob("*")
                  if p.is_file() and not any(part in _SKIP for part in p.relative_to(source).parts)
                  and p.suffix not in (".pyc", ".pyo"))


def content_hash(source: Path = TRAINER_DIR) -> str:
    digest = hashlib.sha256()
    for path in _files(source):
        digest.update(path.relative_to(source).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def stage_trainer(source: Path = TRAINER_DIR, root: Path | None = None) -> Path:
    """The folder to upload as the job's code (it holds `trainer/`); made once per trainer content."""
    root = root or runs.staged_dir()
    target = root / f"trainer-{content_hash(source)}"
    if (target / PACKAGE).is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        for path in _files(source):
            dest = scratch / PACKAGE / path.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        os.replace(scratch, target)  # atomic: a half-copied trainer is never uploaded
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)
        if not (target / PACKAGE).is_dir():
            raise
    return target
