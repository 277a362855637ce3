"""`python -m deployment.smoke`: the whole cloud path on a real subscription, cheaply.

data (the bundled sample) -> submit (the tiny model on the smoke stack's CPU cluster, logs
streamed) -> deploy (a CPU instance, tagged to expire in 2 h, through deploy's evaluation gate)
-> one chat through the Prompt flow -> teardown (always, even after a failed step) -> each
step's duration and an estimated cost. No GPU quota, cents per run.

It runs the project's own command lines, the ones a person types, so it proves them and
nothing else. The stack is a separate one (`smoke`, computeVmSize Standard_E4s_v3) that a
person creates once with `pulumi up`; see docs/GITHUB.md.

    python -m deployment.smoke                  # every step; what bills is torn down at the end
    python -m deployment.smoke --dry-run        # each command's own --dry-run: no credential, no network
    python -m deployment.smoke submit           # one step (a workflow runs them one by one, so
                                                # teardown can be its own `if: always()` step)

Each step's output goes to the terminal and to runs/smoke/logs/<step>.log; what one step
hands the next (the job name, the timings) is kept in runs/smoke/state.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from common import processes
from common import runs as run_paths
from common.cli import ArgumentParser, UserError, run_cli, say
from common.files import write_atomic
from common.vm_sizes import known_vm
from deployment.flow_check import held_out_questions, parse_flow_answer
from infra.outputs import ENV_VAR, EXAMPLE_FILE, add_stack_arguments, load_stack_outputs

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_STACK = "smoke"
SMOKE_VM_SIZE = "Standard_E4s_v3"
"""The smoke stack's cluster and the deployment's instance: 4 vCPUs, 32 GB, no GPU quota needed."""
DEFAULT_EXPIRES_IN = "2h"
"""What deploy tags the endpoint with, so `teardown --expired` catches it if this run's teardown never ran."""
MODEL = "tiny"
"""submit's name for the tiny Phi-3 it builds on the spot (the same one the offline demo trains)."""
TRAIN_FLAGS = ("--max-steps", "20")
"""Enough optimizer steps to prove the trainer runs on the cluster; the model's quality is not the point."""

STEPS = ("data", "submit", "deploy", "chat", "teardown")
COMMANDS = (*STEPS, "report")


@dataclass(frozen=True)
class Plan:
    """Everything the command lines depend on."""

    stack_args: tuple[str, ...]
    """`--stack NAME` or `--outputs-file PATH`, passed on to submit, deploy and teardown."""
    runs: Path
    expires_in: str = DEFAULT_EXPIRES_IN
    question: str | None = None
    job: str | None = None
    """The job submit printed; None: deploy picks the latest completed fine-tuning job."""
    dry_run: bool = False

    @property
    def data_dir(self) -> Path:
        return self.runs / "data"


def _step(text: str) -> str:
    if text not in COMMANDS:  # argparse's `choices` refuses an empty `nargs="*"` (python/cpython#73484)
        raise argparse.ArgumentTypeError(f"no step {text!r}; the steps are {', '.join(COMMANDS)}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m deployment.smoke",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
        epilog=(
            f"Costs money (not with --dry-run): {SMOKE_VM_SIZE} at about ${known_vm(SMOKE_VM_SIZE).usd_per_hour}/h "
            "(list price, East US) for the training node while the job runs and for the endpoint until teardown: "
            "cents a run. The report at the end prints the run's own estimate."
        ),
    )
    parser.add_argument("steps", nargs="*", type=_step, metavar="STEP",
                        help=f"run only these steps, teardown and report last ({', '.join(COMMANDS)}; default: all of them, "
                             "with teardown even when a step fails, then report)")
    add_stack_arguments(parser, default_stack=DEFAULT_STACK)  # a stack with a CPU cluster
    parser.add_argument("--expires-in", default=DEFAULT_EXPIRES_IN,
                        help=f"expiry deploy tags the endpoint with (default: {DEFAULT_EXPIRES_IN})")
    parser.add_argument("--question", default=None, help="what to ask through the flow (default: a held-out question)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print every job and deployment it would create (each command's own --dry-run) and stop; "
                             "no credential, no network")
    return parser


# ---------------------------------------------------------------- the command lines


def commands(plan: Plan, python: str = sys.executable) -> dict[str, list[str]]:
    """The command line of every step (and of the Prompt flow settings deploy and chat need), as a person would type it."""
    dry = ["--dry-run"] if plan.dry_run else []
    pf = str(Path(python).with_name("pf"))
    question = plan.question or "<a held-out question>"
    return {
        "data": [python, "-m", "training.data", "--source", "sample", "--out", str(plan.data_dir)],
        "submit": [python, "-m", "training.submit", *plan.stack_args, "--model", MODEL, "--data", str(plan.data_dir),
                   *TRAIN_FLAGS, *dry],
        "deploy": [python, "-m", "deployment.deploy", *plan.stack_args, *(["--job", plan.job] if plan.job else []),
                   "--instance-type", SMOKE_VM_SIZE, "--eval-file", str(plan.data_dir / "test.jsonl"),
                   "--expires-in", plan.expires_in, *dry],
        "pf-settings": [python, "-m", "common.pf_settings"],
        "chat": [pf, "flow", "test", "--flow", str(REPO_ROOT / "flows" / "chat"), "--inputs", f"question={question}"],
        # Only the endpoints this tool created (no --all): a wrong --stack never deletes a stranger's endpoint.
        "teardown": [python, "-m", "deployment.teardown", *plan.stack_args, "--yes"],
    }


