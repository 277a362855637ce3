"""deploy's gate settings and the evaluate CLI refuse impossible numbers in one line, before anything runs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployment import deploy, evaluate


@pytest.mark.parametrize("module,flags,said", [
    ("deployment.deploy", ["--eval-margin", "nan"], "argument --eval-margin: must be a number from 0 to 1, got 'nan'"),
    ("deployment.deploy", ["--eval-margin", "inf"], "argument --eval-margin: must be a number from 0 to 1, got 'inf'"),
    ("deployment.deploy", ["--target", "local", "--eval-limit", "0"],
     "argument --eval-limit: must be a whole number from 1 to 100,000, got '0'"),
    ("deployment.evaluate", ["--target", "local", "--limit", "0"], "argument --limit: must be a whole number"),
    ("deployment.evaluate", ["--concurrency", "nan"], "argument --concurrency: must be a whole number from 1 to 256"),
])
def test_one_line_exit_2_and_nothing_started(module: str, flags: list[str], said: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    env = {**os.environ, "FINETUNE_PHI_RUNS": str(runs)}
    done = subprocess.run([sys.executable, "-m", module, *flags], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and said in done.stderr, done.stderr
    assert done.stdout == "" and not runs.exists()  # no server, no record, no connection


def test_the_gate_gets_the_numbers_it_was_given() -> None:
    args = deploy.build_parser().parse_args(["--target", "local", "--eval-limit", "5", "--eval-margin", "0.05"])
    assert (args.eval_limit, args.eval_margin) == (5, 0.05)
    defaults = deploy.build_parser().parse_args([])
    assert defaults.eval_limit == evaluate.build_parser().parse_args([]).limit == 32  # 0 no longer stands for it
    assert defaults.eval_margin is None  # the gate's own default applies
