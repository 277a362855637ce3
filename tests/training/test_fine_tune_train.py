"""Real TRL + MLflow on the tiny Phi-3 and the sample data, on CPU."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests_support_flags import TINY_FLAGS  # noqa: E402  (see conftest: a tiny shim module)

pytestmark = pytest.mark.slow
