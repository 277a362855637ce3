"""The offline end-to-end path, step by step, through the same command lines a user types.

data (sample) -> fine-tune (local target, tiny Phi-3) -> deploy (local server, continuous batching)
-> chat (Prompt flow `pf flow test`, then one answer through the official `openai` client) -> teardown.
`--like phi-4-mini` first builds the tiny Phi-4-mini twin (`training.tiny_model --like`) and runs
the same path on it. Each step runs as a subprocess with its
output in `runs/demo/logs/<step>.log`; a failing step is named, its log tail shown, and the
local server is stopped whatever happens.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from common.cli import ArgumentParser, UserError, say
from training import local_runs
from training.tiny_model import DEFAULT_LIKE, LIKES

REPO_ROOT = Path(__file__).resolve().parents[1]
STEP_INTERRUPT_GRACE_S = 30.0
"""After Ctrl-C, how long a step may take to clean up before it is killed."""


def _demo_recipe_flags() -> tuple[str, ...]:
    """The trainer's `demo` recipe (training/trainer/recipes/demo.yaml) as training.submit flags."""
    from training.trainer import settings

    return tuple(settings.as_argv(settings.read_recipe("demo"), dashed=True))


DEMO_TRAIN_FLAGS = _demo_recipe_flags()


@dataclass(frozen=True)
class Budget:
    """How much the demo trains; the end-to-end test uses a smaller one."""

    epochs: float | None = None
    """None: the demo recipe's."""
    max_steps: int = -1
    questions: int = 2
    extra_train_flags: tuple[str, ...] = DEMO_TRAIN_FLAGS


def train_command(python: str, model: str, data_dir: Path, budget: Budget) -> list[str]:
    """The demo's fine-tune: `training.submit --target local` with the demo recipe and `budget`."""
    return [python, "-m", "training.submit", "--target", "local", "--model", model, "--data", str(data_dir),
            *budget.extra_train_flags, "--max-steps", str(budget.max_steps),
            *(["--epochs", str(budget.epochs)] if budget.epochs is not None else [])]


@dataclass
class DemoResult:
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None
    eval_table: str | None = None
    """deploy's evaluation of the fine-tuned model on held-out conversations (deployment/evaluate.py)"""
    answers: list[tuple[str, str, str]] = field(default_factory=list)
    """(question, the model's answer, the held-out reference answer)"""
    timings: dict[str, float] = field(default_factory=dict)
    openai_answer: tuple[str, str] | None = None
    """(question, the answer through the official `openai` client on /v1/chat/completions)"""


class StepFailed(UserError):
    pass


