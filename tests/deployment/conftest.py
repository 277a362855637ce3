"""Prompt flow state kept out of $HOME for the deployment tests. Their deploy/teardown fixtures are the plugin
tests/fakes/deploy_fixtures.py (registered by tests/conftest.py); the server's own fixtures are in
tests/serving/conftest.py.
"""
from __future__ import annotations

import os
from pathlib import Path

# Prompt flow keeps its connection encryption key in the keyring; keyrings.alt's file keyring
# writes under $XDG_DATA_HOME. Keep it in the session's state folder, not in $HOME.
os.environ.setdefault(
    "XDG_DATA_HOME", str(Path(os.environ.get("PF_HOME_DIRECTORY", "/tmp/pf")).parent / "xdg-data")
)
