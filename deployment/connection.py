"""The Prompt flow connection `phi_endpoint`: where the chat flow finds the endpoint and its key.

`python -m deployment.deploy` writes it after a deployment passes its smoke test, so nobody copies
a URL or a key by hand; `python -m deployment.teardown` deletes it. The key is stored only as the
connection's secret: Prompt flow encrypts it (Fernet) in its local database under
PF_HOME_DIRECTORY (default ~/.promptflow), with the encryption key kept in the system keyring. On
a headless machine or in CI there is no keyring daemon; `keyrings.alt` (installed by `make setup`)
provides a file keyring under $XDG_DATA_HOME/python_keyring (default ~/.local/share).

Config `api` says which API the endpoint speaks (docs/ARCHITECTURE.md section 6): `openai` for this
project's server (`endpoint` is then its base URL and the flow calls `/v1/chat/completions`);
absent for a tutorial's endpoint (`endpoint` is its scoring URL, called in `request_format`).

For an endpoint deploy did not create (a tutorial's, a teammate's):
    PHI_ENDPOINT_KEY=... python -m deployment.connection set --endpoint URL [--deployment NAME] [--api openai]
(without PHI_ENDPOINT_KEY the key is asked for, hidden; it is never a command-line argument),
`python -m deployment.connection show` and `python -m deployment.connection delete`.

promptflow is imported only inside the functions: `--help` of the commands that import this stays
instant.
"""
from __future__ import annotations

import getpass
import json
import os
import sys
from typing import Sequence
from urllib.parse import urlparse

from common.cli import ArgumentParser, UserError, first_line, run_cli
from flows.chat.phi_client import APIS, REQUEST_FORMATS, openai_url  # stdlib + requests: light

CONNECTION_NAME = "phi_endpoint"


def connection_configs(
    endpoint: str,
    deployment: str | None = None,
    request_format: str = "contract",
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    api: str | None = None,
) -> dict[str, str]:
    """The connection's non-secret configs (strings, as Prompt flow stores them).

    With `api="openai"` the endpoint is the server's base URL and no `request_format` is written
    (it applies to /score only); without it the configs are what they always were.
    """
    parsed = urlparse(endpoint or "")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UserError(f"the endpoint must be an http(s) URL, got {endpoint!r}")
    if request_format not in REQUEST_FORMATS:
        raise UserError(f"request_format must be one of {', '.join(REQUEST_FORMATS)}, got {request_format!r}")
    if api is not None and api not in APIS:
        raise UserError(f"api must be one of {', '.join(APIS)} or unset (a /score endpoint), got {api!r}")
    if api:
        if request_format != "contract":
            raise UserError(f"request_format={request_format!r} applies to /score endpoints only, not with api={api!r}")
        try:
            openai_url(endpoint)
        except ValueError as err:
            raise UserError(str(err)) from None
        configs = {"endpoint": endpoint, "api": api}
    else:
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
    api: str | None = None,
    name: str = CONNECTION_NAME,
) -> None:
    """Create or replace the custom connection `phi_endpoint` (idempotent; the key is a secret).

    `api="openai"`: `endpoint` is this project's server's base URL (docs/ARCHITECTURE.md section 6).
    """
    if not key:
        raise UserError("the endpoint key is empty; nothing was written to the phi_endpoint connection")
    configs = connection_configs(
        endpoint, deployment, request_format, max_tokens=max_tokens, temperature=temperature, api=api
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
        raise UserError(f"could not {self.action}: {kind}: {first_line(exc)}") from None


KEY_ENV = "PHI_ENDPOINT_KEY"


def _read_key() -> str:
    """The key from $PHI_ENDPOINT_KEY, else a hidden prompt (or one line of stdin when piped)."""
    key = os.environ.get(KEY_ENV, "")
    if key:
        return key.strip()
    if sys.stdin.isatty():
        return getpass.getpass("endpoint key (hidden): ").strip()
    return sys.stdin.readline().strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m deployment.connection",
        description=f"Write, show or delete the Prompt flow connection {CONNECTION_NAME} the chat flow uses.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    put = sub.add_parser("set", help=f"create or replace it (key from ${KEY_ENV} or a hidden prompt)")
    put.add_argument("--endpoint", required=True,
                     help="the scoring URL (https://<name>.<region>.inference.ml.azure.com/score), "
                          "or with --api openai the base URL (https://<name>.<region>.inference.ml.azure.com)")
    put.add_argument("--deployment", help="pin one deployment (azureml-model-deployment header)")
    put.add_argument("--api", choices=APIS,
                     help="the endpoint speaks the OpenAI chat-completions API (this project's server); "
                          "leave out for a tutorial's /score endpoint")
    put.add_argument("--request-format", default="contract", choices=REQUEST_FORMATS)
    put.add_argument("--max-tokens", type=int)
    put.add_argument("--temperature", type=float)
    sub.add_parser("show", help="print its configs (never the key)")
    sub.add_parser("delete", help="delete it (no error when absent)")
    args = parser.parse_args(argv)
    if args.action == "set":
        connection_configs(args.endpoint, args.deployment, args.request_format, api=args.api)  # fail before asking for the key
        write_phi_connection(
            args.endpoint, _read_key(), args.deployment, args.request_format,
            max_tokens=args.max_tokens, temperature=args.temperature, api=args.api,
        )
        print(f"connection {CONNECTION_NAME} written (key stored as its secret)")
    elif args.action == "show":
        configs = read_phi_connection()
        if configs is None:
            raise UserError(f"no connection {CONNECTION_NAME}: run `python -m deployment.deploy` (or `set`)")
        print(json.dumps(configs, indent=2))
    else:
        print(f"connection {CONNECTION_NAME} " + ("deleted" if delete_phi_connection() else "did not exist"))
    return 0


if __name__ == "__main__":
    run_cli(main)
