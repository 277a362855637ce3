"""`python -m flows.chat_page` without a browser: its arguments, its refusals, and the offline settings it sets.

The page itself is driven in a real browser by test_chat_page.py.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from common.cli import UserError
from common.pf_settings import OFFLINE_ENV
from flows.chat_page import FLOW_DIR, main, pf_argv


def test_it_runs_pf_flow_test_ui_on_the_chat_flow() -> None:
    assert pf_argv(FLOW_DIR, 8080, True) == [
        "pf", "flow", "test", "--flow", str(FLOW_DIR), "--ui", "--port", "8080", "--skip-open-browser",
    ]
    assert pf_argv(FLOW_DIR, None, False) == ["pf", "flow", "test", "--flow", str(FLOW_DIR), "--ui"]
    assert (FLOW_DIR / "flow.dag.yaml").is_file()


def test_help_imports_no_promptflow() -> None:
    code = "import sys; from flows.chat_page import build_parser; build_parser(); print('promptflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("argv", "match"),
    [(["--flow", "/nonexistent"], "has no flow.dag.yaml"), (["--port", "0"], "between 1 and 65535")],
)
def test_bad_arguments_are_one_message(argv, match) -> None:
    with pytest.raises(UserError, match=match):
        main(argv)


def test_offline_env_names_are_the_ones_the_installed_exporter_reads(monkeypatch) -> None:
    """azure-monitor-opentelemetry-exporter's own constants and its control-plane switch."""
    from azure.monitor.opentelemetry.exporter import _constants
    from azure.monitor.opentelemetry.exporter._configuration import _state

    assert _constants._APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED in OFFLINE_ENV
    assert _constants._APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL in OFFLINE_ENV
    monkeypatch.setattr(_state, "_configuration_manager", None)
    for name, value in OFFLINE_ENV.items():
        monkeypatch.setenv(name, value)
    assert _state.get_configuration_manager() is None  # no client polling Azure's settings service
