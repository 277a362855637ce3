"""common/values.py: every number is finite and inside its stated range, or refused in one line."""
from __future__ import annotations

import argparse
import math

import pytest

from common.cli import ArgumentParser
from common.values import OutOfRange, Range

IMPOSSIBLE = ["nan", "NaN", "inf", "-inf", "1e400", "-1e400", "Infinity"]


@pytest.mark.parametrize("text", IMPOSSIBLE)
def test_argparse_type_refuses_what_float_parses_but_no_setting_means(text: str) -> None:
    assert not math.isfinite(float(text))  # the trap: Python parses every one of these
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be a number from 0 to 1, got"):
        Range(0, 1)(text)


def test_open_and_closed_ends_and_whole_numbers() -> None:
    rate = Range(0, low_open=True)
    assert str(rate) == "a number > 0"
    assert rate("1e-4") == 1e-4
    with pytest.raises(argparse.ArgumentTypeError):
        rate("0")
    count = Range(1, 100_000, integer=True)
    assert str(count) == "a whole number from 1 to 100,000"
    assert count("1") == 1 and count("100000") == 100_000
    for bad in ("0", "100001", "1e9", "2.5", "", "ten"):
        with pytest.raises(argparse.ArgumentTypeError, match="whole number from 1 to 100,000"):
            count(bad)
    assert str(Range(0, 1, high_open=True)) == "a number >= 0 and < 1"
    assert str(Range()) == "a finite number"


def test_request_field_check_takes_parsed_json_values() -> None:
    top_p = Range(0, 1, low_open=True)
    assert top_p.check(0.9, "top_p") == 0.9 and top_p.check(1, "top_p") == 1.0
    max_tokens = Range(1, 4096, integer=True)
    assert max_tokens.check(3.0, "max_tokens") == 3 and isinstance(max_tokens.check(3.0, "max_tokens"), int)
    cases = [(float("nan"), "got nan"), (float("inf"), "got inf"), (True, "got bool"), ("64", "got str"),
             (None, "got NoneType"), (10**400, "got a number beyond the float range"), (2.5, "got 2.5"), (0, "got 0")]
    for value, said in cases:
        with pytest.raises(OutOfRange, match=f"^max_tokens must be a whole number from 1 to 4,096, {said}"):
            max_tokens.check(value, "max_tokens")


def test_a_bad_flag_is_one_line_with_exit_2_and_usage_only_on_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = ArgumentParser(prog="python -m tool")
    for flag in range(30):  # a long usage: argparse would print all of it before the error
        parser.add_argument(f"--option-{flag}", help="an option")
    parser.add_argument("--limit", type=Range(1, 10, integer=True), help="how many")
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--limit", "nan"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.splitlines() == ["error: argument --limit: must be a whole number from 1 to 10, got 'nan' "
                                "(`python -m tool --help` lists the options)"]
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--help"])
    assert exit_.value.code == 0 and "--option-29" in capsys.readouterr().out
