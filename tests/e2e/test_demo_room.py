"""The demo has its own room: run beside a user's `deploy --target local`, it leaves their work alone.

The user's side is real: their data, their LATEST job, their local server (deploy --target local) and
their phi_endpoint connection in their Prompt flow home. Then `python -m demo` (what `make demo` runs)
goes end to end. Afterwards the user's server still serves, their connection still reaches it through
the flow, and their runs/data and runs/jobs/LATEST are byte for byte what they were.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from common import processes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
USERS_JOB = "local-20261207-000000-user"


def python(module: str, *args: str, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{module} {args}: {done.stderr[-3000:]}"
    return done


def fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    """Each file's sha256 and mtime (ns): rewriting a file with the same bytes shows too."""
    return {str(path.relative_to(folder)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def chat_through_the_flow(env: dict[str, str]) -> dict:
    done = subprocess.run([str(Path(sys.executable).with_name("pf")), "flow", "test", "--flow", "flows/chat",
                           "--inputs", "question=Who founded Intel?"], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]  # a connection to a dead port fails here
    return json.loads(done.stdout[done.stdout.index("{"):])


def test_demo_beside_a_users_local_endpoint_leaves_it_serving(tmp_path: Path, tiny_model_dir: Path) -> None:
    runs = tmp_path / "runs"
    user = {**os.environ, "FINETUNE_PHI_RUNS": str(runs), "PF_HOME_DIRECTORY": str(tmp_path / "home" / ".promptflow"),
            "XDG_DATA_HOME": str(tmp_path / "home" / ".local" / "share")}
    python("training.data", "--source", "sample", "--out", str(runs / "data"), env=user)
    (runs / "jobs").mkdir(parents=True)
    (runs / "jobs" / "LATEST").write_text(USERS_JOB + "\n", encoding="utf-8")  # the user's last job, by name
    python("deployment.deploy", "--target", "local", "--model-dir", str(tiny_model_dir), "--eval-limit", "2", env=user)
    record = json.loads((runs / "serve" / "endpoint.json").read_text(encoding="utf-8"))
    try:
        connection = python("deployment.connection", "show", env=user).stdout
        data, latest = fingerprint(runs / "data"), fingerprint(runs / "jobs")

        demo = python("demo", "--max-steps", "4", "--questions", "1", env=user, timeout=900)

        assert (f"your local endpoint keeps serving on port {record['port']} (pid {record['pid']}" in demo.stderr
                and "your phi_endpoint connection stays as it is" in demo.stderr)
        assert "demo finished" in demo.stdout
        # the user's server: same process, still answering
        assert processes.cmdline(record["pid"]) is not None
        assert requests.get(f"http://127.0.0.1:{record['port']}/health", timeout=10).status_code == 200
        assert json.loads((runs / "serve" / "endpoint.json").read_text(encoding="utf-8")) == record
        # the user's connection: unchanged, and the flow reaches their server through it
        assert python("deployment.connection", "show", env=user).stdout == connection
        assert "answer" in chat_through_the_flow(user)
        # the user's data and LATEST: untouched
        assert fingerprint(runs / "data") == data and fingerprint(runs / "jobs") == latest
        # the demo's own things are in its room, and its server is gone
        room = runs / "demo"
        assert (room / "data" / "train.jsonl").is_file() and (room / "jobs" / "LATEST").is_file()
        assert (room / "promptflow" / "pf.sqlite").is_file() and not (room / "serve" / "endpoint.json").exists()
    finally:
        python("deployment.teardown", "--target", "local", env=user)
    assert processes.cmdline(record["pid"]) is None
