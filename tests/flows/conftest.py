"""Fixtures for the chat flow: a scripted fake scoring endpoint, the flow copy, the connection.

The fake endpoint is the only fake: a real HTTP server on 127.0.0.1 that answers what each test
scripts (status, body, headers, delay, connection reset) and records every request. The flow runs
under the real promptflow runtime on a copy of flows/chat in a temp folder (its `.promptflow/`
run folder lands there, not in the repo), with the connection written by
`deployment.connection.write_phi_connection`.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from fake_endpoint import FakeEndpoint

# Prompt flow keeps its connection encryption key in the keyring; keyrings.alt's file keyring
# writes under $XDG_DATA_HOME. Keep it in the session's state folder, not in $HOME.
os.environ.setdefault(
    "XDG_DATA_HOME", str(Path(os.environ.get("PF_HOME_DIRECTORY", "/tmp/pf")).parent / "xdg-data")
)


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeEndpoint]:
    server = FakeEndpoint()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fake(fake_server: FakeEndpoint) -> FakeEndpoint:
    """The session's fake endpoint with an empty script and no recorded requests."""
    fake_server.reset()
    return fake_server


@pytest.fixture(scope="session")
def pf_ready(state_dir: Path) -> Path:
    """Prompt flow's home for the session, with the project's settings applied (no trace service, no telemetry)."""
    from common import pf_settings

    pf_settings.apply()
    return Path(os.environ["PF_HOME_DIRECTORY"])


@pytest.fixture(scope="session")
def flow_copy(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    """flows/chat copied to a temp folder, so run folders (.promptflow/) never land in the repo."""
    dest = tmp_path_factory.mktemp("flow") / "chat"
    shutil.copytree(
        repo_root / "flows" / "chat", dest, ignore=shutil.ignore_patterns(".promptflow", "__pycache__")
    )
    return dest


@pytest.fixture(scope="session")
def pf_client(pf_ready: Path):
    from promptflow.client import PFClient

    return PFClient()
