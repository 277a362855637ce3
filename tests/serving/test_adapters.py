"""The model-name rule and the `--adapter` list (deployment/serving/adapters.py), the HTTP layer that applies
the rule (routes over the real app), and `serve`'s one-line refusals."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from deployment.serving.adapters import (Adapter, AdapterError, ModelNames, UnknownModel, adapter_sources, read_adapter,
                                         require_lora_engine, sized_for)
from deployment.serving.app import create_app
from deployment.serving.state import Server
from serving.helpers import free_port

USER = [{"role": "user", "content": "Who founded Microsoft?"}]


# -- the rule --------------------------------------------------------------------------------------


def test_without_adapters_any_model_value_is_answered_by_the_one_model() -> None:
    names = ModelNames.build("phi-tiny", [])
    assert [names.pick(value) for value in (None, "phi-tiny", "gpt-4o", "", 7)] == [None] * 5
    assert names.for_score() is None and names.answering(None) == "phi-tiny"


def test_with_adapters_model_picks_the_base_or_an_adapter_and_no_model_gets_the_default() -> None:
    names = ModelNames.build("phi-base", ["support", "legal"])
    assert names.pick("support") == "support" and names.pick("legal") == "legal"
    assert names.pick("phi-base") is None  # the base itself
    assert names.pick(None) == "legal" and names.for_score() == "legal"  # the newest (last) is the default
    chosen = ModelNames.build("phi-base", ["support", "legal"], default="support")
    assert chosen.pick(None) == "support" and chosen.for_score() == "support"


def test_an_unknown_name_names_the_known_ones() -> None:
    names = ModelNames.build("phi-base", ["support", "legal"])
    with pytest.raises(UnknownModel) as err:
        names.pick("gpt-4o")
    assert str(err.value).startswith("model 'gpt-4o' is not served here; this server serves 'phi-base', 'support', 'legal'")


@pytest.mark.parametrize("base, adapters, default, message", [
    ("phi", ["a", "b"], "c", "--default-adapter 'c' is not one of the adapters served (served: a, b)"),
    ("phi", [], "a", "--default-adapter 'a' is not one of the adapters served (served: none)"),
    ("phi", ["phi"], None, "adapter name 'phi' is the base model's name"),
])
def test_a_default_or_name_that_cannot_work_is_refused(base, adapters, default, message) -> None:
    with pytest.raises(AdapterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelNames.build(base, adapters, default)


def test_models_cards_list_the_base_then_each_adapter_with_its_parent() -> None:
    cards = ModelNames.build("phi-base", ["support", "legal"]).cards(created=1)
    assert [(c["id"], c["parent"]) for c in cards] == [("phi-base", None), ("support", "phi-base"), ("legal", "phi-base")]


# -- the list --------------------------------------------------------------------------------------


def test_flags_win_over_the_environment_and_keep_their_order() -> None:
    env = json.dumps({"from-env": "https://acct.blob.core.windows.net/c/p"})
    assert adapter_sources(["b=/x", "a=/y"], env) == {"b": "/x", "a": "/y"}
    assert list(adapter_sources(["b=/x", "a=/y"], env)) == ["b", "a"]
    assert adapter_sources([], env) == {"from-env": "https://acct.blob.core.windows.net/c/p"}
    assert adapter_sources([], None) == {} and adapter_sources([], " ") == {}


@pytest.mark.parametrize("flags, env, message", [
    (["support"], None, "--adapter 'support' is not NAME=SOURCE"),
    (["=/x"], None, "--adapter '=/x' is not NAME=SOURCE"),
    (["a b=/x"], None, "adapter name 'a b' is not valid"),
    (["a=/x", "a=/y"], None, "adapter 'a' is given twice"),
    ([], "[1, 2]", "$PHI_SERVE_ADAPTERS must be a JSON object"),
    ([], "{not json", "$PHI_SERVE_ADAPTERS must be a JSON object"),
    ([], '{"a": 3}', "$PHI_SERVE_ADAPTERS must be a JSON object"),
])
def test_a_malformed_list_is_one_clear_line(flags, env, message) -> None:
    with pytest.raises(AdapterError) as err:
        adapter_sources(flags, env)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_only_the_vllm_engine_serves_adapters() -> None:
    require_lora_engine("vllm")
    with pytest.raises(AdapterError, match="the transformers engine serves merged models only: serve LoRA adapters "
                                           "with --engine vllm"):
        require_lora_engine("transformers")


# -- the folders -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_peft_folder_is_read_with_its_rank_and_base(tiny_lora_adapters: dict[str, Path], tiny_model_dir: Path) -> None:
    adapters = {name: read_adapter(name, folder) for name, folder in tiny_lora_adapters.items()}
    assert {name: a.rank for name, a in adapters.items()} == {"support": 8, "legal": 16}
    assert adapters["support"].base_model == str(tiny_model_dir)
    assert sized_for(adapters) == (16, 2)


@pytest.mark.parametrize("ranks, sized", [((8, 16), (16, 2)), ((4,), (8, 1)), ((64, 8, 100), (128, 3)), ((512,), (512, 1))])
def test_vllm_is_sized_from_the_adapters_own_ranks(ranks, sized) -> None:
    adapters = {f"a{i}": Adapter(f"a{i}", Path("/x"), rank, None) for i, rank in enumerate(ranks)}
    assert sized_for(adapters) == sized


def test_a_rank_vllm_cannot_serve_is_refused_naming_the_adapter() -> None:
    with pytest.raises(AdapterError, match="adapter 'huge' has rank 1024; vLLM serves ranks up to 512"):
        sized_for({"huge": Adapter("huge", Path("/x"), 1024, None)})


def test_a_folder_that_is_not_a_lora_adapter_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match=f"adapter 'x': {tmp_path}/adapter_config.json is missing"):
        read_adapter("x", tmp_path)
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["qkv_proj"]}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="adapter_model.safetensors is missing"):
        read_adapter("x", tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    assert read_adapter("x", tmp_path).rank == 8
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "r": 0}))
    with pytest.raises(AdapterError, match="has no positive integer rank"):
        read_adapter("x", tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "PREFIX_TUNING"}))
    with pytest.raises(AdapterError, match="is not a LoRA adapter"):
        read_adapter("x", tmp_path)


# -- the HTTP layer --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path):
    from deployment.serving.engines.transformers_engine import TransformersEngine
    from deployment.serving.model_dir import locate_model

    engine = TransformersEngine(locate_model(tiny_model_dir), "phi-base")
    yield engine
    engine.close()


def _client(engine, names: ModelNames) -> TestClient:
    server = Server(names.base, names)
    server.engine = engine
    return TestClient(create_app(server), base_url="http://127.0.0.1")  # the Host a loopback server answers to


@pytest.mark.slow
def test_the_routes_apply_the_rule(engine) -> None:
    """Which adapter decodes is the engine's part (the vLLM tests show it); here: the names in and out."""
    client = _client(engine, ModelNames.build("phi-base", ["support", "legal"], default="support"))
    listed = client.get("/v1/models").json()["data"]
    assert [card["id"] for card in listed] == ["phi-base", "support", "legal"]
    assert client.get("/v1/models/legal").json()["parent"] == "phi-base"
    body = {"messages": USER, "max_tokens": 2}
    assert client.post("/v1/chat/completions", json={**body, "model": "legal"}).json()["model"] == "legal"
    assert client.post("/v1/chat/completions", json={**body, "model": "phi-base"}).json()["model"] == "phi-base"
    assert client.post("/v1/chat/completions", json=body).json()["model"] == "support"
    for path in ("/v1/chat/completions", "/v1/models/gpt-4o"):
        unknown = client.request("POST" if "chat" in path else "GET", path, json={**body, "model": "gpt-4o"})
        assert unknown.status_code == 404, path
        error = unknown.json()["error"]
        assert error["code"] == "model_not_found" and "'phi-base', 'support', 'legal'" in error["message"]


