"""The container's start-up download of LoRA adapters (deployment/serving/adapter_download.py), for real:
Azurite, the Azure Storage emulator, holds the blobs and checks each bearer token; the endpoint identity's
tokens come from a stand-in for Azure ML's managed-identity endpoint (tests/fakes/managed_identity.py),
read by azure-identity's own ManagedIdentityCredential."""
from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from deployment.serving.adapter_download import ENV_IDENTITY_CLIENT_ID, local_folders
from deployment.serving.adapters import AdapterError, read_adapter
from fakes.managed_identity import ManagedIdentityEndpoint

pytestmark = pytest.mark.slow  # Azurite starts in a few seconds, once per session

CLIENT_ID = "3c1d7a52-0b5e-4d8f-9a61-5f2e8c9b0e11"  # the endpoint identity's client id, as deploy passes it
STORAGE = "https://storage.azure.com"


@pytest.fixture
def identity(monkeypatch, azurite) -> ManagedIdentityEndpoint:
    """The container's environment in an Azure ML deployment: the MSI endpoint and the identity's client id."""
    endpoint = ManagedIdentityEndpoint(client_id=CLIENT_ID).start()
    for name, value in endpoint.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(ENV_IDENTITY_CLIENT_ID, CLIENT_ID)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(azurite.ca_file))  # trust the emulator's own certificate
    yield endpoint
    endpoint.stop()


@pytest.fixture(scope="module")
def stored(azurite, tiny_lora_adapters: dict[str, Path]) -> dict[str, str]:
    """The two adapters in the emulator, laid out as Azure ML stores job outputs: NAME -> folder URL."""
    return {name: azurite.upload_folder(folder, "azureml-blobstore", f"azureml/ExperimentRun/dcid.job-{name}/outputs/adapter")
            for name, folder in tiny_lora_adapters.items()}


def test_each_adapter_is_downloaded_as_the_endpoint_identity(identity, stored, tiny_lora_adapters, tmp_path) -> None:
    folders = local_folders(stored, cache=tmp_path / "cache")
    assert list(folders) == ["support", "legal"]  # release order kept: the last is the default's fallback
    for name, folder in folders.items():
        original = tiny_lora_adapters[name]
        files = sorted(p.name for p in original.iterdir())
        assert sorted(p.name for p in folder.iterdir()) == files
        match, mismatch, errors = filecmp.cmpfiles(original, folder, files, shallow=False)
        assert (mismatch, errors) == ([], []) and match
        assert read_adapter(name, folder).rank == {"support": 8, "legal": 16}[name]
    asked = [request["query"] for request in identity.requests]
    assert asked and all(q["clientid"] == CLIENT_ID and q["resource"].rstrip("/") == STORAGE for q in asked)
    assert not list((tmp_path / "cache").glob(".*partial"))


def test_a_missing_blob_fails_naming_it_and_leaves_nothing(identity, azurite, tiny_lora_adapters, tmp_path) -> None:
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    (weightless / "adapter_config.json").write_bytes((tiny_lora_adapters["support"] / "adapter_config.json").read_bytes())
    url = azurite.upload_folder(weightless, "azureml-blobstore", "azureml/ExperimentRun/dcid.job-broken/outputs/adapter")
    with pytest.raises(AdapterError) as err:
        local_folders({"broken": url}, cache=tmp_path / "cache")
    message = str(err.value)
    assert message == f"adapter 'broken': blob {url}/adapter_model.safetensors is missing"
    assert list(tmp_path.glob("cache/**/*")) == []  # no folder, whole or partial


def test_a_folder_with_no_blobs_fails_naming_its_url(identity, azurite, stored, tmp_path) -> None:
    url = azurite.folder_url("azureml-blobstore", "azureml/ExperimentRun/dcid.job-never-ran/outputs/adapter")
    with pytest.raises(AdapterError, match=f"adapter 'gone': no blob under {url}/"):
        local_folders({"gone": url}, cache=tmp_path / "cache")


def test_the_storage_refuses_a_token_for_another_audience(identity, stored, tmp_path) -> None:
    """The emulator really checks the bearer token: one minted for ARM does not open the blobs."""
    identity.audience = "https://management.azure.com"
    with pytest.raises(AdapterError) as err:
        local_folders({"support": stored["support"]}, cache=tmp_path / "cache")
    assert "403 AuthenticationFailed" in str(err.value) and stored["support"] in str(err.value)
    assert "\n" not in str(err.value)


def test_another_identity_gets_no_token(identity, monkeypatch, stored, tmp_path) -> None:
    monkeypatch.setenv(ENV_IDENTITY_CLIENT_ID, "0badc11e-0000-0000-0000-000000000000")
    with pytest.raises(AdapterError) as err:
        local_folders({"support": stored["support"]}, cache=tmp_path / "cache")
    message = str(err.value)
    assert message.startswith("adapter 'support': the managed identity endpoint gave no token for client id "
                              f"0badc11e-0000-0000-0000-000000000000 to read {stored['support']}")
    assert "is not assigned to this deployment" in message  # the platform's reason, passed on
    assert "\n" not in message and "SECRET" not in message


def test_local_folders_are_used_in_place(tiny_lora_adapters) -> None:
    assert local_folders({"support": str(tiny_lora_adapters["support"])}) == {"support": tiny_lora_adapters["support"]}


def test_the_start_stops_with_one_line_naming_the_missing_blob(identity, azurite, tiny_lora_adapters, tiny_model_dir,
                                                               tmp_path, monkeypatch) -> None:
    """The server's start-up step (cli.prepare_adapters, before the port opens) on the container's settings:
    $PHI_SERVE_ADAPTERS as deploy sets it, one adapter's weights missing from storage."""
    import json

    from deployment.serving.cli import StartupError, build_parser, prepare_adapters

    folder = tmp_path / "no-weights"
    folder.mkdir()
    (folder / "adapter_config.json").write_bytes((tiny_lora_adapters["support"] / "adapter_config.json").read_bytes())
    good = azurite.upload_folder(tiny_lora_adapters["support"], "azureml-blobstore", "azureml/job-good/model/adapter")
    broken = azurite.upload_folder(folder, "azureml-blobstore", "azureml/job-broken/model/adapter")
    monkeypatch.setenv("PHI_SERVE_ADAPTERS", json.dumps({"support": good, "legal": broken}))
    args = build_parser().parse_args(["--model-dir", str(tiny_model_dir)])
    with pytest.raises(StartupError) as err:
        prepare_adapters(args, "vllm", "phi-base")
    assert str(err.value) == f"adapter 'legal': blob {broken}/adapter_model.safetensors is missing"
