"""The one rollout on both targets: the same smoke test, gate and promotion, in the same order.

Azure runs against the recording MLClient fake and a real HTTP scoring endpoint; local runs the
real server (`python -m deployment.serve` on the tiny model). Each target is wrapped in a recorder
that logs the steps the rollout asks of it; two deploys on each (a first one, then one beside a
live deployment) must log the same sequence, and each platform's own record must agree with it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deployment.azure_deploy import AzureTarget, DeployPlan, _default_client
from deployment.local import LocalTarget, read_record
from deployment.rollout import Deployment, GateSettings, Outcome, rollout
from fakes.ml_client import FakeMLClient



class Recorder:
    """A target whose steps are logged in the order the rollout calls them (the deployment's role too)."""

    def __init__(self, target: Any) -> None:
        self.target, self.log = target, []

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.target, name)
        if not callable(value) or name.startswith("_"):
            return value

        def step(*args: Any, **kwargs: Any) -> Any:
            roles = [a.label.split()[0] for a in args if isinstance(a, Deployment)]
            self.log.append(":".join([name, *roles]))
            result = value(*args, **kwargs)
            if name == "live":
                self.log.append(f"live is {'none' if result is None else 'running'}")
            return result

        return step


def run(target: Any, writes: list[dict], eval_file: Path) -> tuple[list[str], Outcome]:
    recorder = Recorder(target)
    outcome = rollout(recorder, GateSettings(eval_file=eval_file, eval_limit=4),
                      [("the connection", lambda connection: writes.append(connection.configs()))])
    return recorder.log, outcome


FIRST = ["hold", "prepare", "rollback", "start_new", "client:new", "live", "live is none", "gate_estimate", "client:new",
         "keep_scores:new", "tag:new", "promote:new", "retiring:new", "connection:new", "where:new"]
"""A first deploy: smoke test (client:new), no live one, the new one scored, recorded and promoted."""
BESIDE_LIVE = ["hold", "prepare", "rollback", "start_new", "client:new", "live", "live is running", "gate_estimate",
               "client:new",
               "keep_scores:new", "tag:new", "promote:new", "retiring:new", "retire", "connection:new", "where:new"]
"""Beside a live one whose recorded scores are still valid (same model, eval set, metric): reused, not re-asked."""


@pytest.mark.slow
def test_azure_and_local_run_the_same_rollout(fake_client: FakeMLClient, outputs, runs: Path, eval_file: Path,
                                              scoring_server, tiny_model_dir: Path) -> None:
    # Azure: the recording MLClient fake; a real HTTP endpoint answers for the deployments.
    azure_writes: list[dict] = []
    azure_logs = []
    for job in ("job-1", "job-2"):
        fake_client.add_job(job, created=f"2026-11-0{job[-1]}T10:00:00Z")
        target = AzureTarget(fake_client, outputs, DeployPlan(endpoint_name="phi3-chat-test", choice=_job(job)),
                             client=_default_client, poll_interval=0.01)
        azure_logs.append(run(target, azure_writes, eval_file)[0])
    c = fake_client
    assert c.index("online_deployments.begin_create_or_update", name="green") < c.index("http.POST", deployment="green") \
        < c.index("online_endpoints.begin_create_or_update", traffic={"green": 100}) \
        < c.index("online_deployments.begin_delete", name="blue")

    # Local: the real server, twice on the same model (the second beside the first).
    local_writes: list[dict] = []
    local_logs, pids = [], []
    try:
        for _ in range(2):
            log, outcome = run(LocalTarget(tiny_model_dir, None), local_writes, eval_file)
            local_logs.append(log)
            pids.append(int(outcome.new.ref))
        assert read_record().pid == pids[-1]
    finally:
        from deployment.local import teardown_local

        teardown_local()

    assert azure_logs == local_logs == [FIRST, BESIDE_LIVE]
    # the one connection model, the same fields on both: the server's base URL and its OpenAI API
    assert [sorted(w) for w in azure_writes] == [["api", "deployment", "endpoint"]] * 2
    assert [sorted(w) for w in local_writes] == [["api", "endpoint"]] * 2
    assert {w["api"] for w in azure_writes + local_writes} == {"openai"}


def _job(name: str) -> Any:
    from deployment.registration import ModelChoice

    return ModelChoice(job=name)
