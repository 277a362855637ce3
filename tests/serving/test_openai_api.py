"""deployment/serving/app.py in process (Starlette's test client): the states a live server rarely shows on
demand: still loading, the engine failing a request, the logs. The engine is the real one on the tiny model."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from deployment.serving.app import create_app
from deployment.serving.state import Server

USER = [{"role": "user", "content": "Who founded Microsoft?"}]
LOCAL = "http://127.0.0.1"  # the Host the app answers to on a loopback bind


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path):
    from deployment.serving.engines.transformers_engine import TransformersEngine
    from deployment.serving.model_dir import locate_model

    engine = TransformersEngine(locate_model(tiny_model_dir), "tiny")
    yield engine
    engine.close()


def test_while_loading_only_liveness_answers() -> None:
    client = TestClient(create_app(Server("phi")), base_url=LOCAL)
    assert client.get("/live").status_code == 200
    for method, path, body in [("GET", "/health", None), ("GET", "/v1/models", None),
                               ("POST", "/v1/chat/completions", {"messages": USER}), ("POST", "/score", {"messages": USER})]:
        response = client.request(method, path, json=body)
        assert response.status_code == 503, path
        message = response.json()["error"]
        assert "loading" in (message["message"] if isinstance(message, dict) else message)


def test_a_failed_load_is_reported_as_503() -> None:
    server = Server("phi")
    server.load_error = "the model failed to load: OSError: no weights"
    response = TestClient(create_app(server), base_url=LOCAL).get("/health")
    assert response.status_code == 503 and "failed to load" in response.json()["error"]


@pytest.mark.slow
def test_an_engine_failure_is_a_short_500_and_a_log_line(engine, monkeypatch, caplog) -> None:
    server = Server("tiny")
    server.engine = engine
    client = TestClient(create_app(server), base_url=LOCAL, raise_server_exceptions=False)
    assert client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2}).status_code == 200
    monkeypatch.setattr(engine._manager, "add_request", lambda *a, **k: None)  # the manager refuses work
    with caplog.at_level(logging.INFO, logger="deployment.serve"):
        openai_style = client.post("/v1/chat/completions", json={"messages": USER})
        score_style = client.post("/score", json={"messages": [{"role": "user", "content": "my-secret-4711"}]})
    assert openai_style.status_code == 500
    assert openai_style.json()["error"] == {"message": "generation failed; see the server log", "type": "server_error",
                                            "param": None, "code": None}
    assert score_style.status_code == 500 and score_style.json() == {"error": "generation failed; see the server log"}
    assert "engine error: the engine is not accepting requests" in caplog.text
    assert "Traceback" not in caplog.text and "my-secret-4711" not in caplog.text
    assert engine.stats.in_flight == 0  # the failed requests gave their slots back


@pytest.mark.slow
def test_unknown_model_id_is_404_in_openai_shape(engine) -> None:
    server = Server("tiny")
    server.engine = engine
    client = TestClient(create_app(server), base_url=LOCAL)
    assert client.get("/v1/models/tiny").json()["id"] == "tiny"
    missing = client.get("/v1/models/gpt-4")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert client.get("/v1/chat/completions").status_code == 405


@pytest.mark.slow
def test_a_dead_generation_loop_fails_liveness(engine, monkeypatch) -> None:
    server = Server("tiny")
    server.engine = engine
    client = TestClient(create_app(server), base_url=LOCAL)
    assert client.get("/live").status_code == 200
    monkeypatch.setattr(engine._manager.background_thread_status, "fatal_error", RuntimeError("CUDA error"))
    live = client.get("/live")
    assert live.status_code == 503 and "generation loop stopped (RuntimeError)" in live.json()["error"]
    assert client.get("/health").status_code == 503


@pytest.mark.slow
def test_a_conversation_the_chat_template_refuses_is_a_400(engine, monkeypatch) -> None:
    """A template's raise_exception (e.g. roles out of order) is the caller's error, never a 500."""
    refusing = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    monkeypatch.setattr(engine.tokenizer, "chat_template", refusing)
    server = Server("tiny")
    server.engine = engine
    client = TestClient(create_app(server), base_url=LOCAL, raise_server_exceptions=False)
    for path in ("/v1/chat/completions", "/score"):
        response = client.post(path, json={"messages": USER, "max_tokens": 2})
        assert response.status_code == 400, path
        assert "roles must alternate" in str(response.json()["error"])


@pytest.mark.slow
def test_requests_are_decoded_together(engine, monkeypatch) -> None:
    """8 concurrent chat completions share the engine's forward steps: continuous batching, not just admission.

    transformers' ContinuousBatchingManager schedules each forward step with its batch processor's
    scheduler (`schedule_batch` returns the requests of that step); the test records their number.
    """
    from openai import OpenAI

    server = Server("tiny")
    server.engine = engine
    http = TestClient(create_app(server), base_url=LOCAL).__enter__()  # one event loop for all requests, as under uvicorn
    try:
        _decoded_together(engine, monkeypatch, OpenAI(base_url=LOCAL + "/v1", api_key="unused",
                                                      max_retries=0, http_client=http))
    finally:
        server.engine = None  # the module's engine outlives this app: its shutdown must not close it
        http.__exit__(None, None, None)


def _decoded_together(engine, monkeypatch, client) -> None:
    import threading

    client.chat.completions.create(model="tiny", max_tokens=1, messages=USER)  # the batch processor exists now
    scheduler = engine._manager.batch_processor.scheduler
    schedule_batch = scheduler.schedule_batch
    per_step: list[int] = []

    def recording(*args, **kwargs):
        scheduled = schedule_batch(*args, **kwargs)
        if scheduled[0]:  # the requests of one forward step (None: cache full, rescheduled; []: nothing to do)
            per_step.append(len(scheduled[0]))
        return scheduled

    monkeypatch.setattr(scheduler, "schedule_batch", recording)
    barrier = threading.Barrier(8)
    finish: list[str] = []

    def ask(i: int) -> None:
        barrier.wait()
        reply = client.chat.completions.create(model="tiny", max_tokens=24,
                                               messages=[{"role": "user", "content": f"question {i}"}])
        finish.append(reply.choices[0].finish_reason)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert len(finish) == 8
    assert per_step and max(per_step) > 1, f"each forward step held one request: {per_step}"
