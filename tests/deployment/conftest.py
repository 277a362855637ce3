"""Shared fixtures for the deployment tests: the deploy/teardown fixtures, Prompt flow state kept out of $HOME.

The server's own fixtures are in tests/serving/conftest.py.
"""
from __future__ import annotations

import os
from pathlib import Path

from deploy_fixtures import *  # noqa: E402,F401,F403 (the deploy/teardown tests' fixtures, shared here once)

# Prompt flow keeps its connection encryption key in the keyring; keyrings.alt's file keyring
# writes under $XDG_DATA_HOME. Keep it in the session's state folder, not in $HOME.
os.environ.setdefault(
    "XDG_DATA_HOME", str(Path(os.environ.get("PF_HOME_DIRECTORY", "/tmp/pf")).parent / "xdg-data")
)
