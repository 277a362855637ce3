"""The job's code folder: a copy of training/trainer/ named `trainer/`, with the run's settings file in it.

The job runs `python -m trainer.fine_tune --config trainer/settings.yaml`. The trainer is a package
whose modules import their siblings relatively; on the cluster it must sit in a folder named
`trainer` under the job's working directory. Uploading training/ itself would ship the whole CLI,
so the trainer alone, plus `settings.yaml` (training.trainer.settings.dump), is staged under
runs/staged/trainer-<hash>/ (hash of those files: an unchanged trainer with unchanged settings is
staged and uploaded once; Azure ML hashes code snapshots too). The dry run stages it as well, so
its YAML submits as printed with `az ml job create -f`, and `--target local` reads the same file.
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
SETTINGS_FILE = f"{PACKAGE}/settings.yaml"
"""The run's settings file, relative to the staged folder (the job's working directory)."""
_SKIP = ("__pycache__", ".pytest_cache")


def _files(source: Path) -> list[Path]:
    return sorted(p for p in source.rglob("*")
                  if p.is_file() and not any(part in _SKIP for part in p.relative_to(source).parts)
                  and p.suffix not in (".pyc", ".pyo"))


def content_hash(source: Path = TRAINER_DIR, settings_text: str = "") -> str:
    digest = hashlib.sha256()
    for path in _files(source):
        digest.update(path.relative_to(source).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(SETTINGS_FILE.encode() + b"\0" + settings_text.encode())
    return digest.hexdigest()[:16]


def stage_trainer(settings_text: str, source: Path = TRAINER_DIR, root: Path | None = None) -> Path:
    """The folder to upload as the job's code (`trainer/` and `trainer/settings.yaml`); made once per content."""
    root = root or runs.staged_dir()
    target = root / f"trainer-{content_hash(source, settings_text)}"
    if (target / SETTINGS_FILE).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        for path in _files(source):
            dest = scratch / PACKAGE / path.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        (scratch / SETTINGS_FILE).write_text(settings_text, encoding="utf-8")
        os.replace(scratch, target)  # atomic: a half-copied trainer is never uploaded
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)
        if not (target / SETTINGS_FILE).is_file():
            raise
    return target
