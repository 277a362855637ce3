"""Checkpoints that survive a preemption: the Trainer's own format, a completion marker, rotation.

A checkpoint is transformers' `checkpoint-<step>` folder (model or adapter, optimizer, scheduler,
`trainer_state.json`, one RNG file per rank), written by `Trainer._save_checkpoint` and read back
by `trainer.train(resume_from_checkpoint=...)`. What this module adds:

- **a marker** (`checkpoint-complete.json`), written last, by rank 0, after every rank has passed a
  barrier, and only when the weights are finite. A node that dies mid-write leaves a folder
  without it, and resume skips that folder (transformers' `get_last_checkpoint` would pick it).
  The marker also carries what a resumed run needs and the Trainer does not keep: the run key,
  the world size, the first segment's eval loss and the MLflow run id.
- **rotation** that keeps the newest K complete checkpoints and never deletes the newest one.
- **the decision when to save**: every `checkpoint_minutes`, and when a stop is requested (SIGTERM
  from the platform, Ctrl-C), at the end of the current step if steps ran since the last one.
  Ranks agree on both decisions (an all-reduce), so every rank enters the save together.
- **the stop itself**: the first SIGTERM or SIGINT asks to stop after the current step; a second
  SIGINT stops at once.

Standard library at import time; torch and transformers inside the functions that need them.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARKER = "checkpoint-complete.json"
PREFIX = "checkpoint-"
_STEP = re.compile(rf"^{PREFIX}(\d+)$")

log = logging.getLogger("fine_tune")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    info: dict[str, Any]
    """The marker's content (run key, world size, eval loss before training, MLflow run id)."""


def _step(folder: Path) -> int | None:
    match = _STEP.match(folder.name)
    return int(match.group(1)) if match and folder.is_dir() else None


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # absent, or cut short by the same crash: not complete
    return info if isinstance(info, dict) else None


def complete(root: str | Path) -> list[Checkpoint]:
    """The complete checkpoints under `root`, oldest first (a folder without a readable marker does not count)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        step = _step(folder)
        info = _read_marker(folder) if step is not None else None
        if step is not None and info is not None:
            found.append(Checkpoint(folder, step, info))
    return sorted(found, key=lambda c: c.step)


def newest(path: str | Path) -> Checkpoint | None:
    """The newest complete checkpoint at `path`: a folder of checkpoints, or one checkpoint folder itself."""
    path = Path(path)
    step, info = _step(path), _read_marker(path)
    if step is not None and info is not None:
        return Checkpoint(path, step, info)
    found = complete(path)
    return found[-1] if found else None


def incomplete(root: str | Path) -> list[Path]:
    """`checkpoint-<step>` folders under `root` without a marker: debris of a crash mid-write."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(f for f in root.iterdir() if _step(f) is not None and _read_marker(f) is None)


def write_marker(folder: Path, info: dict[str, Any]) -> None:
    """The marker, atomically (a temporary file renamed into place, flushed to disk first)."""
    tmp = folder / f".{MARKER}.tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(info, out, indent=2, default=str)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, folder / MARKER)


def rotate(root: str | Path, keep: int) -> list[Path]:
    """Keep the newest `keep` complete checkpoints; delete older ones and any incomplete folder. Never the newest."""
    done = complete(root)
    if not done:
        return []
    doomed = [c.path for c in done[:-max(keep, 1)]] + incomplete(root)
    for folder in doomed:
        shutil.rmtree(folder, ignore_errors=True)
    return doomed


def remove_all(root: str | Path) -> int:
    """Delete every `checkpoint-<step>` folder under `root` (after the model is saved); returns how many."""
    root = Path(root)
    folders = [f for f in root.iterdir() if _step(f) is not None] if root.is_dir() else []
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    return len(folders)


# ---------------------------------------------------------------- where a run resumes

class ResumeRefused(ValueError):
    """The checkpoint belongs to another run (key) or another world size, and no --resume_force."""


@dataclass(frozen=True)
class Resume:
    checkpoint: Checkpoint
    own: bool
    """From this run's own --checkpoint_dir (the same run goes on), not from --resume_from (another run's)."""


def choose(checkpoint_dir: str | None, resume_from: str | None, run_key: str | None, world_size: int,
           force: bool = False) -> Resume | None:
    """The newest complete checkpoint of this run's folder, else of --resume_from; refused on a key or world-size change."""
    own = newest(checkpoint_dir) if checkpoint_dir else None
    other = newest(resume_from) if resume_from and own is None else None
    if resume_from and own is None and other is None:
        log.warning("--resume_from %s holds no complete checkpoint; training starts at step 0", resume_from)
    chosen = Resume(own, True) if own else Resume(other, False) if other else None
    if chosen is None or force:
        return chosen
    info, where = chosen.checkpoint.info, chosen.checkpoint.path
    theirs = info.get("run_key")
    if run_key and theirs and theirs != run_key:
        raise ResumeRefused(
            f"checkpoint {where} belongs to run {theirs}, not to this run ({run_key}): the model, data or settings "
            "differ. Resume anyway with --resume_force true (training.submit: --force), or start over.")
    if int(info.get("world_size") or world_size) != world_size:
        raise ResumeRefused(
            f"checkpoint {where} was written by {info.get('world_size')} processes and this run has {world_size}: the "
            "data order would not continue where it stopped. Resume anyway with --resume_force true (training.submit: "
            "--force), or use the same number of nodes and GPUs.")
    return chosen