@pytest.mark.slow
def test_without_adapters_the_routes_answer_any_model_with_the_one_model(engine) -> None:
    client = _client(engine, ModelNames.build("phi-base", []))
    reply = client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2, "model": "gpt-4o"})
    assert reply.status_code == 200 and reply.json()["model"] == "phi-base"
    assert [card["id"] for card in client.get("/v1/models").json()["data"]] == ["phi-base"]


# -- the command line ------------------------------------------------------------------------------


def test_serve_on_the_transformers_engine_refuses_adapters_in_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "deployment.serve", "--model-dir", str(tiny_model_dir), "--port", str(free_port()),
         "--adapter", f"support={tmp_path}"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: the transformers engine serves merged models only: serve LoRA adapters with --engine "
                      "vllm, or serve the merged model the trainer wrote beside the adapter (no --adapter)"]
    assert "Traceback" not in result.stderr


def test_help_names_the_adapter_flags_and_imports_no_azure_sdk() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, deployment.serve as s; print(s.build_parser().format_help());"
         "print(sorted(m for m in sys.modules if m.startswith(('azure', 'torch', 'peft'))))"],
        capture_output=True, text=True, timeout=30)
    assert "--adapter NAME=SOURCE" in probe.stdout and "--default-adapter NAME" in probe.stdout
    assert probe.stdout.strip().splitlines()[-1] == "[]"
