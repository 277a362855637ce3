"""Fixtures for the infra tests; the machinery is in pulumi_harness.py."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
from pulumi_harness import Run, run_program


@pytest.fixture
def run(repo_root: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Run]:
    """`run(preview=..., config={...})` runs the program once and returns what it did."""
    return lambda **kwargs: run_program(repo_root, monkeypatch, **kwargs)


@pytest.fixture(scope="module")
def default_up(repo_root: Path) -> Run:
    """One `pulumi up` of the default config, shared by the read-only assertions of a module."""
    with pytest.MonkeyPatch.context() as mp:
        return run_program(repo_root, mp)

