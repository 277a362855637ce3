"""The container's start-up download of LoRA adapters from blob storage, as the endpoint identity.

The endpoint identity may read the workspace's blobs (Storage Blob Data Reader) but not its model
registry, so deploy resolves each adapter asset to the https URL of its folder in storage and passes the
list to the container ($PHI_SERVE_ADAPTERS, adapters.py). At start-up, before the port opens, each folder
is downloaded with `ManagedIdentityCredential(client_id=$AZURE_CLIENT_ID)`: in an Azure ML
online deployment the platform serves that identity's tokens at $MSI_ENDPOINT (with $MSI_SECRET), which
azure-identity reads. A missing or unreadable blob stops the start with one line naming it; a folder
half downloaded is removed.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

from deployment.serving.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterError

ENV_IDENTITY_CLIENT_ID = "AZURE_CLIENT_ID"
"""The endpoint identity's client id; deploy sets it in every deployment (deployment/definitions.py)."""
STORAGE_SCHEME = "https://"
STORAGE_SCOPE = "https://storage.azure.com/.default"
logger = logging.getLogger("deployment.serve")


def is_blob_url(source: str) -> bool:
    return source.startswith(STORAGE_SCHEME)


def local_folders(sources: Mapping[str, str], cache: Path | None = None) -> dict[str, Path]:
    """NAME -> a folder on this machine: local sources as given, blob URLs downloaded into `cache`
    (default: a new temporary folder). Raises AdapterError with one line naming what failed."""
    remote = {name: url for name, url in sources.items() if is_blob_url(url)}
    folders = {name: Path(source).expanduser().resolve() for name, source in sources.items() if name not in remote}
    if remote:
        credential = _credential(next(iter(remote.items())))
        cache = cache or Path(tempfile.mkdtemp(prefix="phi-adapters-"))
        for name, url in remote.items():
            folders[name] = download_folder(name, url, cache / name, credential)
    return {name: folders[name] for name in sources}  # release order kept


def _credential(first: tuple[str, str]):
    """The endpoint identity's credential, with a storage token taken once up front: an identity that gets no
    token fails here at once, not after the storage client's retries (about 80 s) on every request."""
    try:
        from azure.core.exceptions import ClientAuthenticationError
        from azure.identity import CredentialUnavailableError, ManagedIdentityCredential
    except ImportError:
        raise AdapterError(f"adapter {first[0]!r} is a blob URL, and this Python has no azure-identity and "
                           "azure-storage-blob to download it (the serving images install them; locally, give the "
                           "adapter's folder)") from None
    credential = ManagedIdentityCredential(client_id=os.environ.get(ENV_IDENTITY_CLIENT_ID) or None)
    try:
        credential.get_token(STORAGE_SCOPE)
    except (CredentialUnavailableError, ClientAuthenticationError) as err:
        name, url = first
        raise AdapterError(f"adapter {name!r}: {_no_token(url, err)}") from None
    return credential


def download_folder(name: str, url: str, dest: Path, credential) -> Path:
    """Every blob under the folder `url` into `dest` (written beside it first, then renamed into place)."""
    from azure.core.exceptions import AzureError

    container, prefix = _container(url, credential)
    partial = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        names = [blob.name for blob in container.list_blobs(name_starts_with=prefix)]
        _require_adapter_files(name, url, [blob[len(prefix):] for blob in names])
        for blob in names:
            target = partial / blob[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as handle:
                container.download_blob(blob).readinto(handle)
    except AzureError as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise AdapterError(f"adapter {name!r}: cannot read {url}: {_reason(err)}") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    logger.info("adapter %r: %d files from %s", name, len(names), url)
    return dest


def _container(url: str, credential):
    """(the ContainerClient, the folder's blob-name prefix ending in '/') for a folder URL; the library
    parses both URL styles (https://ACCOUNT.blob.core.windows.net/C/PATH and Azurite's https://IP:PORT/ACCOUNT/C/PATH)."""
    from azure.storage.blob import BlobClient, ContainerClient

    folder = url.split("?", 1)[0].rstrip("/")
    parsed = BlobClient.from_blob_url(folder)
    container_url = folder[: -len(parsed.blob_name) - 1]
    return ContainerClient.from_container_url(container_url, credential=credential), parsed.blob_name + "/"


def _require_adapter_files(name: str, url: str, files: list[str]) -> None:
    folder = url.split("?", 1)[0].rstrip("/")
    if not files:
        raise AdapterError(f"adapter {name!r}: no blob under {folder}/ (the adapter asset's storage path is empty "
                           "or wrong: deploy it again from the training job)")
    if ADAPTER_CONFIG not in files:
        raise AdapterError(f"adapter {name!r}: blob {folder}/{ADAPTER_CONFIG} is missing")
    if not any(weights in files for weights in ADAPTER_WEIGHTS):
        raise AdapterError(f"adapter {name!r}: blob {folder}/{ADAPTER_WEIGHTS[0]} is missing")


def _no_token(url: str, err: Exception) -> str:
    if not os.environ.get("MSI_ENDPOINT"):
        return (f"no managed identity here to read {url} ($MSI_ENDPOINT is unset): blob URLs are read in the Azure "
                "deployment; locally, give the adapter's folder")
    client_id = os.environ.get(ENV_IDENTITY_CLIENT_ID) or "(none: the system identity)"
    detail = str(err).replace("\n", " ")[:300]
    return (f"the managed identity endpoint gave no token for client id {client_id} to read {url} "
            f"(${ENV_IDENTITY_CLIENT_ID} must be the endpoint identity's client id): {detail}")


def _reason(err: Exception) -> str:
    """One line for an Azure error: the status and the service's error code, with the fix for a 403."""
    status = getattr(err, "status_code", None)
    code = getattr(err, "error_code", None)
    if status == 403 and code == "AuthenticationFailed":
        return "403 AuthenticationFailed: the storage account refused the endpoint identity's token"
    if status == 403:
        return (f"403 {code or 'Forbidden'}: the endpoint identity needs Storage Blob Data Reader on this storage "
                "account (pulumi up grants it on the workspace's)")
    if status:
        return f"{status} {code or ''}".strip()
    return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
