"""What every command line of the project shares: expected errors, exit codes, progress lines.

An expected failure (no stack, no quota, bad data line, 401 ...) raises `UserError` with a
message a person can act on; `run_cli` prints it as one paragraph on stderr and exits non-zero.
A bad flag is one line too (`ArgumentParser`): the usage comes with `--help`, not before every
error. Nothing here imports anything heavy, so `--help` stays instant.
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, NoReturn, Sequence


class UserError(Exception):
    """A failure the user can fix; its message says how. Never carries a secret."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


def first_line(err: BaseException, limit: int = 400) -> str:
    """An exception's first non-blank line, capped: SDK errors carry pages of detail."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(err).__name__


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, exit 2 (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (`{self.prog} --help` lists the options)\n")


class _Verbose(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=False,
                         help="also show the Azure SDK's sign-in log: each credential it tried, and the one that worked")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from common.tool_env import show_sdk_logs

        setattr(namespace, self.dest, True)
        show_sdk_logs()


def add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    """`--verbose`: the SDK's credential-chain log, which errors leave out by default (common/tool_env.py)."""
    parser.add_argument("--verbose", action=_Verbose)


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> NoReturn:
    """Run `main(argv)` in the project's environment (common/tool_env.py) and exit with its code;
    turn expected failures into one clear message."""
    from common import tool_env

    tool_env.apply()
    try:
        code = main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def say(message: str) -> None:
    """A progress line on stderr (stdout stays clean for machine-readable output such as YAML)."""
    print(message, file=sys.stderr, flush=True)


@contextmanager
def step(name: str) -> Iterator[None]:
    """Print a step's name when it starts and its duration when it ends."""
    say(f"==> {name}")
    started = time.perf_counter()
    try:
        yield
    except BaseException:
        say(f"<== {name}: failed after {time.perf_counter() - started:.1f}s")
        raise
    say(f"<== {name}: done in {time.perf_counter() - started:.1f}s")
