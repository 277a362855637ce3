"""deployment.evaluate / metrics / gate: the eval set, the scores, the paired comparison, the CLI on Azure."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.cli import UserError, run_cli
from fakes.deploy_fixtures import EVAL_ROWS, OUTPUTS
from deployment import evaluate, metrics, scoring


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


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
    # the hash is of the conversations as scored: another limit is another set
    assert scoring.load_eval_set(path, limit=1).sha256 != eval_set.sha256
    assert scoring.load_eval_set(path, limit=None).sha256 == eval_set.sha256


@pytest.mark.parametrize(("rows", "needle"), [
    (["{not json"], "line 1: not JSON"),
    ([{"messages": [{"role": "user", "content": "only"}]}], "holds no conversation"),
])
def test_bad_eval_files_are_one_clear_error(tmp_path, rows, needle):
    with pytest.raises(UserError, match=needle):
        scoring.load_eval_set(_write(tmp_path / "e.jsonl", rows))
    with pytest.raises(UserError, match="no evaluation file"):
        scoring.load_eval_set(tmp_path / "missing.jsonl")


def test_scores_come_from_azure_ai_evaluation():
    same = metrics.score("Paris is the capital.", "Paris is the capital.")
    assert same == {"f1": 1.0, "rougeL": 1.0}
    partial = metrics.score("The capital is Paris", "Paris is the capital of France")
    assert 0 < partial["f1"] < 1 and 0 < partial["rougeL"] < 1
    assert metrics.score("   ", "Paris") == {"f1": 0.0, "rougeL": 0.0}
    assert "azure-ai-evaluation-1.18.10" in metrics.metric_version()


def test_intervals_and_the_paired_comparison():
    stat = metrics.summarize([0.2, 0.4, 0.6, 0.8])
    assert stat.n == 4 and stat.low < stat.mean < stat.high and stat.mean == pytest.approx(0.5)
    assert metrics.summarize([0.3, 0.3]) == metrics.summarize([0.3, 0.3])  # seeded: same table every time
    live = [0.6, 0.7, 0.5, 0.8, 0.6, 0.7, 0.9, 0.5, 0.6, 0.7]
    # the same model re-deployed: no difference, never refused
    assert not metrics.compare(live, live).worse
    # clearly worse on every conversation: refused
    assert metrics.compare([v - 0.3 for v in live], live).worse
    # significantly but only slightly worse (below the margin): let through
    assert not metrics.compare([v - 0.01 for v in live], live).worse
    # worse on average but within the noise (one conversation): let through
    noisy = list(live)
    noisy[0] -= 0.5
    assert not metrics.compare(noisy, live).worse
    with pytest.raises(ValueError):
        metrics.compare([0.1], [0.1, 0.2])


def test_evaluate_cli_on_azure(outputs_file, runs, fake_client, scoring_server, monkeypatch, capsys, eval_file):
    from deployment.azure_deploy import DeployPlan, deploy_to_azure

    monkeypatch.setattr("common.azure.make_ml_client", lambda outputs, credential=None: fake_client)
    fake_client.add_job("job-1")
    from infra.outputs import StackOutputs

    deploy_to_azure(fake_client, StackOutputs.from_mapping(OUTPUTS, source="x"), DeployPlan(endpoint_name="phi3-e"),
                    write_connection=lambda *a: None, poll_interval=0.01)
    capsys.readouterr()
    scoring_server.worse = {"blue"}
    with pytest.raises(SystemExit) as done:
        run_cli(evaluate.main, ["--outputs-file", str(outputs_file), "--endpoint-name", "phi3-e",
                                "--eval-file", str(eval_file), "--limit", "5"])
    assert done.value.code == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["metric", "deployment", "mean", "95%", "CI", "N"]
    assert lines[1].split()[:3] == ["f1", "phi3-e/blue", "0.000"] and lines[1].split()[-1] == "5"
    assert "rougeL" in lines[2] and "5/5 scored" in err
    [written] = (runs / "eval").glob("*-phi3-e-blue.json")
    data = json.loads(written.read_text())
    assert data["model"] == "azureml:phi3-finetuned:1" and len(data["conversations"]) == 5
    assert data["summary"]["f1"]["n"] == 5 and data["eval_sha256"]


def test_the_client_speaks_what_the_server_serves(scoring_server):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class OpenAIish(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            body = b'{"object": "list", "data": [{"id": "phi", "object": "model"}]}'
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return None

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), OpenAIish)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/score"
        assert scoring.speaks_openai(url) is True
        assert scoring.speaks_openai(scoring_server.url) is False  # a /score-only server
        assert scoring.speaks_openai("http://127.0.0.1:9/score") is False  # nothing listening
    finally:
        httpd.shutdown()
        httpd.server_close()
    client = scoring.client_for("http://127.0.0.1:5000/score", "k", api="openai")
    assert client.url == "http://127.0.0.1:5000/v1/chat/completions"
    assert scoring.client_for("http://127.0.0.1:5000/score", "k").url == "http://127.0.0.1:5000/score"