def _run_step(name: str, command: list[str], logs: Path, result: DemoResult, env: dict[str, str]) -> str:
    """Run one step as a subprocess, logging to a file; return its stdout."""
    say(f"==> {name}: {' '.join(_shorten(c) for c in command)}")
    log_path = logs / f"{name}.log"
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True, stdin=subprocess.DEVNULL
        )
        try:
            stdout, _ = process.communicate()
        except KeyboardInterrupt:
            # Ctrl-C reached the step too (same process group). Let it finish its own cleanup (deploy
            # stops the server it started) instead of killing it 0.25 s later as subprocess.run does,
            # which left a half-started local server running with no record for teardown to find.
            try:
                stdout, _ = process.communicate(timeout=STEP_INTERRUPT_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, _ = process.communicate()
            log.write("\n--- stdout ---\n" + (stdout or ""))
            raise
        log.write("\n--- stdout ---\n" + stdout)
    elapsed = time.perf_counter() - started
    result.timings[name] = elapsed
    if process.returncode != 0:
        tail = "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-25:])
        raise StepFailed(f"step '{name}' failed (exit {process.returncode}) after {elapsed:.1f}s; log {log_path}:\n{tail}")
    say(f"<== {name}: done in {elapsed:.1f}s")
    return stdout


def _shorten(arg: str) -> str:
    arg = arg.replace(sys.executable, "python").replace(str(REPO_ROOT) + os.sep, "")
    return f'"{arg}"' if " " in arg else arg


def held_out_questions(test_file: Path, count: int) -> list[tuple[str, str]]:
    """The first `count` single-question chats of the held-out split, with their reference answers."""
    picked: list[tuple[str, str]] = []
    with open(test_file, encoding="utf-8") as rows:
        for line in rows:
            messages = json.loads(line)["messages"]
            turns = [m for m in messages if m["role"] != "system"]
            if len(turns) == 2 and turns[0]["role"] == "user" and len(turns[0]["content"]) <= 120:
                picked.append((turns[0]["content"], turns[1]["content"]))
            if len(picked) == count:
                break
    if not picked:
        raise UserError(f"{test_file} holds no short single-turn chat to ask the model.")
    return picked


def parse_flow_answer(stdout: str) -> str:
    """The `answer` of the last JSON object `pf flow test` printed."""
    for match in reversed(list(re.finditer(r"^\{.*?^\}", stdout, flags=re.S | re.M))):
        try:
            return str(json.loads(match.group(0))["answer"])
        except (json.JSONDecodeError, KeyError):
            continue
    raise UserError(f"`pf flow test` printed no answer:\n{stdout[-1000:]}")


def _deploy_eval_table(runs: Path) -> str | None:
    """The table of the scores deploy's evaluation gate just wrote (runs/eval/), if any."""
    from deployment.scoring import Scores, table

    written = sorted((runs / "eval").glob("*-new-*.json"), key=lambda p: p.stat().st_mtime)
    return table([Scores.from_json(json.loads(written[-1].read_text(encoding="utf-8")))]) if written else None


def ask_with_openai_client(question: str) -> str:
    """One question to the running local endpoint through the official `openai` client."""
    from openai import OpenAI

    from deployment.local import HOST, read_record

    record = read_record()
    if record is None:
        raise UserError("no local endpoint is recorded: the deploy step did not finish")
    client = OpenAI(base_url=f"http://{HOST}:{record.port}/v1", api_key="local-endpoint-checks-no-key", max_retries=1)
    reply = client.chat.completions.create(model="phi", messages=[{"role": "user", "content": question}],
                                           max_tokens=64, temperature=0)
    return reply.choices[0].message.content or ""


def run_demo(
    budget: Budget = Budget(),
    env: dict[str, str] | None = None,
    on_deployed: Callable[[], None] | None = None,
    like: str = DEFAULT_LIKE,
) -> DemoResult:
    """Run every step; the local endpoint is torn down even when a step fails.

    `on_deployed` runs while the local endpoint is up (the end-to-end test probes the server there).
    `like` names the model whose tiny twin is fine-tuned (training.tiny_model.LIKES).
    """
    env = dict(os.environ if env is None else env)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if env.get("FINETUNE_PHI_RUNS"):
        os.environ["FINETUNE_PHI_RUNS"] = env["FINETUNE_PHI_RUNS"]
    runs = local_runs.runs_dir()
    data_dir = runs / "data"
    logs = runs / "demo" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # The demo's Prompt flow state (the phi_endpoint connection it writes, then deletes, and the
    # keyring file that encrypts it) stays under runs/: in ~/.promptflow it would replace, and at
    # teardown delete, the connection to a real Azure endpoint.
    pf_home = runs / "demo" / "promptflow"
    env["PF_HOME_DIRECTORY"] = str(pf_home)
    env["XDG_DATA_HOME"] = str(runs / "demo" / "xdg-data")
    python = sys.executable
    pf = str(Path(python).with_name("pf"))
    result = DemoResult()
    started = time.perf_counter()
    try:
        if not (pf_home / "pf.yaml").is_file():  # once: no tracing service, no telemetry (as `make setup` does)
            _run_step("promptflow-settings", [python, "-m", "common.pf_settings"], logs, result, env)
        _run_step("data", [python, "-m", "training.data", "--source", "sample", "--out", str(data_dir)], logs, result, env)
        model = "tiny"  # the default twin, built by the local target on first use
        if like != DEFAULT_LIKE:
            model = str(runs / "models" / f"tiny-{like}")
            _run_step("twin", [python, "-m", "training.tiny_model", "--out", model, "--like", like], logs, result, env)
        job_name = _run_step("train", train_command(python, model, data_dir, budget), logs, result, env).strip().splitlines()[-1]
        summary = json.loads((local_runs.job_dir(job_name) / "model" / "summary.json").read_text(encoding="utf-8"))
        result.eval_loss_before, result.eval_loss_after = summary["eval_loss_before"], summary["eval_loss_after"]
        say(f"    eval loss {result.eval_loss_before:.3f} before -> {result.eval_loss_after:.3f} after fine-tuning")
        _run_step("deploy", [python, "-m", "deployment.deploy", "--target", "local"], logs, result, env)
        result.eval_table = _deploy_eval_table(runs)
        if on_deployed is not None:
            on_deployed()
        for number, (question, reference) in enumerate(held_out_questions(data_dir / "test.jsonl", budget.questions), 1):
            out = _run_step(f"chat-{number}", [pf, "flow", "test", "--flow", "flows/chat", "--inputs", f"question={question}"],
                            logs, result, env)
            answer = parse_flow_answer(out)
            result.answers.append((question, answer, reference))
            print(f"\nQ: {question}\nA: {answer}\n   (held-out reference: {reference})\n", flush=True)
        if result.answers:
            question = result.answers[0][0]
            result.openai_answer = (question, ask_with_openai_client(question))
            print(f"Q (openai client, POST /v1/chat/completions): {question}\nA: {result.openai_answer[1]}\n", flush=True)
    finally:
        try:
            _run_step("teardown", [python, "-m", "deployment.teardown", "--target", "local"], logs, result, env)
        except StepFailed as err:
            say(str(err))
    result.timings["total"] = time.perf_counter() - started
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=Budget.epochs,
                        help="training epochs (default: the trainer's demo recipe, training/trainer/recipes/demo.yaml)")
    parser.add_argument("--max-steps", type=int, default=Budget.max_steps, help="stop training after N steps")
    parser.add_argument("--questions", type=int, default=Budget.questions, help="held-out questions to ask")
    parser.add_argument("--like", choices=sorted(LIKES), default=DEFAULT_LIKE,
                        help="fine-tune the tiny twin of this model (default: %(default)s)")
    args = parser.parse_args(argv)
    result = run_demo(Budget(epochs=args.epochs, max_steps=args.max_steps, questions=args.questions), like=args.like)
    steps = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in result.timings.items() if name != "total")
    print(f"demo finished in {result.timings['total']:.0f}s ({steps})")
    if result.eval_loss_before is not None:
        print(f"eval loss {result.eval_loss_before:.3f} -> {result.eval_loss_after:.3f}")
    if result.eval_table:
        print(f"held-out answers of the fine-tuned model (deploy's evaluation gate):\n{result.eval_table}")
    return 0
