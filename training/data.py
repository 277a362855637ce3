"""Prepare chat fine-tuning data: validate, sample, split, write train/test JSONL + manifest.

    python -m training.data --source {hf,sample,PATH} --out DIR [--fraction 1%|N]
                            [--test-size 0.2] [--seed 0] [--skip-bad-rows]

Rows are in the `HuggingFaceH4/ultrachat_200k` format (`prompt`, `prompt_id`, `messages`) and
are copied through unchanged. Every row is validated before anything is written; the whole
output set (train.jsonl, test.jsonl, manifest.json) appears at once or not at all.

Memory stays bounded at full scale (200k rows, ~1.4 GB): the source is read twice as a
stream. The first pass validates each line and keeps only its byte offset; the selection and
split are made on row indices; the second pass copies the chosen lines byte for byte.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from common.cli import ArgumentParser, UserError, say
from training.trainer.fine_tune import row_problem  # the trainer's rules: one definition of a valid row

HF_DATASET = "HuggingFaceH4/ultrachat_200k"
HF_SPLIT = "train_sft"
HF_DEFAULT_FRACTION = "1%"
OUTPUT_FILES = ("train.jsonl", "test.jsonl", "manifest.json")
MAX_REPORTED_PROBLEMS = 10
_BOM = b"\xef\xbb\xbf"


# ---------------------------------------------------------------- validation

def _strip_eol(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line


class _Progress:
    """A progress line on stderr at most every few seconds (long steps only)."""

    def __init__(self, what: str, total_bytes: int, every_s: float = 5.0) -> None:
        self.what, self.total, self.every = what, max(total_bytes, 1), every_s
        self.started = self.last = time.monotonic()

    def update(self, done_bytes: int, rows: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            say(f"    {self.what}: {100 * done_bytes / self.total:.0f}% ({rows:,} rows, {now - self.started:.0f}s)")


@dataclass
class Scan:
    """The result of the validation pass over one JSONL file."""

    offsets: array = field(default_factory=lambda: array("q"))  # byte offset of each good row
    rows_seen: int = 0
    problems: list[str] = field(default_factory=list)  # the first few, as `where: what`
    bad_rows: int = 0

    def listed(self) -> str:
        """The first problems, one indented line each, and how many more."""
        more = self.bad_rows - len(self.problems)
        return "".join(f"\n  {problem}" for problem in self.problems) + (f"\n  ... and {more} more" if more else "")


def scan_jsonl(path: Path, where: Callable[[int], str] | None = None) -> Scan:
    """Validate every row of `path`, keeping only the byte offsets of good rows.

    Blank lines are not rows and are ignored. `where(line_no)` names a location for messages
    (default `path:line`).
    """
    where = where or (lambda n: f"{path}:{n}")
    scan = Scan()
    progress = _Progress(f"validating {path.name}", path.stat().st_size)
    with open(path, "rb") as src:
        offset = 0
        for line_no, raw in enumerate(src, start=1):
            start, offset = offset, offset + len(raw)
            line = _strip_eol(raw)
            if line_no == 1 and line.startswith(_BOM):
                line, start = line[len(_BOM):], start + len(_BOM)
            if not line.strip():
                continue
            scan.rows_seen += 1
            problem = row_problem(line)
            if problem is None:
                scan.offsets.append(start)
            else:
                scan.bad_rows += 1
                if len(scan.problems) < MAX_REPORTED_PROBLEMS:
                    scan.problems.append(f"{where(line_no)}: {problem}")
            if line_no % 4096 == 0:
                progress.update(offset, scan.rows_seen)
    return scan


def require_valid_rows(*paths: Path, hint: str) -> None:
    """Every row of each file a valid chat row (the trainer's own rules), or one UserError naming file:line.

    Submit calls it on both targets before anything uploads or starts: on Azure a bad row would
    otherwise surface on the GPU node, after the image pull and the node start are billed.
    """
    for path in paths:
        scan = scan_jsonl(path)
        if scan.bad_rows:
            raise UserError(f"{path}: {scan.bad_rows} of {scan.rows_seen} rows are not valid chat rows:"
                            f"{scan.listed()}\n{hint}")
        if not scan.rows_seen:
            raise UserError(f"{path} holds no rows. {hint}")


# ---------------------------------------------------------------- selection and split

def parse_fraction(text: str) -> tuple[str, float]:
    """`1%` -> ("percent", 1.0); `500` -> ("rows", 500)."""
    value = text.strip()
    try:
        if value.endswith("%"):
            pct = float(value[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            return "percent", pct
        rows = int(value)
        if rows < 1:
            raise ValueError
        return "rows", float(rows)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage in (0%, 100%] such as 1% or a row count >= 1, got {text!r}") from None


def rows_wanted(fraction: tuple[str, float], available: int) -> int:
    kind, value = fraction
    if kind == "percent":
        return max(1, min(available, round(available * value / 100)))
    wanted = int(value)
    if wanted > available:
        raise UserError(f"--fraction asks for {wanted} rows but the source has only {available} valid rows; "
                        "ask for fewer rows or a percentage such as 100%.")
    return wanted


def test_count(selected: int, test_size: float) -> int:
    """Rows that go to test.jsonl: a fraction in (0, 1) of the selection, or a row count >= 1."""
    n = round(selected * test_size) if test_size < 1 else int(test_size)
    n = max(1, n)
    if n >= selected:
        raise UserError(f"cannot split {selected} rows with --test-size {test_size}: both train and test need "
                        "at least one row. Use more data (--fraction) or a smaller --test-size.")
    return n


def split_assignment(available: int, selected: int, n_test: int, seed: int) -> bytearray:
    """Per good row: 0 = not selected, 1 = train, 2 = test (a seeded shuffle of row indices)."""
    order = list(range(available))
    random.Random(seed).shuffle(order)
    assign = bytearray(available)
    for rank, index in enumerate(order[:selected]):
        assign[index] = 2 if rank < n_test else 1
    return assign


# ---------------------------------------------------------------- writing

class _HashingWriter:
    def __init__(self, path: Path) -> None:
        self.file = open(path, "wb")
        self.sha = hashlib.sha256()
        self.rows = 0
        self.bytes = 0

    def write_row(self, line: bytes) -> None:
        data = line + b"\n"
        self.file.write(data)
        self.sha.update(data)
        self.rows += 1
        self.bytes += len(data)

    def close(self) -> dict:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return {"rows": self.rows, "bytes": self.bytes, "sha256": self.sha.hexdigest()}


def copy_split(src_path: Path, offsets: array, assign: bytearray, out_dir: Path) -> dict[str, dict]:
    """Stream the selected lines of `src_path` into train.jsonl / test.jsonl (source order)."""
    writers = {1: _HashingWriter(out_dir / "train.jsonl"), 2: _HashingWriter(out_dir / "test.jsonl")}
    progress = _Progress("writing splits", len(offsets))
    try:
        with open(src_path, "rb") as src:
            for i, offset in enumerate(offsets):
                target = assign[i]
                if target:
                    src.seek(offset)
                    writers[target].write_row(_strip_eol(src.readline()))
                if i % 4096 == 0:
                    progress.update(i, i)
    finally:
        stats = {name: w.close() for name, w in (("train.jsonl", writers[1]), ("test.jsonl", writers[2]))}
    return stats


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder; choose a folder path.")
    if out.is_dir():
        strangers = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_FILES)
        if strangers:
            raise UserError(f"--out {out} holds files this command did not write ({', '.join(strangers[:5])}); "
                            "it replaces the whole folder, so choose an empty or new folder.")


def swap_in(staging: Path, out: Path) -> None:
    """Replace `out` with `staging` (two renames on one filesystem; the old set is restored on failure)."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        old.rmdir()
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- sources

def _materialize_hf(staging: Path, fraction: tuple[str, float], seed: int) -> tuple[Path, list[int], int]:
    """Load ultrachat_200k, pick the seeded fraction, write those rows as JSONL. Returns (file, row ids, total)."""
    import datasets

    say(f"    loading {HF_DATASET} split {HF_SPLIT} with datasets")
    try:
        dataset = datasets.load_dataset(HF_DATASET, split=HF_SPLIT)
    except Exception as err:  # hub, auth, cache: all end here
        raise UserError(f"could not load {HF_DATASET} ({HF_SPLIT}) from the Hugging Face Hub: {err}. "
                        "Check the network (and HF_TOKEN if the hub asks for one), or use --source sample "
                        "or --source PATH with a local JSONL file.") from err
    total = len(dataset)
    if total == 0:
        raise UserError(f"{HF_DATASET} ({HF_SPLIT}) has no rows.")
    wanted = rows_wanted(fraction, total)
    order = list(range(total))
    random.Random(seed).shuffle(order)
    picked = sorted(order[:wanted])
    path = staging / ".source.jsonl"
    progress = _Progress("writing rows from the hub", wanted)
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        for n, row in enumerate(dataset.select(picked)):
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            progress.update(n, n)
    return path, picked, total


@dataclass
class Prepared:
    out: Path
    manifest: dict


def prepare(source: str, out: Path, fraction: str | None = None, test_size: float = 0.2, seed: int = 0,
            skip_bad_rows: bool = False) -> Prepared:
    """Validate, select, split and write `source` into `out` atomically. See the module docstring."""
    from common.cli import step

    out = Path(out).resolve()
    if not 0 < test_size < 1 and not (test_size >= 1 and float(test_size).is_integer()):
        raise UserError(f"--test-size must be a fraction in (0, 1) or a whole row count, got {test_size}")
    fraction_text = fraction or (HF_DEFAULT_FRACTION if source == "hf" else "100%")
    wanted_fraction = parse_fraction(fraction_text) if isinstance(fraction_text, str) else fraction_text
    _check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        source_info: dict = {"source": source}
        if source == "hf":
            with step(f"loading {HF_DATASET} ({fraction_text})"):
                src_path, row_ids, total = _materialize_hf(staging, wanted_fraction, seed)
            where = lambda n: f"{HF_DATASET}[{HF_SPLIT}] row {row_ids[n - 1]}"  # noqa: E731
            source_info.update(dataset=HF_DATASET, split=HF_SPLIT, dataset_rows=total)
            selection = ("percent", 100.0)  # the fraction is already applied
        elif source == "sample":
            from training.sample_data import DEFAULT_ROWS, DEFAULT_SEED, write_sample

            src_path = write_sample(staging / ".source.jsonl")
            where = lambda n: f"sample:{n}"  # noqa: E731
            source_info.update(sample_rows=DEFAULT_ROWS, sample_seed=DEFAULT_SEED)
            selection = wanted_fraction
        else:
            src_path = Path(source)
            if not src_path.is_file():
                raise UserError(f"--source {source}: no such file. Use hf, sample, or the path of a JSONL file.")
            where = None
            source_info.update(path=str(src_path.resolve()))
            selection = wanted_fraction

        with step(f"validating rows of {source}"):
            scan = scan_jsonl(src_path, where)
        if scan.bad_rows:
            if not skip_bad_rows:
                raise UserError(f"{scan.bad_rows} of {scan.rows_seen} rows are not valid chat rows; nothing was written:"
                                f"{scan.listed()}\nFix them, or pass --skip-bad-rows to leave them out.")
            say(f"    skipping {scan.bad_rows} bad rows of {scan.rows_seen}; the first:{scan.listed()}")
        available = len(scan.offsets)
        if available == 0:
            raise UserError(f"--source {source} has no valid chat rows.")

        selected = rows_wanted(selection, available)
        n_test = test_count(selected, test_size)
        assign = split_assignment(available, selected, n_test, seed)
        with step(f"writing {selected - n_test} train and {n_test} test rows"):
            files = copy_split(src_path, scan.offsets, assign, staging)
        if src_path.parent == staging:
            src_path.unlink()

        manifest = {
            **source_info,
            "fraction": fraction_text,
            "test_size": test_size,
            "seed": seed,
            "counts": {"source_rows": scan.rows_seen, "bad_rows_skipped": scan.bad_rows, "valid_rows": available,
                       "selected": selected, "train": files["train.jsonl"]["rows"], "test": files["test.jsonl"]["rows"]},
            "files": files,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        staging.chmod(0o755)
        _check_out_dir(out)  # still ours to replace?
        swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Prepared(out=out, manifest=manifest)


def _test_size(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 0.2 or 100, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m training.data",
        description="Validate, sample and split chat data (ultrachat_200k format) into DIR/train.jsonl, "
                    "DIR/test.jsonl and DIR/manifest.json, atomically.",
    )
    parser.add_argument("--source", required=True,
                        help=f"hf ({HF_DATASET}, split {HF_SPLIT}), sample (bundled offline sample), or a JSONL file")
    parser.add_argument("--out", type=Path, required=True, help="output folder (replaced as a whole)")
    parser.add_argument("--fraction", type=parse_fraction, default=None,
                        help="rows to keep: a percentage (1%%) or a count (500); default 1%% for hf, else 100%%")
    parser.add_argument("--test-size", type=_test_size, default=0.2,
                        help="fraction (0.2) or row count (100) for test.jsonl (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the selection and split (default 0)")
    parser.add_argument("--skip-bad-rows", action="store_true",
                        help="leave invalid rows out (and report how many) instead of failing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fraction = None
    if args.fraction is not None:
        kind, value = args.fraction
        fraction = f"{value:g}%" if kind == "percent" else str(int(value))
    result = prepare(args.source, args.out, fraction, args.test_size, args.seed, args.skip_bad_rows)
    counts = result.manifest["counts"]
    say(f"wrote {counts['train']} train and {counts['test']} test rows to {result.out}")
    print(result.out)
    return 0


if __name__ == "__main__":
    from common.cli import run_cli

    run_cli(main)
