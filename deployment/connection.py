"""The Prompt flow connection `phi_endpoint`: where the chat flow finds the endpoint and its key.

`python -m deployment.deploy` writes it after a deployment passes its smoke test, so nobody copies
a URL or a key by hand; `python -m deployment.teardown` deletes it. The key is stored only as the
connection's secret: Prompt flow encrypts it (Fernet) in its local database under
PF_HOME_DIRECTORY (default ~/.promptflow), with the encryption key kept in the system keyring. On
a headless machine or in CI there is no keyring daemon; `keyrings.alt` (installed by `make setup`)
provides a file keyring under $XDG_DATA_HOME/python_keyring (default ~/.local/share).

promptflow is imported only inside the functions: `--help` of the commands that import this stays
instant.
"""
from __future__ import annotations

from urllib.parse import urlparse

from common.cli import UserError

CONNECTION_NAME = "phi_endpoint"
REQUEST_FORMATS = ("contract", "registry", "mlflow")  # the same list as flows/chat/phi_client.py


def connection_configs(
    endpoint: str,
    deployment: str | None = None,
    request_format: str = "contract",
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
) -> dict[str, str]:
    """The connection's non-secret configs (strings, as Prompt flow stores them)."""
    parsed = urlparse(endpoint or "")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UserError(f"the endpoint must be an http(s) scoring URL, got {endpoint!r}")
    if request_format not in REQUEST_FORMATS:
        raise UserError(f"request_format must be one of {', '.join(REQUEST_FORMATS)}, got {request_format!r}")
    configs = {"endpoint": endpoint, "request_format": request_format}
    if deployment:
        configs["deployment"] = deployment
    if max_tokens is not None:
        configs["max_tokens"] = str(int(max_tokens))
    if temperature is not None:
        configs["temperature"] = str(float(temperature))
    return configs


def write_phi_connection(
    endpoint: str,
    key: str,
    deployment: str | None = None,
    request_format: str = "contract",
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    name: str = CONNECTION_NAME,
) -> None:
    """Create or replace the custom connection `phi_endpoint` (idempotent; the key is a secret)."""
    if not key:
        raise UserError("the endpoint key is empty; nothing was written to the phi_endpoint connection")
    configs = connection_configs(
        endpoint, deployment, request_format, max_tokens=max_tokens, temperature=temperature
    )
    with _promptflow_errors(f"write the Prompt flow connection {name!r}"):
        from promptflow.client import PFClient
        from promptflow.entities import CustomConnection

        connection = CustomConnection(name=name, configs=configs, secrets={"key": key})
        PFClient().connections.create_or_update(connection, with_secrets=False)


def delete_phi_connection(name: str = CONNECTION_NAME) -> bool:
    """Delete the connection; True if it existed. No error when it is absent."""
    with _promptflow_errors(f"delete the Prompt flow connection {name!r}"):
        from promptflow.client import PFClient

        client = PFClient()
        existing = client.connections._get(name, with_secrets=False, raise_error=False)
        if existing is None:
            return False
        client.connections.delete(name)
        return True


def read_phi_connection(name: str = CONNECTION_NAME) -> dict[str, str] | None:
    """The connection's configs (never its secret), or None when it does not exist."""
    with _promptflow_errors(f"read the Prompt flow connection {name!r}"):
        from promptflow.client import PFClient

        existing = PFClient().connections._get(name, with_secrets=False, raise_error=False)
        return None if existing is None else dict(existing.configs)


class _promptflow_errors:
    """Turn promptflow's storage errors into one actionable UserError (never echoing the key)."""

    def __init__(self, action: str) -> None:
        self.action = action

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or isinstance(exc, UserError):
            return False
        if isinstance(exc, ImportError):
            raise UserError(
                f"could not {self.action}: promptflow is not installed ({exc.name}). Run `make setup` "
                "(or `pip install -e '.[flow]'`)."
            ) from None
        kind = type(exc).__name__
        if "EncryptionKey" in kind or "Keyring" in kind:
            raise UserError(
                f"could not {self.action}: no keyring backend to hold Prompt flow's encryption key. "
                "Install one: `pip install keyrings.alt` (a file keyring for headless machines and CI)."
            ) from None
        if not isinstance(exc, Exception):
            return False
        raise UserError(f"could not {self.action}: {kind}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else "(no message)"
