"""demo/pipeline.py without training: how a step is run, failed and interrupted."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from common.processes import StepFailed
from demo.pipeline import DemoResult, _run_step

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_a_failing_step_is_named_with_its_log_tail(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; print('partial answer'); sys.exit('the thing broke')"]
    result = DemoResult()
    with pytest.raises(StepFailed) as failure:
        _run_step("chat-1", command, tmp_path, result, dict(os.environ))
    message = str(failure.value)
    assert "step 'chat-1' failed (exit 1)" in message
    assert "the thing broke" in message and "partial answer" in message
    assert "chat-1" in result.timings and (tmp_path / "chat-1.log").is_file()


@pytest.mark.slow
def test_ctrl_c_lets_the_running_step_finish_its_cleanup(tmp_path: Path) -> None:
    """Ctrl-C reaches the demo and its step together; the step (deploy: stop the server it started)
    must get to finish cleaning up, not be killed a quarter of a second later."""
    marker = tmp_path / "cleaned-up"
    ready = tmp_path / "child-started"
    child = textwrap.dedent(f"""
        import time
        try:
            open({str(ready)!r}, "w").close()  # inside the try: Ctrl-C from now on reaches the handler
            time.sleep(60)
        except KeyboardInterrupt:
            time.sleep(1.5)  # stopping a server takes a moment
            open({str(marker)!r}, "w").close()
            raise
    """)
    driver = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from demo.pipeline import DemoResult, _run_step
        try:
            _run_step("deploy", [sys.executable, "-c", {child!r}], Path({str(tmp_path)!r}), DemoResult(), dict(os.environ))
        except KeyboardInterrupt:
            sys.exit(130)
    """)
    # SIGINT at its default, as a terminal's shell starts a program: a test run launched in the background
    # by a non-interactive shell inherits it ignored, and Python then leaves it ignored (no KeyboardInterrupt)
    process = subprocess.Popen([sys.executable, "-c", driver], cwd=REPO_ROOT, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300  # generous: only a broken child takes long, and then the assert names it
    while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready.exists(), "the step never started"
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    assert process.wait(timeout=30) == 130
    assert marker.exists(), "the step was killed before it finished cleaning up"
