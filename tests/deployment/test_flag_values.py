"""deploy's gate settings, the evaluate CLI and the connection's sampling settings refuse impossible numbers
in one line, before anything runs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployment import connection, deploy, evaluate
from deployment.scoring import DEFAULT_LIMIT


def test_eval_margin_nan_is_one_line_exit_2_and_nothing_started(tmp_path: Path) -> None:
    """The issue's case: `nan` passed every comparison and switched the gate off."""
    runs = tmp_path / "runs"
    env = {**os.environ, "FINETUNE_PHI_RUNS": str(runs)}
    done = subprocess.run([sys.executable, "-m", "deployment.deploy", "--target", "local", "--eval-margin", "nan"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == ["error: argument --eval-margin: must be a number from 0 to 100, got 'nan' "
                                        "(`python -m deployment.deploy --help` lists the options)"]
    assert not runs.exists()  # no server, no record, no connection


@pytest.mark.parametrize("main,flags,said", [
    (deploy.main, ["--eval-margin", "inf"], "argument --eval-margin: must be a number from 0 to 100, got 'inf'"),
    (deploy.main, ["--eval-margin", "-0.5"], "argument --eval-margin: must be a number from 0 to 100, got '-0.5'"),
    (evaluate.main, ["--compare", "http://a/v1", "http://b/v1", "--eval-margin", "nan"],
     "argument --eval-margin: must be a number from 0 to 100, got 'nan'"),
    (deploy.main, ["--target", "local", "--eval-limit", "0"],
     "argument --eval-limit: must be a whole number from 1 to 100,000, got '0'"),
    (deploy.main, ["--eval-limit", "1e9"], "argument --eval-limit: must be a whole number from 1 to 100,000, got '1e9'"),
    (evaluate.main, ["--target", "local", "--limit", "0"], "argument --limit: must be a whole number from 1 to 100,000"),
    (evaluate.main, ["--concurrency", "nan"], "argument --concurrency: must be a whole number from 1 to 256, got 'nan'"),
    (connection.main, ["set", "--endpoint", "http://127.0.0.1:1", "--temperature", "inf"],
     "argument --temperature: must be a number from 0 to 2, got 'inf'"),
    (connection.main, ["set", "--endpoint", "http://127.0.0.1:1", "--max-tokens", "0"],
     "argument --max-tokens: must be a whole number from 1 to 131,072, got '0'"),
])
def test_refused_before_anything_runs(main, flags: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit) as exit_:
        main(flags)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and said in err, err


def test_the_gate_gets_the_numbers_it_was_given() -> None:
    args = deploy.build_parser().parse_args(["--target", "local", "--eval-limit", "5", "--eval-margin", "2.5"])
    assert (args.eval_limit, args.eval_margin) == (5, 2.5)
    defaults = deploy.build_parser().parse_args([])
    assert defaults.eval_limit == evaluate.build_parser().parse_args([]).limit == DEFAULT_LIMIT  # 0 no longer means it
    assert defaults.eval_margin is None  # the gate's own default applies
