"""deployment.connection: the phi_endpoint connection through the real promptflow SDK store."""
from __future__ import annotations

import pytest

from common.cli import UserError
from deployment.connection import (
    CONNECTION_NAME,
    delete_phi_connection,
    read_phi_connection,
    write_phi_connection,
)
from fake_endpoint import KEY, files_containing


def stored_secret() -> str:
    from promptflow.client import PFClient

    return PFClient().connections.get(CONNECTION_NAME).secrets["key"]


def test_write_is_idempotent_and_replaces_every_field(pf_ready) -> None:
    write_phi_connection("https://phi.eastus.inference.ml.azure.com/score", KEY, deployment="blue",
                         request_format="registry", max_tokens=64, temperature=0.1)
    assert read_phi_connection() == {
        "endpoint": "https://phi.eastus.inference.ml.azure.com/score",
        "request_format": "registry",
        "deployment": "blue",
        "max_tokens": "64",
        "temperature": "0.1",
    }
    write_phi_connection("http://127.0.0.1:5001/score", KEY + "-rotated")
    write_phi_connection("http://127.0.0.1:5001/score", KEY + "-rotated")
    # the old deployment and request format do not linger
    assert read_phi_connection() == {"endpoint": "http://127.0.0.1:5001/score", "request_format": "contract"}
    assert stored_secret() == KEY + "-rotated"
    # encrypted at rest: the key is nowhere in Prompt flow's folder in plain text
    assert files_containing(pf_ready, KEY) == []


def test_delete_is_safe_to_repeat(pf_ready) -> None:
    write_phi_connection("http://127.0.0.1:5001/score", KEY)
    assert delete_phi_connection() is True
    assert read_phi_connection() is None
    assert delete_phi_connection() is False


def test_api_openai_is_recorded_with_the_base_url_and_no_request_format(pf_ready) -> None:
    write_phi_connection("https://phi.eastus.inference.ml.azure.com", KEY, deployment="blue", api="openai")
    assert read_phi_connection() == {
        "endpoint": "https://phi.eastus.inference.ml.azure.com",
        "api": "openai",
        "deployment": "blue",
    }
    # rewritten for a tutorial's endpoint: `api` does not linger, so it is called on /score as before
    write_phi_connection("https://tutorial.eastus.inference.ml.azure.com/score", KEY)
    assert read_phi_connection() == {
        "endpoint": "https://tutorial.eastus.inference.ml.azure.com/score",
        "request_format": "contract",
    }


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"endpoint": "127.0.0.1/score", "key": KEY}, "http\\(s\\) URL"),
        ({"endpoint": "http://x/score", "key": ""}, "key is empty"),
        ({"endpoint": "http://x/score", "key": KEY, "request_format": "openai"}, "request_format must be one of"),
        ({"endpoint": "http://x", "key": KEY, "api": "azure"}, "api must be one of openai"),
        ({"endpoint": "http://x", "key": KEY, "api": "openai", "request_format": "mlflow"}, "applies to /score"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(pf_ready, kwargs, match) -> None:
    delete_phi_connection()
    with pytest.raises(UserError, match=match) as info:
        write_phi_connection(**kwargs)
    assert KEY not in str(info.value)
    assert read_phi_connection() is None


@pytest.mark.slow
def test_cli_set_reads_the_key_from_stdin_and_never_prints_it(pf_ready) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PHI_ENDPOINT_KEY"}
    cmd = [sys.executable, "-m", "deployment.connection"]
    done = subprocess.run(
        cmd + ["set", "--endpoint", "http://127.0.0.1:5002/score", "--request-format", "mlflow"],
        input=KEY + "\n", capture_output=True, text=True, env=env, timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    shown = subprocess.run(cmd + ["show"], capture_output=True, text=True, env=env, timeout=60)
    assert shown.returncode == 0
    assert '"request_format": "mlflow"' in shown.stdout
    assert KEY not in done.stdout + done.stderr + shown.stdout + shown.stderr
    assert stored_secret() == KEY

    as_openai = subprocess.run(
        cmd + ["set", "--endpoint", "http://127.0.0.1:5002", "--api", "openai"],
        input=KEY + "\n", capture_output=True, text=True, env=env, timeout=60,
    )
    assert as_openai.returncode == 0, as_openai.stderr[-2000:]
    assert read_phi_connection() == {"endpoint": "http://127.0.0.1:5002", "api": "openai"}


def test_project_prompt_flow_settings_land_in_pf_home(pf_ready) -> None:
    """common.pf_settings copies the repository's pf.yaml into PF_HOME_DIRECTORY: no tracing service, no telemetry."""
    import yaml

    config = yaml.safe_load((pf_ready / "pf.yaml").read_text())
    assert config["trace"]["destination"] == "none"
    assert str(config["telemetry"]["enabled"]).lower() == "false"