def shown(command: Sequence[str]) -> str:
    """A command line as a person would type it in the repository root."""
    return processes.shown(command, REPO_ROOT)


# ---------------------------------------------------------------- state between steps


class State:
    """runs/smoke/state.json: the job name and each step's start and end (seconds since the epoch)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        self.data.setdefault("steps", {})

    def save(self) -> None:
        write_atomic(self.path, json.dumps(self.data, indent=2) + "\n")

    def begin(self, step: str) -> None:
        self.data["steps"][step] = {"start": time.time()}
        self.save()

    def end(self, step: str, ok: bool) -> None:
        self.data["steps"][step].update(end=time.time(), ok=ok)
        self.save()

    def seconds(self, step: str) -> float | None:
        times = self.data["steps"].get(step, {})
        return times["end"] - times["start"] if "end" in times else None


# ---------------------------------------------------------------- running one step


def run_step(name: str, command: Sequence[str], logs: Path, env: dict[str, str]) -> str:
    """Run one command: its output shows live and goes to logs/<name>.log; returns its stdout."""
    return processes.run_step(name, command, logs / f"{name}.log", cwd=REPO_ROOT, env=env, live=True).stdout


# ---------------------------------------------------------------- the stack


def _dry_run_outputs(runs: Path) -> Path:
    """The example outputs as a smoke stack would export them (its cluster is the CPU size)."""
    from infra.naming import compute_name

    outputs = json.loads(EXAMPLE_FILE.read_text(encoding="utf-8"))
    outputs.update(compute_vm_size=SMOKE_VM_SIZE, compute_name=compute_name(SMOKE_VM_SIZE, "Dedicated"))
    path = runs / "example-stack-outputs.json"
    write_atomic(path, json.dumps(outputs, indent=2) + "\n")
    return path


def stack_args(args: argparse.Namespace, runs: Path, env: dict[str, str]) -> tuple[str, ...]:
    """How every step names the stack. A dry run without outputs or a Pulumi CLI uses the example outputs."""
    if args.outputs_file:
        return ("--outputs-file", str(args.outputs_file))
    if env.get(ENV_VAR) or not args.dry_run or shutil.which("pulumi", path=env.get("PATH")):
        return ("--stack", args.stack)
    path = _dry_run_outputs(runs)
    say(f"note: no stack outputs and no Pulumi CLI: the dry run uses {shown([str(EXAMPLE_FILE)])} "
        f"as a smoke stack would export it (compute_vm_size {SMOKE_VM_SIZE}), written to {path}")
    return ("--outputs-file", str(path))


def check_cpu_cluster(stack: tuple[str, ...], env: dict[str, str]) -> str:
    """The stack's cluster size; refuse a GPU cluster: the smoke path must need no GPU quota."""
    outputs_file = stack[1] if stack[0] == "--outputs-file" else None
    outputs = load_stack_outputs(outputs_file, None if outputs_file else stack[1], env=env)
    size = known_vm(outputs.compute_vm_size)
    if size is not None and size.gpus > 0:
        raise UserError(
            f"the stack's cluster {outputs.compute_name} is {outputs.compute_vm_size}, a GPU size "
            f"(${size.usd_per_hour or '?'}/h, GPU quota): the smoke path runs on a CPU cluster. Create the smoke "
            f"stack once: `pulumi stack init smoke && pulumi config set computeVmSize {SMOKE_VM_SIZE} && pulumi up` "
            "(docs/GITHUB.md), or pass --stack / --outputs-file for it."
        )
    if size is None:
        say(f"note: {outputs.compute_vm_size} is not in common/vm_sizes.py: no cost estimate for the training node")
    return outputs.compute_vm_size


# ---------------------------------------------------------------- the steps


def step_env(runs: Path) -> dict[str, str]:
    """The commands' environment: Prompt flow's state (the connection deploy writes) stays under runs/smoke.

    In ~/.promptflow the smoke endpoint's connection would replace the one to a real endpoint.
    """
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PF_HOME_DIRECTORY": str(run_paths.promptflow_home(runs)),
            "XDG_DATA_HOME": str(run_paths.keyring_dir(runs))}


def _question(plan: Plan) -> str:
    """The asked question, else the first short held-out one of the sample data."""
    return plan.question or held_out_questions(plan.data_dir / "test.jsonl", 1)[0][0]


CommandLines = Callable[[Plan], dict[str, list[str]]]


def _pf_settings(plan: Plan, env: dict[str, str], command_lines: CommandLines) -> None:
    """Once per smoke folder: no tracing service, no telemetry (what `make setup` does for ~/.promptflow)."""
    if not (run_paths.promptflow_home(plan.runs) / "pf.yaml").is_file():
        run_step("pf-settings", command_lines(plan)["pf-settings"], run_paths.logs_dir(plan.runs), env)


