"""The offline end-to-end path, step by step, through the same command lines a user types.

data (sample) -> fine-tune (local target, tiny Phi-3) -> deploy (local server, continuous batching)
-> chat (Prompt flow `pf flow test`, then one answer through the official `openai` client) -> teardown.
`--like phi-4-mini` first builds the tiny Phi-4-mini twin (`training.tiny_model --like`) and runs
the same path on it. Each step runs as a subprocess with its
output in `runs/demo/logs/<step>.log`; a failing step is named, its log tail shown, and the
local server is stopped whatever happens.

The demo has its own room: runs/demo/ is the runs/ folder of every step it runs, so its data,
models, jobs (and their LATEST), local server and its record, evaluations, Prompt flow home (the
phi_endpoint connection) and keyring all live there. It never stops a server or rewrites a
connection it did not create; a user's `deploy --target local` keeps serving beside it, and the
demo says so.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from common import processes, runs
from common.cli import ArgumentParser, UserError, say
from common.values import Range
from deployment.flow_check import held_out_questions, parse_flow_answer
from training.tiny_model import DEFAULT_LIKE, LIKES

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Budget:
    """How much the demo trains; the end-to-end test uses a smaller one."""

    epochs: float | None = None
    """None: the demo preset's."""
    max_steps: int = -1
    questions: int = 2
    preset: str = "demo"
    """The trainer's preset (training/trainer/presets/demo.yaml): `training.submit --config demo`."""
    greedy_chat: bool = False
    """False: the flow samples, as a user's chat does. True (the tests): the connection asks for greedy
    replies of ANSWER_MAX_TOKENS, so the flow's answer is reproducible and equals the openai client's."""


QUESTIONS = Range(1, 100, integer=True)
ANSWER_MAX_TOKENS = 64
"""The length of the openai client's answer, and of the flow's when `greedy_chat`."""


def train_command(python: str, model: str, data_dir: Path, budget: Budget) -> list[str]:
    """The demo's fine-tune: `training.submit --target local --config demo`, with `budget` on top."""
    return [python, "-m", "training.submit", "--target", "local", "--model", model, "--data", str(data_dir),
            "--config", budget.preset, "--max-steps", str(budget.max_steps),
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
    model_dir: Path | None = None
    """Where the fine-tuned model (an MLflow model folder) landed."""
    openai_answer: tuple[str, str] | None = None
    """(question, the answer through the official `openai` client on /v1/chat/completions)"""


def _run_step(name: str, command: list[str], logs: Path, result: DemoResult, env: dict[str, str],
              live: str = "") -> str:
    """Run one step (common.processes.run_step), logged to logs/<name>.log and timed; returns its stdout.

    `live`: what the step's own output shows, which then also shows as it comes (the fine-tune's loss lines,
    the deploy's named steps and scoring progress), so no long step is silent."""
    if live:
        say(f"    ({live} follows; all of it is also in {logs / f'{name}.log'})")
    try:
        done = processes.run_step(name, command, logs / f"{name}.log", cwd=REPO_ROOT, env=env, live=bool(live))
    except processes.StepFailed as failed:
        result.timings[name] = failed.seconds
        raise
    result.timings[name] = done.seconds
    return done.stdout


def _deploy_eval_table() -> str | None:
    """The table of the scores deploy's evaluation gate just wrote (runs/eval/), if any."""
    from deployment.scoring import Scores, table

    written = sorted(runs.eval_dir().glob("*-new-*.json"), key=lambda p: p.stat().st_mtime)
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
                                           max_tokens=ANSWER_MAX_TOKENS, temperature=0)
    return reply.choices[0].message.content or ""


def greedy_connection_command(python: str) -> list[str]:
    """Point phi_endpoint at the running local endpoint again, asking for greedy replies (`Budget.greedy_chat`)."""
    from deployment.local import HOST, read_record

    record = read_record()
    if record is None:
        raise UserError("no local endpoint is recorded: the deploy step did not finish")
    return [python, "-m", "deployment.connection", "set", "--endpoint", f"http://{HOST}:{record.port}", "--api", "openai",
            "--temperature", "0", "--max-tokens", str(ANSWER_MAX_TOKENS)]


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
    with demo_room(env) as room:
        return _run_steps(room, budget, env, on_deployed, like)


