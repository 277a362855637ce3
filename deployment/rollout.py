"""The one rollout, for Azure and for this machine.

    prepare -> start the new deployment beside the live one -> smoke-test it -> evaluate it
    against the live one (the gate) -> promote it -> retire the old one(s) -> write the connection

A target supplies the platform's calls: `AzureTarget` (deployment/azure_deploy.py: a managed
online endpoint, blue/green deployments) and `LocalTarget` (deployment/local.py: a server on
127.0.0.1). The order, the rollback guard, the smoke test and the gate are written once, here,
so "the same gate locally and on Azure" holds by construction.

From the new deployment's creation until it is promoted, every step runs inside the target's
rollback guard (deployment/rollback.py): a failure, or the gate's refusal, removes the new
deployment and leaves the live one serving. The gate (deployment/gate.py) and the scoring
(deployment/scoring.py) are called from `_evaluate` only.
"""
from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

from common.cli import UserError, first_line, say, step
from deployment.connection import PhiConnection
from deployment.rollback import Rollback

if TYPE_CHECKING:  # pragma: no cover
    from deployment.gate import Verdict
    from deployment.scoring import EvalSet, Scores

SMOKE_QUESTION = "Reply with one short sentence: what are you?"
SMOKE_MAX_TOKENS = 32


@dataclass(frozen=True)
class Deployment:
    """One deployment as the rollout sees it: an Azure deployment, or a local server."""

    name: str
    """In messages: "green", "the server on port 8123"."""
    label: str
    """In the evaluation table and its file names: "new green", "live (port 8123)"."""
    model: str
    """What it serves, as the gate records it (an Azure model reference, a local folder and its time)."""
    ref: str
    """What the target finds it by (the Azure deployment name, the local server's pid)."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """Its recorded evaluation tags (the live one's; deployment/gate.py reads them)."""
    environment: str = ""
    """Its serving environment (Azure: the content-hashed environment version): scores from another image are not reused."""


@dataclass(frozen=True)
class Retired:
    replaced: tuple[str, ...]
    leftovers: tuple[str, ...] = ()
    """Old deployments that could not be removed (they may still bill or hold a port)."""
    advice: str = ""
    """How to remove the leftovers by hand."""


class Target(Protocol):
    """The platform's calls, in the order `rollout` makes them."""

    scope: str
    """The gate's cache scope: one endpoint ("azure/<workspace>/<endpoint>", "local")."""
    start_title: str
    """The start step's title: what is started, and where."""
    fetch_scores: Callable[[str], str] | None
    """Reads stored per-conversation scores by the reference a deployment's tags hold (None: only runs/eval/)."""
    key_hint: str
    """Where the endpoint key comes from, for the command that writes the connection by hand."""

    def hold(self) -> AbstractContextManager[Any]: ...
    def prepare(self) -> None: ...
    def rollback(self) -> Rollback: ...
    def start_new(self, rollback: Rollback) -> Deployment: ...
    def client(self, deployment: Deployment) -> Any: ...
    def live(self) -> Deployment | None: ...
    def tag(self, deployment: Deployment, tags: dict[str, str]) -> None: ...
    def gate_estimate(self, eval_set: "EvalSet") -> str: ...
    def keep_scores(self, scores: "Scores", deployment: Deployment, cached: Path | None) -> str: ...
    def promote(self, new: Deployment, rollback: Rollback) -> None: ...
    def retiring(self, new: Deployment) -> list[str]: ...
    def retire(self, old: list[str]) -> Retired: ...
    def connection(self, new: Deployment) -> PhiConnection: ...
    def where(self, new: Deployment) -> str: ...


Writer = tuple[str, Callable[[PhiConnection], None]]
"""(what it writes, in words; the writer): the local Prompt flow store, the Foundry project."""


@dataclass(frozen=True)
class GateSettings:
    eval_file: Path | None = None
    eval_limit: int | None = None
    force: bool = False
    margin: float | None = None


@dataclass(frozen=True)
class Outcome:
    new: Deployment
    smoke_answer: str
    verdict: "Verdict"
    retired: Retired
    connection: PhiConnection = field(repr=False)


def rollout(target: Target, settings: GateSettings, writers: Sequence[Writer]) -> Outcome:
    """Every step, in order; see the module docstring. Raises UserError when a step fails or the gate refuses."""
    from deployment.scoring import DEFAULT_LIMIT, load_eval_set

    eval_set = load_eval_set(settings.eval_file, settings.eval_limit or DEFAULT_LIMIT)  # before anything is created
    with target.hold():
        target.prepare()
        rollback = target.rollback()
        with step(target.start_title), rollback.guard("creation"):
            new = target.start_new(rollback)
        with step(f"smoke test {new.name}"), rollback.guard("the smoke test"):
            answer = smoke_test(target.client(new))
            say(f"    answered: {rollback.redact(answer)[:160]!r}")
        with rollback.guard("the evaluation"):
            live = target.live()
        with step(f"evaluate {new.name}" + (f" against {live.name}" if live else " (first deployment: baseline)")):
            with rollback.guard("the evaluation"):
                verdict = _evaluate(target, new, live, eval_set, settings)
            if not verdict.promote:
                raise rollback.refuse(verdict)
        with step(f"promote {new.name}"):
            target.promote(new, rollback)
        retired = _retire(target, new)
        connection = target.connection(new)
        with step(f"write the Prompt flow connection {connection.name}"):
            _write(connection, writers, f"{target.where(new)}", target.key_hint, retired)
        if retired.leftovers:
            raise UserError(f"{target.where(new)} and the connection is written, but {_leftovers(retired)}")
    return Outcome(new, answer, verdict, retired, connection)


def smoke_test(client: Any) -> str:
    """One short greedy chat: the reply must come back whole (finish_reason stop or length) and say something.

    An empty reply passes only as the model's own choice: it stopped at its first token (a barely
    trained tiny model may). What the model says is the gate's to judge, not the smoke test's.
    """
    reply = client.chat(SMOKE_QUESTION, max_tokens=SMOKE_MAX_TOKENS, temperature=0.0)
    if reply.finish_reason not in ("stop", "length"):
        raise UserError(f"the deployment answered with finish_reason {reply.finish_reason!r}, not stop or length")
    answer = (reply.text or "").strip()
    tokens = (reply.usage or {}).get("completion_tokens")
    if not answer and not (reply.finish_reason == "stop" and tokens in (0, 1)):
        raise UserError(f"the deployment answered with an empty reply ({tokens} completion tokens)")
    return answer


def _evaluate(target: Target, new: Deployment, live: Deployment | None, eval_set: "EvalSet",
              settings: GateSettings) -> "Verdict":
    """Score the new deployment and the live one (or reuse the live one's valid scores), then decide."""
    from deployment import gate
    from deployment.scoring import score_deployment

    def measure(deployment: Deployment) -> "Scores":
        return score_deployment(target.client(deployment), eval_set, label=deployment.label, model=deployment.model,
                                environment=deployment.environment)

    expected = target.gate_estimate(eval_set)
    if expected:
        say(f"    {expected}")
    started = time.perf_counter()
    new_scores, live_scores = measure(new), None
    if live is not None:
        live_scores, reused = gate.live_scores(target.scope, live.tags, live.model, eval_set, live.label,
                                               lambda: measure(live), target.fetch_scores,
                                               environment=live.environment)
        if not reused:
            _record(target, live_scores, live)
    verdict = gate.decide(new_scores, live_scores, force=settings.force, margin=settings.margin)
    say(f"    evaluation took {time.perf_counter() - started:.0f}s")
    if verdict.promote:
        _record(target, new_scores, new)
    else:
        target.keep_scores(new_scores, new, None)  # for the record: the deployment itself is removed
    return verdict


def _record(target: Target, scores: "Scores", deployment: Deployment) -> None:
    """Keep the scores where a later rollout finds them (this machine's cache, the platform's record) and tag
    the deployment with them."""
    from deployment import gate

    cached = gate.remember(target.scope, scores)
    target.tag(deployment, gate.tags_for(scores, target.keep_scores(scores, deployment, cached)))


def _retire(target: Target, new: Deployment) -> Retired:
    old = target.retiring(new)
    if not old:
        return Retired(())
    with step(f"retire {', '.join(old)}"):
        return target.retire(old)


def _leftovers(retired: Retired) -> str:
    return (f"the old deployment(s) {', '.join(retired.leftovers)} could not be removed and may still bill: "
            f"{retired.advice}")


def _write(connection: PhiConnection, writers: Sequence[Writer], where: str, key_hint: str, retired: Retired) -> None:
    """Hand the one connection to every writer; a failure says the deployment is live (never a traceback)."""
    for which, write in writers:
        try:
            write(connection)
        except Exception as err:
            detail = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {first_line(err)}"
            detail = detail.replace(connection.key, "<hidden>") if connection.key else detail
            also = f" Also, {_leftovers(retired)}" if retired.leftovers else ""
            raise UserError(
                f"{where}, but {which} was not written: {detail.rstrip()} Fix that and run deploy again, or write "
                f"the local connection alone with `{connection.set_command()}` ({key_hint}).{also}"
            ) from None
