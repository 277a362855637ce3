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
from dataclasses import dataclass, field
from typing import Sequence

from common.cli import ArgumentParser, UserError, first_line, run_cli
from common.values import Range
from flows.chat.endpoint_urls import check_http_url, openai_chat_url  # stdlib: light
from flows.chat.phi_client import APIS, REQUEST_FORMATS  # stdlib + requests: light

CONNECTION_NAME = "phi_endpoint"

MAX_TOKENS = Range(1, 131_072, integer=True)  # Phi-3.5/4-mini's context; the server caps it further per model
TEMPERATURE = Range(0, 2)  # the OpenAI API's range, which the server enforces too


@dataclass(frozen=True)
class PhiConnection:
    """What the chat flow needs to reach an endpoint (docs/ARCHITECTURE.md section 6): the one model
    that deploy builds once and hands to every writer (the local Prompt flow store, the Foundry
    project), so they all store the same fields. The URL rules are flows/chat/endpoint_urls.py's.

    A new kind of endpoint or connection (another base URL, another Foundry connection category)
    is a new constructor or field here, and every writer gets it.
    """

    endpoint: str
    """The scoring URL, or with `api` the URL under which `/v1/chat/completions` answers (the host, or the
    scoring URL where only paths after it are forwarded)."""
    key: str = field(repr=False)
    deployment: str | None = None
    """Sent as the `azureml-model-deployment` header: pins one deployment behind an Azure endpoint."""
    api: str | None = None
    """`openai`: the endpoint speaks the OpenAI chat-completions API; None: the tutorials' /score dialects."""
    request_format: str = "contract"
    max_tokens: int | None = None
    temperature: float | None = None
    name: str = CONNECTION_NAME

    @classmethod
    def probed(cls, scoring_url: str, key: str, deployment: str | None = None) -> "PhiConnection":
        """Where the endpoint's OpenAI API answers, asked (deployment/endpoint_probe.py), not assumed: `endpoint`
        is the URL under which `/v1/chat/completions` answers (`https://HOST` or `https://HOST/score`) with
        `api: openai`; when neither answers, the scoring URL in the tutorials' /score dialect. Says which, in
        one line."""
        from common.cli import say
        from deployment.endpoint_probe import probe

        route = probe(scoring_url, key, deployment)
        say(f"    {route.line()}")
        return cls(route.endpoint, key, deployment, api=route.api)

    def configs(self) -> dict[str, str]:
        """The non-secret configs (strings, as Prompt flow stores them); UserError when a field is wrong.

        With `api` no `request_format` is written (it applies to /score only).
        """
        try:
            check_http_url(self.endpoint)
        except ValueError as err:
            raise UserError(str(err)) from None
        if self.request_format not in REQUEST_FORMATS:
            raise UserError(f"request_format must be one of {', '.join(REQUEST_FORMATS)}, got {self.request_format!r}")
        if self.api is not None and self.api not in APIS:
            raise UserError(f"api must be one of {', '.join(APIS)} or unset (a /score endpoint), got {self.api!r}")
        configs = {"endpoint": self.endpoint}
        if self.api:
            if self.request_format != "contract":
                raise UserError(f"request_format={self.request_format!r} applies to /score endpoints only, "
                                f"not with api={self.api!r}")
            try:
                openai_chat_url(self.endpoint)
            except ValueError as err:
                raise UserError(str(err)) from None
            configs["api"] = self.api
        else:
            configs["request_format"] = self.request_format
        optional = {"deployment": self.deployment, "max_tokens": None if self.max_tokens is None else str(int(self.max_tokens)),
                    "temperature": None if self.temperature is None else str(float(self.temperature))}
        return configs | {k: v for k, v in optional.items() if v}

    def set_command(self) -> str:
        """The command line that writes this connection by hand (the key from $PHI_ENDPOINT_KEY or a hidden prompt)."""
        flags = {"--endpoint": self.endpoint, "--deployment": self.deployment, "--api": self.api,
                 "--request-format": None if self.request_format == "contract" else self.request_format,
                 "--max-tokens": self.max_tokens, "--temperature": self.temperature}
        return " ".join(["python -m deployment.connection set",
                         *(f"{flag} {value}" for flag, value in flags.items() if value is not None)])

    def secrets(self) -> dict[str, str]:
        if not self.key:
            raise UserError(f"the endpoint key is empty; nothing was written to the {self.name} connection")
        return {"key": self.key}


def connection_configs(
    endpoint: str,
    deployment: str | None = None,
    request_format: str = "contract",
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    api: str | None = None,
) -> dict[str, str]:
    """The configs PhiConnection stores for these fields (no key needed to check them)."""
    return PhiConnection(endpoint, "", deployment, api, request_format, max_tokens, temperature).configs()


def save(connection: PhiConnection) -> None:
    """Create or replace the connection in the local Prompt flow store (idempotent; the key is a secret)."""
    configs, secrets = connection.configs(), connection.secrets()
    with _promptflow_errors(f"write the Prompt flow connection {connection.name!r}"):
        from promptflow.client import PFClient
        from promptflow.entities import CustomConnection

        entity = CustomConnection(name=connection.name, configs=configs, secrets=secrets)
        PFClient().connections.create_or_update(entity, with_secrets=False)


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
    """`save` of the PhiConnection with these fields (the `set` command's and the tests' form)."""
    save(PhiConnection(endpoint, key, deployment, api, request_format, max_tokens, temperature, name))


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
    put.add_argument("--max-tokens", type=MAX_TOKENS, help=f"reply length the flow asks for, {MAX_TOKENS}")
    put.add_argument("--temperature", type=TEMPERATURE, help=f"sampling temperature the flow asks for, {TEMPERATURE} (0: greedy)")
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