@contextlib.contextmanager
def demo_room(env: dict[str, str]) -> Iterator[Path]:
    """runs/demo/ as the runs/ folder of this process and of every step (`env`), its own Prompt flow home
    and keyring inside; the caller's runs/ (and its FINETUNE_PHI_RUNS) is back afterwards.

    In the user's runs/ the demo would replace their data and LATEST job, stop their local server and
    point their phi_endpoint connection at its own server (a dead port after its teardown).
    """
    previous = os.environ.get(runs.ENV_VAR)
    if env.get(runs.ENV_VAR):
        os.environ[runs.ENV_VAR] = env[runs.ENV_VAR]
    _note_users_endpoint()
    room = runs.demo_dir()
    env[runs.ENV_VAR] = os.environ[runs.ENV_VAR] = str(room)
    env["PF_HOME_DIRECTORY"] = str(runs.promptflow_home(room))
    env["XDG_DATA_HOME"] = str(runs.keyring_dir(room))
    try:
        yield room
    finally:
        if previous is None:
            os.environ.pop(runs.ENV_VAR, None)
        else:
            os.environ[runs.ENV_VAR] = previous


def _note_users_endpoint() -> None:
    """Say so when the user's own local endpoint is serving: the demo leaves it, and its connection, alone."""
    from deployment.local import is_our_server, read_record

    record = read_record()
    if record is not None and is_our_server(record.pid, record.port):
        say(f"    your local endpoint keeps serving on port {record.port} (pid {record.pid}, {runs.serve_record()}), "
            f"and your phi_endpoint connection stays as it is: the demo runs its own in {runs.demo_dir()}")


def _run_steps(room: Path, budget: Budget, env: dict[str, str], on_deployed: Callable[[], None] | None,
               like: str) -> DemoResult:
    data_dir, logs = runs.data_dir(), runs.logs_dir(room)
    python = sys.executable
    pf = str(Path(python).with_name("pf"))
    result = DemoResult()
    started = time.perf_counter()
    try:
        _run_step("data", [python, "-m", "training.data", "--source", "sample", "--out", str(data_dir)], logs, result, env)
        model = "tiny"  # the default twin, built by the local target on first use
        if like != DEFAULT_LIKE:
            model = str(runs.models_dir() / f"tiny-{like}")
            _run_step("twin", [python, "-m", "training.tiny_model", "--out", model, "--like", like], logs, result, env)
        job_name = _run_step("train", train_command(python, model, data_dir, budget), logs, result, env,
                             live="the trainer's progress, with the loss,").strip().splitlines()[-1]
        result.model_dir = runs.job_dir(job_name) / "model"
        summary = json.loads((runs.job_dir(job_name) / "model" / "summary.json").read_text(encoding="utf-8"))
        result.eval_loss_before, result.eval_loss_after = summary["eval_loss_before"], summary["eval_loss_after"]
        say(f"    eval loss {result.eval_loss_before:.3f} before -> {result.eval_loss_after:.3f} after fine-tuning")
        _run_step("deploy", [python, "-m", "deployment.deploy", "--target", "local"], logs, result, env,
                  live="the deploy's steps: start, smoke test, evaluation gate, promotion, connection")
        result.eval_table = _deploy_eval_table()
        if budget.greedy_chat:
            _run_step("greedy-connection", greedy_connection_command(python), logs, result,
                      {**env, "PHI_ENDPOINT_KEY": secrets.token_urlsafe(16)})  # the local server checks no key
        if on_deployed is not None:
            on_deployed()
        for number, (question, reference) in enumerate(held_out_questions(runs.default_eval_file(), budget.questions), 1):
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
        except processes.StepFailed as err:
            say(str(err))
    result.timings["total"] = time.perf_counter() - started
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=Budget.epochs,
                        help="training epochs (default: the trainer's demo preset, training/trainer/presets/demo.yaml)")
    parser.add_argument("--max-steps", type=int, default=Budget.max_steps, help="stop training after N steps")
    parser.add_argument("--questions", type=QUESTIONS, default=Budget.questions,
                        help=f"held-out questions to ask, {QUESTIONS} (default: %(default)s)")
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
    if result.model_dir is not None:
        print(where_it_landed(result.model_dir))
    return 0


def where_it_landed(model_dir: Path) -> str:
    """The demo's last lines: the fine-tuned model's folder and the command that serves it again."""
    from deployment.serving.cli import DEFAULT_PORT

    return (f"the fine-tuned model: {model_dir}\n"
            f"serve it: python -m deployment.serve --model-dir {model_dir}   "
            f"(then an OpenAI client with base_url http://127.0.0.1:{DEFAULT_PORT}/v1; see docs/SERVING.md)")
