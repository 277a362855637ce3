"""The smoke path (`python -m deployment.smoke`): its dry run runs each command's own --dry-run,
and its orchestration tears down whatever failed before, then prices the run.

The dry run is the real one: the real submit and deploy CLIs print the job and the deployment
they would create, from stack outputs shaped like a smoke stack's.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.cli import UserError
from deployment import smoke
from infra.naming import compute_name

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "stack-outputs.json"
CPU_COMPUTE = compute_name(smoke.SMOKE_VM_SIZE, "Dedicated")


def smoke_outputs(tmp_path: Path, vm_size: str = smoke.SMOKE_VM_SIZE) -> Path:
    """The example stack outputs as a stack with `computeVmSize` = vm_size exports them."""
    outputs = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    outputs.update(compute_vm_size=vm_size, compute_name=compute_name(vm_size, "Dedicated"))
    path = tmp_path / f"outputs-{vm_size}.json"
    path.write_text(json.dumps(outputs), encoding="utf-8")
    return path


@pytest.mark.slow
def test_dry_run_prints_the_tiny_models_job_on_the_cpu_cluster_and_a_cpu_deployment(tmp_path: Path) -> None:
    env = {**os.environ, "FINETUNE_PHI_RUNS": str(tmp_path / "runs"), "STACK_OUTPUTS_FILE": str(smoke_outputs(tmp_path))}
    done = subprocess.run([sys.executable, "-m", "deployment.smoke", "--dry-run"], cwd=smoke.REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    documents = [doc for doc in yaml.safe_load_all(done.stdout) if isinstance(doc, dict)]
    jobs = [doc for doc in documents if "command" in doc]
    deployments = [doc for doc in documents if "instance_type" in doc]
    endpoints = [doc for doc in documents if "auth_mode" in doc]
    assert len(jobs) == len(deployments) == len(endpoints) == 1, done.stdout[:2000]
    job, deployment, endpoint = jobs[0], deployments[0], endpoints[0]

    # the job: the tiny model, on the stack's CPU cluster, a few steps
    assert job["compute"] == f"azureml:{CPU_COMPUTE}"
    assert Path(job["inputs"]["model"]["path"]) == tmp_path / "runs" / "models" / "tiny"
    # a few steps: the settings file the job reads (trainer/settings.yaml), printed as comments above the job
    assert "--config trainer/settings.yaml" in job["command"]
    assert re.search(r"^#.*\bmax_steps: 20\b", done.stdout, flags=re.M), done.stdout[:2000]
    assert re.search(r"--device cpu\b", job["command"])  # helper `submit`: a CPU cluster runs the trainer on CPU
    # the deployment: the CPU instance type, on the endpoint the real run would create
    assert deployment["instance_type"] == smoke.SMOKE_VM_SIZE
    assert deployment["endpoint_name"] == endpoint["name"]
    # helper `deploy`: --expires-in tags what deploy creates with an expiry (a DeleteAfter-style tag)
    tags = {**endpoint.get("tags", {}), **deployment.get("tags", {})}
    assert [key for key in tags if re.search(r"expir|delete", key, re.I)], tags

    # the steps that create nothing are printed, not run; teardown removes only the endpoints this tool created (no --all)
    assert re.search(r"^# chat .*: pf flow test --flow flows/chat --inputs \"question=[^<]", done.stdout, re.M)
    assert re.search(r"^# teardown .*: python -m deployment.teardown --stack smoke --yes$", done.stdout, re.M)
    assert f"{smoke.SMOKE_VM_SIZE} ($0.252/h" in done.stderr
    assert not (tmp_path / "runs" / "smoke" / "state.json").exists()  # a dry run leaves no state for a real run


def test_a_gpu_stack_is_refused_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_PHI_RUNS", str(tmp_path / "runs"))
    ran: list[str] = []

    def never(plan: smoke.Plan) -> dict[str, list[str]]:
        ran.append("called")
        return {}

    args = smoke.build_parser().parse_args(["--outputs-file", str(EXAMPLE)])  # Standard_NC24ads_A100_v4
    with pytest.raises(UserError, match=r"GPU size.*pulumi config set computeVmSize Standard_E4s_v3"):
        smoke.run(args, command_lines=never)
    assert ran == []


def test_without_outputs_or_pulumi_the_dry_run_uses_the_example_as_a_smoke_stack(tmp_path: Path) -> None:
    args = smoke.build_parser().parse_args(["--dry-run"])
    stack = smoke.stack_args(args, tmp_path, env={"PATH": str(tmp_path)})  # no `pulumi` on this PATH
    assert stack[0] == "--outputs-file"
    outputs = json.loads(Path(stack[1]).read_text(encoding="utf-8"))
    assert (outputs["compute_vm_size"], outputs["compute_name"]) == (smoke.SMOKE_VM_SIZE, CPU_COMPUTE)
    # a real run never falls back to the example: it asks Pulumi for the named stack
    real = smoke.build_parser().parse_args(["--stack", "mine"])
    assert smoke.stack_args(real, tmp_path, env={"PATH": str(tmp_path)}) == ("--stack", "mine")


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_failed_step_is_followed_by_teardown_and_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FINETUNE_PHI_RUNS", str(tmp_path / "runs"))
    def lines(plan: smoke.Plan) -> dict[str, list[str]]:  # stand-ins for the real commands, run for real
        real = smoke.commands(plan)
        return {
            "data": real["data"],
            "pf-settings": _python("print('no tracing, no telemetry')"),
            "submit": _python("print('finetune-phi-sft-20261129-0400-abcd'); print('RunId: finetune-phi-sft-...')"),
            "deploy": [*_python("import sys; print(sys.argv[1:], 'quota exceeded', file=sys.stderr); sys.exit(3)"),
                       *real["deploy"][3:]],  # deploy's own arguments
            "chat": _python("raise SystemExit('chat must not run after a failed deploy')"),
            "teardown": _python("print('deleted endpoint phi3-chat-1234')"),
        }

    args = smoke.build_parser().parse_args(["--outputs-file", str(smoke_outputs(tmp_path))])
    with pytest.raises(UserError, match=r"step 'deploy' failed \(exit 3\)"):
        smoke.run(args, command_lines=lines)

    runs = tmp_path / "runs" / "smoke"
    state = json.loads((runs / "state.json").read_text(encoding="utf-8"))
    assert state["job"] == "finetune-phi-sft-20261129-0400-abcd"
    assert {step: times["ok"] for step, times in state["steps"].items()} == {
        "data": True, "submit": True, "deploy": False, "teardown": True}
    deploy_log = (runs / "logs" / "deploy.log").read_text(encoding="utf-8")
    assert "quota exceeded" in deploy_log
    assert f"'--job', '{state['job']}'" in deploy_log  # deploy was given the job submit printed
    assert "deleted endpoint" in (runs / "logs" / "teardown.log").read_text(encoding="utf-8")
    printed = capsys.readouterr().out
    assert re.search(r"^chat\s+-$", printed, re.M)  # never ran
    assert "training node" in printed and "endpoint" in printed and "total" in printed


def test_a_teardown_that_fails_after_a_failed_step_names_both_and_the_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_PHI_RUNS", str(tmp_path / "runs"))

    def lines(plan: smoke.Plan) -> dict[str, list[str]]:
        return {**smoke.commands(plan), "data": _python("import sys; sys.exit(2)"), "teardown": _python("import sys; sys.exit(4)")}

    args = smoke.build_parser().parse_args(["--outputs-file", str(smoke_outputs(tmp_path))])
    with pytest.raises(UserError) as failed:
        smoke.run(args, command_lines=lines)
    message = str(failed.value)
    assert "step 'data' failed" in message and "step 'teardown' failed" in message
    assert "python -m deployment.teardown --outputs-file" in message and "--all" not in message and "--yes" in message


def test_report_prices_the_training_node_and_the_endpoint_at_list_price(tmp_path: Path) -> None:
    state = smoke.State(tmp_path / "state.json")
    state.data["steps"] = {
        "data": {"start": 0.0, "end": 2.0, "ok": True},
        "submit": {"start": 2.0, "end": 602.0, "ok": True},  # 10 min
        "deploy": {"start": 602.0, "end": 1502.0, "ok": True},
        "chat": {"start": 1502.0, "end": 1532.0, "ok": True},
        "teardown": {"start": 1532.0, "end": 2402.0, "ok": True},  # the endpoint lived 30 min
    }
    text = smoke.report(state, smoke.SMOKE_VM_SIZE)
    assert re.search(r"^submit\s+10m00s$", text, re.M)
    assert re.search(r"training node\s+\$0\.042\b", text)  # 0.252 $/h x 1/6 h
    assert re.search(r"endpoint\s+\$0\.126\b", text)  # 0.252 $/h x 1/2 h
    assert re.search(r"total\s+\$0\.168\b", text)
    del state.data["steps"]["teardown"]
    assert "still billing" in smoke.report(state, smoke.SMOKE_VM_SIZE)
    assert "unknown" in smoke.report(state, "Standard_Z9_v9")


def test_job_name_is_the_line_submit_prints_alone_before_the_streamed_logs() -> None:
    out = "finetune-phi-sft-20261129-040000-ab12\nRunId: finetune-phi-sft-20261129-040000-ab12\nWeb View: https://x\n"
    assert smoke.job_name(out) == "finetune-phi-sft-20261129-040000-ab12"
    assert smoke.job_name("") is None


def test_help_is_instant_no_azure_or_torch_import() -> None:
    code = ("import sys, deployment.smoke as s; s.build_parser().format_help(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('azure', 'torch', 'promptflow', 'pulumi')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=smoke.REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_smoke_commands_are_the_documented_command_lines(tmp_path: Path) -> None:
    plan = smoke.Plan(stack_args=("--stack", "smoke"), runs=tmp_path, job="job-1", question="Who are you?")
    shown = {step: smoke.shown(line) for step, line in smoke.commands(plan, python=sys.executable).items()}
    assert shown["submit"] == f"python -m training.submit --stack smoke --model tiny --data {tmp_path}/data --max-steps 20"
    assert shown["deploy"] == (f"python -m deployment.deploy --stack smoke --job job-1 --instance-type Standard_E4s_v3 "
                               f"--eval-file {tmp_path}/data/test.jsonl --expires-in 2h")
    assert shown["teardown"] == "python -m deployment.teardown --stack smoke --yes"
    assert shown["chat"] == 'pf flow test --flow flows/chat --inputs "question=Who are you?"'
