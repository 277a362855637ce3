"""deployment/local.py end to end: deploy, replace blue/green, a failed replacement, teardown twice.

Real servers (`python -m deployment.serve` in the background), the real Prompt flow client for
the smoke test and the real promptflow connection store (under the session's PF home).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from common.cli import UserError
from serving.helpers import post

pytestmark = pytest.mark.slow


def _gone(pid: int) -> bool:
    """True when no live process `pid` exists (reaping it if it is our child)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists():
        return True
    text = stat.read_text()
    return text[text.rindex(")") + 2 :].startswith("Z")


def _group_gone(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text()
        except OSError:
            continue
        rest = fields[fields.rindex(")") + 2 :].split()
        if int(rest[2]) == pgid and rest[0] != "Z":
            return False
    return True


@pytest.fixture
def latest_job(runs: Path, trained_model_dir: Path) -> Path:
    """A completed local training job whose model output is the trainer's MLflow folder."""
    from training import local_runs

    job = local_runs.job_dir("job-1")
    job.mkdir(parents=True)
    (job / "model").symlink_to(trained_model_dir, target_is_directory=True)
    local_runs.record_latest("job-1")
    return job / "model"


@pytest.fixture
def pf_settings_applied(state_dir: Path) -> None:
    from common import pf_settings

    pf_settings.apply()  # no tracing service, no telemetry in the session's PF home


def test_deploy_replace_and_teardown(latest_job: Path, runs: Path, pf_settings_applied, capsys) -> None:
    from deployment.connection import read_phi_connection
    from deployment.local import deploy_local, read_record, teardown_local

    first = deploy_local()  # default: the latest local training output
    try:
        assert first.model_dir == latest_job.resolve() or first.model_dir == latest_job
        assert first.url == f"http://127.0.0.1:{first.port}/score"
        record = json.loads((runs / "serve" / "endpoint.json").read_text())
        assert (record["pid"], record["port"], record["url"]) == (first.pid, first.port, first.url)
        # the server speaks the OpenAI API: the connection says so, with the base URL (docs/ARCHITECTURE.md section 6)
        assert read_phi_connection() == {"endpoint": f"http://127.0.0.1:{first.port}", "api": "openai"}
        status, answer = post(first.url, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert status == 200 and answer["usage"]["completion_tokens"] <= 3

        # Replace: the new one starts beside the old one; the old one stops only afterwards.
        second = deploy_local(latest_job)
        assert second.port != first.port and second.pid != first.pid
        assert _gone(first.pid) and _group_gone(first.pid)
        assert read_record() == second
        assert read_phi_connection()["endpoint"] == f"http://127.0.0.1:{second.port}"
        assert post(second.url, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})[0] == 200

        # A replacement that fails (a folder that looks like a model but does not load) leaves the
        # current endpoint serving, its record and connection untouched.
        broken = runs / "broken-model"
        broken.mkdir()
        (broken / "config.json").write_text("{not json")
        with pytest.raises(UserError) as failure:
            deploy_local(broken, start_timeout=120)
        assert "exited with code" in str(failure.value) and "log" in str(failure.value)
        assert read_record() == second
        assert read_phi_connection()["endpoint"] == f"http://127.0.0.1:{second.port}"
        assert post(second.url, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})[0] == 200
        assert not list((runs / "serve").glob(".*.tmp"))
    finally:
        stopped = teardown_local()
    assert stopped is True
    assert _gone(second.pid) and _group_gone(second.pid)
    assert not (runs / "serve" / "endpoint.json").exists()
    assert teardown_local() is False  # safe to run twice

    # The per-deploy key never reaches the output, the record or the server log.
    from promptflow.client import PFClient

    key = PFClient().connections.get("phi_endpoint", with_secrets=True).secrets["key"]
    assert len(key) >= 20
    captured = capsys.readouterr()
    for text in (captured.out, captured.err, *(p.read_text(errors="replace") for p in (runs / "serve").glob("*.log"))):
        assert key not in text


def test_port_conflicts_are_refused_before_starting(runs: Path, tiny_model_dir: Path) -> None:
    import socket

    from deployment.local import deploy_local, read_record

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(UserError, match="already in use"):
            deploy_local(tiny_model_dir, port=sock.getsockname()[1])
    empty = runs.parent / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no model found"):
        deploy_local(empty)
    assert read_record() is None


def test_teardown_never_signals_a_pid_that_is_not_our_server(runs: Path) -> None:
    from deployment.local import LocalEndpoint, _write_record, teardown_local

    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        (runs / "serve").mkdir(parents=True)
        _write_record(LocalEndpoint("http://127.0.0.1:1/score", 1, other.pid, runs))
        assert teardown_local() is False
        time.sleep(0.2)
        assert other.poll() is None  # still running: it was not ours to stop
        assert not (runs / "serve" / "endpoint.json").exists()
    finally:
        other.kill()
        other.wait()