def job_name(submit_stdout: str) -> str | None:
    """The job name submit prints on stdout, alone on its line, before the streamed logs."""
    return next((line.strip() for line in submit_stdout.splitlines() if line.strip() and len(line.split()) == 1), None)


def run_one(step: str, plan: Plan, state: State, env: dict[str, str], command_lines: CommandLines = commands) -> None:
    """One step, real or dry; its start and end go to the state file."""
    if plan.dry_run and step in ("chat", "teardown"):
        if step == "chat" and (plan.data_dir / "test.jsonl").is_file():
            plan = replace(plan, question=_question(plan))
        print(f"# {step} (creates nothing; not run in a dry run): {shown(command_lines(plan)[step])}", flush=True)
        return
    if step == "data":  # a new run: forget the last one's job and timings
        state.data = {"steps": {}, **({"vm_size": state.data["vm_size"]} if "vm_size" in state.data else {})}
    state.begin(step)
    ok = False
    try:
        if not plan.dry_run and step in ("deploy", "chat"):
            _pf_settings(plan, env, command_lines)  # deploy writes the phi_endpoint connection, chat reads it
        if step == "deploy":
            plan = replace(plan, job=state.data.get("job"))
        if step == "chat":
            plan = replace(plan, question=_question(plan))
        if plan.dry_run:  # one YAML stream: each command's definitions are documents of their own
            print(f"--- # {step}: {shown(command_lines(plan)[step])}", flush=True)
        out = run_step(step, command_lines(plan)[step], run_paths.logs_dir(plan.runs), env)
        if step == "submit" and not plan.dry_run:
            state.data["job"] = job_name(out)
        if step == "chat":
            say(f"    Q: {plan.question}\n    A: {parse_flow_answer(out)}")
        ok = True
    finally:
        state.end(step, ok)


def report(state: State, vm_size: str | None) -> str:
    """Each step's duration and what the run cost, at list prices."""
    price = known_vm(vm_size).usd_per_hour if vm_size and known_vm(vm_size) else None
    lines = ["step       duration"]
    for step in STEPS:
        seconds = state.seconds(step)
        lines.append(f"{step:<10} {_duration(seconds) if seconds is not None else '-'}")
    steps = state.data["steps"]
    train = state.seconds("submit")
    billed = None
    if "deploy" in steps and "end" in steps.get("teardown", {}):
        billed = steps["teardown"]["end"] - steps["deploy"]["start"]
    if price is None:
        lines.append(f"estimated cost: unknown ({vm_size} has no price in common/vm_sizes.py)")
        return "\n".join(lines)
    cost = 0.0
    lines.append(f"estimated cost at {vm_size} ${price}/h (list price, East US):")
    if train is not None:
        cost += train / 3600 * price
        lines.append(f"  training node  ${train / 3600 * price:.3f}  at most the submit step's {_duration(train)} "
                     "(the node bills only while it runs)")
    if billed is not None:
        cost += billed / 3600 * price
        lines.append(f"  endpoint       ${billed / 3600 * price:.3f}  deploy start to teardown end, {_duration(billed)}")
    elif "deploy" in steps:
        lines.append(f"  endpoint       still billing ${price}/h: run `python -m deployment.smoke teardown`")
    lines.append(f"  total          ${cost:.3f} (plus the stack's standing costs: registry, storage, key vault)")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def run(args: argparse.Namespace, command_lines: CommandLines = commands) -> int:
    """The asked steps in order; teardown (when asked: always by default) runs whatever failed before it."""
    runs = run_paths.smoke_dir()
    env = step_env(runs)
    stack = stack_args(args, runs, env)
    plan = Plan(stack_args=stack, runs=runs, expires_in=args.expires_in, question=args.question, dry_run=args.dry_run)
    state = State(runs / ("dry-run-state.json" if args.dry_run else "state.json"))
    steps = list(args.steps) or [*STEPS, "report"]
    if any(step in ("submit", "deploy") for step in steps):
        state.data["vm_size"] = check_cpu_cluster(stack, env)
        state.save()
    if args.dry_run:
        say(f"dry run: creates nothing. A real run bills {SMOKE_VM_SIZE} (${known_vm(SMOKE_VM_SIZE).usd_per_hour}/h, "
            "list price) for the training node while the job runs and for the endpoint from deploy to teardown.")
    failed: BaseException | None = None
    try:
        for step in (s for s in steps if s not in ("teardown", "report")):
            run_one(step, plan, state, env, command_lines)
    except (UserError, KeyboardInterrupt) as err:  # Ctrl-C too: the endpoint bills by the hour
        failed = err
    if "teardown" in steps:
        try:
            run_one("teardown", plan, state, env, command_lines)
        except UserError as err:
            failed = UserError(f"{failed}; then teardown failed too ({err}). Delete what is left: "
                               f"`{shown(commands(plan)['teardown'])}`") if failed else err
    if "report" in steps and not args.dry_run:
        print(report(state, state.data.get("vm_size")), flush=True)
    if failed:
        raise failed
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
