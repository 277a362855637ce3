"""deployment.evaluate / scoring / metrics / gate: the eval set, the correctness metric, the CLI, the gate's reuse.

The comparisons run the real CLI (`python -m deployment.evaluate --compare`) against scripted
OpenAI-compatible endpoints on 127.0.0.1 (tests/deployment/scripted_endpoints.py) answering the
220-conversation fixture and the default instruction prompts (tests/deployment/eval_sets.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import scripted_endpoints as se
from common.cli import UserError, run_cli
from fakes.deploy_fixtures import EVAL_ROWS, OUTPUTS
from deployment import evaluate, gate, gate_cost, metrics, scoring
from fakes.ml_client import SECRET_KEY

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "eval" / "conversations.jsonl"
EP = "phi3-e"


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# -- the eval set ----------------------------------------------------------------------------------


def test_eval_set_scores_the_last_assistant_turn(tmp_path):
    multi = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."},
    ]}
    no_reply = {"messages": [{"role": "user", "content": "alone"}]}
    path = _write(tmp_path / "e.jsonl", [multi, no_reply, "", EVAL_ROWS[0]])
    eval_set = scoring.load_eval_set(path, limit=None)
    first, second = eval_set.conversations
    assert first.question == "Capital of France?" and first.reference == "Paris."
    assert first.history == multi["messages"][:3] and first.id == "line-1"
    assert second.id == "line-4" and second.history == []
    assert len(eval_set.prompts) == 200, "the default instruction prompts come with every eval set"
    # the hash is of the conversations and prompts as scored: another limit is another set
    assert scoring.load_eval_set(path, limit=1).sha256 != eval_set.sha256
    assert scoring.load_eval_set(path, limit=None).sha256 == eval_set.sha256
    assert scoring.load_eval_set(path, limit=None, instructions=False).sha256 != eval_set.sha256


@pytest.mark.parametrize(("rows", "needle"), [
    (["{not json"], "line 1: not JSON"),
    ([{"messages": [{"role": "user", "content": "only"}]}], "holds no conversation"),
])
def test_bad_eval_files_are_one_clear_error(tmp_path, rows, needle):
    with pytest.raises(UserError, match=needle):
        scoring.load_eval_set(_write(tmp_path / "e.jsonl", rows))
    with pytest.raises(UserError, match="no evaluation file"):
        scoring.load_eval_set(tmp_path / "missing.jsonl")


def test_the_fixture_is_ultrachat_shaped_with_long_references_answered_first():
    eval_set = scoring.load_eval_set(FIXTURE, limit=None, instructions=False)
    assert len(eval_set.conversations) >= 200
    words = [metrics.reply_words(c.reference) for c in eval_set.conversations]
    assert min(words) >= 100 and max(words) <= 300
    assert sum(bool(c.history) for c in eval_set.conversations) >= 40, "some conversations are multi-turn"
    for case in se.CASES.values():
        assert metrics.lead(case.reference) == case.answer
        assert case.answer != case.distractor_answer


# -- the correctness metric ------------------------------------------------------------------------

MICROSOFT = (
    "Microsoft was founded by Bill Gates and Paul Allen on April 4, 1975, in Albuquerque, New Mexico. The two "
    "childhood friends from Seattle had been fascinated by computers since school, and when the Altair 8800 appeared "
    "on the cover of Popular Electronics they saw a chance to write software for it. They developed a version of the "
    "BASIC programming language for the machine, and its success convinced them to start a company of their own. "
    "Gates left Harvard to work on the business full time. In 1979 the company moved to Bellevue, Washington, and "
    "later to Redmond, where its headquarters remain today. Its big break came in 1980, when IBM asked it to supply "
    "an operating system for the IBM PC, which became MS-DOS."
)
CONCISE_RIGHT = "Bill Gates and Paul Allen founded Microsoft in 1975."
VERBOSE_WRONG = (
    "Microsoft was started in the 1980s by a group of engineers who had left IBM. They had been working on "
    "operating systems for a long time, and when personal computers appeared they saw a chance to write software "
    "for them. They developed a version of the Pascal language, and its success convinced them to start a company. "
    "The company was based in San Francisco, and later moved to Seattle, where its offices remain today."
)


def test_a_concise_right_reply_beats_a_long_wrong_one_where_whole_reference_f1_did_the_opposite():
    whole = lambda reply: metrics.token_f1(metrics.normalized_words(reply), metrics.normalized_words(MICROSOFT))  # noqa: E731
    assert whole(VERBOSE_WRONG) > whole(CONCISE_RIGHT), "the issue's finding: whole-reference F1 rewards length"
    cut_right, cut_wrong = metrics.f1_cut(CONCISE_RIGHT, MICROSOFT), metrics.f1_cut(VERBOSE_WRONG, MICROSOFT)
    print(f"\nwhole-reference F1: concise right {whole(CONCISE_RIGHT):.3f}, verbose wrong {whole(VERBOSE_WRONG):.3f}; "
          f"f1_cut: concise right {cut_right:.3f}, verbose wrong {cut_wrong:.3f}")
    assert cut_right > 0.6 and cut_wrong < cut_right / 2
    assert metrics.f1_cut(MICROSOFT, MICROSOFT) == 1.0 and metrics.score("  ", MICROSOFT) == {"f1_cut": 0.0}


def test_length_alone_buys_nothing():
    content = metrics.content_words(MICROSOFT)
    lead = len(metrics.content_words(metrics.lead(MICROSOFT)))
    # any prefix of the reference at least as long as its lead sentence is a perfect reply ...
    for k in (lead, lead + 5, len(content)):
        assert metrics.f1_cut(" ".join(content[:k]), MICROSOFT) == 1.0
    # ... padding a right answer with words the reference does not say only lowers it ...
    padded = [metrics.f1_cut(CONCISE_RIGHT + " lorem ipsum dolor" * n, MICROSOFT) for n in range(0, 40, 5)]
    assert padded == sorted(padded, reverse=True) and padded[-1] < padded[0] / 3
    # ... and repeating the reference's own words is counted once per use in the reference
    assert metrics.f1_cut(" ".join(["Microsoft"] * 60), MICROSOFT) < 0.05
    # shorter than the lead sentence, recall falls: a bare year is not the answer
    assert metrics.f1_cut("1975", MICROSOFT) < 0.3


def test_max_tokens_leave_room_for_the_reference_within_a_cap():
    assert metrics.max_tokens_for("Paris.") == metrics.MAX_TOKENS_FLOOR
    words = metrics.reply_words(MICROSOFT)
    assert metrics.max_tokens_for(MICROSOFT) == 3 * words > 64  # twice the reference, at 1.5 tokens a word
    assert metrics.max_tokens_for("word " * 1000) == metrics.MAX_TOKENS_CAP


# -- comparing two endpoints (deploy's gate on any two OpenAI-compatible URLs) -------------------------


def _compare(a: se.Answer, b: se.Answer, capsys, *extra: str, keys: dict[str, str] | None = None) -> tuple[int, str, str]:
    with se.ScriptedEndpoint(a, key=(keys or {}).get("a")) as live, se.ScriptedEndpoint(b, key=(keys or {}).get("b")) as new:
        with pytest.raises(SystemExit) as done:
            run_cli(evaluate.main, ["--compare", live.url, new.url, "--eval-file", str(FIXTURE), *extra])
        _compare.requests = (live.requests, new.requests)
    out, err = capsys.readouterr()
    return done.value.code, out, err


@pytest.mark.slow
def test_b_verbose_and_wrong_is_refused_against_a_concise_and_right(runs, capsys):
    code, out, err = _compare(se.CONCISE_RIGHT, se.VERBOSE_WRONG, capsys)
    assert code == 3 and out.startswith("worse:")  # the issue allows 3 or 4, never 0
    assert "correctness: mean(d) -35" in err and "smallest drop this run detects with 80% power" in err
    live, new = _compare.requests
    asked = [r["body"] for r in new if se.last_user(r["body"]) in se.CASES]
    assert len(asked) == 200 and all(b["temperature"] == 0.0 for b in asked)
    budgets = {se.last_user(b): b["max_tokens"] for b in asked}
    assert all(budgets[q] == metrics.max_tokens_for(se.CASES[q].reference) for q in budgets)
    assert max(budgets.values()) > 64, "replies get room to finish (the old gate cut them at 64 tokens)"


@pytest.mark.slow
def test_b_concise_and_right_is_never_refused_as_worse_than_a_verbose_and_wrong(runs, capsys):
    code, out, err = _compare(se.VERBOSE_WRONG, se.CONCISE_RIGHT, capsys)
    assert code == 4, out  # not worse; the replies' lengths differ too much to judge (the issue allows 0 or 4)
    assert "inconclusive" in out and "average 7 words and the live ones 199" in out
    assert "correctness: mean(d) +35" in err


@pytest.mark.slow
def test_identical_endpoints_pass(runs, capsys):
    code, out, err = _compare(se.CONCISE_RIGHT, se.CONCISE_RIGHT, capsys)
    assert code == 0 and out.startswith("not worse:")
    assert "new - live      +0.0" in err and "at the planning spread" in err


@pytest.mark.slow
def test_another_questions_facts_on_10_percent_of_the_questions_is_refused(runs, capsys):
    code, out, err = _compare(se.CONCISE_RIGHT, se.SWAPPED_10, capsys)
    assert code == 3 and "worse than the live one beyond the margin on correctness" in out
    [table_row] = [line for line in err.splitlines() if line.startswith("correctness   B (candidate)")]
    assert table_row.split()[-2:] == ["7.2", "0.0"], "same length, same endings: only the facts differ"


@pytest.mark.slow
def test_ignoring_the_instructions_is_refused_on_the_instruction_signal(runs, capsys):
    code, out, err = _compare(se.CONCISE_RIGHT, se.IGNORES_INSTRUCTIONS, capsys)
    assert code == 3 and "beyond the margin on instructions" in out
    assert "IFEval strict accuracy, A (live): prompt-level 100.0, instruction-level 100.0" in err
    [written] = (runs / "eval").glob("*-B-candidate.json")
    data = json.loads(written.read_text())
    summary = data["summary"]["instructions"]
    assert summary["prompt_level"] < 0.2 and set(summary["per_type"]) >= {"punctuation:no_comma", "startend:quotation"}
    assert len(data["instructions"]) == 200 and data["instructions"][0]["reply"] == se.PLAIN


@pytest.mark.slow
def test_replies_cut_off_at_max_tokens_make_the_comparison_inconclusive(runs, capsys):
    cut = se.policy(lambda case, i: (case.answer, "length") if i % 4 == 0 else case.answer)
    code, out, _ = _compare(se.CONCISE_RIGHT, cut, capsys)
    assert code == 4 and "25.0% of the new replies and 0.0% of the live ones were cut off at max_tokens" in out


def test_compare_sends_each_sides_key_model_and_deployment(runs, capsys, monkeypatch):
    monkeypatch.setenv("EVAL_KEY_A", "key-a")
    monkeypatch.setenv("EVAL_KEY_B", "key-b")
    code, out, err = _compare(se.CONCISE_RIGHT, se.CONCISE_RIGHT, capsys, "--limit", "5", "--model-a", "phi-live",
                              "--model-b", "phi-new", "--deployment-b", "green", keys={"a": "key-a", "b": "key-b"})
    assert code == 0, out + err
    live, new = _compare.requests
    assert len(live) == len(new) == 10  # 5 conversations + 5 instruction prompts each
    assert {r["body"]["model"] for r in live} == {"phi-live"} and {r["body"]["model"] for r in new} == {"phi-new"}
    assert {r["deployment"] for r in live} == {None} and {r["deployment"] for r in new} == {"green"}
    assert "key-a" not in out + err and "key-b" not in out + err


def test_compare_errors_exit_1_with_one_paragraph(runs, capsys, monkeypatch):
    monkeypatch.setenv("EVAL_KEY_B", "stale-key-0042")
    code, _, err = _compare(se.CONCISE_RIGHT, se.CONCISE_RIGHT, capsys, "--limit", "2", keys={"b": "current-key"})
    assert code == 1 and "evaluating B (candidate)" in err and "refused the key (HTTP 401)" in err
    assert "stale-key-0042" not in err
    for argv, needle in ((["--model-a", "x"], "apply to --compare"), (["--compare", "ftp://x", "http://y/v1"], "not an http"),
                         (["--compare", "http://x/v1", "http://y/v1", "--judge-model", "m"], "pass the judge's URL")):
        with pytest.raises(SystemExit) as done:
            run_cli(evaluate.main, [*argv, "--eval-file", str(FIXTURE)])
        assert done.value.code == 1 and needle in capsys.readouterr().err


def test_the_judge_informs_with_answer_order_swapped_and_does_not_decide(runs, capsys):
    def knows_the_answers(body):  # prefers the answer that is the reference's first sentence
        prompt = se.last_user(body)
        a = prompt.split("Answer A:\n", 1)[1].split("\n\nAnswer B:", 1)[0]
        return "A" if any(a == case.answer for case in se.CASES.values()) else "B"

    with se.ScriptedEndpoint(lambda body: "A") as biased, se.ScriptedEndpoint(knows_the_answers) as fair:
        results = {}
        for name, judge in (("biased", biased), ("fair", fair)):
            code, out, err = _compare(se.VERBOSE_WRONG, se.CONCISE_RIGHT, capsys, "--limit", "10",
                                      "--judge", judge.url, "--judge-model", "judge-1")
            results[name] = (code, err, judge.requests)
    assert results["biased"][0] == results["fair"][0] == 4, "the judge does not change the outcome"
    assert "new wins 50.0% against live over 10 conversation(s)" in results["biased"][1], "position bias cancels"
    assert "new judged better 10x shown first, 0x shown second" in results["biased"][1]
    assert "new wins 100.0% against live over 10 conversation(s)" in results["fair"][1]
    requests = results["fair"][2]
    assert len(requests) == 20 and {r["body"]["model"] for r in requests} == {"judge-1"}
    assert all(r["body"]["temperature"] == 0.0 for r in requests)


# -- the CLI on Azure, and the gate's reuse of live scores with Azure's ARM ids ------------------------


def _live_blue(fake_client, outputs) -> str:
    """An endpoint with deployment blue at 100% (model azureml:phi3-finetuned:1), set up through the fake."""
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Model

    from deployment import definitions
    from deployment.environment import serving_environment

    fake_client.models.create_or_update(Model(name="phi3-finetuned", version="1", type=AssetTypes.MLFLOW_MODEL,
                                              path="azureml://jobs/job-1/outputs/model"))
    env = serving_environment()
    fake_client.environments.create_or_update(env.to_entity())
    fake_client.online_endpoints.begin_create_or_update(definitions.build_endpoint(EP, outputs)).result()
    fake_client.online_deployments.begin_create_or_update(definitions.build_deployment(
        name="blue", endpoint_name=EP, model="azureml:phi3-finetuned:1", environment=env.reference,
        instance_type=definitions.DEFAULT_INSTANCE_TYPE, outputs=outputs)).result()
    endpoint = fake_client.online_endpoints.get(name=EP)
    endpoint.traffic = {"blue": 100}
    fake_client.online_endpoints.begin_create_or_update(endpoint).result()
    return env.reference


def test_evaluate_cli_on_azure(outputs_file, outputs, runs, fake_client, scoring_server, monkeypatch, capsys, eval_file):
    monkeypatch.setattr("common.azure.make_ml_client", lambda outputs, credential=None: fake_client)
    _live_blue(fake_client, outputs)
    scoring_server.worse = {"blue"}
    with pytest.raises(SystemExit) as done:
        run_cli(evaluate.main, ["--outputs-file", str(outputs_file), "--endpoint-name", EP,
                                "--eval-file", str(eval_file), "--limit", "5"])
    assert done.value.code == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["signal", "deployment", "mean", "95%", "CI", "N", "words", "limit%"]
    assert lines[1].split()[:3] == ["correctness", f"{EP}/blue", "0.0"] and lines[1].split()[5] == "5"
    assert lines[2].startswith("instructions") and "10/10 scored" in err
    [written] = (runs / "eval").glob(f"*-{EP}-blue.json")
    data = json.loads(written.read_text())
    assert gate.asset_key(data["model"]) == "phi3-finetuned:1" and data["model"].startswith("/subscriptions/")
    assert gate.asset_key(data["environment"]).startswith("phi3-serve:")
    assert len(data["conversations"]) == 5 and data["summary"]["correctness"]["n"] == 5 and data["eval_sha256"]
    assert all(r["authorized"] and r["deployment"] == "blue" for r in scoring_server.requests)
    assert SECRET_KEY not in out + err


@pytest.mark.parametrize(("routes", "path", "api"), [
    ("host", "/v1/chat/completions", "openai"),  # the OpenAI routes after the host
    ("score", "/score/v1/chat/completions", "openai"),  # only after the scoring route
    ("none", "/score", None),  # neither: the /score dialect
])
def test_the_client_speaks_what_the_server_serves(scoring_server, routes: str, path: str, api: str | None) -> None:
    from deployment.connection import PhiConnection
    from fakes.deploy_fixtures import SMOKE_REPLY
    from fakes.ml_client import SECRET_KEY

    scoring_server.routes = routes
    connection = PhiConnection.probed(scoring_server.url, SECRET_KEY)
    client = scoring.client_on(connection)
    assert (client.url, connection.api) == (scoring_server.host + path, api)
    assert client.chat("Reply with one short sentence: what are you?").text == SMOKE_REPLY


def test_asset_keys_match_every_form_azure_uses():
    arm = ("/subscriptions/0/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/w/models/"
           "phi3-finetuned/versions/3")
    assert gate.asset_key(arm) == gate.asset_key("azureml:phi3-finetuned:3") == gate.asset_key("phi3-finetuned:3")
    registry = "azureml://registries/azureml/models/Phi-3-mini-4k-instruct/versions/15"
    assert gate.asset_key(registry) == "registry/azureml/Phi-3-mini-4k-instruct:15" != gate.asset_key(
        "azureml:Phi-3-mini-4k-instruct:15")
    assert gate.asset_key("/runs/jobs/x/model@1700000000") == "/runs/jobs/x/model@1700000000"


class _Replies:
    """A client at the network edge answering every conversation with its reference."""

    def __init__(self, eval_set: scoring.EvalSet) -> None:
        self.answers = {c.question: c.reference for c in eval_set.conversations}
        self.asked = 0

    def chat(self, question, history=None, **params):
        from flows.chat.phi_client import ChatReply

        self.asked += 1
        return ChatReply(self.answers.get(question, "No."), "stop")


def test_live_scores_are_reused_when_azure_returns_the_model_and_environment_as_arm_ids(
        fake_client, outputs, runs, eval_file):
    env = _live_blue(fake_client, outputs)
    eval_set = scoring.load_eval_set(eval_file, limit=None)
    scope = f"azure/{OUTPUTS['workspace_name']}/{EP}"
    # what the first deploy recorded: scores of the model and environment as deploy named them
    first = scoring.score_deployment(_Replies(eval_set), eval_set, label="new blue", model="azureml:phi3-finetuned:1",
                                     environment=env)
    gate.remember(scope, first)
    fake_client.deployments[(EP, "blue")].tags.update(gate.tags_for(first))
    # a second deploy reads blue back: the service names the model and environment by ARM id
    current = fake_client.online_deployments.get(name="blue", endpoint_name=EP)
    assert str(current.model).startswith("/subscriptions/") and "/environments/" in str(current.environment)
    fake_client.calls.clear()
    rescored = []
    live, reused = gate.live_scores(scope, dict(current.tags), str(current.model), eval_set, "live blue",
                                    lambda: rescored.append(1) or first, environment=str(current.environment))
    assert reused and not rescored and live.label == "live blue"
    assert fake_client.count("online_deployments.begin_create_or_update") == 0, "no PUT on the live deployment"
    # a new server image (another environment version) is never matched with the old image's scores
    other = env.rsplit(":", 1)[0] + ":0000000000000000"
    stored, why = gate.recorded(scope, dict(current.tags), str(current.model), eval_set, environment=other)
    assert stored is None and "serving environment" in why
    # nor is a cached file written for another environment
    gate.remember(scope, scoring.Scores.from_json({**first.to_json(), "environment": other}))
    stored, _ = gate.recorded(scope, dict(current.tags), str(current.model), eval_set,
                              environment=str(current.environment))
    assert stored is not None and gate.asset_key(stored.environment) == gate.asset_key(env)


# -- the gate's cost, before it runs ----------------------------------------------------------------


def test_the_gate_states_its_time_and_cost_per_instance_type():
    eval_set = scoring.load_eval_set(FIXTURE)
    a100 = gate_cost.estimate("Standard_NC24ads_A100_v4", eval_set)
    cpu = gate_cost.estimate("Standard_E16s_v3", eval_set)
    assert a100.requests == cpu.requests == 2 * (200 + 200)
    assert a100.typical_tokens == cpu.typical_tokens < a100.worst_tokens
    assert cpu.typical_s > 20 * a100.typical_s, "200 conversations on CPU take far longer than on an A100"
    assert a100.usd(a100.typical_s) == pytest.approx(3.673 * a100.typical_s / 3600)
    one = gate_cost.estimate("Standard_NC24ads_A100_v4", eval_set, deployments=1)
    assert one.typical_tokens * 2 == a100.typical_tokens
    sentence = cpu.sentence()
    print("\n" + a100.sentence() + "\n" + sentence)
    assert sentence.startswith("evaluation gate: 800 requests on Standard_E16s_v3") and " h and $" in sentence
    assert gate_cost.estimate("Standard_NC4as_T4_v3", eval_set).usd_per_hour is None