# ---------------------------------------------------------------- stopping on a signal

class StopRequest:
    """The first SIGTERM or SIGINT asks to stop after the current step; a second SIGINT stops now.

    A second SIGTERM changes nothing: the local runner forwards one after the terminal's Ctrl-C.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> "StopRequest":
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
            log.warning("received %s: finishing the current step, saving a checkpoint, then stopping "
                        "(Ctrl-C again stops at once)", signal.Signals(signum).name)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt


class Stopped(Exception):
    """Training stopped on request before its last step; the newest complete checkpoint says where it resumes."""

    def __init__(self, signum: int, step: int, checkpoint: Checkpoint | None) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        where = (f"checkpoint at step {checkpoint.step} in {checkpoint.path}" if checkpoint
                 else "no checkpoint was saved")
        super().__init__(f"stopped at step {step} ({where}); resume with the same command")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 143 for SIGTERM, 130 for SIGINT, as a shell reports a signal


# ---------------------------------------------------------------- the callback

@dataclass
class RunRecord:
    """What every marker carries beyond the Trainer's own state; filled as the run goes."""

    run_key: str | None
    world_size: int
    eval_loss_before: float | None = None
    mlflow_run_id: str | None = None
    resumed_from: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def marker(self, step: int) -> dict[str, Any]:
        return {"step": step, "run_key": self.run_key, "world_size": self.world_size,
                "eval_loss_before": self.eval_loss_before, "mlflow_run_id": self.mlflow_run_id,
                "resumed_from": self.resumed_from, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **self.extra}


def _agree(flags: list[bool]) -> list[bool]:
    """Each flag true on any rank is true on every rank (one small all-reduce; a no-op in one process)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flags
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def weights_finite(model: Any) -> bool:
    """Every trainable parameter is finite (a NaN or inf loss leaves NaN weights after its optimizer step)."""
    import torch

    with torch.no_grad():
        return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


def checkpoint_callback(root: str | Path | None, minutes: float, keep: int, record: RunRecord, stop: StopRequest,
                        resumed_step: int = 0):
    """The TrainerCallback that decides when to save, marks complete checkpoints, rotates, and stops.

    It also stops the run on a non-finite logged loss (`diverged` says where), and keeps no
    checkpoint from then on, nor one whose weights are not finite.
    """
    from transformers import TrainerCallback

    class Checkpoints(TrainerCallback):
        def __init__(self) -> None:
            self.last_saved_at = time.monotonic()
            self.last_saved_step = resumed_step
            self.diverged: tuple[int, float] | None = None
            self.stop_step: int | None = None

        def on_step_end(self, args, state, control, **kwargs):
            due = root is not None and time.monotonic() - self.last_saved_at >= minutes * 60
            due, stopping = _agree([due, stop.requested])
            last_step = state.global_step >= state.max_steps  # the model itself is saved next
            if stopping and not last_step:
                control.should_training_stop = True
                self.stop_step = state.global_step
                due = root is not None and state.global_step > self.last_saved_step
            if due and not last_step and self.diverged is None:
                control.should_save = True
            return control

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            loss = (metrics or {}).get("eval_loss")
            if record.eval_loss_before is None and isinstance(loss, (int, float)):
                record.eval_loss_before = float(loss)  # the first evaluation (eval_on_start), before any step
            if isinstance(loss, (int, float)) and not math.isfinite(loss):
                control.should_training_stop = True  # a base that is already non-finite: train() ends at step 1
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if isinstance(loss, (int, float)) and not math.isfinite(loss) and self.diverged is None:
                self.diverged = (state.global_step, float(loss))
                control.should_training_stop = True
                control.should_save = False
            return control

        def on_save(self, args, state, control, model=None, **kwargs):
            _barrier()  # every rank has written its part (rank 0 the model and state, each its RNG file)
            folder = Path(args.output_dir) / f"{PREFIX}{state.global_step}"
            finite = model is None or weights_finite(model)  # the same weights on every rank: each decides alike
            if not finite:
                self.diverged = self.diverged or (state.global_step, math.nan)
                control.should_training_stop = True
            if state.is_world_process_zero:
                if finite:
                    write_marker(folder, record.marker(state.global_step))
                    removed = rotate(folder.parent, keep)
                    log.info("checkpoint at step %d complete (%s)%s", state.global_step, folder,
                             f"; removed {len(removed)} older" if removed else "")
                else:
                    shutil.rmtree(folder, ignore_errors=True)  # never kept, never resumed from
            _barrier()
            self.last_saved_at, self.last_saved_step = time.monotonic(), state.global_step
            return control

    return Checkpoints()
