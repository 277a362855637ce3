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


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"endpoint": "127.0.0.1/score", "key": KEY}, "http\\(s\\) scoring URL"),
        ({"endpoint": "http://x/score", "key": ""}, "key is empty"),
        ({"endpoint": "http://x/score", "key": KEY, "request_format": "openai"}, "request_format must be one of"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(pf_ready, kwargs, match) -> None:
    delete_phi_connection()
    with pytest.raises(UserError, match=match) as info:
        write_phi_connection(**kwargs)
    assert KEY not in str(info.value)
    assert read_phi_connection() is None
